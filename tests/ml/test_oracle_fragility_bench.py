"""bench/oracle_fragility.py: its pair bookkeeping by hand, and the whole bench at toy size."""

from __future__ import annotations

import json
import sys
from types import SimpleNamespace

import numpy as np
import pytest

from tests.conftest import ROOT
from tests.ml.bench_run import run_bench

sys.path.insert(0, str(ROOT / "bench"))


def _reading(score: float, n_extra: int = 0, **facts: bool) -> dict:
    return {"original": score, "facts": {"present:circle": True, **facts}, "n_extra": n_extra}


def test_two_readings_differ_in_the_kinds_of_fact_that_changed():
    from oracle_fragility import difference_kinds

    same = _reading(1.0, relation=True)
    assert difference_kinds(same, _reading(1.0, relation=True)) == set()
    assert difference_kinds(same, _reading(0.5, relation=False)) == {"relation"}
    assert difference_kinds(
        _reading(1.0, **{"color:circle": True}), _reading(0.5, **{"color:circle": False})
    ) == {"attribute"}
    both = difference_kinds(
        same, {"original": 0.2, "facts": {"present:circle": False, "relation": False}, "n_extra": 1}
    )
    assert both == {"present", "relation", "extra"}


def test_a_pair_is_fragile_when_a_perturbation_reverses_or_ties_the_oracles_order():
    from oracle_fragility import PERTURBATIONS, fragility

    def image(score: float, **changed: float) -> dict:
        return {
            "original": score,
            **{n: changed.get(n, score) for n in PERTURBATIONS},
            "facts": {},
            "n_extra": 0,
        }

    oracle = {0: image(1.0), 1: image(0.5, noise_2=1.0), 2: image(0.5), 3: image(0.0)}

    def pair(winner: int, loser: int, prompt: int) -> SimpleNamespace:
        return SimpleNamespace(winner_id=winner, loser_id=loser, label=1.0, prompt_id=prompt)

    records = [pair(0, 1, 0), pair(2, 3, 1), SimpleNamespace(winner_id=0, loser_id=2, label=0.5, prompt_id=0)]
    itm = {0: 2.0, 1: 1.0, 2: 0.0, 3: 1.0}
    row = fragility(records, oracle, itm, seed=0)
    assert row["pairs"] == 2  # the expert tie has no order
    assert row["flipped"]["noise_2"] == 0.5 and row["flipped"]["shift_1px"] == 0.0
    assert row["changed"]["noise_2"] == 0.25
    assert row["robust_share"] == 0.5
    # The ITM scores order the fragile pair (0 over 1) right and the robust one (2 over 3) wrong.
    assert (
        row["itm_accuracy"]["fragile"]["accuracy"] == 1.0 and row["itm_accuracy"]["robust"]["accuracy"] == 0.0
    )


def test_the_perturbations_leave_a_plain_render_readable():
    import torch
    from oracle_fragility import PERTURBATIONS, perturbed_scores

    from training.ml.world.gallery import GALLERY_GENERATORS

    prompt = "a red circle to the left of a blue square"
    image = torch.from_numpy(np.asarray(GALLERY_GENERATORS["flux"].generate_array(prompt, 0))).permute(
        2, 0, 1
    )
    scores = perturbed_scores(prompt, image.float(), seed=0)
    assert set(PERTURBATIONS) <= set(scores)
    assert all(scores[n] == scores["original"] for n in PERTURBATIONS)


@pytest.mark.slow
def test_the_fragility_bench_reads_own_and_gallery_groups_on_the_same_prompts(tmp_path):
    out = tmp_path / "fragility.json"
    args = "--categories spatial --pool-prompts 2 --eval-prompts 3 --group-size 3 --sampling-steps 4 --generators sd15"
    run_bench("oracle_fragility.py", "--work-dir", str(tmp_path / "work"), "--out", str(out), *args.split())
    (row,) = json.loads(out.read_text())["categories"]["spatial"]
    assert set(row["sources"]) == {"p_0", "sd15"}
    for source in row["sources"].values():
        assert source["images"] == 9 and 0 <= source["robust_share"] <= 1
        assert sum(v["pairs"] for v in source["itm_by_difference"].values()) == source["pairs"]
