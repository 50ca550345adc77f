"""A tiny text-conditioned pixel-space diffusion model for the synthetic world (its "SDXL").

- UNet: diffusers `UNet2DConditionModel` on 3 x 32 x 32 pixels (no VAE: decode is the identity map from
  [-1, 1] to [0, 1]), with cross-attention at the 16 px and 8 px levels and in the mid block.
- Text encoder: learned word + position embeddings and a small pre-norm transformer.
- Tokenizer: word level over the grammar's words (`assets/vocab.json`).
- Schedulers: DDPM for training, DDIM (same betas, trailing spacing) for sampling.
Saved as `model.safetensors` + `config.json` + `vocab.json` + `scheduler_config.json`.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
from diffusers import DDIMScheduler, DDPMScheduler, UNet2DConditionModel
from safetensors.torch import load_file, save_file
from torch import nn

from .tokenizer import ASSETS, WordTokenizer

PRETRAINED_DIR = ASSETS / "base"


@dataclass(frozen=True)
class WorldModelConfig:
    image_size: int = 32
    block_out_channels: tuple[int, ...] = (32, 64, 64)
    layers_per_block: int = 1
    # Cross-attention on this many of the lowest-resolution levels, plus the mid block (None: every level
    # but the full-resolution one, i.e. 16 px and 8 px for 32 px images). Attention at 8 px only is 40 %
    # cheaper per step but drew multi-coloured containers at equal CPU budget.
    attention_levels: int | None = None
    attention_heads: int = 4
    norm_num_groups: int = 8
    text_dim: int = 64
    text_layers: int = 2
    text_heads: int = 4
    text_ff: int = 128
    max_length: int = 12
    vocab_size: int = 29
    prediction_type: str = "v_prediction"
    num_train_timesteps: int = 1000
    beta_schedule: str = "squaredcos_cap_v2"

    def __post_init__(self) -> None:
        if self.image_size % (2 ** (len(self.block_out_channels) - 1)) != 0:
            raise ValueError("image_size must be divisible by the UNet's total downsampling")
        if len(self.block_out_channels) < 2:
            raise ValueError("the UNet needs at least two levels")
        if self.attention_levels is not None and not 0 <= self.attention_levels < len(
            self.block_out_channels
        ):
            raise ValueError("attention_levels must leave the full-resolution level without attention")
        if any(c % self.norm_num_groups for c in self.block_out_channels):
            raise ValueError("every block width must be divisible by norm_num_groups")
        if any(c % self.attention_heads for c in self.block_out_channels):
            raise ValueError("every block width must be divisible by attention_heads")
        if self.text_dim % self.text_heads:
            raise ValueError("text_dim must be divisible by text_heads")
        if self.prediction_type not in ("epsilon", "v_prediction", "sample"):
            raise ValueError(f"unknown prediction_type {self.prediction_type!r}")
        if self.layers_per_block < 1 or self.text_layers < 0 or self.max_length < 3:
            raise ValueError("layer counts and max_length must be positive")

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["block_out_channels"] = list(self.block_out_channels)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> WorldModelConfig:
        known = {item.name for item in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown config keys {sorted(unknown)}")
        values = dict(data)
        if "block_out_channels" in values:
            values["block_out_channels"] = tuple(values["block_out_channels"])
        return cls(**values)


class TextEncoder(nn.Module):
    """Word embeddings + positions + a pre-norm transformer -> [B, L, text_dim] hidden states."""

    def __init__(self, config: WorldModelConfig) -> None:
        super().__init__()
        self.token_embedding = nn.Embedding(config.vocab_size, config.text_dim)
        self.position_embedding = nn.Parameter(torch.zeros(config.max_length, config.text_dim))
        nn.init.normal_(self.position_embedding, std=0.02)
        if config.text_layers > 0:
            layer = nn.TransformerEncoderLayer(
                config.text_dim,
                config.text_heads,
                config.text_ff,
                dropout=0.0,
                batch_first=True,
                norm_first=True,
            )
            # No nested-tensor fast path: it zeroes padded positions in eval mode only, which would make
            # training and sampling see different hidden states.
            self.transformer: nn.Module | None = nn.TransformerEncoder(
                layer, config.text_layers, enable_nested_tensor=False
            )
        else:
            self.transformer = None
        self.final_norm = nn.LayerNorm(config.text_dim)

    def forward(self, ids: torch.Tensor, padding_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.token_embedding(ids) + self.position_embedding[: ids.shape[1]]
        if self.transformer is not None:
            hidden = self.transformer(hidden, src_key_padding_mask=padding_mask)
        return self.final_norm(hidden)


def build_unet(config: WorldModelConfig) -> UNet2DConditionModel:
    levels = len(config.block_out_channels)
    attention = levels - 1 if config.attention_levels is None else config.attention_levels
    down = ("DownBlock2D",) * (levels - attention) + ("CrossAttnDownBlock2D",) * attention
    up = ("CrossAttnUpBlock2D",) * attention + ("UpBlock2D",) * (levels - attention)
    return UNet2DConditionModel(
        sample_size=config.image_size,
        in_channels=3,
        out_channels=3,
        down_block_types=down,
        up_block_types=up,
        block_out_channels=tuple(config.block_out_channels),
        layers_per_block=config.layers_per_block,
        norm_num_groups=config.norm_num_groups,
        cross_attention_dim=config.text_dim,
        # diffusers' legacy naming: for this UNet, attention_head_dim is the number of heads.
        attention_head_dim=config.attention_heads,
    )


class WorldDiffusionModel(nn.Module):
    """UNet + text encoder + tokenizer + scheduler configuration, saved and loaded as one unit."""

    def __init__(
        self, config: WorldModelConfig | None = None, tokenizer: WordTokenizer | None = None
    ) -> None:
        super().__init__()
        self.config = config or WorldModelConfig()
        self.tokenizer = tokenizer or WordTokenizer.from_grammar(self.config.max_length)
        if len(self.tokenizer) != self.config.vocab_size:
            raise ValueError(
                f"tokenizer has {len(self.tokenizer)} words, config says {self.config.vocab_size}"
            )
        if self.tokenizer.max_length != self.config.max_length:
            raise ValueError("tokenizer and config disagree on max_length")
        self.unet = build_unet(self.config)
        self.text_encoder = TextEncoder(self.config)

    # -- schedulers -------------------------------------------------------------------------------
    def scheduler_config(self) -> dict[str, Any]:
        return {
            "num_train_timesteps": self.config.num_train_timesteps,
            "beta_schedule": self.config.beta_schedule,
            "prediction_type": self.config.prediction_type,
            "clip_sample": False,
            "timestep_spacing": "trailing",
        }

    def train_scheduler(self) -> DDPMScheduler:
        return DDPMScheduler(**self.scheduler_config())

    def sample_scheduler(self, steps: int) -> DDIMScheduler:
        scheduler = DDIMScheduler(**self.scheduler_config(), set_alpha_to_one=True)
        scheduler.set_timesteps(steps)
        return scheduler

    # -- text -------------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def encode_prompts(self, prompts: list[str]) -> torch.Tensor:
        """encoder_hidden_states [B, max_length, text_dim] for the UNet ("" is the unconditional prompt)."""
        ids, padding = self.tokenizer(list(prompts))
        return self.text_encoder(ids.to(self.device), padding.to(self.device))

    # -- denoising --------------------------------------------------------------------------------
    def predict(self, noisy: torch.Tensor, timesteps: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        """Raw UNet output (epsilon, v or x0 according to config.prediction_type)."""
        if timesteps.ndim == 0:
            timesteps = timesteps.expand(noisy.shape[0])
        return self.unet(noisy, timesteps, encoder_hidden_states=hidden).sample

    def guided_prediction(
        self,
        noisy: torch.Tensor,
        timestep: torch.Tensor,
        hidden: torch.Tensor,
        uncond_hidden: torch.Tensor | None,
        guidance: float,
    ) -> torch.Tensor:
        """Classifier-free guidance: uncond + guidance * (cond - uncond); guidance 1 is the plain model."""
        if guidance == 1.0 or uncond_hidden is None:
            return self.predict(noisy, timestep, hidden)
        both = self.predict(torch.cat([noisy, noisy]), timestep, torch.cat([hidden, uncond_hidden]))
        cond, uncond = both.chunk(2)
        return uncond + guidance * (cond - uncond)

    def training_loss(
        self, images: torch.Tensor, prompts: list[str], generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Denoising loss on images in [0, 1] (an empty prompt trains the unconditional branch)."""
        clean = images * 2.0 - 1.0
        scheduler = self.train_scheduler()
        noise = torch.randn(clean.shape, generator=generator, device=clean.device)
        timesteps = torch.randint(
            0,
            scheduler.config.num_train_timesteps,
            (clean.shape[0],),
            generator=generator,
            device=clean.device,
        )
        noisy = scheduler.add_noise(clean, noise, timesteps)
        output = self.predict(noisy, timesteps, self.encode_prompts(prompts))
        if self.config.prediction_type == "epsilon":
            target = noise
        elif self.config.prediction_type == "v_prediction":
            target = scheduler.get_velocity(clean, noise, timesteps)
        else:
            target = clean
        return torch.nn.functional.mse_loss(output, target)

    def initial_noise(self, seeds: list[int]) -> torch.Tensor:
        size = self.config.image_size
        noises = [
            torch.randn((3, size, size), generator=torch.Generator().manual_seed(int(s))) for s in seeds
        ]
        return torch.stack(noises).to(self.device)

    def sample(
        self,
        prompts: list[str],
        seeds: list[int],
        steps: int = 25,
        guidance: float = 3.0,
        eta: float = 0.0,
    ) -> torch.Tensor:
        """Images [B, 3, H, W] in [0, 1]; one seed per prompt fixes its starting noise (DDIM, eta 0)."""
        if len(prompts) != len(seeds):
            raise ValueError("one seed per prompt")
        if steps < 1:
            raise ValueError("steps must be positive")
        with torch.no_grad():
            scheduler = self.sample_scheduler(steps)
            hidden = self.encode_prompts(prompts)
            uncond = self.encode_prompts([""] * len(prompts)) if guidance != 1.0 else None
            x = self.initial_noise(seeds)
            for t in scheduler.timesteps:
                output = self.guided_prediction(x, t, hidden, uncond, guidance)
                x = scheduler.step(output, t, x, eta=eta).prev_sample
        return self.decode(x)

    @staticmethod
    def decode(x: torch.Tensor) -> torch.Tensor:
        """Pixel space: the model's [-1, 1] sample is the image."""
        return ((x + 1.0) / 2.0).clamp(0.0, 1.0)

    # -- persistence ------------------------------------------------------------------------------
    def save_pretrained(self, directory: str | Path, train_info: dict[str, Any] | None = None) -> Path:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        tensors = {f"unet.{k}": v.detach().cpu().contiguous() for k, v in self.unet.state_dict().items()}
        tensors.update(
            {
                f"text_encoder.{k}": v.detach().cpu().contiguous()
                for k, v in self.text_encoder.state_dict().items()
            }
        )
        save_file(tensors, directory / "model.safetensors")
        (directory / "config.json").write_text(json.dumps(self.config.to_dict(), indent=1) + "\n")
        (directory / "scheduler_config.json").write_text(json.dumps(self.scheduler_config(), indent=1) + "\n")
        self.tokenizer.save(directory / "vocab.json")
        if train_info is not None:
            (directory / "train_info.json").write_text(json.dumps(train_info, indent=1) + "\n")
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> WorldDiffusionModel:
        directory = Path(directory)
        config = WorldModelConfig.from_dict(json.loads((directory / "config.json").read_text()))
        model = cls(config, WordTokenizer.load(directory / "vocab.json"))
        tensors = load_file(directory / "model.safetensors")
        unet_state = {k.removeprefix("unet."): v for k, v in tensors.items() if k.startswith("unet.")}
        text_state = {
            k.removeprefix("text_encoder."): v for k, v in tensors.items() if k.startswith("text_encoder.")
        }
        model.unet.load_state_dict(unet_state)
        model.text_encoder.load_state_dict(text_state)
        scheduler_path = directory / "scheduler_config.json"
        if scheduler_path.exists() and json.loads(scheduler_path.read_text()) != model.scheduler_config():
            raise ValueError("scheduler_config.json does not match the model config")
        return model.eval()

    @classmethod
    def load_pretrained(cls) -> WorldDiffusionModel:
        """The committed base checkpoint (iteration 0 of IterComp in this world)."""
        return cls.from_pretrained(PRETRAINED_DIR)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
