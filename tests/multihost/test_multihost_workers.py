"""GPU workers as machines that come and go: one restarted with an empty disk, two sharing the gpu queue.

Only PostgreSQL, Redis and the bucket (moto's server over HTTP) are shared; each worker has its own
working directory, MEDIA_ROOT and WORKER_CACHE_DIR. The bucket is versioned, so a key written twice
shows as two versions.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from django.utils import timezone

from gallery.models import Generator, Image
from jobs.services import job_kind_reconcile
from tests.multihost.conftest import MULTIHOST_MARKS, bucket_keys, files_under, object_versions, sha256_hex
from tests.multihost.test_multihost_round import _start_round
from tests.training.test_closed_loop import _wait_status
from training.models import (
    DiffusionCheckpoint,
    EventKind,
    RewardModelCheckpoint,
    RoundEvent,
    RoundStatus,
    TrainingRound,
)
from training.services import ROUND_JOBS, WORKER_STAGES
from training.world import world_gallery_seed, world_rankings_simulate

pytestmark = MULTIHOST_MARKS


def _seed(*subcategories: str) -> None:
    # Only the categories the rounds train: every image goes through the bucket, and fewer is faster.
    world_gallery_seed(per_subcategory=5, seed=0, required_rankings=3, subcategories=subcategories)
    world_rankings_simulate(per_task=3, seed=0)


def _claims(training_round: TrainingRound) -> list[tuple[str, str, int]]:
    """(stage, worker, attempt) of every claim of the round's stages, in order (training.services)."""
    events = RoundEvent.objects.filter(
        training_round=training_round, kind=EventKind.LOG, data__has_key="claimed_by"
    ).order_by("id")
    return [(e.stage, e.data["claimed_by"], e.data["attempt"]) for e in events]


def _process(worker_identity: str) -> str:
    """host/pid of a claim's holder (jobs.services.worker_identity), without the message delivery."""
    return worker_identity.rsplit("/", 1)[0]


def _checkpoint_rows(*rounds: TrainingRound) -> list[RewardModelCheckpoint | DiffusionCheckpoint]:
    return [
        *RewardModelCheckpoint.objects.filter(training_round__in=rounds),
        *DiffusionCheckpoint.objects.filter(training_round__in=rounds),
    ]


def _assert_checkpoints_written_once(endpoint: str, bucket: str, rows: list) -> None:
    """Checkpoint rows and checkpoint objects match one to one, each object written once, whole."""
    versions = object_versions(endpoint, bucket, prefix="checkpoints/")
    assert sorted(versions) == sorted(row.file.name for row in rows)
    assert set(versions.values()) == {1}
    keys = bucket_keys(endpoint, bucket)
    for row in rows:
        assert sha256_hex(keys[row.file.name]) == row.sha256


def _cached_artifacts(cache: Path) -> set[str]:
    artifacts = cache / "artifacts"
    return (
        {p.name for p in artifacts.iterdir() if not p.name.startswith(".")} if artifacts.exists() else set()
    )


def test_a_worker_back_with_an_empty_cache_resumes_the_round_from_the_bucket(
    object_storage, start_worker, client, make_user, wait_for, settings
):
    endpoint, bucket = object_storage["endpoint"], object_storage["bucket"]
    _seed("spatial")
    worker, host = start_worker("gpu-host")
    client.force_login(make_user("admin"))
    training_round = _start_round(client, feedback_steps=400)
    _wait_status(wait_for, training_round.pk, {RoundStatus.FEEDBACK_LEARNING}, timeout=900)
    wait_for(
        lambda: (TrainingRound.objects.get(pk=training_round.pk).progress or {}).get("step"),
        timeout=600,
        message="feedback learning to report a step",
    )
    reward = RewardModelCheckpoint.objects.get(training_round=training_round)

    # The machine dies mid-stage and comes back with nothing on its disk.
    worker.kill()
    assert reward.sha256 in _cached_artifacts(host.cache)  # the feedback stage had fetched it
    host.wipe_cache()
    # The rest of the stage shortened; the reconciler sees the silent holder and hands the stage back
    # (one automatic resume allowed), as the beat task would once ROUND_STALE_AFTER_S has passed.
    config = TrainingRound.objects.get(pk=training_round.pk).config
    config["feedback"]["steps"] = 3
    TrainingRound.objects.filter(pk=training_round.pk).update(config=config)
    settings.ROUND_AUTO_RESUME_ATTEMPTS = 1
    later = timezone.now() + timedelta(seconds=settings.ROUND_STALE_AFTER_S + 1)
    assert job_kind_reconcile(ROUND_JOBS, now=later) == {
        "resent": [training_round.pk],
        "lost": [training_round.pk],
        "given_up": [],
    }
    start_worker("gpu-host")  # a new process on the same (wiped) folders

    finished = _wait_status(wait_for, training_round.pk, {RoundStatus.AWAITING_RANKING}, timeout=900)
    assert not finished.is_stale and finished.claimed_by == ""

    # Each stage was claimed once, except the one the dead worker held: claimed again, by the new process,
    # as attempt 2; the stages after it ran once, on the new process.
    claims = _claims(finished)
    assert [(stage, attempt) for stage, _, attempt in claims] == [
        (RoundStatus.TRAINING_REWARDS, 1),
        (RoundStatus.FEEDBACK_LEARNING, 1),
        (RoundStatus.FEEDBACK_LEARNING, 2),
        (RoundStatus.SAMPLING, 1),
        (RoundStatus.INSERTING, 1),
    ]
    old, new = _process(claims[0][1]), _process(claims[2][1])
    assert old != new
    assert [_process(w) for _, w, _ in claims] == [old, old, new, new, new]

    # The reward model trained before the crash was not trained again: the same row, the same bytes.
    assert list(RewardModelCheckpoint.objects.filter(training_round=training_round)) == [reward]
    assert RewardModelCheckpoint.objects.get(pk=reward.pk).sha256 == reward.sha256
    policy = DiffusionCheckpoint.objects.get(training_round=training_round)
    _assert_checkpoints_written_once(endpoint, bucket, [reward, policy])

    # Everything the new process needed came from the bucket: its cache, empty at start, holds exactly the
    # two checkpoints (the reward model the dead worker wrote, the policy it wrote itself and sampled
    # from), and images whose bytes hash to their names and to images of the gallery.
    assert _cached_artifacts(host.cache) == {reward.sha256, policy.sha256}
    cached = files_under(host.cache / "files")
    assert cached
    gallery = set(Image.objects.values_list("sha256", flat=True))
    for path in cached:
        assert path.stem in gallery and sha256_hex(path.read_bytes()) == path.stem

    # The samples exist once each, written once each, whole.
    samples = Image.objects.filter(generator=Generator.objects.get(pk=finished.outputs["0"]["generator"]))
    assert samples.count() == finished.outputs["0"]["sampled_images"] > 0
    versions = object_versions(endpoint, bucket, prefix="images/")
    keys = bucket_keys(endpoint, bucket)
    for image in samples:
        assert versions[image.file.name] == 1 and sha256_hex(keys[image.file.name]) == image.sha256
        assert image.params["checkpoint_sha256"] == policy.sha256


def test_two_workers_on_the_gpu_queue_run_two_rounds_at_once_each_stage_once(
    object_storage, start_worker, client, make_user, wait_for
):
    endpoint, bucket = object_storage["endpoint"], object_storage["bucket"]
    _seed("spatial", "non_spatial")
    workers = [start_worker(name)[0] for name in ("gpu-a", "gpu-b")]
    client.force_login(make_user("admin"))
    # Two rounds on different categories (a category has one live round at a time), queued together.
    rounds = [_start_round(client, "spatial"), _start_round(client, "non_spatial")]
    rounds = [_wait_status(wait_for, r.pk, {RoundStatus.AWAITING_RANKING}, timeout=1200) for r in rounds]

    # Every stage of each round was claimed once, on its first attempt. (A message may be delivered more
    # than once: a stage that outlasts the broker's visibility timeout is handed out again; the claim makes
    # that delivery do nothing, and it leaves no claim.)
    for training_round in rounds:
        assert [(stage, attempt) for stage, _, attempt in _claims(training_round)] == [
            (stage, 1) for stage in WORKER_STAGES
        ]

    # Both processes worked, and at the same time: the two rounds' first stages were taken by different
    # workers, and each started before the other finished.
    processes = {_process(w) for r in rounds for _, w, _ in _claims(r)}
    assert len(processes) == 2
    first = [_claims(r)[0] for r in rounds]
    assert _process(first[0][1]) != _process(first[1][1])
    spans = []
    for training_round in rounds:
        events = RoundEvent.objects.filter(
            training_round=training_round, kind=EventKind.LOG, stage=RoundStatus.TRAINING_REWARDS
        )
        started = events.get(data__has_key="claimed_by").created_at
        finished = events.get(message=f"{RoundStatus.TRAINING_REWARDS} finished").created_at
        spans.append((started, finished))
    assert spans[0][0] < spans[1][1] and spans[1][0] < spans[0][1]
    assert all(w.proc.poll() is None for w in workers)

    # One reward model and one policy per round, each checkpoint object written once, whole.
    for training_round in rounds:
        assert RewardModelCheckpoint.objects.filter(training_round=training_round).count() == 1
        assert DiffusionCheckpoint.objects.filter(training_round=training_round).count() == 1
    _assert_checkpoints_written_once(endpoint, bucket, _checkpoint_rows(*rounds))
    versions = object_versions(endpoint, bucket, prefix="images/")
    assert set(versions.values()) == {1}
    assert sorted(versions) == sorted(Image.objects.values_list("file", flat=True))
