"""Small helpers shared by every ML stage: progress protocol, config (de)serialisation, checkpoint I/O.

Every training stage is a function ``(config, data, progress) -> CheckpointInfo``. ``progress`` is called
with ``(step, total, metrics)``; returning ``False`` or raising :class:`StopTraining` asks the stage to
stop at the next safe point (it still writes a valid checkpoint of what it has so far).

A checkpoint is a directory holding ``model.safetensors`` plus ``checkpoint.json``:
``{"format": 1, "kind": ..., "config": {...}, "metadata": {...}}``. The JSON is self-describing so a
checkpoint can be inspected (or refused) without building the model.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import random
import shutil
import tempfile
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol, TypeVar

import torch
from safetensors.torch import load_file, save_file

CHECKPOINT_FORMAT = 1
WEIGHTS_NAME = "model.safetensors"
META_NAME = "checkpoint.json"

T = TypeVar("T")


class StopTraining(Exception):  # noqa: N818 - it is a request, not an error
    """Raised by a progress callback to ask the running stage to stop cleanly."""


class ProgressCallback(Protocol):
    def __call__(self, step: int, total: int, metrics: Mapping[str, float]) -> bool | None: ...


def report_progress(
    progress: ProgressCallback | None, step: int, total: int, metrics: Mapping[str, float]
) -> bool:
    """Call ``progress``; return False when it asked to stop (returned False or raised StopTraining).

    ``None`` as a return value means "carry on" so plain logging functions work as callbacks.
    """
    if progress is None:
        return True
    try:
        answer = progress(step, total, dict(metrics))
    except StopTraining:
        return False
    return answer is not False


class CheckpointError(ValueError):
    """A checkpoint is missing, malformed, or does not match what the caller expects."""


@dataclasses.dataclass(frozen=True)
class CheckpointInfo:
    """What a stage hands back: where the checkpoint lives and the metrics it recorded."""

    path: Path
    kind: str
    metrics: dict[str, Any]
    stopped_early: bool = False


def config_to_dict(config: Any) -> dict[str, Any]:
    """Dataclass → JSON-ready dict (tuples become lists, nested dataclasses become dicts)."""
    if not dataclasses.is_dataclass(config) or isinstance(config, type):
        raise TypeError(f"expected a dataclass instance, got {type(config).__name__}")
    return json.loads(json.dumps(dataclasses.asdict(config)))


def _coerce(tp: Any, value: Any) -> Any:
    """Rebuild nested dataclasses and tuples that JSON flattened into dicts and lists."""
    if value is None:
        return None
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            if arg is type(None):
                continue
            if dataclasses.is_dataclass(arg) and isinstance(value, Mapping):
                return config_from_dict(arg, value)
            if typing.get_origin(arg) is tuple and isinstance(value, list):
                return _coerce(arg, value)
        return value
    if dataclasses.is_dataclass(tp) and isinstance(value, Mapping):
        return config_from_dict(tp, value)
    if origin is tuple and isinstance(value, list | tuple):
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(args[0], v) for v in value)
        return tuple(_coerce(a, v) for a, v in zip(args, value, strict=False))
    return value


def config_from_dict(cls: type[T], data: Mapping[str, Any]) -> T:
    """Inverse of :func:`config_to_dict`; unknown keys are refused so typos never pass silently."""
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls!r} is not a dataclass")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - names)
    if unknown:
        raise CheckpointError(f"{cls.__name__}: unknown field(s) {unknown}")
    kwargs = {k: _coerce(hints[k], v) for k, v in data.items()}
    return cls(**kwargs)


def diff_configs(expected: Mapping[str, Any], actual: Mapping[str, Any], prefix: str = "") -> list[str]:
    """Human-readable list of differences between two config dicts (nested)."""
    out: list[str] = []
    for key in sorted(set(expected) | set(actual)):
        name = f"{prefix}{key}"
        if key not in actual:
            out.append(f"{name}: missing in checkpoint (expected {expected[key]!r})")
        elif key not in expected:
            out.append(f"{name}: unexpected in checkpoint ({actual[key]!r})")
        elif isinstance(expected[key], Mapping) and isinstance(actual[key], Mapping):
            out.extend(diff_configs(expected[key], actual[key], prefix=f"{name}."))
        elif expected[key] != actual[key]:
            out.append(f"{name}: expected {expected[key]!r}, checkpoint has {actual[key]!r}")
    return out


def save_checkpoint(
    directory: str | os.PathLike[str],
    state_dict: Mapping[str, torch.Tensor],
    *,
    kind: str,
    config: Mapping[str, Any],
    metadata: Mapping[str, Any] | None = None,
    extra_files: Mapping[str, str | os.PathLike[str]] | None = None,
) -> Path:
    """Write weights + JSON into ``directory`` atomically (a crash never leaves half a checkpoint).

    ``extra_files`` maps a name inside the checkpoint to a file or folder to copy in (e.g. a tokenizer).
    """
    target = Path(directory)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        # safetensors refuses shared or non-contiguous storage; clone makes every tensor its own.
        tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in state_dict.items()}
        save_file(tensors, str(staging / WEIGHTS_NAME), metadata={"kind": kind})
        meta = {
            "format": CHECKPOINT_FORMAT,
            "kind": kind,
            "config": dict(config),
            "metadata": dict(metadata or {}),
        }
        (staging / META_NAME).write_text(json.dumps(meta, indent=2, sort_keys=True, default=_json_default))
        for name, src in (extra_files or {}).items():
            src_path = Path(src)
            if src_path.is_dir():
                shutil.copytree(src_path, staging / name)
            else:
                shutil.copy2(src_path, staging / name)
        if target.exists():
            backup = target.with_name(f".{target.name}.old")
            if backup.exists():
                shutil.rmtree(backup)
            target.rename(backup)
            staging.rename(target)
            shutil.rmtree(backup)
        else:
            staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def _json_default(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def read_checkpoint_meta(directory: str | os.PathLike[str], kind: str | None = None) -> dict[str, Any]:
    """Read and sanity-check ``checkpoint.json`` without touching the weights."""
    path = Path(directory) / META_NAME
    if not path.is_file():
        raise CheckpointError(f"{directory}: not a checkpoint (no {META_NAME})")
    meta = json.loads(path.read_text())
    if meta.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"{directory}: checkpoint format {meta.get('format')!r}, this code reads {CHECKPOINT_FORMAT}"
        )
    if kind is not None and meta.get("kind") != kind:
        raise CheckpointError(f"{directory}: checkpoint holds a {meta.get('kind')!r}, expected a {kind!r}")
    return meta


def load_weights(
    directory: str | os.PathLike[str], device: str | torch.device = "cpu"
) -> dict[str, torch.Tensor]:
    path = Path(directory) / WEIGHTS_NAME
    if not path.is_file():
        raise CheckpointError(f"{directory}: no {WEIGHTS_NAME}")
    return load_file(str(path), device=str(device))


def load_state_strict(module: torch.nn.Module, state: Mapping[str, torch.Tensor], where: str) -> None:
    """``load_state_dict(strict=True)`` with an error message that names the offending tensors."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [
        f"{k}: model {tuple(own[k].shape)} vs checkpoint {tuple(state[k].shape)}"
        for k in sorted(set(own) & set(state))
        if own[k].shape != state[k].shape
    ]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}")
        if unexpected:
            parts.append(f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}")
        if shapes:
            parts.append(f"shape mismatch {shapes[:5]}")
        raise CheckpointError(f"{where}: weights do not fit the model: " + "; ".join(parts))
    module.load_state_dict(state, strict=True)


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def seed_everything(seed: int) -> torch.Generator:
    """Seed python/torch RNGs; returns a dedicated generator for code that wants its own stream."""
    random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)
