"""A worker with TRAINING_NUM_PROCESSES=2: its training stage launches a 2-process run (accelerate launch,
gloo on CPU), reads back the one checkpoint and records it through the services as an in-process run does.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from safetensors.torch import load_file

from gallery.models import Category
from tests.ml.test_multiprocess import WEIGHTS_RELATIVE_L2, _relative_l2
from tests.training.test_closed_loop import ranked_world  # noqa: F401
from training.artifacts import artifact_fetch_dir
from training.ml.algorithm1.config import RewardStageConfig, RoundConfig
from training.models import RewardModelCheckpoint
from training.runner import run_stage
from training.services import round_create

pytestmark = [pytest.mark.multiprocess, pytest.mark.slow, pytest.mark.django_db]

TINY = RoundConfig(
    reward=RewardStageConfig(backbone="scratch", hidden_size=32, layers=1, epochs=1, batch_prompts=4)
)


def test_the_reward_stage_on_two_processes_records_the_checkpoint_one_process_would_train(
    make_user,
    ranked_world,  # noqa: F811
    settings,
    tmp_path,
):
    from training.ml.algorithm1.steps import train_reward
    from training.ml.reward.data import FolderImageLoader, read_pairs
    from training.stages import own_images, write_training_pairs

    settings.TRAINING_NUM_PROCESSES = 2
    spatial = Category.objects.get(slug="spatial")
    training_round = round_create(
        created_by=make_user("admin"),
        categories=[spatial],
        base_generator=None,
        iterations=1,
        config=TINY.to_dict(),
    )
    outcome = run_stage(round_id=training_round.pk, stage="training_rewards", iteration=0, worker="w")
    training_round.refresh_from_db()
    assert outcome == "done", training_round.error
    assert training_round.events.filter(message__contains="training on 2 processes").exists()
    row = RewardModelCheckpoint.objects.get(training_round=training_round, category=spatial, iteration=0)
    assert row.metrics["own_accuracy"] is None and row.metrics["steps"] >= 1
    launched = artifact_fetch_dir(row.file.name, row.sha256)

    # The same step in this process, on the same pair export, images and own-sample set.
    pairs = write_training_pairs(spatial, 0, tmp_path / "spatial.jsonl") and tmp_path / "spatial.jsonl"
    info = train_reward(
        TINY,
        "spatial",
        read_pairs(pairs),
        FolderImageLoader(settings.MEDIA_ROOT),
        tmp_path / "one",
        0,
        own_images=own_images(training_round, 0, [spatial]),
    )
    assert row.metrics["steps"] == info.metrics["steps"]
    ours, theirs = (
        load_file(str(Path(info.path) / "model.safetensors")),
        load_file(str(launched / "model.safetensors")),
    )
    # The tolerance of tests/ml/test_multiprocess.py (Adam's per-coordinate steps, see there).
    assert ours.keys() == theirs.keys()
    assert _relative_l2(ours, theirs) <= WEIGHTS_RELATIVE_L2
