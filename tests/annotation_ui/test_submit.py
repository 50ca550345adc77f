"""Submitting a ranking: what gets recorded, the query budget, and every refusal writing nothing."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from annotation.models import ClaimStatus, Ranking, RankingTask, TaskClaim, TaskFlag
from annotation.services.claims import task_claims_ensure
from gallery.models import Category
from tests.annotation_ui.conftest import submit_data

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _no_gold(settings):
    settings.GOLD_TASK_RATE = 0


@pytest.fixture
def spatial():
    return Category.objects.get(slug="spatial")


@pytest.fixture
def annotator(make_user):
    return make_user("annotator")


@pytest.fixture
def claimed(client, annotator, task_factory, spatial):
    task_factory(), task_factory()
    client.force_login(annotator)
    return task_claims_ensure(annotator=annotator, category=spatial).current


def _url(claim):
    return f"/rank/claims/{claim.pk}/submit/"


def _counts():
    return (
        Ranking.objects.count(),
        TaskClaim.objects.filter(status=ClaimStatus.ACTIVE).count(),
        TaskFlag.objects.count(),
    )


def test_a_submission_records_the_ordering_in_image_ids_with_the_shown_order_and_time(
    client, claimed, annotator
):
    shown = claimed.shown_order
    data = submit_data(claimed, order=[3, 1, 2, 6, 5, 4])
    data["shown_at"] = str(int((timezone.now() - timedelta(seconds=7)).timestamp() * 1000))
    response = client.post(_url(claimed), data)
    assert response.status_code == 303 and response["Location"] == "/rank/spatial/"
    ranking = Ranking.objects.get()
    assert ranking.annotator == annotator and ranking.task_id == claimed.task_id
    assert ranking.ordering == [[shown[2]], [shown[0]], [shown[1]], [shown[5]], [shown[4]], [shown[3]]]
    assert ranking.shown_order == shown
    assert 6000 <= ranking.time_spent_ms <= 60000
    claimed.refresh_from_db()
    assert claimed.status == ClaimStatus.SUBMITTED


def test_an_htmx_submission_advances_to_the_next_task_without_a_reload(client, claimed):
    response = client.post(_url(claimed), submit_data(claimed), HTTP_HX_REQUEST="true")
    assert response.status_code == 200
    assert '"path": "/rank/spatial/"' in response["HX-Location"]
    assert '"target": "#task"' in response["HX-Location"]


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_a_submission_takes_at_most_six_queries(client, claimed, monkeypatch):
    import annotation.services.submission as submission_module

    # Enqueueing the consensus job talks to Redis, not the database; keep this run's queue clean.
    monkeypatch.setattr(submission_module, "_schedule_consensus", lambda task_id: None)
    # transaction=True: no test transaction around the request, as in production, so the count holds no
    # test-only savepoints. Session and user lookups are included. Worst case: this is the task's last
    # ranking, so the completion update after commit runs too.
    RankingTask.objects.filter(pk=claimed.task_id).update(required_rankings=1)
    data = submit_data(claimed)
    with CaptureQueriesContext(connection) as queries:
        response = client.post(_url(claimed), data)
    assert response.status_code == 303
    assert len(queries) <= 6, "\n".join(q["sql"] for q in queries.captured_queries)
    assert RankingTask.objects.get(pk=claimed.task_id).status == "complete"


def test_a_double_submit_with_the_same_key_records_one_ranking(client, claimed):
    data = submit_data(claimed)
    first = client.post(_url(claimed), data)
    second = client.post(_url(claimed), data)
    assert first.status_code == second.status_code == 303
    assert Ranking.objects.count() == 1


def test_consensus_is_scheduled_only_after_commit(
    client, claimed, django_capture_on_commit_callbacks, monkeypatch
):
    scheduled = []
    import annotation.services.submission as submission_module

    monkeypatch.setattr(submission_module, "_schedule_consensus", lambda task_id: scheduled.append(task_id))
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        client.post(_url(claimed), submit_data(claimed))
    assert scheduled == [] and len(callbacks) >= 1
    for callback in callbacks:
        callback()
    assert scheduled == [claimed.task_id]


def test_a_committed_ranking_is_acknowledged_when_the_database_fails_right_after_it(
    client, claimed, django_capture_on_commit_callbacks, monkeypatch
):
    """The outage that broke the fault bench: the ranking commits, then the completion update fails."""
    from django.db import OperationalError

    import annotation.services.submission as submission_module

    def database_gone(*, task_id):
        raise OperationalError("server closed the connection unexpectedly")

    scheduled = []
    monkeypatch.setattr(submission_module, "task_complete_if_full", database_gone)
    monkeypatch.setattr(submission_module, "_schedule_consensus", lambda task_id: scheduled.append(task_id))
    RankingTask.objects.filter(pk=claimed.task_id).update(required_rankings=1)
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(_url(claimed), submit_data(claimed))
    assert response.status_code == 303
    assert Ranking.objects.filter(task_id=claimed.task_id).count() == 1
    # The consensus worker still gets the task, and it is what completes it (next test).
    assert scheduled == [claimed.task_id]
    assert RankingTask.objects.get(pk=claimed.task_id).status == "open"


def test_the_consensus_worker_completes_a_full_task_the_web_process_could_not(claimed, annotator):
    from annotation.services.submission import ranking_submit
    from annotation.tasks import recompute_consensus

    RankingTask.objects.filter(pk=claimed.task_id).update(required_rankings=1)
    ranking_submit(
        claim_id=claimed.pk,
        annotator=annotator,
        fields={k: [v] for k, v in submit_data(claimed).items()},
        idempotency_key=uuid.uuid4(),
    )  # inside the test transaction: its after-commit completion never runs
    assert RankingTask.objects.get(pk=claimed.task_id).status == "open"
    recompute_consensus.run(task_id=claimed.task_id)
    assert RankingTask.objects.get(pk=claimed.task_id).status == "complete"


BAD = {
    "wrong image label": (lambda d: d.update({"rank_9": "1"}), 400, "not one of this task"),
    "image ranked twice": (lambda d: d.update({"rank_1": ["1", "2"]}), 400, "was given 2 ranks"),
    "two images share a rank": (lambda d: d.update({"rank_2": d["rank_1"]}), 400, "ties"),
    "missing image": (lambda d: d.pop("rank_4"), 400, "Image 4 has no rank"),
    "rank out of range": (lambda d: d.update({"rank_2": "7"}), 400, "expected 1–6"),
    "foreign task": (lambda d: d.update({"task": "999999"}), 400, "different task"),
    "no idempotency key": (lambda d: d.pop("idempotency_key"), 400, "submission key"),
}


@pytest.mark.parametrize("case", BAD.keys())
def test_a_bad_submission_is_refused_with_a_message_and_writes_nothing(client, claimed, case):
    mutate, status, message = BAD[case]
    data = submit_data(claimed)
    mutate(data)
    before = _counts()
    response = client.post(_url(claimed), data)
    assert response.status_code == status
    assert message in response.content.decode()
    assert _counts() == before
    claimed.refresh_from_db()
    assert claimed.status == ClaimStatus.ACTIVE


def test_a_refused_htmx_submission_shows_the_reason_in_the_task_and_keeps_the_choices(client, claimed):
    data = submit_data(claimed, order=[2, 1, 3, 4, 5, 6])
    data.pop("rank_6")
    response = client.post(_url(claimed), data, HTTP_HX_REQUEST="true")
    assert response.status_code == 400
    html = response.content.decode()
    assert html.lstrip().startswith('<section id="task"') and "Image 6 has no rank" in html
    assert '<option value="1" selected>' in html  # image 2's choice kept


def test_an_expired_lease_is_refused_with_a_message(client, claimed):
    TaskClaim.objects.filter(pk=claimed.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    before = _counts()
    response = client.post(_url(claimed), submit_data(claimed))
    assert response.status_code == 409
    assert "expired" in response.content.decode()
    assert _counts() == before


def test_another_annotators_task_is_refused(client, claimed, make_user):
    client.force_login(make_user("annotator"))
    before = _counts()
    response = client.post(_url(claimed), submit_data(claimed))
    assert response.status_code == 403
    assert "assigned to another annotator" in response.content.decode()
    assert _counts() == before


def test_an_anonymous_submission_is_refused(client, claimed):
    client.logout()
    before = _counts()
    response = client.post(_url(claimed), submit_data(claimed))
    assert response.status_code == 403
    assert "logged out" in response.content.decode()
    assert _counts() == before


def test_an_unknown_claim_is_refused(client, claimed):
    response = client.post("/rank/claims/987654/submit/", submit_data(claimed))
    assert response.status_code == 404


def test_a_second_submission_for_a_submitted_claim_with_a_new_key_is_refused(client, claimed):
    client.post(_url(claimed), submit_data(claimed))
    response = client.post(_url(claimed), submit_data(claimed))
    assert response.status_code == 409 and "already submitted" in response.content.decode()
    assert Ranking.objects.count() == 1


def test_ties_are_accepted_where_the_category_allows_them(client, annotator, task_factory):
    Category.objects.filter(slug="non_spatial").update(allows_ties=True)
    task_factory(category="non_spatial")
    client.force_login(annotator)
    claim = task_claims_ensure(annotator=annotator, category=Category.objects.get(slug="non_spatial")).current
    data = submit_data(claim)
    data.update({"rank_1": "1", "rank_2": "1", "rank_3": "3", "rank_4": "4", "rank_5": "5", "rank_6": "6"})
    assert client.post(_url(claim), data).status_code == 303
    ordering = Ranking.objects.get().ordering
    assert len(ordering) == 5 and sorted(ordering[0]) == sorted(claim.shown_order[:2])


def test_a_retired_task_no_longer_takes_rankings(client, claimed, make_user):
    from annotation.services.review import flag_resolve, task_release

    other = make_user("annotator")
    other_claim = task_claims_ensure(annotator=other, category=claimed.task.prompt.category).current
    assert other_claim.task_id == claimed.task_id
    flag = task_release(claim_id=other_claim.pk, annotator=other, kind="flag", reason="broken image")
    flag_resolve(flag_id=flag.pk, admin=make_user("admin"), resolution="", retire_task=True)
    response = client.post(_url(claimed), submit_data(claimed))
    assert response.status_code == 409 and "withdrew" in response.content.decode()
    assert RankingTask.objects.get(pk=claimed.task_id).status == "retired"
    assert Ranking.objects.count() == 0


def test_the_idempotency_key_must_be_a_uuid(client, claimed):
    response = client.post(_url(claimed), submit_data(claimed, idempotency_key="not-a-uuid"))
    assert response.status_code == 400
    assert uuid.UUID  # the key format is the uuid module's


def test_a_refusal_to_htmx_is_only_the_task_section(client, claimed, make_user):
    client.force_login(make_user("annotator"))
    response = client.post(_url(claimed), submit_data(claimed), HTTP_HX_REQUEST="true")
    html = response.content.decode()
    assert (
        response.status_code == 403 and html.lstrip().startswith('<section id="task"') and "<html" not in html
    )
