"""Diffusion-DPO trainer: one code path for every model family (via :class:`DiffusionAdapter`).

Each step draws pairs, one timestep per pair and one noise per pair from a generator seeded by
(seed, step) — so a resumed run repeats exactly what an uninterrupted one would have done — noises the
winner and the loser with that same noise at that same timestep, and compares the trained model's
denoising errors with the frozen reference's (see ``losses.py``). Pair images go through the VAE once
(latents are cached per pair); the world model works in pixel space, where encoding is a rescale.

The reference is the base model: a frozen deep copy in full fine-tuning, the same UNet with its LoRA
adapters switched off in LoRA mode (no second copy of an SDXL UNet in memory). Checkpoints have the
ReFL trainer's layout with ``kind = "dpo"``, so ``apply_refl_checkpoint`` / ``load_policy`` chain them.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import tempfile
from collections.abc import Iterator, Mapping, Sequence
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
from training.ml.dpo.config import DPOConfig
from training.ml.dpo.losses import denoising_errors, dpo_logits, dpo_loss, implicit_reward_accuracy
from training.ml.refl.adapters import Cond, DiffusionAdapter
from training.ml.refl.losses import denoising_target
from training.ml.refl.optim import (
    build_optimizer,
    optimizer_state_from_tensors,
    optimizer_state_to_tensors,
    set_learning_rate,
)
from training.ml.refl.trainable import add_lora, load_trainable, place_on_accelerator, reference_denoiser
from training.ml.reward.data import ImageLoader, PairRecord

CHECKPOINT_KIND = "dpo"
OPTIMIZER_FILE = "optimizer.safetensors"
RESUMABLE_CHANGES = frozenset({"max_steps", "checkpoint_every"})


@dataclasses.dataclass
class DPORunSummary:
    steps: int
    stopped_early: bool
    stop_reason: str | None  # "requested" or None
    last_metrics: dict[str, float]
    checkpoint: Path | None = None


@dataclasses.dataclass(frozen=True)
class TrainingPair:
    """A pair as the trainer uses it: its record, soft label (1 or ½) and loss weight."""

    record: PairRecord
    label: float
    weight: float


def training_pairs(pairs: Sequence[PairRecord], config: DPOConfig) -> list[TrainingPair]:
    """Ties skipped or down-weighted, pair weights applied or not, zero-weight pairs dropped."""
    out = []
    for pair in pairs:
        weight = pair.weight if config.use_pair_weights else 1.0
        if pair.label == 0.5:
            if config.ties == "skip":
                continue
            weight *= config.tie_weight
        if weight > 0:
            out.append(TrainingPair(pair, pair.label, weight))
    return out


def _step_generator(seed: int, step: int, stream: int) -> torch.Generator:
    return torch.Generator().manual_seed((seed * 1_000_003 + step * 9_973 + stream * 7_919) % (2**63 - 1))


def _cuda_devices() -> list[int]:
    return [torch.cuda.current_device()] if torch.cuda.is_available() else []


class DPOTrainer:
    """Stateful Diffusion-DPO run over one adapter. ``train`` runs to ``max_steps``; ``train_step`` one step."""

    def __init__(
        self,
        adapter: DiffusionAdapter,
        config: DPOConfig,
        pairs: Sequence[PairRecord],
        loader: ImageLoader,
        *,
        output_dir: str | Path | None = None,
        accelerator: Any | None = None,
    ) -> None:
        self.pairs = training_pairs(pairs, config)
        if not self.pairs:
            raise ValueError("Diffusion-DPO needs at least one pair with a winner (or kept ties)")
        self.adapter = adapter
        self.config = config
        self.loader = loader
        self.output_dir = Path(output_dir) if output_dir is not None else None
        self.height = config.height or adapter.default_size[0]
        self.width = config.width or adapter.default_size[1]

        if accelerator is None:
            from accelerate import Accelerator

            accelerator = Accelerator(mixed_precision=config.mixed_precision, kwargs_handlers=ddp_handlers())
        self.accelerator = accelerator
        if accelerator.num_processes > 1:
            shard(config.batch_size, 0, accelerator.num_processes)  # refused before anything is loaded
        frozen_dtype = place_on_accelerator(adapter, accelerator, config.mixed_precision)

        self.unet = adapter.unet
        self._reference: nn.Module | None = None
        self._prepare_trainable()
        if self._reference is not None and frozen_dtype is not None:
            # The reference never trains: like the VAE it may live in the mixed-precision dtype (the
            # authors' code does the same), which halves the second UNet's memory.
            self._reference.to(dtype=frozen_dtype)
        self.named_params = {n: p for n, p in self.unet.named_parameters() if p.requires_grad}
        self.optimizer = build_optimizer(self.named_params.values(), config)  # type: ignore[arg-type]
        self.unet_for_training, self.optimizer = accelerator.prepare(self.unet, self.optimizer)
        self.step = 0
        self.last_metrics: dict[str, float] = {}
        self._latents: dict[tuple[int, str, str], tuple[torch.Tensor, torch.Tensor]] = {}
        self._conds: dict[str, Cond] = {}

    # ------------------------------------------------------------------ setup

    def _prepare_trainable(self) -> None:
        cfg = self.config
        if cfg.train_mode == "lora":
            add_lora(self.unet, cfg.lora, cfg.seed)
        else:
            # Copied before any update, so the reference is the model training starts from.
            self._reference = copy.deepcopy(self.unet).requires_grad_(False).eval()
            self.unet.requires_grad_(True)
        if cfg.gradient_checkpointing:
            self.unet.enable_gradient_checkpointing()
        self.unet.train()

    @contextlib.contextmanager
    def reference_unet(self) -> Iterator[nn.Module]:
        """The frozen reference denoiser (the model training started from)."""
        with reference_denoiser(self.unet, self._reference) as unet:
            yield unet

    # ------------------------------------------------------------------ data

    def _load_image(self, path: str, sha256: str) -> torch.Tensor:
        image = self.loader(path, sha256).float()
        if image.ndim != 3 or image.shape[0] != 3:
            raise ValueError(f"{path}: expected a [3,H,W] image, got {tuple(image.shape)}")
        if image.shape[-2:] != (self.height, self.width):
            image = F.interpolate(
                image[None], size=(self.height, self.width), mode="bilinear", antialias=True
            )[0]
        return image

    @torch.no_grad()
    def pair_latents(self, record: PairRecord) -> tuple[torch.Tensor, torch.Tensor]:
        """(winner, loser) clean latents of a pair, encoded once; the VAE's sample is seeded by the pair."""
        key = (record.pair_id, record.winner_sha256, record.loser_sha256)
        if key not in self._latents:
            images = torch.stack(
                [
                    self._load_image(record.winner_path, record.winner_sha256),
                    self._load_image(record.loser_path, record.loser_sha256),
                ]
            ).to(self.accelerator.device)
            generator = torch.Generator().manual_seed(self.config.seed * 1_000_003 + record.pair_id)
            latents = self.adapter.encode_images(images, generator=generator).to(self.adapter.dtype)
            self._latents[key] = (latents[0], latents[1])
        return self._latents[key]

    def _cond(self, prompts: Sequence[str]) -> Cond:
        for prompt in set(prompts) - set(self._conds):
            encoded = self.adapter.encode_prompts(
                [prompt], guided=False, height=self.height, width=self.width
            )
            self._conds[prompt] = encoded.cond
        keys = self._conds[prompts[0]].keys()
        return {k: torch.cat([self._conds[p][k] for p in prompts]) for k in keys}

    # ------------------------------------------------------------------ the objective

    def _logits(
        self,
        records: Sequence[PairRecord],
        generator: torch.Generator,
        *,
        unet: nn.Module | None = None,
        drawn: int | None = None,
        mine: slice = slice(None),
    ) -> dict[str, torch.Tensor]:
        """Logits of ``records`` with noise and timesteps drawn from ``generator``.

        ``drawn`` pairs' noise and timesteps are drawn (the combined batch's), of which ``records`` are the
        ``mine`` share. ``unet`` defaults to the trained one as the training step calls it; evaluation on
        one process passes the plain module (a DDP-wrapped call would wait for the other processes).
        """
        adapter = self.adapter
        device = self.accelerator.device
        latents = [self.pair_latents(r) for r in records]
        winners = torch.stack([w for w, _ in latents])
        losers = torch.stack([lo for _, lo in latents])
        clean = torch.cat([winners, losers])
        drawn = len(records) if drawn is None else drawn
        # The same noise and the same timestep for a pair's winner and loser: only the image differs.
        noise = torch.randn((drawn, *winners.shape[1:]), generator=generator)[mine].to(device, clean.dtype)
        noise = torch.cat([noise, noise])
        num_train = adapter.scheduler.config.num_train_timesteps
        timesteps = torch.randint(0, num_train, (drawn,), generator=generator)[mine].to(device).repeat(2)
        noisy = adapter.scheduler.add_noise(clean, noise, timesteps)
        prompts = [r.prompt for r in records]
        cond = self._cond(prompts + prompts)
        target = denoising_target(adapter.scheduler, clean, noise, timesteps)
        prediction = adapter.denoise(self.unet_for_training if unet is None else unet, noisy, timesteps, cond)
        with torch.no_grad(), self.reference_unet() as reference:
            ref_prediction = adapter.denoise(reference, noisy, timesteps, cond)
        model_w, model_l = denoising_errors(prediction, target).chunk(2)
        ref_w, ref_l = denoising_errors(ref_prediction.detach(), target).chunk(2)
        return {
            "logits": dpo_logits(model_w, model_l, ref_w, ref_l, self.config.beta),
            "model_mse": 0.5 * (model_w.mean() + model_l.mean()),
            "ref_mse": 0.5 * (ref_w.mean() + ref_l.mean()),
        }

    def _loss(self, indices: Sequence[int], out: Mapping[str, torch.Tensor]) -> torch.Tensor:
        labels = torch.tensor([self.pairs[i].label for i in indices])
        weights = torch.tensor([self.pairs[i].weight for i in indices])
        return dpo_loss(out["logits"], labels.to(out["logits"].device), weights.to(out["logits"].device))

    def train_step(self) -> dict[str, float]:
        cfg = self.config
        acc = self.accelerator
        # The same draws on every process (the combined batch's); each keeps its share of the pairs.
        generator = _step_generator(cfg.seed, self.step, 0)
        mine = shard(cfg.batch_size, acc.process_index, acc.num_processes)
        indices = torch.randint(len(self.pairs), (cfg.batch_size,), generator=generator).tolist()[mine]
        lr = set_learning_rate(self.optimizer, cfg, self.step)  # type: ignore[arg-type]
        metrics: dict[str, float] = {"lr": lr}
        # Dropout (e.g. LoRA dropout) draws from the global RNG: seed it per step for exact resumption.
        with torch.random.fork_rng(devices=_cuda_devices()), acc.autocast():
            torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=generator)))
            out = self._logits(
                [self.pairs[i].record for i in indices], generator, drawn=cfg.batch_size, mine=mine
            )
            loss = self._loss(indices, out)
        acc.backward(loss)
        if cfg.max_grad_norm is not None:
            grad_norm = acc.clip_grad_norm_(list(self.named_params.values()), cfg.max_grad_norm)
            metrics["grad_norm"] = float(grad_norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1

        # Metrics of the combined batch: means over equal shares average; the accuracy needs every logit.
        shared = mean_across(
            acc,
            {
                "loss": float(loss.detach()),
                "model_mse": float(out["model_mse"].detach()),
                "ref_mse": float(out["ref_mse"].detach()),
            },
        )
        metrics.update(shared)
        logits = out["logits"].detach().float()
        decided = torch.tensor([float(self.pairs[i].label == 1.0) for i in indices], device=logits.device)
        if acc.num_processes > 1:
            logits, decided = acc.gather(logits), acc.gather(decided)
        decided = decided > 0
        metrics["margin"] = float(logits.mean())
        if bool(decided.any()):
            metrics["implicit_acc"] = float(implicit_reward_accuracy(logits[decided]))
        self.last_metrics = metrics
        return metrics

    @torch.no_grad()
    def evaluate_pairs(
        self, pairs: Sequence[PairRecord], *, seed: int = 1234, draws: int = 1
    ) -> dict[str, float]:
        """Implicit reward accuracy and DPO loss on (held-out) decided pairs, on noise fixed by ``seed``.

        Every evaluation draws the same noise and timesteps for the same pair slot, so two evaluations
        differ only by the weights.
        """
        decided = [p for p in pairs if p.label == 1.0]
        if not decided:
            raise ValueError("no decided pairs to evaluate")
        generator = torch.Generator().manual_seed(seed)
        logits = []
        was_training = self.unet.training
        self.unet.eval()
        try:
            for _ in range(draws):
                for start in range(0, len(decided), self.config.batch_size):
                    chunk = decided[start : start + self.config.batch_size]
                    logits.append(self._logits(chunk, generator, unet=self.unet)["logits"].float())
        finally:
            self.unet.train(was_training)
        z = torch.cat(logits)
        return {"implicit_acc": float(implicit_reward_accuracy(z)), "loss": float(dpo_loss(z))}

    # ------------------------------------------------------------------ the loop

    def train(self, progress: ProgressCallback | None = None) -> DPORunSummary:
        """Run to ``max_steps`` (or an earlier requested stop); ``output_dir/last`` holds the final state."""
        cfg = self.config
        stop_reason: str | None = None
        while self.step < cfg.max_steps:
            metrics = self.train_step()
            if self.output_dir is not None and cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0:
                self.save(self.output_dir / "last")
            keep_going = main_decides(
                self.accelerator, lambda m=metrics: report_progress(progress, self.step, cfg.max_steps, m)
            )
            if not keep_going:
                stop_reason = "requested"
                break
        checkpoint = self.save(self.output_dir / "last") if self.output_dir is not None else None
        return DPORunSummary(
            steps=self.step,
            stopped_early=stop_reason is not None,
            stop_reason=stop_reason,
            last_metrics=dict(self.last_metrics),
            checkpoint=checkpoint,
        )

    # ------------------------------------------------------------------ checkpoints

    def checkpoint_config(self) -> dict[str, Any]:
        return {
            "dpo": config_to_dict(self.config),
            "model": self.adapter.describe(),
            "train_mode": self.config.train_mode,
            "pairs": len(self.pairs),
        }

    def trainable_state(self) -> dict[str, torch.Tensor]:
        return {n: p.detach() for n, p in self.named_params.items()}

    def save(self, directory: str | Path, *, include_optimizer: bool = True) -> Path:
        """Self-describing checkpoint: trainable weights (+ optimiser) as safetensors, config, metrics.

        Called by every process; the main process writes (the states are equal), the others wait for it.
        """
        directory = Path(directory)
        main_writes(self.accelerator, lambda: self._write(directory, include_optimizer))
        return directory

    def _write(self, directory: Path, include_optimizer: bool) -> Path:
        optimizer_meta = None
        with tempfile.TemporaryDirectory() as tmp:
            extra_files = {}
            if include_optimizer:
                tensors, optimizer_meta = optimizer_state_to_tensors(self.optimizer.state_dict())
                path = Path(tmp) / OPTIMIZER_FILE
                save_file(
                    {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}, str(path)
                )
                extra_files[OPTIMIZER_FILE] = path
            return save_checkpoint(
                directory,
                self.trainable_state(),
                kind=CHECKPOINT_KIND,
                config=self.checkpoint_config(),
                metadata={
                    "step": self.step,
                    "metrics": self.last_metrics,
                    "optimizer": optimizer_meta,
                    "deploy_weights": "raw",
                },
                extra_files=extra_files,
            )

    def load(self, directory: str | Path) -> None:
        """Resume: weights, optimiser state and step counter (the config must match but for its length)."""
        directory = Path(directory)
        meta = read_checkpoint_meta(directory, kind=CHECKPOINT_KIND)
        saved = meta["config"]
        expected = self.checkpoint_config()
        problems = diff_configs(
            {k: v for k, v in expected["dpo"].items() if k not in RESUMABLE_CHANGES},
            {k: v for k, v in saved["dpo"].items() if k not in RESUMABLE_CHANGES},
        )
        if saved["model"].get("family") != expected["model"]["family"]:
            problems.append(
                f"model family: expected {expected['model']['family']!r}, got {saved['model'].get('family')!r}"
            )
        if saved.get("pairs") != expected["pairs"]:
            problems.append(f"pairs: expected {expected['pairs']}, checkpoint has {saved.get('pairs')}")
        if problems:
            raise CheckpointError(f"{directory}: checkpoint does not match this run: " + "; ".join(problems))
        metadata = meta["metadata"]
        if metadata.get("optimizer") is None:
            raise CheckpointError(f"{directory}: no optimiser state to resume from")
        self._load_trainable(load_weights(directory))
        state = optimizer_state_from_tensors(
            load_file(str(directory / OPTIMIZER_FILE)), metadata["optimizer"]
        )
        self.optimizer.load_state_dict(state)
        self.step = int(metadata["step"])
        self.last_metrics = dict(metadata.get("metrics") or {})

    def _load_trainable(self, state: Mapping[str, torch.Tensor]) -> None:
        load_trainable(self.named_params, state)
