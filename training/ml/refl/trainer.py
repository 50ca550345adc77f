"""Multi-reward ReFL trainer: one code path for every model family (via :class:`DiffusionAdapter`).

Each step: draw prompts, noise and a stop step from a generator seeded by (seed, step) — so a resumed
run repeats exactly what an uninterrupted one would have done — sample without gradients to the stop
step, take one denoiser step with gradients, predict x0, decode, score with the injected reward
functions and minimise ``λ Σ w_i φ(R_i)`` plus the optional pretraining denoising loss and the KL-style
penalty to the frozen reference. A held-out evaluator guards against reward hacking (see ``guard.py``).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from training.ml.common import (
    CheckpointError,
    ProgressCallback,
    config_to_dict,
    diff_configs,
    load_weights,
    read_checkpoint_meta,
    report_progress,
    save_checkpoint,
)
from training.ml.distributed import ddp_handlers, main_decides, main_writes, mean_across, shard
from training.ml.preprocess import PreprocessConfig, resize_images
from training.ml.refl.adapters import Conditioning, DiffusionAdapter
from training.ml.refl.config import ReFLConfig
from training.ml.refl.ema import ParameterEMA
from training.ml.refl.guard import GuardEvaluation, HackingGuard
from training.ml.refl.losses import denoising_target, kl_penalty, weighted_reward, weighted_reward_loss
from training.ml.refl.optim import (
    build_optimizer,
    optimizer_state_from_tensors,
    optimizer_state_to_tensors,
    set_learning_rate,
)
from training.ml.refl.sampler import (
    eval_mode,
    guided_prediction,
    initial_noise,
    refl_forward,
    sample,
)
from training.ml.refl.trainable import add_lora, load_trainable, place_on_accelerator, reference_denoiser

CHECKPOINT_KIND = "refl"
EMA_FILE = "ema.safetensors"
OPTIMIZER_FILE = "optimizer.safetensors"
# Config fields that may change between a run and its resumption without changing what a step does.
RESUMABLE_CHANGES = frozenset({"max_steps", "checkpoint_every"})

RewardFn = Callable[[list[str], torch.Tensor], torch.Tensor]
PretrainData = Sequence[tuple[str, torch.Tensor]]


@dataclasses.dataclass(frozen=True)
class RewardSpec:
    """An injected differentiable reward ``(prompts, images[B,3,H,W] in [0,1]) -> [B]`` and its weight.

    ``image_size`` resizes (differentiably, with the shared preprocessing) before scoring, for reward
    functions that expect a fixed input size and do not resize themselves.
    """

    fn: RewardFn
    weight: float = 1.0
    image_size: int | None = None

    def __post_init__(self) -> None:
        if not callable(self.fn):
            raise TypeError("reward fn must be callable")
        if not math.isfinite(self.weight) or self.weight < 0:
            raise ValueError(f"reward weight must be finite and >= 0, got {self.weight}")
        if self.image_size is not None and self.image_size < 1:
            raise ValueError("image_size must be positive")

    def score(self, prompts: list[str], images: torch.Tensor) -> torch.Tensor:
        if self.image_size is not None:
            images = resize_images(
                images, PreprocessConfig(image_size=self.image_size, interpolation="bilinear")
            )
        return self.fn(prompts, images)


@dataclasses.dataclass
class ReFLRunSummary:
    steps: int
    stopped_early: bool
    stop_reason: str | None  # "reward_hacking", "requested" or None
    best_step: int | None
    restored_step: int | None  # the step whose weights the model holds after training, when restored
    guard_history: list[dict[str, float]]
    last_metrics: dict[str, float]
    checkpoint: Path | None = None


def _modules_of(fn: Callable[..., Any]) -> list[nn.Module]:
    """nn.Modules behind a reward callable (a bound method of a module, or of an object holding modules)."""
    owner = getattr(fn, "__self__", fn)
    if isinstance(owner, nn.Module):
        return [owner]
    found = (
        [v for v in vars(owner).values() if isinstance(v, nn.Module)] if hasattr(owner, "__dict__") else []
    )
    return found


def _step_generator(seed: int, step: int, stream: int) -> torch.Generator:
    # Distinct, reproducible streams per (seed, step, process/purpose); no global RNG involved.
    return torch.Generator().manual_seed((seed * 1_000_003 + step * 9_973 + stream * 7_919) % (2**63 - 1))


class ReFLTrainer:
    """Stateful ReFL run over one adapter. ``train`` runs to ``max_steps``; ``train_step`` runs one step."""

    def __init__(
        self,
        adapter: DiffusionAdapter,
        config: ReFLConfig,
        rewards: Mapping[str, RewardSpec | RewardFn],
        prompts: Sequence[str],
        *,
        heldout: RewardFn | None = None,
        validation_prompts: Sequence[str] = (),
        pretrain_data: PretrainData | None = None,
        output_dir: str | Path | None = None,
        accelerator: Any | None = None,
    ) -> None:
        if not prompts:
            raise ValueError("ReFL needs training prompts")
        if not rewards:
            raise ValueError("ReFL needs at least one reward function")
        self.rewards = {n: r if isinstance(r, RewardSpec) else RewardSpec(r) for n, r in rewards.items()}
        if config.pretrain_loss_weight > 0 and not pretrain_data:
            raise ValueError("pretrain_loss_weight > 0 needs pretrain_data (prompt, image) pairs")
        if config.guard.enabled and (heldout is None or not validation_prompts):
            raise ValueError("the hacking guard needs a held-out evaluator and validation prompts")
        self.adapter = adapter
        self.config = config
        self.prompts = list(prompts)
        self.heldout = heldout
        self.validation_prompts = list(validation_prompts)
        self.pretrain_data = pretrain_data
        self.output_dir = Path(output_dir) if output_dir is not None else None
        self.height = config.height or adapter.default_size[0]
        self.width = config.width or adapter.default_size[1]

        if accelerator is None:
            from accelerate import Accelerator

            accelerator = Accelerator(mixed_precision=config.mixed_precision, kwargs_handlers=ddp_handlers())
        self.accelerator = accelerator
        if accelerator.num_processes > 1:
            # Fail before loading anything big: the combined batches must split evenly over the processes.
            shard(config.batch_size, 0, accelerator.num_processes)
            shard(
                config.pretrain_batch_size or config.batch_size,
                0,
                accelerator.num_processes,
                "pretraining batch",
            )
            if config.eta > 0:
                raise ValueError(
                    "DDIM eta > 0 draws sampling noise per process batch; multi-process ReFL needs eta = 0"
                )
        place_on_accelerator(adapter, accelerator, config.mixed_precision)
        scorers = [spec.fn for spec in self.rewards.values()] + ([heldout] if heldout is not None else [])
        for fn in scorers:
            for module in _modules_of(fn):
                # Reward models and evaluators score but never learn here; eval() turns their dropout off.
                module.requires_grad_(False).eval().to(accelerator.device)

        self.unet = adapter.unet
        self._reference: nn.Module | None = None
        self._prepare_trainable()
        self.named_params = {n: p for n, p in self.unet.named_parameters() if p.requires_grad}
        self.optimizer = build_optimizer(self.named_params.values(), config)
        self.ema = ParameterEMA(self.named_params, config.ema_decay) if config.ema_decay else None
        self.unet_for_training, self.optimizer = accelerator.prepare(self.unet, self.optimizer)
        self.guard = HackingGuard(config.guard)
        self.step = 0
        self._best_memory: dict[str, dict[str, torch.Tensor]] | None = None
        self.last_metrics: dict[str, float] = {}

    # ------------------------------------------------------------------ setup

    def _prepare_trainable(self) -> None:
        cfg = self.config
        if cfg.train_mode == "lora":
            add_lora(self.unet, cfg.lora, cfg.seed)
        else:
            self.unet.requires_grad_(True)
            if cfg.kl_weight > 0:
                # Full fine-tuning needs a frozen copy as the reference; LoRA just switches adapters off.
                self._reference = copy.deepcopy(self.unet).requires_grad_(False).eval()
        if cfg.gradient_checkpointing:
            self.unet.enable_gradient_checkpointing()
        self.unet.train()

    @contextlib.contextmanager
    def reference_unet(self) -> Iterator[nn.Module]:
        """The frozen reference denoiser (the base model) for the KL-style penalty."""
        with reference_denoiser(self.unet, self._reference) as unet:
            yield unet

    @property
    def denoising_only(self) -> bool:
        """Only the denoising loss trains (reward scale 0, no KL): the pretraining-loss-only control, and
        reward-ranked fine-tuning, whose denoising data are the reward models' chosen samples."""
        cfg = self.config
        return cfg.reward_scale == 0 and cfg.kl_weight == 0 and cfg.pretrain_loss_weight > 0

    @property
    def reward_weights(self) -> dict[str, float]:
        return {n: s.weight for n, s in self.rewards.items()}

    # ------------------------------------------------------------------ one step

    def _score(self, prompts: list[str], images: torch.Tensor) -> dict[str, torch.Tensor]:
        out = {}
        for name, spec in self.rewards.items():
            value = spec.score(prompts, images)
            if value.shape != (len(prompts),):
                raise ValueError(
                    f"reward {name!r} returned shape {tuple(value.shape)}, expected ({len(prompts)},)"
                )
            out[name] = value.float()
        return out

    def _pretrain_loss(self, generator: torch.Generator) -> torch.Tensor:
        assert self.pretrain_data
        cfg = self.config
        batch = cfg.pretrain_batch_size or cfg.batch_size
        acc = self.accelerator
        index = torch.randint(len(self.pretrain_data), (batch,), generator=generator).tolist()
        # The combined batch is drawn (and VAE-encoded, whose sample draws noise) on every process, which
        # keeps this process's share. Encoding is frozen and without gradients, so only time is repeated.
        mine = shard(batch, acc.process_index, acc.num_processes, "pretraining batch")
        images = torch.stack([self.pretrain_data[i][1] for i in index]).to(acc.device).float()
        if images.shape[-2:] != (self.height, self.width):
            images = F.interpolate(images, size=(self.height, self.width), mode="bilinear", antialias=True)
        adapter = self.adapter
        clean = adapter.encode_images(images, generator=generator).to(adapter.dtype)
        noise = torch.randn(clean.shape, generator=generator).to(clean.device, clean.dtype)
        num_train = adapter.scheduler.config.num_train_timesteps
        lowest = min(num_train - 1, round(cfg.pretrain_noise_floor * num_train))
        timesteps = torch.randint(lowest, num_train, (batch,), generator=generator).to(clean.device)
        prompts = [self.pretrain_data[i][0] for i in index]
        if cfg.caption_dropout > 0:
            # Drawn only when asked for, so runs without dropout keep their exact batches.
            dropped = torch.rand(batch, generator=generator) < cfg.caption_dropout
            prompts = ["" if drop else prompt for prompt, drop in zip(prompts, dropped.tolist(), strict=True)]
        prompts = prompts[mine]
        clean, noise, timesteps = clean[mine], noise[mine], timesteps[mine]
        noisy = adapter.scheduler.add_noise(clean, noise, timesteps)
        cond = adapter.encode_prompts(prompts, guided=False, height=self.height, width=self.width)
        prediction = adapter.denoise(self.unet_for_training, noisy, timesteps, cond.cond)
        target = denoising_target(adapter.scheduler, clean, noise, timesteps)
        return F.mse_loss(prediction.float(), target.float())

    def train_step(self) -> dict[str, float]:
        cfg = self.config
        acc = self.accelerator
        # The same draws on every process (the combined batch's); each keeps its share of the samples.
        generator = _step_generator(cfg.seed, self.step, 0)
        mine = shard(cfg.batch_size, acc.process_index, acc.num_processes)
        prompts = [
            self.prompts[i] for i in torch.randint(len(self.prompts), (cfg.batch_size,), generator=generator)
        ][mine]
        lo, hi = cfg.stop_step_range
        stop_index = int(torch.randint(lo, hi + 1, (1,), generator=generator))
        latents = initial_noise(self.adapter, cfg.batch_size, self.height, self.width, generator)[mine]
        guided = cfg.guidance_scale > 1.0
        cond = self.adapter.encode_prompts(prompts, guided=guided, height=self.height, width=self.width)
        lr = set_learning_rate(self.optimizer, cfg, self.step)
        metrics: dict[str, float] = {"lr": lr, "stop_index": float(stop_index)}

        # Dropout (e.g. LoRA dropout) draws from the global RNG: seed it per step for exact resumption.
        with torch.random.fork_rng(devices=_cuda_devices()), acc.autocast():
            torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=generator)))
            rewards: dict[str, torch.Tensor] = {}
            loss_reward = torch.zeros((), device=acc.device)
            if self.denoising_only:
                # Nothing reads the sampled x0 (no reward, no KL term): skip the costly sampling pass.
                # The draws above are made all the same, so the pretraining batches match a run that sampled.
                forward = None
            else:
                forward = refl_forward(
                    self.adapter,
                    cond,
                    latents,
                    num_inference_steps=cfg.num_inference_steps,
                    stop_index=stop_index,
                    guidance_scale=cfg.guidance_scale,
                    eta=cfg.eta,
                    generator=generator,
                    unet=self.unet_for_training,
                )
                rewards = self._score(prompts, forward.images)
                loss_reward = weighted_reward_loss(
                    rewards,
                    self.reward_weights,
                    scale=cfg.reward_scale,
                    phi_name=cfg.phi,
                    margin=cfg.phi_margin,
                )
            loss = loss_reward
            if cfg.kl_weight > 0:
                assert forward is not None
                loss_kl = self._kl(forward.x_t, forward.timestep, cond, forward.prediction)
                loss = loss + cfg.kl_weight * loss_kl
                metrics["loss_kl"] = float(loss_kl.detach())
            if cfg.pretrain_loss_weight > 0:
                loss_pre = self._pretrain_loss(generator)
                loss = loss + cfg.pretrain_loss_weight * loss_pre
                metrics["loss_pretrain"] = float(loss_pre.detach())

        acc.backward(loss)
        if cfg.max_grad_norm is not None:
            grad_norm = acc.clip_grad_norm_(list(self.named_params.values()), cfg.max_grad_norm)
            metrics["grad_norm"] = float(grad_norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema is not None:
            self.ema.update(self.named_params)
        self.step += 1

        metrics["loss"] = float(loss.detach())
        metrics["loss_reward"] = float(loss_reward.detach())
        for name, value in rewards.items():
            metrics[f"reward/{name}"] = float(value.detach().mean())
        if rewards:
            metrics["reward"] = float(weighted_reward(rewards, self.reward_weights).detach().mean())
        # Means over equal shares: their mean is the combined batch's (lr, stop index and norm are shared).
        metrics = mean_across(acc, metrics)
        self.last_metrics = metrics
        return metrics

    def _kl(
        self, x_t: torch.Tensor, t: torch.Tensor, cond: Conditioning, prediction: torch.Tensor
    ) -> torch.Tensor:
        with torch.no_grad(), self.reference_unet() as reference:
            ref = guided_prediction(self.adapter, reference, x_t, t, cond, self.config.guidance_scale)
        return kl_penalty(prediction, ref)

    # ------------------------------------------------------------------ evaluation and guard

    @contextlib.contextmanager
    def evaluation_weights(self) -> Iterator[nn.Module]:
        """The weights used for sampling/evaluation: EMA when enabled, in eval mode."""
        ema = self.ema.swapped_in(self.named_params) if self.ema is not None else contextlib.nullcontext()
        with ema, eval_mode(self.unet):
            yield self.unet

    @torch.no_grad()
    def generate(
        self, prompts: Sequence[str], seed: int, num_inference_steps: int | None = None
    ) -> torch.Tensor:
        """Images of the current model (EMA weights when enabled), in chunks of ``batch_size``."""
        cfg = self.config
        generator = torch.Generator().manual_seed(seed)
        chunks = []
        with self.evaluation_weights() as unet:
            for start in range(0, len(prompts), cfg.batch_size):
                chunks.append(
                    sample(
                        self.adapter,
                        list(prompts[start : start + cfg.batch_size]),
                        num_inference_steps=num_inference_steps or cfg.num_inference_steps,
                        guidance_scale=cfg.guidance_scale,
                        eta=cfg.eta,
                        height=self.height,
                        width=self.width,
                        generator=generator,
                        unet=unet,
                    )
                )
        return torch.cat(chunks)

    @torch.no_grad()
    def evaluate(self, prompts: Sequence[str] | None = None) -> dict[str, float]:
        """Optimised rewards and the held-out score of the current model on (validation) prompts."""
        scores, _ = self._evaluate(prompts)
        return scores

    @torch.no_grad()
    def _evaluate(self, prompts: Sequence[str] | None = None) -> tuple[dict[str, float], tuple[float, ...]]:
        """(mean scores, held-out score per prompt averaged over its ``guard.seeds`` samples)."""
        prompts = list(prompts if prompts is not None else self.validation_prompts)
        guard = self.config.guard
        repeated = [p for p in prompts for _ in range(guard.seeds)]
        # One generator for the whole list: every evaluation draws the same noise for the same slot.
        images = self.generate(repeated, guard.seed, guard.num_inference_steps)
        rewards = self._score(repeated, images)
        out = {f"reward/{n}": float(v.mean()) for n, v in rewards.items()}
        out["reward"] = float(weighted_reward(rewards, self.reward_weights).mean())
        per_prompt: tuple[float, ...] = ()
        if self.heldout is not None:
            heldout = self.heldout(repeated, images).float()
            out["heldout"] = float(heldout.mean())
            per_prompt = tuple(heldout.view(len(prompts), guard.seeds).mean(1).tolist())
        return out, per_prompt

    def _guard_check(self) -> tuple[dict[str, float], bool]:
        # The main process evaluates; every process observes its scores, so all hold the same guard state
        # and take the same decision.
        scores, per_prompt = main_decides(self.accelerator, self._evaluate)
        decision = self.guard.observe(
            GuardEvaluation(self.step, scores["reward"], scores["heldout"], prompt_scores=per_prompt)
        )
        if decision.improved:
            self._snapshot_best()
        metrics = {f"val/{k}": v for k, v in scores.items()}
        metrics["val/diverging"] = float(decision.diverging)
        latest = self.guard.history[-1]
        if latest.gain is not None:
            metrics["val/gain"] = latest.gain
            metrics["val/gain_low"] = latest.gain_low if math.isfinite(latest.gain_low or 0.0) else -1.0
        return metrics, decision.stop

    def _snapshot_best(self) -> None:
        if self.output_dir is not None:
            self.save(self.output_dir / "best", include_optimizer=False)
            self._best_memory = None
        else:
            # Without an output folder the best weights stay in (CPU) memory.
            self._best_memory = {
                "weights": {n: p.detach().to("cpu", copy=True) for n, p in self.named_params.items()},
                "ema": {n: t.to("cpu", copy=True) for n, t in self.ema.state_dict().items()}
                if self.ema
                else {},
            }

    def restore_best(self) -> int:
        """Load the weights (and EMA) of the best evaluation by held-out score; returns its step."""
        if self.guard.best is None:
            raise RuntimeError("no guard evaluation yet")
        if self._best_memory is not None:
            self._load_trainable(self._best_memory["weights"])
            if self.ema is not None:
                self.ema.load_state_dict(self._best_memory["ema"])
        else:
            assert self.output_dir is not None
            self.accelerator.wait_for_everyone()
            best_dir = self.output_dir / "best"
            self._load_trainable(load_weights(best_dir))
            if self.ema is not None:
                self.ema.load_state_dict(load_file(str(best_dir / EMA_FILE)))
        return self.guard.best.step

    # ------------------------------------------------------------------ the loop

    def train(self, progress: ProgressCallback | None = None) -> ReFLRunSummary:
        """Run to ``max_steps`` (or an earlier stop) and leave the chosen weights in the model.

        With the guard on, the chosen weights are the best evaluation's; with EMA they are the averaged
        ones. ``output_dir/last`` keeps the raw state of the last step for resuming in a new trainer.
        """
        cfg = self.config
        total = cfg.max_steps
        guard_on = cfg.guard.enabled
        stop_reason: str | None = None
        if guard_on and not self.guard.history:
            # Step 0 is a candidate too: if every update hurts the held-out score we keep the base model.
            metrics, _ = self._guard_check()
            self.last_metrics = metrics
        while self.step < total:
            metrics = self.train_step()
            if guard_on and (self.step % cfg.guard.every == 0 or self.step == total):
                guard_metrics, stop = self._guard_check()
                metrics.update(guard_metrics)
                if stop:
                    stop_reason = "reward_hacking"
            if self.output_dir is not None and cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0:
                self.save(self.output_dir / "last")
            keep_going = main_decides(
                self.accelerator, lambda m=metrics: report_progress(progress, self.step, total, m)
            )
            if stop_reason is None and not keep_going:
                stop_reason = "requested"
            if stop_reason is not None:
                break

        checkpoint = None
        if self.output_dir is not None:
            checkpoint = self.save(self.output_dir / "last")
        restored_step = None
        if (
            guard_on
            and self.guard.best is not None
            and (stop_reason == "reward_hacking" or cfg.guard.restore_best_at_end)
        ):
            restored_step = self.restore_best()
            if self.output_dir is not None:
                checkpoint = self.output_dir / "best"
        if self.ema is not None:
            # What training hands on is the averaged model; "last" still holds the raw weights to resume.
            self.ema.copy_to(self.named_params)
        return ReFLRunSummary(
            steps=self.step,
            stopped_early=stop_reason is not None,
            stop_reason=stop_reason,
            best_step=None if self.guard.best is None else self.guard.best.step,
            restored_step=restored_step,
            guard_history=[_history_entry(e) for e in self.guard.history],
            last_metrics=dict(self.last_metrics),
            checkpoint=checkpoint,
        )

    # ------------------------------------------------------------------ checkpoints

    def checkpoint_config(self) -> dict[str, Any]:
        return {
            "refl": config_to_dict(self.config),
            "model": self.adapter.describe(),
            "rewards": self.reward_weights,
            "train_mode": self.config.train_mode,
        }

    def trainable_state(self) -> dict[str, torch.Tensor]:
        return {n: p.detach() for n, p in self.named_params.items()}

    def save(self, directory: str | Path, *, include_optimizer: bool = True) -> Path:
        """Self-describing checkpoint: trainable weights (+ EMA, optimiser) as safetensors, config, metrics.

        Called by every process; the main process writes (the states are equal), the others wait for it.
        """
        directory = Path(directory)
        main_writes(self.accelerator, lambda: self._write(directory, include_optimizer))
        return directory

    def _write(self, directory: Path, include_optimizer: bool) -> Path:
        extra_tensors: dict[str, dict[str, torch.Tensor]] = {}
        optimizer_meta = None
        if self.ema is not None:
            extra_tensors[EMA_FILE] = self.ema.state_dict()
        if include_optimizer:
            tensors, optimizer_meta = optimizer_state_to_tensors(self.optimizer.state_dict())
            extra_tensors[OPTIMIZER_FILE] = tensors
        metadata = {
            "step": self.step,
            "metrics": self.last_metrics,
            "guard": self.guard.state_dict(),
            "optimizer": optimizer_meta,
            "deploy_weights": "ema" if self.ema is not None else "raw",
        }
        with tempfile.TemporaryDirectory() as tmp:
            extra_files = {}
            for name, tensors in extra_tensors.items():
                path = Path(tmp) / name
                save_file(
                    {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}, str(path)
                )
                extra_files[name] = path
            return save_checkpoint(
                directory,
                self.trainable_state(),
                kind=CHECKPOINT_KIND,
                config=self.checkpoint_config(),
                metadata=metadata,
                extra_files=extra_files,
            )

    def load(self, directory: str | Path) -> None:
        """Resume: weights, EMA, optimiser state, step counter and guard history."""
        directory = Path(directory)
        meta = read_checkpoint_meta(directory, kind=CHECKPOINT_KIND)
        saved = meta["config"]
        expected = self.checkpoint_config()
        problems = [
            p
            for p in diff_configs(
                {k: v for k, v in expected["refl"].items() if k not in RESUMABLE_CHANGES},
                {k: v for k, v in saved["refl"].items() if k not in RESUMABLE_CHANGES},
            )
        ]
        if saved["model"].get("family") != expected["model"]["family"]:
            problems.append(
                f"model family: expected {expected['model']['family']!r}, got {saved['model'].get('family')!r}"
            )
        if saved["rewards"] != expected["rewards"]:
            problems.append(f"rewards: expected {expected['rewards']}, checkpoint has {saved['rewards']}")
        if problems:
            raise CheckpointError(f"{directory}: checkpoint does not match this run: " + "; ".join(problems))
        self._load_trainable(load_weights(directory))
        if self.ema is not None:
            self.ema.load_state_dict(load_file(str(directory / EMA_FILE)))
        metadata = meta["metadata"]
        if metadata.get("optimizer") is None:
            raise CheckpointError(f"{directory}: no optimiser state (a 'best' snapshot cannot be resumed)")
        state = optimizer_state_from_tensors(
            load_file(str(directory / OPTIMIZER_FILE)), metadata["optimizer"]
        )
        self.optimizer.load_state_dict(state)
        self.step = int(metadata["step"])
        self.guard.load_state_dict(metadata["guard"])
        self.last_metrics = dict(metadata.get("metrics") or {})
        # The best snapshot lives next to the run; without it a later rollback would have nothing to load.
        has_best = self.output_dir is not None and (self.output_dir / "best").is_dir()
        if self.config.guard.enabled and self.guard.best is not None and not has_best:
            raise CheckpointError(f"{self.output_dir}: guard history present but no 'best' snapshot")

    def _load_trainable(self, state: Mapping[str, torch.Tensor]) -> None:
        load_trainable(self.named_params, state)


def _cuda_devices() -> list[int]:
    return [torch.cuda.current_device()] if torch.cuda.is_available() else []


def _history_entry(evaluation: GuardEvaluation) -> dict[str, Any]:
    """A guard evaluation for the run summary (JSON-safe; the per-prompt scores stay in the guard state)."""
    entry = {k: v for k, v in dataclasses.asdict(evaluation).items() if k != "prompt_scores"}
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in entry.items()}
