"""What the GPU benchmarks (bench/gpu_*.py) share: device setup, the header, timing, memory, figure lines."""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch


def setup(device_name: str, threads: int, versions: dict[str, str], description: str) -> torch.device:
    """Thread count and TF32 (as training would run), then the ``# device`` / ``# versions`` header lines."""
    torch.set_num_threads(threads)
    device = torch.device(device_name)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"# device: {name}", flush=True)
    listed = ", ".join(f"{k} {v}" for k, v in {"torch": torch.__version__, **versions}.items())
    print(f"# {listed}; {description}", flush=True)
    return device


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_gib(device: torch.device) -> str:
    """``torch.cuda.max_memory_allocated`` since the last reset, in GiB; "n/a" off CUDA."""
    if device.type != "cuda":
        return "n/a"
    return f"{torch.cuda.max_memory_allocated(device) / 2**30:.1f}"


def figure(name: str, value: str, unit: str) -> None:
    print(f"figure: {name}={value} {unit}", flush=True)


def median_times(
    fns: dict[str, Callable[[], Any]], device: torch.device, *, warmup: int, repeats: int
) -> dict[str, float]:
    """``warmup`` untimed calls of each, then ``repeats`` timed rounds (order alternating); median seconds."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for rep in range(repeats):
        order = list(fns) if rep % 2 == 0 else list(fns)[::-1]
        for name in order:
            sync(device)
            t0 = time.perf_counter()
            fns[name]()
            sync(device)
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(values) for name, values in times.items()}
