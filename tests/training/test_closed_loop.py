"""The closed loop end to end on CPU: the synthetic world, tiny models, a real worker process and Redis."""

from __future__ import annotations

import hashlib
import json
import time

import pytest
from django.core.files.storage import default_storage

from annotation.models import PairSource, PreferencePair, RankingTask, TaskStatus
from annotation.services.claims import task_claim_next
from gallery.models import Category, Generator, Image
from jobs.services import job_kind_reconcile
from training.models import DiffusionCheckpoint, RewardModelCheckpoint, RoundStatus, TrainingRound
from training.services import ROUND_JOBS, round_check_awaiting
from training.world import world_gallery_seed, world_rankings_simulate

pytestmark = [
    pytest.mark.celery,
    pytest.mark.slow,
    pytest.mark.django_db(transaction=True, serialized_rollback=True),
]

TINY_ROUND = {
    "base_model": "synthetic-world",
    "iterations": 1,
    "seed": 0,
    "reward_epochs": 1,
    "reward_learning_rate": 1e-4,
    "reward_freeze_fraction": 0.0,
    "feedback_steps": 2,
    "feedback_learning_rate": 1e-5,
    "sampling_steps": 4,
    "late_steps": 2,
    "guidance_scale": 1,
    "reward_scale": 1e-3,
    "pretrain_loss_weight": 1.0,
    "guard_every": 10,
    "lora": "on",
    "lora_rank": 2,
    "samples_per_prompt": 1,
    "share_of_prompts": 1.0,
    "prompts_per_category": 3,
}


@pytest.fixture
def ranked_world():
    world_gallery_seed(per_subcategory=5, seed=0, required_rankings=3)
    world_rankings_simulate(per_task=3, seed=0)


def _start_round(client, **overrides) -> TrainingRound:
    data = {**TINY_ROUND, "categories": [Category.objects.get(slug="spatial").pk], **overrides}
    response = client.post("/training/rounds/new/", data)
    assert response.status_code == 302, response.content.decode()[:2000]
    return TrainingRound.objects.latest("id")


def _wait_status(wait_for, round_id: int, statuses: set[str], timeout: float = 240) -> TrainingRound:
    def reached():
        r = TrainingRound.objects.get(pk=round_id)
        if r.status == RoundStatus.FAILED and RoundStatus.FAILED not in statuses:
            raise AssertionError(f"round failed: {r.error}")
        return r if r.status in statuses else None

    return wait_for(reached, timeout=timeout, interval=0.5, message=f"round {round_id} to reach {statuses}")


def _checkpoint_files_are_whole() -> None:
    for row in [*RewardModelCheckpoint.objects.all(), *DiffusionCheckpoint.objects.all()]:
        assert default_storage.exists(row.file.name), row.file.name
        digest = hashlib.sha256()
        with default_storage.open(row.file.name, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
        assert digest.hexdigest() == row.sha256


@pytest.mark.parametrize("objective", ["refl", "dpo"])
def test_an_admin_round_trains_samples_pushes_back_and_exports_pairs_of_both_sources_once_each(
    celery_worker_process, client, make_user, wait_for, ranked_world, objective
):
    client.force_login(make_user("admin"))
    # DPO: β sized for two steps of a tiny LoRA; every expert pair trains but a held-out third of prompts.
    dpo = {"objective": "dpo", "dpo_beta": 500} if objective == "dpo" else {}
    training_round = _start_round(client, **dpo)
    training_round = _wait_status(wait_for, training_round.pk, {RoundStatus.AWAITING_RANKING})
    assert training_round.config["objective"] == objective

    outputs = training_round.outputs["0"]
    # A DPO round trains the reward models too (they place the new samples below), but does not read them.
    assert RewardModelCheckpoint.objects.filter(
        training_round=training_round, category__slug="spatial"
    ).exists()
    checkpoint = DiffusionCheckpoint.objects.get(training_round=training_round, iteration=0)
    if objective == "dpo":
        assert checkpoint.metrics["objective"] == "dpo" and checkpoint.metrics["steps"] == 2
        assert checkpoint.config["dpo"]["beta"] == 500 and checkpoint.metrics["pairs"] > 0
        curve = list(training_round.events.filter(kind="metric", stage="dpo").order_by("step"))
        assert [e.step for e in curve][-1] == 2 and all("loss" in e.data for e in curve if e.step)
        page = client.get(f"/training/rounds/{training_round.pk}/").content.decode()
        assert "Diffusion-DPO loss" in page and 'data-objective="dpo"' in page
        # The round's log says what DPO trained on.
        assert training_round.events.filter(message__startswith="Diffusion-DPO on").exists()
    else:
        assert "refl" in checkpoint.config and "dpo" not in checkpoint.config
    new_generator = Generator.objects.get(pk=outputs["generator"])
    assert new_generator.kind == "base" and new_generator.base_iteration == 1
    samples = Image.objects.filter(generator=new_generator)
    assert samples.exists() and all(img.params["checkpoint_sha256"] == checkpoint.sha256 for img in samples)
    _checkpoint_files_are_whole()

    # The new samples are in annotators' queues, inside tasks that also hold the prompt's gallery.
    pushed = RankingTask.objects.filter(pk__in=outputs["pushed_tasks"])
    assert pushed.exists()
    for task in pushed:
        assert task.iteration == 1 and 6 < task.task_images.count() <= 8
    annotator = make_user("annotator")
    claim = task_claim_next(annotator=annotator, category=Category.objects.get(slug="spatial"))
    assert claim is not None and claim.task_id in set(pushed.values_list("pk", flat=True))

    # The broker hands the first stage's message out again (as after a lost acknowledgement): nothing runs.
    from training.tasks import round_run_stage

    assert (
        round_run_stage.apply_async(args=[training_round.pk, "training_rewards", 0]).get(timeout=60)
        == "not claimed"
    )
    assert RewardModelCheckpoint.objects.filter(training_round=training_round).count() == 1
    assert training_round.events.filter(message__startswith="training_rewards started").count() == 1

    # Model-source pairs placed the samples into the human consensus.
    assert PreferencePair.objects.filter(source=PairSource.MODEL, iteration=1).exists()

    # Simulated experts rank the pushed tasks; the round then finishes.
    world_rankings_simulate(per_task=3, seed=1, task_ids=list(pushed.values_list("pk", flat=True)))
    assert set(pushed.values_list("status", flat=True)) == {TaskStatus.COMPLETE}
    assert round_check_awaiting() == [training_round.pk]
    assert TrainingRound.objects.get(pk=training_round.pk).status == RoundStatus.DONE

    # A researcher exports pairs of both sources.
    client.force_login(make_user("researcher"))
    response = client.get("/api/export/pairs/jsonl/?categories=spatial")
    assert response.status_code == 200
    lines = [json.loads(line) for line in b"".join(response.streaming_content).splitlines()]
    assert {row["source"] for row in lines} == {"human", "model"}


def test_a_killed_worker_leaves_a_stale_round_that_resumes_and_finishes(
    celery_worker_process, client, make_user, wait_for, ranked_world, settings
):
    client.force_login(make_user("admin"))
    training_round = _start_round(client, feedback_steps=400)
    _wait_status(wait_for, training_round.pk, {RoundStatus.FEEDBACK_LEARNING})
    wait_for(
        lambda: (TrainingRound.objects.get(pk=training_round.pk).progress or {}).get("step"),
        timeout=120,
        message="feedback learning to report a step",
    )
    celery_worker_process.kill()
    try:
        time.sleep(2.5)
        settings.ROUND_STALE_AFTER_S = 2
        assert job_kind_reconcile(ROUND_JOBS)["given_up"] == [training_round.pk]
        page = client.get(f"/training/rounds/{training_round.pk}/")
        assert b"stale" in page.content
        # The finished stage's checkpoint was registered whole; nothing half-written is named by a row.
        _checkpoint_files_are_whole()
        # Shorten the rest of the run, then resume from the last checkpoint on a fresh worker.
        config = training_round.config
        config["feedback"]["steps"] = 3
        TrainingRound.objects.filter(pk=training_round.pk).update(config=config)
    finally:
        celery_worker_process.start()
    assert client.post(f"/training/rounds/{training_round.pk}/resume/").status_code == 302
    finished = _wait_status(wait_for, training_round.pk, {RoundStatus.AWAITING_RANKING})
    assert not finished.is_stale
    assert DiffusionCheckpoint.objects.filter(training_round=training_round).count() == 1
    _checkpoint_files_are_whole()


def test_cancel_mid_round_stops_at_the_next_step_and_keeps_the_last_checkpoint(
    celery_worker_process, client, make_user, wait_for, ranked_world
):
    client.force_login(make_user("admin"))
    training_round = _start_round(client, feedback_steps=400)
    _wait_status(wait_for, training_round.pk, {RoundStatus.FEEDBACK_LEARNING})
    client.post(f"/training/rounds/{training_round.pk}/cancel/")
    cancelled = _wait_status(wait_for, training_round.pk, {RoundStatus.CANCELLED}, timeout=120)
    assert cancelled.claimed_by == ""
    assert RewardModelCheckpoint.objects.filter(training_round=training_round).exists()
    _checkpoint_files_are_whole()
