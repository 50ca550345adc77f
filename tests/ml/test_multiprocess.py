"""Multi-process training: 2 processes (``accelerate launch``, gloo on CPU) compute what 1 process does.

Reward-model training, ReFL and Diffusion-DPO run as ``python -m training.ml.launch`` on one process and
under ``accelerate launch --num_processes 2`` on the same specs (the same combined batch). Each process
takes its share of every batch, the random draws belong to the global sample and step, and DDP averages
the gradients, so the runs differ only by float32 summation order (shares summed apart, then averaged by
gloo). Tolerances, and why:

- per-step losses and Adam's moment estimates (the optimiser state): relative 1e-5, absolute 1e-6
  (DPO's losses after the first step: relative 1e-4, as its β = 500 magnifies the weights' difference);
- weights: the whole state's relative L2 difference ≤ 1e-4. Not per element: Adam divides each
  coordinate's step by that coordinate's own RMS gradient, so a coordinate whose gradient is at rounding
  level moves by about ±lr whichever way rounding tipped it (measured: 30 of 253k ReFL weights beyond
  1e-5, relative L2 difference 1.5e-6; a run that trained on the wrong samples differs by ~1e-2).
Nothing in these models draws statistics across samples (no BatchNorm), so nothing else needs a bound.
"""

from __future__ import annotations

import dataclasses
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.ml.test_refl_loop import tiny_config
from training.ml.algorithm1.steps import world_pretrain_data
from training.ml.launch import launch, save_pretrain
from training.ml.loop import loop_prompts, rank_gallery
from training.ml.reward.checkpoint import save_reward_model
from training.ml.reward.config import RewardModelConfig
from training.ml.reward.data import write_pairs_jsonl
from training.ml.reward.model import build_reward_model

pytestmark = [pytest.mark.multiprocess, pytest.mark.slow]

RTOL, ATOL = 1e-5, 1e-6
WEIGHTS_RELATIVE_L2 = 1e-4
STEPS = 3


def _round(base):
    config = tiny_config(base.parent, base).round
    return dataclasses.replace(
        config,
        # Combined batches of 4 groups / 4 samples / 4 pairs: shares of 2 on each of 2 processes.
        reward=dataclasses.replace(
            config.reward, batch_prompts=4, epochs=3, learning_rate=2e-3, validation_share=0.25
        ),
        feedback=dataclasses.replace(
            config.feedback, steps=STEPS, batch_size=4, guard_every=2, pretrain_images=8, learning_rate=1e-3
        ),
        dpo=dataclasses.replace(config.dpo, beta=500.0),
    )


def _specs(inputs: dict, out: Path) -> list[dict]:
    common = {"round_config": inputs["round"], "iteration": 0}
    world = {**common, "family": "world", "base_path": inputs["base"], "chain": []}
    return [
        {
            **common,
            "stage": "reward",
            "category": "spatial",
            "pairs": inputs["pairs"],
            "image_root": inputs["root"],
            "output_dir": str(out / "reward"),
        },
        {
            **world,
            "stage": "refl",
            "rewards": {"spatial": inputs["reward"]},
            "prompts": inputs["prompts"],
            "validation_prompts": inputs["prompts"][:2],
            "output_dir": str(out / "refl"),
            "pretrain": inputs["pretrain"],
            "heldout": "world_oracle",
            "categories": {prompt: "spatial" for prompt in inputs["prompts"]},
        },
        {
            **world,
            "stage": "dpo",
            "pairs": inputs["dpo_train"],
            "heldout_pairs": inputs["dpo_heldout"],
            "image_root": inputs["root"],
            "output_dir": str(out / "dpo"),
        },
    ]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_base):
    """The three steps on 1 process and on 2 (run side by side), with identical inputs."""
    tmp = tmp_path_factory.mktemp("mp")
    loop = tiny_config(tmp / "loop", tiny_base)
    prompts = loop_prompts(loop)[0][:8]
    data = rank_gallery(loop, prompts, tmp / "gallery")
    records = data.records()
    config = _round(Path(tiny_base))
    texts = sorted({r.prompt for r in records})
    inputs = {
        "round": config.to_dict(),
        "base": str(tiny_base),
        "root": str(data.root),
        "pairs": str(write_pairs_jsonl(records, tmp / "pairs.jsonl")),
        "reward": str(
            save_reward_model(build_reward_model(RewardModelConfig.tiny("spatial"), seed=0), tmp / "rm")
        ),
        "prompts": texts,
        "pretrain": save_pretrain(world_pretrain_data(8, 0), tmp / "pretrain.safetensors"),
        "dpo_train": str(
            write_pairs_jsonl([r for r in records if r.prompt != texts[0]], tmp / "train.jsonl")
        ),
        "dpo_heldout": str(
            write_pairs_jsonl([r for r in records if r.prompt == texts[0]], tmp / "held.jsonl")
        ),
    }
    env = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    with ThreadPoolExecutor(2) as pool:
        futures = {
            n: pool.submit(launch, _specs(inputs, tmp / f"n{n}"), tmp / f"launch{n}", n, env=env)
            for n in (1, 2)
        }
        results = {n: f.result() for n, f in futures.items()}
    return {n: dict(zip(("reward", "refl", "dpo"), results[n], strict=True)) for n in (1, 2)}


def _losses(result: dict) -> list[float]:
    return [e["metrics"]["loss"] for e in result["progress"] if "loss" in e["metrics"]]


def _files(directory: Path) -> list[str]:
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*"))


def _relative_l2(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    difference = sum(float(((a[k].double() - b[k].double()) ** 2).sum()) for k in a)
    size = sum(float((a[k].double() ** 2).sum()) for k in a)
    return (difference / size) ** 0.5


def _assert_same_run(one: dict, two: dict, loss_rtol: float = RTOL) -> None:
    assert (one["num_processes"], two["num_processes"]) == (1, 2)
    # Progress is reported once per step (by the main process), and the trajectories agree.
    steps = [e["step"] for e in two["progress"] if "loss" in e["metrics"]]
    assert steps == sorted(set(steps)) and len(steps) >= STEPS
    torch.testing.assert_close(
        torch.tensor(_losses(two)), torch.tensor(_losses(one)), rtol=loss_rtol, atol=loss_rtol / 10
    )
    # One checkpoint, written once: the same files as the 1-process run, no staging leftovers.
    path_one, path_two = Path(one["checkpoint"]["path"]), Path(two["checkpoint"]["path"])
    output_one, output_two = path_one.parent, path_two.parent
    if path_one.name not in ("last", "best"):  # a reward model's folder is the output folder itself
        output_one, output_two = path_one, path_two
    assert _files(output_two) == _files(output_one)
    assert not [f for f in _files(output_two) if Path(f).name.startswith(".")]
    for weights in sorted(output_one.rglob("*.safetensors")):
        a, b = load_file(str(weights)), load_file(str(output_two / weights.relative_to(output_one)))
        assert a.keys() == b.keys()
        if weights.name == "optimizer.safetensors":
            for name in a:
                torch.testing.assert_close(b[name], a[name], rtol=RTOL, atol=ATOL, msg=f"{weights}: {name}")
        else:
            assert _relative_l2(a, b) <= WEIGHTS_RELATIVE_L2, weights


def test_reward_training_on_two_processes_follows_the_one_process_trajectory(runs):
    one, two = runs[1]["reward"], runs[2]["reward"]
    _assert_same_run(one, two)
    m1, m2 = one["checkpoint"]["metrics"], two["checkpoint"]["metrics"]
    assert m2["steps"] == m1["steps"] and m2["train_image_encoder_rows"] == m1["train_image_encoder_rows"]
    assert m2["history"] == m1["history"]


def test_refl_on_two_processes_follows_the_one_process_trajectory_and_guard(runs):
    one, two = runs[1]["refl"], runs[2]["refl"]
    _assert_same_run(one, two)
    assert [e["step"] for e in two["curve"]] == [e["step"] for e in one["curve"]]
    history = [two["checkpoint"]["metrics"]["guard_history"], one["checkpoint"]["metrics"]["guard_history"]]
    assert [e["step"] for e in history[0]] == [e["step"] for e in history[1]] and history[0]
    for key in ("heldout", "reward"):
        torch.testing.assert_close(
            torch.tensor([e[key] for e in history[0]]),
            torch.tensor([e[key] for e in history[1]]),
            rtol=RTOL,
            atol=ATOL,
        )


def test_diffusion_dpo_on_two_processes_follows_the_one_process_trajectory(runs):
    one, two = runs[1]["dpo"], runs[2]["dpo"]
    # β = 500 multiplies the denoising-error differences that Adam's rounding-level coordinates leave
    # after a step (see the module docstring): measured 2.2e-5 relative at step 3, so 1e-4 here.
    _assert_same_run(one, two, loss_rtol=1e-4)
    held = [
        one["checkpoint"]["metrics"]["heldout_implicit_acc"],
        two["checkpoint"]["metrics"]["heldout_implicit_acc"],
    ]
    assert held[0] is not None and held[1] == pytest.approx(held[0])
    meta = json.loads((Path(two["checkpoint"]["path"]) / "checkpoint.json").read_text())
    assert meta["metadata"]["step"] == STEPS


def test_a_batch_that_does_not_split_over_the_processes_is_refused():
    from training.ml.distributed import shard

    assert shard(6, 1, 2) == slice(3, 6)
    with pytest.raises(ValueError, match="does not split evenly over 2 processes"):
        shard(5, 0, 2)
