"""One Algorithm 1: an app round on the real worker runs exactly what the loop (and its benchmark) runs.

- Parity: a round's first iteration (Celery stages, real worker, Redis, PostgreSQL) and the loop's
  ``run_iteration`` given the same D_0, prompt pools and round configuration produce byte-identical
  reward-model and ReFL weights, identical metrics, and identical new samples.
- Two iterations for LoRA and for full fine-tuning: the second iteration trains on top of the first
  (LoRA merged), and its samples are what base + both checkpoints draw.
- The pretraining-loss weight an admin sets in the form reaches the training loss.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from django.conf import settings

from annotation.models import RankingTask
from gallery.models import Category, Image
from tests.training.test_closed_loop import _start_round, _wait_status, ranked_world  # noqa: F401
from training.artifacts import artifact_fetch_dir
from training.ml.algorithm1.config import RoundConfig
from training.models import DiffusionCheckpoint, RewardModelCheckpoint, RoundStatus, TrainingRound
from training.services import round_check_awaiting
from training.world import world_rankings_simulate


def celery_round(test):
    """A round on the real worker: committed transactions the worker process can see."""
    for mark in (
        pytest.mark.celery,
        pytest.mark.slow,
        pytest.mark.django_db(transaction=True, serialized_rollback=True),
    ):
        test = mark(test)
    return test


@pytest.fixture(scope="module")
def worker_threads() -> int:
    """torch's thread count in a fresh process (the worker's): CPU reductions depend on it."""
    out = subprocess.run(
        [sys.executable, "-c", "import torch; print(torch.get_num_threads())"],
        capture_output=True,
        text=True,
        check=True,
        env=os.environ,
    )
    return int(out.stdout)


@pytest.fixture
def same_threads_as_the_worker(worker_threads):
    before = torch.get_num_threads()
    torch.set_num_threads(worker_threads)
    yield
    torch.set_num_threads(before)


def _weights_digest(directory: Path) -> dict[str, str]:
    files = sorted(Path(directory).glob("*.safetensors"))
    assert files, f"no weights in {directory}"
    return {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in files}


SELECTION_CONTEXT_KEYS = ("rankings_spent", "selection_policy", "selection_random_share")


def _without_timings(value):
    if isinstance(value, dict):
        return {k: _without_timings(v) for k, v in value.items() if "seconds" not in k}
    if isinstance(value, list):
        return [_without_timings(v) for v in value]
    return value


def _jsonable(value):
    return json.loads(json.dumps(value, default=lambda v: v.item() if hasattr(v, "item") else str(v)))


def _redraw(config: RoundConfig, policy, groups, iteration: int) -> list[str]:
    """sha256 of the PNGs the sampling stage would store for ``groups`` (prompt id, text) from ``policy``."""
    from training.ml.algorithm1.steps import sample_groups
    from training.stages import _png_bytes

    return [
        hashlib.sha256(_png_bytes(image)).hexdigest()
        for _, batch in sample_groups(config, policy, groups, config.push_back.samples_per_prompt, iteration)
        for group in batch
        for image in group
    ]


@celery_round
@pytest.mark.parametrize(
    ("lora", "objective"),
    [("on", "refl"), ("", "refl"), ("on", "dpo"), ("", "raft")],
    ids=["lora", "full", "dpo-lora", "raft-full"],
)
def test_a_rounds_first_iteration_on_the_worker_equals_the_loops_iteration(
    celery_worker_process,
    client,
    make_user,
    wait_for,
    ranked_world,  # noqa: F811
    same_threads_as_the_worker,
    tmp_path,
    lora,
    objective,
):
    from training.ml.algorithm1.steps import load_policy
    from training.ml.loop import run_iteration
    from training.ml.reward.data import FolderImageLoader, read_pairs
    from training.stages import base_model, own_images, prompt_pools, write_training_pairs

    client.force_login(make_user("admin"))
    chosen = {
        "refl": {},
        "dpo": {"objective": "dpo", "dpo_beta": 500},
        "raft": {"objective": "raft", "raft_candidates": 3},
    }[objective]
    training_round = _start_round(client, lora=lora, share_of_prompts=0.0, **chosen)
    training_round = _wait_status(
        wait_for, training_round.pk, {RoundStatus.AWAITING_RANKING, RoundStatus.DONE}
    )
    config = RoundConfig.from_dict(training_round.config)
    spatial = Category.objects.get(slug="spatial")

    # The loop's iteration on the same inputs: D_0 as the worker exported it, the same prompt pools.
    pairs = tmp_path / "spatial.jsonl"
    write_training_pairs(spatial, 0, pairs)
    train_pool, validation_pool = prompt_pools([spatial])
    family, base_path = base_model(config)
    loop = run_iteration(
        config,
        iteration=0,
        records=read_pairs(pairs),
        image_loader=FolderImageLoader(settings.MEDIA_ROOT),
        categories=["spatial"],
        base_path=base_path,
        chain=[],
        train_prompts=train_pool,
        validation_prompts=validation_pool,
        output_dir=tmp_path / "loop",
        own_images=own_images(training_round, 0, [spatial]),
    )

    app_reward = RewardModelCheckpoint.objects.get(
        training_round=training_round, category=spatial, iteration=0
    )
    assert _weights_digest(artifact_fetch_dir(app_reward.file.name, app_reward.sha256)) == _weights_digest(
        loop.rewards["spatial"].path
    )
    # The app also records which task-selection policy chose the rankings (bookkeeping the loop has not).
    app_metrics = {k: v for k, v in app_reward.metrics.items() if k not in SELECTION_CONTEXT_KEYS}
    assert _without_timings(app_metrics) == _without_timings(_jsonable(loop.rewards["spatial"].metrics))

    app_refl = DiffusionCheckpoint.objects.get(training_round=training_round, iteration=0)
    app_dir = artifact_fetch_dir(app_refl.file.name, app_refl.sha256)
    assert _weights_digest(app_dir) == _weights_digest(loop.finetuned.checkpoint.path)
    assert _without_timings(app_refl.metrics) == _without_timings(
        _jsonable(loop.finetuned.checkpoint.metrics)
    )
    assert app_refl.config["train_mode"] == ("lora" if lora else "full")
    if objective == "dpo":
        # The same Diffusion-DPO run: its loss curve and held-out implicit accuracy as the page draws them.
        assert app_refl.metrics["objective"] == "dpo" and app_refl.config["dpo"]["beta"] == 500
        recorded = training_round.events.filter(kind="metric", stage="dpo").order_by("step", "id")
        assert [e.data for e in recorded] == _jsonable(loop.finetuned.curve)
    elif objective == "raft":
        # The same best-of-3 samples trained the same weights; the page reads what the choice bought.
        assert app_refl.metrics["objective"] == "raft" and app_refl.metrics["candidates"] == 3
        assert app_refl.metrics["ranked_samples"] == len(loop_prompts_of(config, train_pool))
        assert app_refl.config["refl"]["reward_scale"] == 0.0
        assert loop.finetuned.checkpoint.metrics["last"]["loss_reward"] == 0.0
    else:
        assert app_refl.config["refl"]["pretrain_loss_weight"] == config.feedback.pretrain_loss_weight == 1.0
        assert loop.finetuned.checkpoint.metrics["last"]["loss_pretrain"] > 0

    # And the new samples: p_1 = base + the loop's checkpoint draws exactly what the worker stored.
    sampled = training_round.outputs["0"]["sampled_prompts"]
    images = (
        Image.objects.filter(generator=app_refl.generator)
        .select_related("prompt")
        .order_by("prompt_id", "seed")
    )
    policy = load_policy(family, base_path, [loop.finetuned.checkpoint.path])
    groups = [(img.prompt_id, img.prompt.text) for img in images]
    assert sorted(pid for pid, _ in groups) == sorted(sampled)
    assert _redraw(config, policy, groups, 0) == [img.sha256 for img in images]


def loop_prompts_of(config: RoundConfig, train_pool) -> list[str]:
    from training.ml.algorithm1.steps import refl_prompts

    return refl_prompts(config, train_pool, {})[0]


@celery_round
@pytest.mark.parametrize("lora", ["on", ""], ids=["lora", "full"])
def test_a_two_iteration_round_trains_its_second_iteration_on_top_of_the_first(
    celery_worker_process,
    client,
    make_user,
    wait_for,
    ranked_world,  # noqa: F811
    same_threads_as_the_worker,
    lora,
):
    from training.ml.algorithm1.steps import load_policy
    from training.stages import base_model

    client.force_login(make_user("admin"))
    # No guard and a high learning rate: each iteration's kept weights are its last step's, so both
    # iterations visibly change the model (with the guard the base can win and nothing change).
    training_round = _start_round(
        client, lora=lora, iterations=2, share_of_prompts=1.0, guard_every=0, feedback_learning_rate=5e-3
    )
    first = _wait_status(wait_for, training_round.pk, {RoundStatus.AWAITING_RANKING})
    assert first.current_iteration == 0
    pushed = first.outputs["0"]["pushed_tasks"]
    assert pushed
    world_rankings_simulate(per_task=3, seed=1, task_ids=pushed)
    assert round_check_awaiting() == [training_round.pk]

    def second_iteration_done():
        r = TrainingRound.objects.get(pk=training_round.pk)
        if r.status == RoundStatus.FAILED:
            raise AssertionError(f"round failed: {r.error}")
        done = r.current_iteration == 1 and r.status in (RoundStatus.AWAITING_RANKING, RoundStatus.DONE)
        return r if done else None

    second = wait_for(second_iteration_done, timeout=300, interval=0.5, message="the second iteration")
    checkpoints = list(DiffusionCheckpoint.objects.filter(training_round=second).order_by("iteration"))
    assert [c.iteration for c in checkpoints] == [0, 1]
    assert {c.config["train_mode"] for c in checkpoints} == {"lora" if lora else "full"}
    # Iteration 1's reward models saw the experts' rankings of iteration 0's samples.
    assert RewardModelCheckpoint.objects.filter(training_round=second, iteration=1).exists()
    # ... and had R_0 beside them for the drop check: a local copy of it, carrying the own-sample
    # accuracy it was measured at (the figure the check compares the fresh samples' accuracy with).
    from training.ml.reward.checkpoint import read_reward_meta
    from training.stages import previous_reward_dir

    r0 = RewardModelCheckpoint.objects.filter(training_round=second, iteration=0).first()
    assert previous_reward_dir(second, r0.category, 0) is None
    recorded = read_reward_meta(previous_reward_dir(second, r0.category, 1))["metadata"]["metrics"]
    assert recorded.get("own_accuracy") == r0.metrics.get("own_accuracy")
    assert second.outputs["1"]["pushed_tasks"] and set(pushed).isdisjoint(second.outputs["1"]["pushed_tasks"])
    assert RankingTask.objects.filter(pk__in=second.outputs["1"]["pushed_tasks"], iteration=2).count() == len(
        second.outputs["1"]["pushed_tasks"]
    )

    # p_2 = base + iteration 0 (merged) + iteration 1: redrawing its samples gives the stored images.
    config = RoundConfig.from_dict(second.config)
    family, base_path = base_model(config)
    chain = [artifact_fetch_dir(c.file.name, c.sha256) for c in checkpoints]
    images = list(
        Image.objects.filter(generator=checkpoints[1].generator)
        .select_related("prompt")
        .order_by("prompt_id", "seed")
    )
    groups = [(img.prompt_id, img.prompt.text) for img in images]

    def redraw(chain_used):
        return _redraw(config, load_policy(family, base_path, chain_used), groups, 1)

    stored = [img.sha256 for img in images]
    assert redraw(chain) == stored
    # Iteration 1 did change the model: without its checkpoint the samples differ.
    assert redraw(chain[:1]) != stored


@pytest.mark.django_db
def test_the_pretraining_loss_weight_set_in_the_form_changes_the_training_loss(client, make_user, tmp_path):
    from tests.ml.test_refl_world import SMALL
    from tests.training.test_round_pages import _form
    from training.ml.algorithm1.steps import finetune, pretrain_data
    from training.ml.reward.checkpoint import save_reward_model
    from training.ml.reward.config import RewardModelConfig
    from training.ml.reward.model import build_reward_model
    from training.ml.world.model import WorldDiffusionModel

    client.force_login(make_user("admin"))
    torch.manual_seed(0)
    WorldDiffusionModel(SMALL).save_pretrained(tmp_path / "base")
    reward = save_reward_model(build_reward_model(RewardModelConfig.tiny("spatial"), seed=0), tmp_path / "rm")
    last = {}
    for weight in ("0", "2.5"):
        form = _form(
            pretrain_loss_weight=weight, feedback_steps=1, sampling_steps=3, late_steps=2, guidance_scale=1
        )
        assert client.post("/training/rounds/new/", form).status_code == 302
        created = TrainingRound.objects.latest("id")
        config = RoundConfig.from_dict(created.config)
        # One round at a time: cancel this queued one before the admin starts the next.
        client.post(f"/training/rounds/{created.pk}/cancel/")
        assert config.feedback.pretrain_loss_weight == float(weight)
        result = finetune(
            config,
            family="world",
            base_path=str(tmp_path / "base"),
            chain=[],
            rewards={"spatial": reward},
            prompts=["a red circle to the left of a blue square"],
            validation_prompts=[],
            output_dir=tmp_path / f"refl-{weight}",
            iteration=0,
            categories={"a red circle to the left of a blue square": "spatial"},
            pretrain=pretrain_data(config, "world", 0),
        )
        last[weight] = result.checkpoint.metrics["last"]
    # Weight 0: no pretraining term at all; 2.5: the term is there and the loss is the weighted sum
    # (loss_reward already carries the reward scale λ).
    assert "loss_pretrain" not in last["0"]
    assert last["0"]["loss"] == pytest.approx(last["0"]["loss_reward"], rel=1e-6)
    assert last["2.5"]["loss_pretrain"] > 0
    assert last["2.5"]["loss"] == pytest.approx(
        last["2.5"]["loss_reward"] + 2.5 * last["2.5"]["loss_pretrain"], rel=1e-5
    )
    assert last["2.5"]["loss"] != pytest.approx(last["0"]["loss"])
