from __future__ import annotations

from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from annotation.models import ClaimStatus, Ranking, TaskClaim
from annotation.services.claims import task_claim_next, task_claims_ensure
from annotation.services.refusals import LeaseExpired
from annotation.services.review import task_release
from annotation.services.submission import ranking_submit
from gallery.models import Category
from tests.annotation_ui.conftest import rank_fields

pytestmark = pytest.mark.django_db


@pytest.fixture
def spatial():
    return Category.objects.get(slug="spatial")


def _submit(claim, user, order=None):
    import uuid

    order = order or list(range(1, len(claim.shown_order) + 1))
    fields = {k: [v] for k, v in rank_fields(order).items()}
    return ranking_submit(claim_id=claim.pk, annotator=user, fields=fields, idempotency_key=uuid.uuid4())


def test_a_claim_holds_the_tasks_images_in_a_stored_shuffled_order(
    make_user, task_factory, spatial, settings
):
    settings.GOLD_TASK_RATE = 0
    task = task_factory(n_images=8)
    orders = []
    for _ in range(6):
        task.required_rankings += 1
        task.save()
        claim = task_claim_next(annotator=make_user("annotator"), category=spatial)
        assert claim.task_id == task.pk
        assert sorted(claim.shown_order) == sorted(task.task_images.values_list("image_id", flat=True))
        orders.append(tuple(claim.shown_order))
    # Six annotators, 8! orders: the same order for all would mean no shuffling.
    assert len(set(orders)) > 1


def test_an_annotator_never_gets_the_same_task_twice(make_user, task_factory, spatial, settings):
    settings.GOLD_TASK_RATE = 0
    first, second = task_factory(required=5), task_factory(required=5)
    ann = make_user("annotator")
    a = task_claim_next(annotator=ann, category=spatial)
    b = task_claim_next(annotator=ann, category=spatial)
    assert {a.task_id, b.task_id} == {first.pk, second.pk}
    assert task_claim_next(annotator=ann, category=spatial) is None
    # Not even after ranking or skipping them.
    _submit(a, ann)
    task_release(claim_id=b.pk, annotator=ann, kind="skip")
    assert task_claim_next(annotator=ann, category=spatial) is None


def test_a_task_gives_out_exactly_its_k_slots(make_user, task_factory, spatial, settings):
    settings.GOLD_TASK_RATE = 0
    task = task_factory(required=2)
    claims = [task_claim_next(annotator=make_user("annotator"), category=spatial) for _ in range(3)]
    assert [c is not None for c in claims] == [True, True, False]
    assert {c.task_id for c in claims[:2]} == {task.pk}


def test_an_expired_lease_goes_back_into_the_queue_and_cannot_be_submitted(
    make_user, task_factory, spatial, settings
):
    settings.GOLD_TASK_RATE = 0
    task_factory(required=1)
    late, punctual = make_user("annotator"), make_user("annotator")
    claim = task_claim_next(annotator=late, category=spatial)
    assert task_claim_next(annotator=punctual, category=spatial) is None
    TaskClaim.objects.filter(pk=claim.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    taken = task_claim_next(annotator=punctual, category=spatial)
    assert taken is not None and taken.task_id == claim.task_id
    claim.refresh_from_db()
    assert claim.status == ClaimStatus.EXPIRED
    with pytest.raises(LeaseExpired, match="expired"):
        _submit(claim, late)
    assert Ranking.objects.count() == 0


def test_a_skipped_slot_is_offered_to_the_next_annotator(make_user, task_factory, spatial, settings):
    settings.GOLD_TASK_RATE = 0
    task = task_factory(required=1)
    first = task_claim_next(annotator=make_user("annotator"), category=spatial)
    flag = task_release(claim_id=first.pk, annotator=first.annotator, kind="skip", reason="")
    assert flag.kind == "skip" and flag.task_id == task.pk
    assert task_claim_next(annotator=make_user("annotator"), category=spatial).task_id == task.pk


def test_a_full_task_is_marked_complete_after_commit_and_leaves_the_queue(
    make_user, task_factory, spatial, settings, django_capture_on_commit_callbacks, monkeypatch
):
    import annotation.services.submission as submission_module

    monkeypatch.setattr(submission_module, "_schedule_consensus", lambda task_id: None)
    settings.GOLD_TASK_RATE = 0
    task = task_factory(required=2)
    for _ in range(2):
        user = make_user("annotator")
        with django_capture_on_commit_callbacks(execute=True):
            _submit(task_claim_next(annotator=user, category=spatial), user)
        task.refresh_from_db()
        assert task.status == ("open" if Ranking.objects.count() < 2 else "complete")
    assert task.status == "complete"
    assert task_claim_next(annotator=make_user("annotator"), category=spatial) is None


@pytest.mark.parametrize(
    ("rate", "expected_gold"), [(0.25, [False, False, False, True] * 2), (0.0, [False] * 8)]
)
def test_gold_tasks_are_interleaved_at_the_configured_rate(
    make_user, task_factory, spatial, settings, rate, expected_gold
):
    settings.GOLD_TASK_RATE = rate
    for _ in range(8):
        task_factory(required=1)
        task_factory(required=1, gold=True)
    ann = make_user("annotator")
    got = []
    for _ in range(8):
        claim = task_claim_next(annotator=ann, category=spatial)
        got.append(claim.task.is_gold)
    assert got == expected_gold


def test_the_page_holds_the_current_task_and_the_next_one(make_user, task_factory, spatial, settings):
    settings.GOLD_TASK_RATE = 0
    t1, t2, _ = task_factory(), task_factory(), task_factory()
    ann = make_user("annotator")
    pair = task_claims_ensure(annotator=ann, category=spatial)
    assert (pair.current.task_id, pair.upcoming.task_id) == (t1.pk, t2.pk)
    again = task_claims_ensure(annotator=ann, category=spatial)
    assert (again.current.pk, again.upcoming.pk) == (pair.current.pk, pair.upcoming.pk)
    assert TaskClaim.objects.filter(annotator=ann).count() == 2


def test_tasks_of_other_categories_are_not_offered(make_user, task_factory, spatial, settings):
    settings.GOLD_TASK_RATE = 0
    task_factory(category="non_spatial")
    assert task_claim_next(annotator=make_user("annotator"), category=spatial) is None


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_claiming_a_task_that_holds_a_lapsed_lease_takes_at_most_ten_queries(
    make_user, task_factory, spatial, settings
):
    # transaction=True: no test transaction around the claim, as in production, so BEGIN and COMMIT are
    # counted and no test-only savepoints are. The costliest path without contention: the lapsed lease is
    # expired under the task lock before the slot is counted and taken.
    settings.GOLD_TASK_RATE = 0
    task = task_factory(required=1)
    late = make_user("annotator")
    stale = task_claim_next(annotator=late, category=spatial)
    TaskClaim.objects.filter(pk=stale.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    annotator = make_user("annotator")
    with CaptureQueriesContext(connection) as queries:
        claim = task_claim_next(annotator=annotator, category=spatial)
    assert claim is not None and claim.task_id == task.pk
    assert len(queries) <= 10, "\n".join(q["sql"] for q in queries.captured_queries)
    assert TaskClaim.objects.get(pk=stale.pk).status == ClaimStatus.EXPIRED


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_a_gold_turn_with_no_gold_left_takes_an_ordinary_task_in_the_same_draw(
    make_user, task_factory, spatial, settings
):
    # An annotator who has ranked every gold task (a fixed gold set, a long history): the gold turn must
    # not cost a second draw and transaction for the ordinary pool (BENCHMARKS.md, "Claim path at scale").
    settings.GOLD_TASK_RATE = 1.0  # every claim is a gold turn
    annotator = make_user("annotator")
    gold = task_factory(gold=True, required=5)
    assert task_claim_next(annotator=annotator, category=spatial).task_id == gold.pk
    ordinary = task_factory(required=1)
    with CaptureQueriesContext(connection) as queries:
        claim = task_claim_next(annotator=annotator, category=spatial)
    assert claim is not None and claim.task_id == ordinary.pk
    statements = [q["sql"] for q in queries.captured_queries]
    draws = [sql for sql in statements if "FOR NO KEY UPDATE" in sql and "LIMIT 1" in sql]
    assert len(draws) == 1, "\n".join(statements)
    assert len(statements) <= 10, "\n".join(statements)


def test_an_undone_skip_takes_its_slot_back_only_while_the_slot_is_free(
    make_user, task_factory, spatial, settings
):
    from annotation.models import TaskFlag
    from annotation.services.refusals import ClaimClosed
    from annotation.services.review import skip_undo

    settings.GOLD_TASK_RATE = 0
    task_factory(required=1)
    ann, other = make_user("annotator"), make_user("annotator")
    mine = task_claim_next(annotator=ann, category=spatial)
    flag = task_release(claim_id=mine.pk, annotator=ann, kind="skip")
    claim = skip_undo(flag_id=flag.pk, annotator=ann)
    assert (claim.pk, claim.status, claim.shown_order) == (mine.pk, ClaimStatus.ACTIVE, mine.shown_order)
    assert not TaskFlag.objects.exists()
    # The slot is held again: nobody else gets it.
    assert task_claim_next(annotator=other, category=spatial) is None

    # Skipped again, and this time someone takes the free slot first: the skip stays, in the review queue.
    flag = task_release(claim_id=mine.pk, annotator=ann, kind="skip")
    assert task_claim_next(annotator=other, category=spatial).task_id == mine.task_id
    with pytest.raises(ClaimClosed, match="took this task's free slot"):
        skip_undo(flag_id=flag.pk, annotator=ann)
    assert TaskFlag.objects.get().pk == flag.pk
    assert TaskClaim.objects.filter(task_id=mine.task_id, status=ClaimStatus.ACTIVE).count() == 1


def test_a_skip_cannot_be_undone_after_the_window_or_by_someone_else(
    make_user, task_factory, spatial, settings
):
    from annotation.models import TaskFlag
    from annotation.services.refusals import ClaimClosed, ClaimNotFound
    from annotation.services.review import SKIP_UNDO_SECONDS, skip_undo

    settings.GOLD_TASK_RATE = 0
    task_factory(required=2)
    ann = make_user("annotator")
    mine = task_claim_next(annotator=ann, category=spatial)
    flag = task_release(claim_id=mine.pk, annotator=ann, kind="skip")
    with pytest.raises(ClaimNotFound):
        skip_undo(flag_id=flag.pk, annotator=make_user("annotator"))
    TaskFlag.objects.filter(pk=flag.pk).update(
        created_at=timezone.now() - timedelta(seconds=SKIP_UNDO_SECONDS + 1)
    )
    with pytest.raises(ClaimClosed):
        skip_undo(flag_id=flag.pk, annotator=ann)
    assert TaskClaim.objects.get(pk=mine.pk).status == ClaimStatus.RELEASED


def test_the_claimers_walk_and_the_queue_count_select_the_same_tasks(
    make_user, task_factory, spatial, settings
):
    # claimable_tasks(first_only=True) writes "never claimed or ranked by me" as per-row counts (a plan that
    # stays flat at a million images); the queue pages count the NOT EXISTS form. Both must mean the same.
    settings.GOLD_TASK_RATE = 0.1
    me, other = make_user("annotator"), make_user("annotator")
    untouched = task_factory()
    claimed_by_me = task_factory()
    ranked_without_claim = task_factory()  # e.g. an imported ranking: a ranking row, no claim row
    skipped_by_me = task_factory()
    full = task_factory(required=1)
    lapsed_elsewhere = task_factory(required=1)
    gold = task_factory(gold=True)
    now = timezone.now()
    TaskClaim.objects.create(task=claimed_by_me, annotator=me, expires_at=now + timedelta(minutes=5))
    Ranking.objects.create(task=ranked_without_claim, annotator=me, ordering=[[1]], shown_order=[1])
    TaskClaim.objects.create(
        task=skipped_by_me, annotator=me, status=ClaimStatus.RELEASED, expires_at=now - timedelta(days=1)
    )
    TaskClaim.objects.create(task=full, annotator=other, expires_at=now + timedelta(minutes=5))
    TaskClaim.objects.create(task=lapsed_elsewhere, annotator=other, expires_at=now - timedelta(seconds=1))

    from annotation.services.claims import claimable_tasks

    for is_gold in (None, False, True):
        walk = claimable_tasks(
            annotator=me, now=now, category_id=spatial.pk, is_gold=is_gold, first_only=True
        )
        count = claimable_tasks(annotator=me, now=now, category_id=spatial.pk, is_gold=is_gold)
        assert list(walk.values_list("pk", flat=True)) == list(count.values_list("pk", flat=True))
    everything = claimable_tasks(annotator=me, now=now, first_only=True)
    assert list(everything.values_list("pk", flat=True)) == [untouched.pk, lapsed_elsewhere.pk, gold.pk]
