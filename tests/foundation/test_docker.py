from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
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


# `docker compose config` is not run here: there is no docker where the tests run. What it checks is
# checked instead: the file, with its variables interpolated as compose does, against the Compose
# Specification's own JSON schema (vendored in docker/schema/, see its README), and, in the tests below,
# the structure that command would resolve (services, queues, volumes, environment).

# ${NAME}, ${NAME:-default}, ${NAME-default}, ${NAME:?error}, ${NAME?error}, ${NAME:+alt}, ${NAME+alt}, $NAME;
# $$ is a literal $.
_VARIABLE = re.compile(
    r"\$(?:(?P<escaped>\$)|\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\}"
    r"|(?P<bare>[A-Za-z_][A-Za-z0-9_]*))"
)


class MissingVariable(Exception):
    pass


def _interpolate(value, env: dict[str, str]):
    """Compose's variable substitution over every string value of the loaded file (keys are not
    interpolated)."""
    if isinstance(value, dict):
        return {key: _interpolate(item, env) for key, item in value.items()}
    if isinstance(value, list):
        return [_interpolate(item, env) for item in value]
    if not isinstance(value, str):
        return value

    def substitute(match: re.Match) -> str:
        if match["escaped"]:
            return "$"
        name = match["braced"] or match["bare"]
        op, arg = match["op"], match["arg"] or ""
        unset_or_empty = not env.get(name)
        missing = unset_or_empty if op and op.startswith(":") else name not in env
        if op in (":?", "?") and missing:
            raise MissingVariable(f"{name}: {arg}")
        if op in (":-", "-"):
            return arg if missing else env[name]
        if op in (":+", "+"):
            return "" if missing else arg
        return env.get(name, "")

    return _VARIABLE.sub(substitute, value)


# What docker/.env would hold: the variables the file requires (${NAME:?…}); the others keep defaults.
_DEPLOYMENT_ENV = {
    "SECRET_KEY": "s" * 50,
    "ALLOWED_HOSTS": "studio.example.org",
    "POSTGRES_PASSWORD": "pg-password",
    "S3_ACCESS_KEY_ID": "studio",
    "S3_SECRET_ACCESS_KEY": "storage-secret",
}


def _compose_schema_validator():
    from jsonschema import Draft7Validator

    schema = json.loads((ROOT / "docker" / "schema" / "compose-spec.json").read_text())
    Draft7Validator.check_schema(schema)
    return Draft7Validator(schema)


def _schema_errors(document: dict) -> list[str]:
    errors = _compose_schema_validator().iter_errors(document)
    return sorted(f"{'/'.join(map(str, e.absolute_path)) or '(top)'}: {e.message}" for e in errors)


def test_the_compose_file_interpolated_as_compose_does_is_valid_under_the_compose_specification():
    document = _interpolate(_compose(), _DEPLOYMENT_ENV)
    assert _schema_errors(document) == []
    assert document["services"]["web"]["environment"]["STORAGE_BACKEND"] == "s3"
    assert document["services"]["minio-bucket"]["command"][0].startswith(
        'mc alias set store http://minio:9000 "$S3'
    )


def test_the_compose_schema_check_rejects_what_docker_compose_config_would():
    services = _interpolate(_compose(), _DEPLOYMENT_ENV)["services"]
    misspelt = {**services, "web": {**services["web"], "depend_on": ["migrate"]}}
    wrong_type = {**services, "worker": {**services["worker"], "ports": "8000:8000"}}
    for broken in (misspelt, wrong_type):
        assert _schema_errors({**_compose(), "services": broken})
    # A required variable left unset stops compose before any validation.
    with pytest.raises(MissingVariable, match="SECRET_KEY"):
        _interpolate(_compose(), {k: v for k, v in _DEPLOYMENT_ENV.items() if k != "SECRET_KEY"})


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
