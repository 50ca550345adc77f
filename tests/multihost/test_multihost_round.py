"""A round on a worker "on another machine": object storage over HTTP (moto's server on loopback), a web
process and CPU workers that share no folder, only PostgreSQL, Redis and the bucket."""

from __future__ import annotations

from annotation.models import ExportJob
from gallery.models import Category, Generator, Image
from jobs.models import JobStatus
from tests.multihost.conftest import MULTIHOST_MARKS, bucket_keys, files_under, sha256_hex
from tests.training.test_closed_loop import TINY_ROUND, _wait_status
from training.models import DiffusionCheckpoint, RewardModelCheckpoint, RoundStatus, TrainingRound
from training.world import world_gallery_seed, world_rankings_simulate

pytestmark = MULTIHOST_MARKS


def _start_round(client, category: str = "spatial", **overrides) -> TrainingRound:
    data = {**TINY_ROUND, "categories": [Category.objects.get(slug=category).pk], **overrides}
    response = client.post("/training/rounds/new/", data)
    assert response.status_code == 302, response.content.decode()[:2000]
    return TrainingRound.objects.latest("id")


def _served(client, key: str) -> bytes:
    response = client.get(f"/gallery/files/{key}")
    assert response.status_code == 200, key
    return b"".join(response.streaming_content)


def test_a_round_on_a_worker_that_shares_only_the_database_broker_and_bucket_completes(
    object_storage, start_worker, client, make_user, wait_for
):
    endpoint, bucket, web = object_storage["endpoint"], object_storage["bucket"], object_storage["web"]
    # Only the category the round trains: every image goes through the bucket, and fewer is faster.
    world_gallery_seed(per_subcategory=5, seed=0, required_rankings=3, subcategories=("spatial",))
    world_rankings_simulate(per_task=3, seed=0)
    _worker, host = start_worker("gpu-host")

    client.force_login(make_user("admin"))
    training_round = _wait_status(
        wait_for, _start_round(client).pk, {RoundStatus.AWAITING_RANKING}, timeout=900
    )
    keys = bucket_keys(endpoint, bucket)

    # Checkpoints were written by the worker into the bucket, whole (bytes hash to what the rows say).
    reward = RewardModelCheckpoint.objects.get(training_round=training_round)
    policy = DiffusionCheckpoint.objects.get(training_round=training_round)
    for row in (reward, policy):
        assert sha256_hex(keys[row.file.name]) == row.sha256
    # Every image, the gallery's and the worker's samples, is in the bucket and served to annotators by
    # the app from there, byte for byte.
    samples = Image.objects.filter(
        generator=Generator.objects.get(pk=training_round.outputs["0"]["generator"])
    )
    assert samples.count() > 0
    for image in Image.objects.all():
        assert sha256_hex(keys[image.file.name]) == image.sha256
    for image in samples:
        assert sha256_hex(_served(client, image.file.name)) == image.sha256
        assert image.params["checkpoint_sha256"] == policy.sha256

    # An export built by the worker lands in the bucket and downloads through the app.
    client.force_login(make_user("researcher"))
    response = client.post("/research/export/jobs/", {"kind": "pairs", "format": "hf"})
    assert response.status_code == 302
    job = ExportJob.objects.latest("id")
    wait_for(lambda: ExportJob.objects.get(pk=job.pk).status == JobStatus.DONE, timeout=300, message="export")
    job.refresh_from_db()
    assert job.file.name.startswith(f"exports/{job.pk}/")
    stored = bucket_keys(endpoint, bucket)[job.file.name]
    download = client.get(f"/research/export/jobs/{job.pk}/download/")
    assert download.status_code == 200 and b"".join(download.streaming_content) == stored

    # Nothing went through a folder: neither host's MEDIA_ROOT holds a file; the worker's cache holds the
    # copies it downloaded (images it trained on), the web host's none.
    assert files_under(web.media) == [] and files_under(host.media) == []
    assert files_under(web.cache) == []
    assert files_under(host.cache)
