"""Algorithm 1's fine-tuning stage as ``(config, data, progress) -> CheckpointInfo``, plus loading its output.

The stage builds the base model (or takes a prebuilt adapter), loads the reward models it optimises and
the held-out evaluator it must not optimise, resumes from ``output_dir/last`` when a previous attempt
left one, and returns the checkpoint the guard chose (``best``) or the last one when the guard is off.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from training.ml.common import (
    CheckpointError,
    CheckpointInfo,
    ProgressCallback,
    config_from_dict,
    load_weights,
    read_checkpoint_meta,
)
from training.ml.refl.adapters import DiffusionAdapter, load_sd15_adapter, load_sdxl_adapter
from training.ml.refl.config import LoRASettings, ReFLConfig
from training.ml.refl.export import export_for_diffusers
from training.ml.refl.trainer import (
    CHECKPOINT_KIND,
    EMA_FILE,
    PretrainData,
    ReFLTrainer,
    RewardFn,
    RewardSpec,
)

# family → loader of a base model from a local folder; the synthetic world registers itself here.
ADAPTER_LOADERS: dict[str, Callable[[str], DiffusionAdapter]] = {
    "sd15": load_sd15_adapter,
    "sdxl": load_sdxl_adapter,
}


@dataclasses.dataclass(frozen=True)
class RewardSource:
    """A trained reward model checkpoint (training.ml.reward) and its weight w_i in the ReFL loss."""

    name: str
    path: str
    weight: float = 1.0

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("reward name must not be empty")
        if self.weight < 0:
            raise ValueError(f"reward weight must be >= 0, got {self.weight}")


@dataclasses.dataclass(frozen=True)
class ReFLStageConfig:
    refl: ReFLConfig
    output_dir: str
    family: str = "sd15"
    base_model_path: str | None = None  # local folder; None only when the data carries a prebuilt adapter
    rewards: tuple[RewardSource, ...] = ()
    # Held-out reward model checkpoints (an ensemble, averaged) for the hacking guard; never optimised.
    heldout_paths: tuple[str, ...] = ()
    resume: bool = True

    def __post_init__(self) -> None:
        names = [r.name for r in self.rewards]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate reward names {names}")
        overlap = {str(Path(p).resolve()) for p in self.heldout_paths} & {
            str(Path(r.path).resolve()) for r in self.rewards
        }
        if overlap:
            raise ValueError(f"a held-out evaluator must not be optimised: {sorted(overlap)}")
        object.__setattr__(self, "rewards", tuple(self.rewards))
        object.__setattr__(self, "heldout_paths", tuple(self.heldout_paths))


@dataclasses.dataclass
class ReFLStageData:
    prompts: Sequence[str]
    validation_prompts: Sequence[str] = ()
    pretrain_data: PretrainData | None = None
    # Prebuilt components take precedence over the paths in the config (tests, the synthetic world).
    adapter: DiffusionAdapter | None = None
    reward_fns: Mapping[str, RewardSpec | RewardFn] | None = None
    heldout: RewardFn | None = None


def _load_world(path: str) -> DiffusionAdapter:
    from training.ml.refl.world_adapter import load_world_adapter

    return load_world_adapter(path)


ADAPTER_LOADERS["world"] = _load_world


def load_reward_fns(
    sources: Sequence[RewardSource], device: str | torch.device = "cpu"
) -> dict[str, RewardSpec]:
    from training.ml.reward.checkpoint import load_reward_model

    return {s.name: RewardSpec(load_reward_model(s.path, device=device).score, s.weight) for s in sources}


def heldout_ensemble(paths: Sequence[str], device: str | torch.device = "cpu") -> RewardFn:
    """Mean of the normalised scores of several held-out reward models (no gradients needed)."""
    from training.ml.reward.checkpoint import load_reward_model

    models = [load_reward_model(p, device=device).requires_grad_(False) for p in paths]
    if not models:
        raise ValueError("no held-out reward model paths")

    @torch.no_grad()
    def score(prompts: list[str], images: torch.Tensor) -> torch.Tensor:
        return torch.stack([m.score(prompts, images) for m in models]).mean(0)

    return score


def finetune_refl(
    config: ReFLStageConfig, data: ReFLStageData, progress: ProgressCallback | None = None
) -> CheckpointInfo:
    adapter = data.adapter
    if adapter is None:
        if config.base_model_path is None:
            raise ValueError("no base model: give base_model_path or a prebuilt adapter")
        if config.family not in ADAPTER_LOADERS:
            raise ValueError(f"unknown model family {config.family!r}; known: {sorted(ADAPTER_LOADERS)}")
        adapter = ADAPTER_LOADERS[config.family](config.base_model_path)
    elif adapter.family != config.family:
        raise ValueError(f"adapter family {adapter.family!r} differs from config family {config.family!r}")
    rewards = data.reward_fns if data.reward_fns is not None else load_reward_fns(config.rewards)
    heldout = data.heldout
    if heldout is None and config.heldout_paths:
        heldout = heldout_ensemble(config.heldout_paths)
    output = Path(config.output_dir)
    trainer = ReFLTrainer(
        adapter,
        config.refl,
        rewards,
        data.prompts,
        heldout=heldout,
        validation_prompts=data.validation_prompts,
        pretrain_data=data.pretrain_data,
        output_dir=output,
    )
    if config.resume and (output / "last").is_dir():
        trainer.load(output / "last")
    summary = trainer.train(progress)
    assert summary.checkpoint is not None
    if trainer.accelerator.is_main_process:
        export_for_diffusers(adapter, summary.checkpoint, config.refl.train_mode)
    metrics: dict[str, Any] = {
        "steps": summary.steps,
        "stop_reason": summary.stop_reason,
        "best_step": summary.best_step,
        "restored_step": summary.restored_step,
        "guard_history": summary.guard_history,
        "last": summary.last_metrics,
    }
    return CheckpointInfo(
        path=summary.checkpoint, kind=CHECKPOINT_KIND, metrics=metrics, stopped_early=summary.stopped_early
    )


APPLICABLE_KINDS = (CHECKPOINT_KIND, "dpo")


def apply_refl_checkpoint(adapter: DiffusionAdapter, directory: str | Path) -> dict[str, Any]:
    """Put a ReFL (or Diffusion-DPO) checkpoint's deployable weights (EMA when it has them) into ``adapter.unet``.

    LoRA checkpoints get the same adapter layout added first; full checkpoints overwrite the UNet.
    Returns the checkpoint's JSON metadata.
    """
    directory = Path(directory)
    meta = read_checkpoint_meta(directory)
    # Diffusion-DPO checkpoints share this layout; their settings sit under "dpo" instead of "refl".
    if meta.get("kind") not in APPLICABLE_KINDS:
        raise CheckpointError(
            f"{directory}: checkpoint holds a {meta.get('kind')!r}, expected one of {APPLICABLE_KINDS}"
        )
    stored = meta["config"]
    if stored["model"].get("family") != adapter.family:
        raise CheckpointError(
            f"{directory}: checkpoint is for a {stored['model'].get('family')!r} model, not {adapter.family!r}"
        )
    use_ema = meta["metadata"].get("deploy_weights") == "ema" and (directory / EMA_FILE).is_file()
    weights = load_file(str(directory / EMA_FILE)) if use_ema else load_weights(directory)
    unet = adapter.unet
    if stored["train_mode"] == "lora":
        from peft import LoraConfig

        lora = config_from_dict(LoRASettings, stored[meta["kind"]]["lora"])
        unet.add_adapter(
            LoraConfig(
                r=lora.rank,
                lora_alpha=lora.alpha if lora.alpha is not None else lora.rank,
                lora_dropout=lora.dropout,
                target_modules=list(lora.target_modules),
            )
        )
    params = dict(unet.named_parameters())
    missing = sorted(set(weights) - set(params))
    if missing:
        raise CheckpointError(f"{directory}: weights not in the model: {missing[:3]}")
    if stored["train_mode"] == "full" and set(weights) != set(params):
        raise CheckpointError(f"{directory}: full checkpoint does not cover the UNet")
    with torch.no_grad():
        for name, value in weights.items():
            params[name].copy_(value.to(params[name].device, params[name].dtype))
    unet.requires_grad_(False).eval()
    return meta


def stage_config_from_dict(data: Mapping[str, Any]) -> ReFLStageConfig:
    return config_from_dict(ReFLStageConfig, data)


__all__ = [
    "ADAPTER_LOADERS",
    "ReFLConfig",
    "ReFLStageConfig",
    "ReFLStageData",
    "RewardSource",
    "apply_refl_checkpoint",
    "finetune_refl",
    "heldout_ensemble",
    "load_reward_fns",
    "stage_config_from_dict",
]
