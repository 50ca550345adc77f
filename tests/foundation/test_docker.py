from __future__ import annotations

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


def _compose() -> dict:
    return yaml.safe_load((ROOT / "docker" / "compose.yaml").read_text())


def test_compose_defines_every_service_of_a_deployment():
    assert set(_compose()["services"]) >= {
        "postgres",
        "redis",
        "web",
        "worker",
        "gpu-worker",
        "gpu-worker-2",
        "beat",
        "migrate",
        "minio",
        "minio-bucket",
    }


def test_gpu_worker_takes_only_the_gpu_queue_one_task_at_a_time_on_an_nvidia_device():
    gpu = _compose()["services"]["gpu-worker"]
    command = gpu["command"]
    assert command[:4] == ["celery", "-A", "config", "worker"]
    assert command[command.index("-Q") + 1] == "gpu"
    assert command[command.index("--concurrency") + 1] == "1"
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]


def test_cpu_worker_and_beat_run_celery_against_the_same_app():
    services = _compose()["services"]
    assert services["worker"]["command"][services["worker"]["command"].index("-Q") + 1] == "default"
    assert services["beat"]["command"][:4] == ["celery", "-A", "config", "beat"]
    assert services["web"]["command"][0] == "gunicorn"


def test_redis_keeps_nothing_on_disk_and_app_services_share_one_environment():
    services = _compose()["services"]
    assert "--appendonly" in services["redis"]["command"]
    for name in ("web", "worker", "gpu-worker", "beat"):
        env = services[name]["environment"]
        assert env["CELERY_BROKER_URL"] == "redis://redis:6379/0"
        assert env["DATABASE_URL"].startswith("postgresql://")
        assert env["DEBUG"] == "0"


def test_dockerfile_installs_the_pinned_requirements():
    dockerfile = (ROOT / "docker" / "Dockerfile").read_text()
    assert "pip install" in dockerfile and "requirements.txt" in dockerfile


# `docker compose config` is not run here: this machine's docker has no compose plugin. These tests check
# the structure that command would resolve (services, queues, volumes, environment).


def _starts_after(services: dict, name: str) -> set[str]:
    """Every service `name` waits for, directly or through the services it waits for."""
    seen: set[str] = set()
    todo = list(services[name].get("depends_on", {}))
    while todo:
        dep = todo.pop()
        if dep not in seen:
            seen.add(dep)
            todo.extend(services[dep].get("depends_on", {}))
    return seen


def test_files_go_to_the_bundled_object_storage_whose_bucket_exists_before_the_app_starts():
    services = _compose()["services"]
    assert services["minio"]["image"].startswith("minio/minio:")
    assert "objects:/data" in services["minio"]["volumes"]
    assert "mc mb --ignore-existing" in services["minio-bucket"]["command"][0]
    for name in ("migrate", "web", "worker", "gpu-worker", "gpu-worker-2", "beat"):
        env = services[name]["environment"]
        assert env["STORAGE_BACKEND"] == "${STORAGE_BACKEND:-s3}"
        assert env["S3_ENDPOINT_URL"] == "${S3_ENDPOINT_URL:-http://minio:9000}"
        assert "minio-bucket" in _starts_after(services, name)
    # The app's credentials are the storage's own root credentials.
    minio_env = services["minio"]["environment"]
    assert minio_env["MINIO_ROOT_USER"] == services["web"]["environment"]["S3_ACCESS_KEY_ID"]


def test_two_gpu_workers_share_the_gpu_queue_but_no_volume_and_no_device():
    services = _compose()["services"]
    first, second = services["gpu-worker"], services["gpu-worker-2"]
    for worker in (first, second):
        command = worker["command"]
        assert command[command.index("-Q") + 1] == "gpu"
        assert command[command.index("--concurrency") + 1] == "1"
        assert not any(volume.startswith("media:") for volume in worker["volumes"])
    names = [w["command"][w["command"].index("-n") + 1] for w in (first, second)]
    assert len(set(names)) == 2
    assert set(first["volumes"]).isdisjoint(second["volumes"])
    devices = [w["deploy"]["resources"]["reservations"]["devices"][0]["device_ids"] for w in (first, second)]
    assert devices == [["0"], ["1"]]
    assert set(_compose()["volumes"]) >= {"objects", "cache", "cache2"}
