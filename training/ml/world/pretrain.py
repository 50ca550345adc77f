"""Pretrain the world's base diffusion model on correct renders of training-split prompts.

Reproducible by construction: a fixed thread count, deterministic torch algorithms, and every random
draw (prompts, render seeds, noise, timesteps, initial weights) derived from the one `seed`.
"""

from __future__ import annotations

import copy
import json
import math
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .grammar import all_prompts, is_held_out
from .layout import render_prompt
from .model import WorldDiffusionModel, WorldModelConfig
from .vocab import SUBCATEGORIES


@dataclass(frozen=True)
class PretrainConfig:
    steps: int = 6000  # the committed base model's first stage (`make world-base`)
    batch_size: int = 32
    learning_rate: float = 2e-3
    warmup_steps: int = 40
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.0
    uncond_prob: float = 0.1  # share of captions dropped to "" so classifier-free guidance works
    ema_decay: float = 0.995
    grad_clip: float = 1.0
    seed: int = 0
    threads: int = 2
    model: WorldModelConfig = field(default_factory=WorldModelConfig)
    # A saved base model to continue from (its weights start both the trained model and its EMA; the
    # schedule above restarts): a longer pretraining without repeating the steps already paid for.
    init: str | None = None

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1:
            raise ValueError("steps and batch_size must be positive")
        if self.learning_rate <= 0 or not 0 <= self.min_lr_ratio <= 1:
            raise ValueError("learning rate settings out of range")
        if not 0 <= self.uncond_prob < 1 or not 0 <= self.ema_decay < 1:
            raise ValueError("uncond_prob and ema_decay must lie in [0, 1)")
        if self.threads < 1 or self.warmup_steps < 0 or self.grad_clip <= 0:
            raise ValueError("threads, warmup_steps and grad_clip out of range")


def training_prompts() -> dict[str, list[str]]:
    """Per subcategory, the prompts pretraining may see (held-out ones are kept for evaluation)."""
    return {sub: [p for p in all_prompts(sub) if not is_held_out(p)] for sub in SUBCATEGORIES}


def held_out_prompts() -> dict[str, list[str]]:
    return {sub: [p for p in all_prompts(sub) if is_held_out(p)] for sub in SUBCATEGORIES}


def draw_batch(
    rng: np.random.Generator, batch_size: int, prompts: dict[str, list[str]], uncond_prob: float
) -> tuple[torch.Tensor, list[str]]:
    """Correct renders of prompts drawn uniformly by subcategory, then uniformly within it."""
    images, captions = [], []
    subcategories = list(prompts)
    for _ in range(batch_size):
        pool = prompts[subcategories[int(rng.integers(len(subcategories)))]]
        prompt = pool[int(rng.integers(len(pool)))]
        image = render_prompt(prompt, int(rng.integers(2**31)))
        images.append(np.asarray(image, dtype=np.float32) / 255.0)
        captions.append("" if rng.random() < uncond_prob else prompt)
    batch = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()
    return batch, captions


def learning_rate(step: int, config: PretrainConfig) -> float:
    if step < config.warmup_steps:
        return config.learning_rate * (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
    cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return config.learning_rate * (config.min_lr_ratio + (1 - config.min_lr_ratio) * cosine)


def set_deterministic(seed: int, threads: int) -> None:
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
    torch.manual_seed(seed)


def pretrain(
    config: PretrainConfig,
    out: str | Path | None = None,
    log: Callable[[str], None] | None = print,
    command: str | None = None,
) -> tuple[WorldDiffusionModel, dict[str, Any]]:
    """Train from scratch; returns the EMA model (saved to `out` when given) and a training record.

    Thread count and deterministic-algorithm mode are set for the run and restored afterwards.
    """
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    try:
        return _pretrain(config, out, log, command)
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic)


def _initial_model(config: PretrainConfig) -> tuple[WorldDiffusionModel, dict[str, Any] | None]:
    """A fresh model, or the one ``config.init`` names with the training record it was saved with."""
    if config.init is None:
        return WorldDiffusionModel(config.model), None
    model = WorldDiffusionModel.from_pretrained(config.init)
    if model.config.to_dict() != config.model.to_dict():
        raise ValueError(
            f"{config.init} holds a model of another architecture than the one configured: "
            f"{model.config.to_dict()} vs {config.model.to_dict()}"
        )
    info_path = Path(config.init) / "train_info.json"
    return model, json.loads(info_path.read_text()) if info_path.exists() else None


def _pretrain(
    config: PretrainConfig,
    out: str | Path | None,
    log: Callable[[str], None] | None,
    command: str | None,
) -> tuple[WorldDiffusionModel, dict[str, Any]]:
    set_deterministic(config.seed, config.threads)
    model, earlier = _initial_model(config)
    model.train()
    ema = copy.deepcopy(model).eval()
    for parameter in ema.parameters():
        parameter.requires_grad_(False)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay
    )
    rng = np.random.default_rng(config.seed)
    noise_generator = torch.Generator().manual_seed(config.seed + 1)
    prompts = training_prompts()
    losses: list[float] = []
    start = time.perf_counter()
    cpu_start = time.process_time()
    for step in range(config.steps):
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, config)
        images, captions = draw_batch(rng, config.batch_size, prompts, config.uncond_prob)
        loss = model.training_loss(images, captions, generator=noise_generator)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()
        # EMA with a warm-up so that early weights do not dominate a short run.
        decay = min(config.ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            for ema_param, param in zip(ema.parameters(), model.parameters(), strict=True):
                ema_param.lerp_(param, 1 - decay)
        losses.append(loss.item())
        if log is not None and (step + 1) % max(1, config.steps // 20) == 0:
            elapsed = time.perf_counter() - start
            recent = float(np.mean(losses[-max(1, config.steps // 20) :]))
            log(
                f"step {step + 1}/{config.steps} loss {recent:.4f} lr {learning_rate(step, config):.2e} {elapsed:.0f}s"
            )
    elapsed = time.perf_counter() - start
    record = {
        "command": command,
        "config": {**asdict(config), "model": config.model.to_dict()},
        "wall_seconds": round(elapsed, 1),
        "seconds_per_step": round(elapsed / config.steps, 3),
        # CPU time of this process: what the run costs one core, whatever else shares the machine.
        "cpu_seconds": round(time.process_time() - cpu_start, 1),
        "loss_first_50": float(np.mean(losses[:50])),
        "loss_last_50": float(np.mean(losses[-50:])),
        "loss_curve": [round(float(np.mean(losses[i : i + 10])), 4) for i in range(0, len(losses), 10)],
        # Continued from a saved model: the steps before this run, so the total is on record.
        "steps_before": 0 if config.init is None else _total_steps(earlier),
        # The saved model's own record (its command, loss curve and its own `earlier`), so a continued model
        # carries every stage that made it, as the encoder's records do.
        "earlier": earlier,
        "parameters": model.num_parameters(),
        "torch": torch.__version__,
        "machine": platform.machine(),
        # Float results depend on the CPU kernel path, so a checkpoint records which one trained it.
        "cpu_model": _cpu_model(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
    }
    if out is not None:
        ema.save_pretrained(out, train_info=record)
    return ema, record


def _total_steps(record: dict[str, Any] | None) -> int | None:
    """Pretraining steps behind a saved model (None when its record is missing)."""
    if record is None:
        return None
    before = record.get("steps_before", 0)
    if before is None:
        return None
    return int(before) + int(record["config"]["steps"])


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"
