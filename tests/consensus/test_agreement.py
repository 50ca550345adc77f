"""Agreement figures through the selectors, checked against scipy and krippendorff on the same data;
annotator weights derived from them; the admins' gold-agreement page."""

from __future__ import annotations

import itertools

import krippendorff
import numpy as np
import pytest
from scipy.stats import kendalltau

from annotation.models import AnnotatorProfile
from annotation.selectors_research import agreement_by_category, annotator_agreement, annotator_taus
from annotation.services.consensus import consensus_recompute
from annotation.services.gold import annotator_weights_derive
from rankmath.aggregation import weighted_borda
from tests.consensus import factories as f

pytestmark = pytest.mark.django_db

# Three spatial tasks of four images ranked by three experts (positions of images 0..3, best first).
ORDERS = [
    [[0, 1, 2, 3], [1, 0, 2, 3], [0, 1, 3, 2]],
    [[3, 2, 1, 0], [3, 1, 2, 0], [2, 3, 1, 0]],
    [[0, 2, 1, 3], [2, 0, 3, 1], [0, 3, 2, 1]],
]


@pytest.fixture
def spatial_tasks(make_user):
    experts = [make_user("annotator") for _ in range(3)]
    tasks = []
    for k, orders in enumerate(ORDERS):
        t, ids = f.task(f.prompt(f"spatial prompt {k}"), ["sd15", "sdxl", "sd3", "flux"])
        for expert, order in zip(experts, orders, strict=True):
            f.rank(t, expert, [ids[i] for i in order])
        consensus_recompute(task_id=t.pk)
        tasks.append((t, ids))
    return experts, tasks


def _rank_vector(order):
    """Rank (1 = best) of images 0..n-1 in an order listing them best first."""
    return [order.index(i) + 1 for i in range(len(order))]


def test_category_agreement_matches_scipy_and_krippendorff(spatial_tasks):
    row = next(r for r in agreement_by_category() if r["category"] == "spatial")
    # Mean pairwise tau-b: per task the mean over expert pairs, then the mean over tasks.
    per_task = [
        np.mean(
            [kendalltau(_rank_vector(a), _rank_vector(b)).statistic for a, b in itertools.combinations(o, 2)]
        )
        for o in ORDERS
    ]
    assert row["mean_pairwise_tau"] == pytest.approx(np.mean(per_task))
    # Ordinal alpha: coders = experts, units = (task, image), values = ranks.
    data = np.array(
        [[r for orders in ORDERS for r in _rank_vector(orders[e])] for e in range(3)], dtype=float
    )
    assert row["krippendorff_alpha"] == pytest.approx(
        krippendorff.alpha(reliability_data=data, level_of_measurement="ordinal")
    )
    # Kendall's W per task (no ties): 12 S / (k^2 (n^3 - n)), averaged over the tasks.
    ws = []
    for orders in ORDERS:
        sums = np.array([_rank_vector(o) for o in orders]).sum(axis=0)
        ws.append(12 * ((sums - sums.mean()) ** 2).sum() / (9 * 60))
    assert row["kendall_w"] == pytest.approx(np.mean(ws))
    assert (row["tasks_with_consensus"], row["rankings"], row["pairs"]) == (3, 9, 18)


def test_each_experts_leave_one_out_tau_is_against_the_others_consensus(spatial_tasks):
    experts, tasks = spatial_tasks
    taus = annotator_taus()
    for e, expert in enumerate(experts):
        expected = []
        for orders in ORDERS:
            others = [[[i] for i in o] for j, o in enumerate(orders) if j != e]
            consensus = [g[0] for g in weighted_borda(others).ordering]
            expected.append(kendalltau(_rank_vector(orders[e]), _rank_vector(consensus)).statistic)
        assert taus[expert.pk].loo == pytest.approx(expected)
        assert taus[expert.pk].gold == []


def test_gold_tau_is_against_the_reference_on_the_items_it_ranks(make_user):
    good, bad = make_user("annotator"), make_user("annotator")
    for k in range(3):
        t, ids = f.task(f.prompt(f"gold {k}"), ["sd15", "sdxl", "sd3", "flux"], required=2)
        # The reference orders only three of the four images (the fourth is uncertain).
        t.is_gold, t.gold_ordering = True, [[ids[0]], [ids[1]], [ids[2]]]
        t.save()
        f.rank(t, good, [ids[0], ids[3], ids[1], ids[2]])
        f.rank(t, bad, [ids[2], ids[1], ids[3], ids[0]])
    taus = annotator_taus()
    assert taus[good.pk].gold == pytest.approx([1.0, 1.0, 1.0])
    assert taus[bad.pk].gold == pytest.approx([-1.0, -1.0, -1.0])
    rows = {r["username"]: r for r in annotator_agreement()}
    assert rows[good.username]["gold_tasks"] == 3 and rows[good.username]["gold_tau"] == pytest.approx(1.0)


def test_deriving_weights_writes_profiles_and_recomputes_their_tasks(
    make_user, django_capture_on_commit_callbacks
):
    good, bad, newcomer = make_user("annotator"), make_user("annotator"), make_user("annotator")
    for k in range(3):
        t, ids = f.task(f.prompt(f"gold {k}"), ["sd15", "sdxl", "sd3"], required=2)
        t.is_gold, t.gold_ordering = True, [[i] for i in ids]
        t.save()
        f.rank(t, good, ids)
        f.rank(t, bad, list(reversed(ids)))
        if k == 0:
            f.rank(t, newcomer, ids)
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        weights = annotator_weights_derive()
    # Three gold taus: 1.0 for good (ceiling 1.0), -1.0 for bad (clipped to the floor 0.1); the newcomer
    # has one gold task and one shared task, neither 3 gold nor 5 shared, so gets the default 0.5.
    assert weights == {good.pk: 1.0, bad.pk: 0.1, newcomer.pk: 0.5}
    profile_weight = dict(AnnotatorProfile.objects.values_list("user_id", "weight"))
    assert profile_weight[bad.pk] == pytest.approx(0.1) and profile_weight[newcomer.pk] == pytest.approx(0.5)
    # bad and newcomer changed (good stayed at 1.0): the three tasks they ranked are recomputed.
    assert len(callbacks) == 3


@pytest.mark.parametrize(("role", "status"), [("admin", 200), ("researcher", 403), ("annotator", 403)])
def test_gold_agreement_page_is_for_admins_only(client, make_user, role, status):
    client.force_login(make_user(role))
    assert client.get("/research/gold/").status_code == status
    assert client.post("/research/gold/weights/").status_code in ((302,) if status == 200 else (403,))
    assert client.post("/research/gold/recompute/").status_code in ((302,) if status == 200 else (403,))


def test_recompute_all_schedules_every_ranked_task(make_user, django_capture_on_commit_callbacks):
    from annotation.services.consensus import consensus_schedule_all

    user = make_user("annotator")
    for k in range(3):
        t, ids = f.task(f.prompt(f"imported {k}"), ["sd15", "sdxl"], required=1)
        f.rank(t, user, ids)
    f.task(f.prompt("never ranked"), ["sd15", "sdxl"], required=1)
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        assert consensus_schedule_all() == 3
    assert len(callbacks) == 3


def test_gold_agreement_page_lists_each_annotators_figures(admin_client, spatial_tasks):
    experts, _ = spatial_tasks
    page = admin_client.get("/research/gold/").content.decode()
    for expert in experts:
        assert f'data-user="{expert.username}"' in page
