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
        "beat",
        "migrate",
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
