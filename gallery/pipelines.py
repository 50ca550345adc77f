"""Worker-only: load a diffusers pipeline from local (or cached) weights and draw images with it.

Nothing here imports torch or diffusers at module level — the web process may import this module's name
through the services, but only a `gpu` worker running a generation job ever calls into it.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.files.storage import default_storage

STORAGE_PREFIX = "storage:"
_COMPLETE_MARKER = ".complete"


@dataclass
class LoadedPipeline:
    pipe: Any
    pipeline_class: str
    dtype: str  # "float32", "float16", "bfloat16"
    device: str
    scheduler: str  # class name of the scheduler the weights came with


def resolve_weights(weights_uri: str) -> Path:
    """A local folder of diffusers weights: the path itself, or a worker-cached copy of a storage prefix.

    ``storage:weights/sdxl-base`` lets a worker on another machine fetch the weights once from the
    shared object storage into ``WORKER_CACHE_DIR``; later jobs reuse the copy.
    """
    if weights_uri.startswith(STORAGE_PREFIX):
        return cache_from_storage(weights_uri[len(STORAGE_PREFIX) :].strip("/"))
    path = Path(weights_uri).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(f"weights folder {weights_uri!r} does not exist on this worker")
    return path


def _list_storage(prefix: str) -> list[str]:
    directories, files = default_storage.listdir(prefix)
    keys = [f"{prefix}/{name}" for name in files]
    for directory in directories:
        keys.extend(_list_storage(f"{prefix}/{directory}"))
    return keys


def cache_from_storage(prefix: str) -> Path:
    digest = hashlib.sha256(prefix.encode()).hexdigest()[:16]
    target = Path(settings.WORKER_CACHE_DIR) / "weights" / f"{Path(prefix).name}-{digest}"
    if (target / _COMPLETE_MARKER).exists():
        return target
    keys = _list_storage(prefix)
    if not keys:
        raise FileNotFoundError(f"no weights under storage prefix {prefix!r}")
    # Download into a private folder and rename it into place: a crashed or concurrent download never
    # leaves a half-filled cache that a later job would trust.
    partial = target.with_name(f"{target.name}.partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    for key in keys:
        destination = partial / key[len(prefix) + 1 :]
        destination.parent.mkdir(parents=True, exist_ok=True)
        with default_storage.open(key, "rb") as source, open(destination, "wb") as out:
            shutil.copyfileobj(source, out, length=8 * 1024 * 1024)
    (partial / _COMPLETE_MARKER).write_text(prefix)
    try:
        os.replace(partial, target)
    except OSError:
        # Another worker finished first; its copy is as good as ours.
        shutil.rmtree(partial, ignore_errors=True)
        if not (target / _COMPLETE_MARKER).exists():
            raise
    return target


def _resolve_dtype(requested: str, pipeline_class: str, device: str):
    import torch

    if requested in ("", "auto"):
        if device == "cpu":
            requested = "float32"  # half precision on CPU is slow or unsupported for many ops
        elif pipeline_class in ("FluxPipeline", "StableDiffusion3Pipeline"):
            requested = "bfloat16"  # what these models were trained and released in
        else:
            requested = "float16"
    if requested not in ("float32", "float16", "bfloat16"):
        raise ValueError(f"unsupported dtype {requested!r}")
    return requested, getattr(torch, requested)


def load_pipeline(pipeline_class: str, weights_dir: Path, dtype: str = "auto") -> LoadedPipeline:
    """Load the whole pipeline once; a generation job calls this once, then draws every batch with it."""
    import diffusers
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype_name, torch_dtype = _resolve_dtype(dtype, pipeline_class, device)
    cls = getattr(diffusers, pipeline_class)
    pipe = cls.from_pretrained(str(weights_dir), dtype=torch_dtype)
    pipe.set_progress_bar_config(disable=True)
    pipe = pipe.to(device)
    return LoadedPipeline(
        pipe=pipe,
        pipeline_class=pipeline_class,
        dtype=dtype_name,
        device=device,
        scheduler=type(pipe.scheduler).__name__,
    )


def generate_batch(
    loaded: LoadedPipeline,
    *,
    prompts: list[str],
    seeds: list[int],
    steps: int,
    guidance: float,
    height: int | None = None,
    width: int | None = None,
    negative_prompt: str = "",
) -> list[Any]:
    """One pipeline call for the whole batch; one torch.Generator per image so each image is its seed's."""
    import torch

    generators = [torch.Generator(device=loaded.device).manual_seed(seed) for seed in seeds]
    kwargs: dict[str, Any] = {
        "prompt": prompts,
        "num_inference_steps": steps,
        "guidance_scale": guidance,
        "generator": generators,
        "output_type": "pil",
    }
    if height:
        kwargs["height"] = height
    if width:
        kwargs["width"] = width
    if (
        negative_prompt and loaded.pipeline_class != "FluxPipeline"
    ):  # FLUX is guidance-distilled: no negatives
        kwargs["negative_prompt"] = [negative_prompt] * len(prompts)
    with torch.inference_mode():
        return list(loaded.pipe(**kwargs).images)
