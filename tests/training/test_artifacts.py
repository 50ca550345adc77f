from __future__ import annotations

import hashlib

import boto3
import pytest
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from moto import mock_aws

from training.artifacts import ArtifactError, artifact_fetch_dir, artifact_store_dir, file_fetch


@pytest.fixture
def worker_cache(settings, tmp_path):
    settings.WORKER_CACHE_DIR = tmp_path / "cache"
    return settings.WORKER_CACHE_DIR


def _checkpoint(tmp_path, payload: bytes = b"weights"):
    folder = tmp_path / "ckpt"
    (folder / "tokenizer").mkdir(parents=True, exist_ok=True)
    (folder / "model.safetensors").write_bytes(payload)
    (folder / "checkpoint.json").write_text('{"format": 1}')
    (folder / "tokenizer" / "vocab.txt").write_text("[PAD]\n[UNK]\n")
    return folder


def test_a_checkpoint_round_trips_through_storage_and_is_cached_by_hash(tmp_path, worker_cache):
    name, sha = artifact_store_dir(_checkpoint(tmp_path), prefix="checkpoints/test")
    assert name.endswith(f"{sha}.tar") and default_storage.exists(name)
    local = artifact_fetch_dir(name, sha)
    assert (local / "model.safetensors").read_bytes() == b"weights"
    assert (local / "tokenizer" / "vocab.txt").read_text() == "[PAD]\n[UNK]\n"
    default_storage.delete(name)
    assert artifact_fetch_dir(name, sha) == local  # served from the worker cache


def test_storing_the_same_checkpoint_twice_gives_the_same_name_and_one_file(tmp_path, worker_cache):
    first = artifact_store_dir(_checkpoint(tmp_path), prefix="checkpoints/test")
    second = artifact_store_dir(_checkpoint(tmp_path), prefix="checkpoints/test")
    assert first == second
    folder = first[0].rsplit("/", 1)[0]
    assert default_storage.listdir(folder)[1] == [first[0].rsplit("/", 1)[1]]


def test_a_corrupted_download_is_refused_and_not_cached(tmp_path, worker_cache):
    name, sha = artifact_store_dir(_checkpoint(tmp_path), prefix="checkpoints/test")
    with pytest.raises(ArtifactError, match="does not match"):
        artifact_fetch_dir(name, "0" * 64)
    assert not (worker_cache / "artifacts" / ("0" * 64)).exists()


def test_files_are_fetched_once_and_verified(worker_cache):
    data = b"\x89PNG fake bytes for hashing"
    sha = hashlib.sha256(data).hexdigest()
    name = default_storage.save(f"images/{sha}.png", ContentFile(data))
    path = file_fetch(name, sha)
    assert path.read_bytes() == data and path.suffix == ".png"
    with pytest.raises(ArtifactError):
        file_fetch(name, "f" * 64)


def test_checkpoints_travel_through_s3_compatible_storage_by_configuration_alone(tmp_path, worker_cache):
    from storages.backends.s3 import S3Storage

    with mock_aws():
        boto3.client("s3", region_name="us-east-1").create_bucket(Bucket="itercomp")
        s3 = S3Storage(bucket_name="itercomp", region_name="us-east-1", access_key="x", secret_key="y")
        name, sha = artifact_store_dir(
            _checkpoint(tmp_path, b"s3 weights"), prefix="checkpoints/s3", storage=s3
        )
        assert s3.exists(name)
        local = artifact_fetch_dir(name, sha, storage=s3)
        assert (local / "model.safetensors").read_bytes() == b"s3 weights"
