"""consensus_recompute: aggregation methods through the service, weights, ties, pairs, reopening."""

from __future__ import annotations

import itertools
import math
import threading

import choix
import numpy as np
import pytest
from django.db import connection

from annotation.models import ConsensusRanking, PairSource, PreferencePair, RankingTask, TaskStatus
from annotation.services.consensus import consensus_recompute
from tests.consensus import factories as f

pytestmark = pytest.mark.django_db


def _ids(ordering):
    return [group[0] for group in ordering]


def test_weighted_borda_by_hand_uses_each_annotators_profile_weight(make_user):
    t, (a, b, c) = f.task(f.prompt("a red cube left of a ball"), ["sd15", "sdxl", "sd3"], required=2)
    light, heavy = make_user("annotator", weight=1.0), make_user("annotator", weight=3.0)
    f.rank(t, light, [a, b, c])
    f.rank(t, heavy, [c, b, a])
    consensus = consensus_recompute(task_id=t.pk, method="borda")
    # Points (items below): light gives a=2, b=1, c=0; heavy gives c=2, b=1, a=0. Weighted mean over 4:
    # a = (1*2 + 3*0)/4 = 0.5, b = (1 + 3)/4 = 1.0, c = (0 + 3*2)/4 = 1.5.
    assert consensus.method == "borda"
    assert _ids(consensus.ordering) == [c, b, a]
    assert consensus.scores == pytest.approx({str(a): 0.5, str(b): 1.0, str(c): 1.5})
    assert consensus.n_rankings == 2


def test_kemeny_and_borda_differ_and_each_matches_the_hand_computation(make_user, settings):
    settings.CONSENSUS_MAX_RANKINGS = 3  # keep the task closed; reopening is tested separately
    t, (a, b, c, d) = f.task(f.prompt("a cat above a dog"), ["sd15", "sdxl", "sd3", "flux"])
    users = [make_user("annotator") for _ in range(3)]
    f.rank(t, users[0], [a, b, c, d])
    f.rank(t, users[1], [a, b, c, d])
    f.rank(t, users[2], [d, b, a, c])
    borda = consensus_recompute(task_id=t.pk, method="borda")
    # Borda points: a = 3+3+1, b = 2+2+2, c = 1+1+0, d = 0+0+3 -> a (7) > b (6) > d (3) > c (2).
    assert _ids(borda.ordering) == [a, b, d, c]
    assert borda.scores[str(d)] == pytest.approx(1.0) and borda.scores[str(c)] == pytest.approx(2 / 3)
    kemeny = consensus_recompute(task_id=t.pk, method="kemeny")
    # Kemeny distance of a>b>c>d: the third ranking disagrees on (a,b), (a,d), (b,d), (c,d) -> 4.
    # Borda's a>b>d>c: 1 + 1 (c,d in the first two) + 3 ((a,b), (a,d), (b,d) in the third) = 5.
    # Every other order costs at least 5, so Kemeny keeps c above d where Borda does not.
    assert kemeny.method == "kemeny"
    assert _ids(kemeny.ordering) == [a, b, c, d]
    assert ConsensusRanking.objects.filter(task=t).count() == 1


def test_plackett_luce_matches_choix_mm_rankings(make_user):
    t, ids = f.task(f.prompt("a man holding an umbrella", "non_spatial"), ["sd15", "sdxl", "sd3", "flux"])
    orders = [[0, 1, 2, 3], [1, 0, 2, 3], [0, 2, 1, 3], [3, 0, 1, 2]]
    for order in orders:
        f.rank(t, make_user("annotator"), [ids[i] for i in order])
    consensus = consensus_recompute(task_id=t.pk, method="plackett_luce")
    expected = choix.mm_rankings(4, orders, alpha=0.1)
    expected = expected - expected.mean()
    got = np.array([consensus.scores[str(i)] for i in ids])
    np.testing.assert_allclose(got, expected, atol=1e-6)
    assert _ids(consensus.ordering) == [ids[i] for i in np.argsort(-expected, kind="stable")]


def test_kemeny_setting_falls_back_to_borda_above_eight_images(make_user, settings):
    settings.CONSENSUS_METHOD = "kemeny"
    gens = [f"g{i}" for i in range(9)]
    t, ids = f.task(f.prompt("nine images"), gens, required=1)
    f.rank(t, make_user("annotator"), ids)
    consensus = consensus_recompute(task_id=t.pk)
    assert consensus.method == "borda" and _ids(consensus.ordering) == ids


def test_six_images_give_fifteen_pairs_with_prompt_category_iteration_and_weights(make_user):
    p = f.prompt("a green bench and a red car", "attribute_binding", sub="color")
    t, ids = f.task(p, iteration=2)
    for _ in range(2):
        f.rank(t, make_user("annotator"), ids)
    f.rank(t, make_user("annotator"), ids[:4] + [ids[5], ids[4]])
    consensus = consensus_recompute(task_id=t.pk)
    pairs = list(PreferencePair.objects.filter(consensus=consensus))
    assert len(pairs) == math.comb(6, 2) == 15
    assert {(x.winner_id, x.loser_id) for x in pairs} >= {(ids[0], ids[5]), (ids[3], ids[4])}
    assert all(x.prompt_id == p.pk and x.category_id == p.category_id and x.iteration == 2 for x in pairs)
    assert all(x.source == PairSource.HUMAN and x.label == 1.0 for x in pairs)
    # Weight = share of experts agreeing with the pair: all three on (0, 5), two of three on (4, 5).
    weight = {(x.winner_id, x.loser_id): x.weight for x in pairs}
    assert weight[(ids[0], ids[5])] == 1.0
    assert weight[(ids[4], ids[5])] == pytest.approx(2 / 3, abs=1e-6)


def test_recomputing_replaces_the_pairs_and_never_duplicates_them(make_user):
    t, ids = f.task(f.prompt("a dog on the left of a cat"), required=1)
    user = make_user("annotator")
    ranking = f.rank(t, user, ids)
    first = consensus_recompute(task_id=t.pk)
    old_ids = set(PreferencePair.objects.values_list("id", flat=True))
    consensus_recompute(task_id=t.pk)
    assert PreferencePair.objects.count() == 15
    assert not old_ids & set(PreferencePair.objects.values_list("id", flat=True))
    ranking.ordering = [[i] for i in reversed(ids)]
    ranking.save()
    second = consensus_recompute(task_id=t.pk)
    assert second.pk == first.pk
    assert PreferencePair.objects.count() == 15
    assert PreferencePair.objects.filter(winner_id=ids[5], loser_id=ids[0]).exists()
    assert not PreferencePair.objects.filter(winner_id=ids[0], loser_id=ids[5]).exists()


def test_a_task_of_model_rankings_only_gives_model_pairs(make_user):
    t, ids = f.task(f.prompt("inserted by the reward model"), ["sd15", "sdxl", "sd3"], required=1)
    f.rank(t, make_user("annotator"), ids, source="reward_model")
    consensus_recompute(task_id=t.pk)
    assert set(PreferencePair.objects.values_list("source", flat=True)) == {PairSource.MODEL}


@pytest.mark.parametrize(("ties", "expected_pairs"), [("half", 15), ("skip", 0)])
def test_opposite_experts_tie_everything_broken_by_image_id_and_ties_follow_the_option(
    make_user, settings, ties, expected_pairs
):
    settings.PAIR_TIES = ties
    t, ids = f.task(f.prompt("two experts who disagree on everything"), required=3)
    f.rank(t, make_user("annotator"), ids)
    f.rank(t, make_user("annotator"), list(reversed(ids)))
    consensus = consensus_recompute(task_id=t.pk)
    # Equal Borda scores and weighted pairwise draws everywhere: the last tie-break, the image id, decides.
    assert _ids(consensus.ordering) == sorted(ids)
    pairs = PreferencePair.objects.filter(consensus=consensus)
    assert pairs.count() == expected_pairs
    assert set(pairs.values_list("label", flat=True)) <= {0.5}


def test_a_single_expert_tie_becomes_a_half_label_pair_and_the_rest_stay_strict(make_user, settings):
    settings.PAIR_TIES = "half"
    t, (a, b, c) = f.task(f.prompt("one tie"), ["sd15", "sdxl", "sd3"], required=1)
    f.rank(t, make_user("annotator"), [[a], [b, c]])
    consensus_recompute(task_id=t.pk)
    labels = {(p.winner_id, p.loser_id): p.label for p in PreferencePair.objects.all()}
    assert labels == {(a, b): 1.0, (a, c): 1.0, (b, c): 0.5}


def test_rankings_that_miss_an_image_are_left_out_and_no_rankings_remove_the_consensus(make_user):
    t, ids = f.task(f.prompt("partial"), ["sd15", "sdxl", "sd3"], required=1)
    f.rank(t, make_user("annotator"), ids[:2])
    assert consensus_recompute(task_id=t.pk) is None
    good = f.rank(t, make_user("annotator"), ids)
    assert consensus_recompute(task_id=t.pk).n_rankings == 1
    good.delete()
    assert consensus_recompute(task_id=t.pk) is None
    assert not ConsensusRanking.objects.exists() and not PreferencePair.objects.exists()


def test_kendalls_w_is_stored_and_equals_the_formula_on_scipy_ranks(make_user):
    from scipy.stats import rankdata

    t, ids = f.task(f.prompt("w"), ["sd15", "sdxl", "sd3", "flux", "rpg"])
    orders = [[0, 1, 2, 3, 4], [1, 0, 2, 4, 3], [0, 2, 1, 3, 4]]
    for order in orders:
        f.rank(t, make_user("annotator"), [ids[i] for i in order])
    consensus = consensus_recompute(task_id=t.pk)
    # Rank of each image in each ranking (scipy), then W = 12 S / (k^2 (n^3 - n)).
    ranks = np.array([rankdata([order.index(i) for i in range(5)]) for order in orders])
    sums = ranks.sum(axis=0)
    s = ((sums - sums.mean()) ** 2).sum()
    assert consensus.kendall_w == pytest.approx(12 * s / (3**2 * (5**3 - 5)))


def test_low_agreement_reopens_the_task_for_one_more_ranking_up_to_the_cap(make_user, settings):
    settings.CONSENSUS_AGREEMENT_THRESHOLD = 0.5
    settings.CONSENSUS_MAX_RANKINGS = 4
    t, ids = f.task(f.prompt("ambiguous"), ["sd15", "sdxl", "sd3", "flux"], required=3)
    RankingTask.objects.filter(pk=t.pk).update(status=TaskStatus.COMPLETE)
    orders = [[0, 1, 2, 3], [3, 2, 1, 0], [1, 3, 0, 2]]
    for order in orders:
        f.rank(t, make_user("annotator"), [ids[i] for i in order])
    consensus = consensus_recompute(task_id=t.pk)
    assert consensus.kendall_w < 0.5
    t.refresh_from_db()
    assert (t.required_rankings, t.status) == (4, TaskStatus.OPEN)
    # The fourth ranking reaches the cap: no fifth is requested however low W stays.
    f.rank(t, make_user("annotator"), [ids[i] for i in [2, 0, 3, 1]])
    RankingTask.objects.filter(pk=t.pk).update(status=TaskStatus.COMPLETE)
    consensus_recompute(task_id=t.pk)
    t.refresh_from_db()
    assert (t.required_rankings, t.status) == (4, TaskStatus.COMPLETE)


def test_agreeing_experts_leave_the_task_complete(make_user):
    t, ids = f.task(f.prompt("clear"), ["sd15", "sdxl", "sd3"], required=2)
    RankingTask.objects.filter(pk=t.pk).update(status=TaskStatus.COMPLETE)
    for _ in range(2):
        f.rank(t, make_user("annotator"), ids)
    assert consensus_recompute(task_id=t.pk).kendall_w == pytest.approx(1.0)
    t.refresh_from_db()
    assert (t.required_rankings, t.status) == (2, TaskStatus.COMPLETE)


@pytest.mark.django_db(transaction=True)
def test_a_recompute_waits_while_another_transaction_holds_the_task_row(make_user):
    from django.db import transaction

    t, ids = f.task(f.prompt("locked"), required=1)
    f.rank(t, make_user("annotator"), ids)
    locked, release, done = threading.Event(), threading.Event(), threading.Event()

    def holder() -> None:
        try:
            with transaction.atomic():
                # What a concurrent writer of the task (e.g. the ranking service completing it) holds: a
                # row lock that blocks FOR UPDATE but not the foreign-key checks of inserting pairs.
                RankingTask.objects.select_for_update(no_key=True).get(pk=t.pk)
                locked.set()
                release.wait(10)
        finally:
            connection.close()

    def recompute() -> None:
        try:
            consensus_recompute(task_id=t.pk)
            done.set()
        finally:
            connection.close()

    threads = [threading.Thread(target=holder), threading.Thread(target=recompute)]
    threads[0].start()
    assert locked.wait(10)
    threads[1].start()
    assert not done.wait(0.8), "the recompute did not wait for the task row lock"
    release.set()
    assert done.wait(10)
    for thread in threads:
        thread.join()
    assert PreferencePair.objects.count() == 15


@pytest.mark.django_db(transaction=True)
def test_concurrent_recomputes_of_one_task_leave_one_consensus_and_fifteen_pairs(make_user):
    t, ids = f.task(f.prompt("raced"), required=1)
    f.rank(t, make_user("annotator"), ids)
    errors: list[BaseException] = []
    for _round in range(5):
        barrier = threading.Barrier(4)

        def worker(barrier: threading.Barrier = barrier) -> None:
            try:
                barrier.wait()
                consensus_recompute(task_id=t.pk)
            except BaseException as exc:  # collected and asserted below
                errors.append(exc)
            finally:
                connection.close()

        threads = [threading.Thread(target=worker) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert errors == []
    assert ConsensusRanking.objects.filter(task=t).count() == 1
    pairs = list(PreferencePair.objects.values_list("winner_id", "loser_id"))
    assert len(pairs) == 15 == len(set(pairs))
    assert set(pairs) == set(itertools.combinations(ids, 2))
