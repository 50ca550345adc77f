"""Configuration dataclasses for composition-aware reward models and their training."""

from __future__ import annotations

import dataclasses
from typing import Literal

from training.ml.preprocess import PreprocessConfig

Category = Literal["attribute_binding", "spatial", "non_spatial"]
CATEGORIES: tuple[str, ...] = ("attribute_binding", "spatial", "non_spatial")
SPLITS: tuple[str, ...] = ("train", "val", "test")


@dataclasses.dataclass(frozen=True)
class VisionSpec:
    """A from-scratch BLIP ViT (``transformers.BlipVisionConfig``) for tests and the synthetic world."""

    hidden_size: int = 128
    intermediate_size: int = 512
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    image_size: int = 64
    patch_size: int = 8
    # BlipVisionConfig defaults to 1e-10, which initialises every linear layer to ~0 and never trains.
    initializer_range: float = 0.02

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_attention_heads:
            raise ValueError("vision hidden_size must be a multiple of num_attention_heads")
        if self.image_size % self.patch_size:
            raise ValueError("vision image_size must be a multiple of patch_size")
        if not 1e-4 <= self.initializer_range <= 1.0:
            raise ValueError(
                f"vision initializer_range={self.initializer_range}: BLIP's default 1e-10 leaves the ViT "
                "untrainable from scratch; use something like 0.02"
            )
        if min(self.num_hidden_layers, self.intermediate_size, self.patch_size) < 1:
            raise ValueError("vision sizes must be positive")


@dataclasses.dataclass(frozen=True)
class TextSpec:
    """A from-scratch BLIP text encoder with cross-attention (``transformers.BlipTextConfig``)."""

    hidden_size: int = 128
    intermediate_size: int = 512
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    max_position_embeddings: int = 64
    initializer_range: float = 0.02

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_attention_heads:
            raise ValueError("text hidden_size must be a multiple of num_attention_heads")
        if min(self.num_hidden_layers, self.intermediate_size, self.max_position_embeddings) < 1:
            raise ValueError("text sizes must be positive")
        if not 0 < self.initializer_range <= 1.0:
            raise ValueError("text initializer_range must be in (0, 1]")


@dataclasses.dataclass(frozen=True)
class RewardModelConfig:
    """One reward model (one composition category).

    Exactly one backbone source: ``pretrained_path`` (a local HuggingFace BLIP folder, e.g. an
    image-text-matching checkpoint) or ``vision`` + ``text`` (small from-scratch config).
    """

    category: Category
    pretrained_path: str | None = None
    vision: VisionSpec | None = None
    text: TextSpec | None = None
    # IterComp/ImageReward head: hidden -> 1024 -> 128 -> 64 -> 16 -> 1.
    head_dims: tuple[int, ...] = (1024, 128, 64, 16)
    # ImageReward's dropout after each of the first three projections.
    head_dropout: tuple[float, ...] = (0.2, 0.2, 0.1, 0.0)
    # ImageReward's head is purely linear (its ReLUs are commented out); "gelu" adds nonlinearity.
    head_activation: Literal["none", "gelu", "relu"] = "none"
    # "imagereward": N(0, 1/(fan_in+1)) as ImageReward (scores start ~1e-5, fine on a pretrained BLIP);
    # "pytorch": nn.Linear's default, which lets a from-scratch backbone get gradients from step one;
    # "itm": the ImageReward MLP plus the pretrained folder's ITM head, the score starting as the ITM margin
    # logit(match) − logit(no match) — what the encoder already knows about the prompt, not a random head
    # that pairs must teach again.
    head_init: Literal["imagereward", "pytorch", "itm"] = "imagereward"
    freeze_fraction: float = 0.7
    max_length: int = 35
    # BLIP's ITM head was trained with [ENC] in place of [CLS]; ImageReward kept [CLS].
    first_token: Literal["enc", "cls"] = "enc"
    # None: read it from the pretrained folder, or derive it from ``vision.image_size``.
    preprocess: PreprocessConfig | None = None

    def __post_init__(self) -> None:
        if self.category not in CATEGORIES:
            raise ValueError(f"category must be one of {CATEGORIES}, got {self.category!r}")
        has_small = self.vision is not None or self.text is not None
        if (self.pretrained_path is None) == (not has_small) or (
            has_small and (self.vision is None or self.text is None)
        ):
            raise ValueError("give either pretrained_path or both vision and text specs")
        if len(self.head_dims) != len(self.head_dropout):
            raise ValueError("head_dims and head_dropout must have the same length")
        if any(d < 1 for d in self.head_dims) or any(not 0 <= p < 1 for p in self.head_dropout):
            raise ValueError("head dims must be positive and dropouts in [0, 1)")
        if self.head_activation not in ("none", "gelu", "relu"):
            raise ValueError(f"unknown head_activation {self.head_activation!r}")
        if self.head_init not in ("imagereward", "pytorch", "itm"):
            raise ValueError(f"unknown head_init {self.head_init!r}")
        if self.head_init == "itm" and self.pretrained_path is None:
            raise ValueError(
                "head_init 'itm' needs a pretrained BLIP folder (a from-scratch one has no ITM head)"
            )
        if not 0.0 <= self.freeze_fraction <= 1.0:
            raise ValueError(f"freeze_fraction must be in [0, 1], got {self.freeze_fraction}")
        if self.max_length < 3:
            raise ValueError("max_length must leave room for [CLS] text [SEP]")
        if self.text is not None and self.max_length > self.text.max_position_embeddings:
            raise ValueError("max_length exceeds the text encoder's max_position_embeddings")
        if self.first_token not in ("enc", "cls"):
            raise ValueError(f"first_token must be 'enc' or 'cls', got {self.first_token!r}")
        object.__setattr__(self, "head_dims", tuple(int(d) for d in self.head_dims))
        object.__setattr__(self, "head_dropout", tuple(float(p) for p in self.head_dropout))

    @classmethod
    def small(cls, category: Category, **overrides: object) -> RewardModelConfig:
        """A from-scratch BLIP small enough for CPU tests and the synthetic world."""
        vision = overrides.pop("vision", VisionSpec())
        text = overrides.pop("text", TextSpec())
        return cls(category=category, vision=vision, text=text, **overrides)  # type: ignore[arg-type]

    @classmethod
    def tiny(cls, category: Category, **overrides: object) -> RewardModelConfig:
        """A ~1M-parameter BLIP (mostly the 30524-token embedding) for fast unit tests elsewhere."""
        overrides.setdefault(
            "vision",
            VisionSpec(
                hidden_size=32,
                intermediate_size=64,
                num_hidden_layers=2,
                num_attention_heads=2,
                image_size=32,
                patch_size=8,
            ),
        )
        overrides.setdefault(
            "text",
            TextSpec(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2),
        )
        overrides.setdefault("head_dims", (64, 16))
        overrides.setdefault("head_dropout", (0.1, 0.0))
        return cls.small(category, **overrides)

    def resolved_preprocess(self) -> PreprocessConfig:
        if self.preprocess is not None:
            return self.preprocess
        if self.vision is not None:
            return PreprocessConfig(image_size=self.vision.image_size)
        from training.ml.preprocess import preprocess_config_from_folder

        return preprocess_config_from_folder(self.pretrained_path or "")


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
    """Training-time augmentation, plain tensor code (torchvision is not available)."""

    # Flipping swaps left and right, which silently corrupts spatial labels; refused for "spatial".
    hflip: bool = False
    crop_scale: tuple[float, float] = (1.0, 1.0)
    brightness: float = 0.0
    contrast: float = 0.0
    saturation: float = 0.0
    noise_std: float = 0.0

    def __post_init__(self) -> None:
        lo, hi = self.crop_scale
        if not 0 < lo <= hi <= 1:
            raise ValueError(f"crop_scale must satisfy 0 < lo <= hi <= 1, got {self.crop_scale}")
        if min(self.brightness, self.contrast, self.saturation, self.noise_std) < 0:
            raise ValueError("augmentation strengths must be non-negative")
        object.__setattr__(self, "crop_scale", (float(lo), float(hi)))

    @property
    def active(self) -> bool:
        return (
            self.hflip
            or self.crop_scale != (1.0, 1.0)
            or any((self.brightness, self.contrast, self.saturation, self.noise_std))
        )


@dataclasses.dataclass(frozen=True)
class RewardTrainConfig:
    model: RewardModelConfig
    output_dir: str
    epochs: int = 10
    # Prompt groups per micro-batch; each group brings all of its images at once (listwise).
    batch_groups: int = 8
    grad_accum: int = 1
    lr: float = 1e-5
    head_lr: float | None = None
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_ratio: float = 0.05
    max_grad_norm: float | None = 1.0
    mixed_precision: Literal["no", "fp16", "bf16"] = "no"
    cpu: bool = False
    # "half": label 0.5 pairs use the symmetric loss; "skip": they get weight 0.
    tie_mode: Literal["half", "skip"] = "half"
    # "listwise": encode each image once per prompt group; "pairwise": IterComp's per-pair encoding.
    batching: Literal["listwise", "pairwise"] = "listwise"
    augment: AugmentConfig = dataclasses.field(default_factory=AugmentConfig)
    eval_every_steps: int | None = None
    max_steps: int | None = None
    split_fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)
    split_salt: str = "itercomp"
    cache_images: bool = True
    num_workers: int = 0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_groups < 1 or self.grad_accum < 1:
            raise ValueError("epochs, batch_groups and grad_accum must be >= 1")
        if self.lr <= 0 or (self.head_lr is not None and self.head_lr <= 0):
            raise ValueError("learning rates must be positive")
        if not 0 <= self.warmup_ratio < 1:
            raise ValueError("warmup_ratio must be in [0, 1)")
        if self.mixed_precision not in ("no", "fp16", "bf16"):
            raise ValueError(f"unknown mixed_precision {self.mixed_precision!r}")
        if self.tie_mode not in ("half", "skip"):
            raise ValueError(f"tie_mode must be 'half' or 'skip', got {self.tie_mode!r}")
        if self.batching not in ("listwise", "pairwise"):
            raise ValueError(f"batching must be 'listwise' or 'pairwise', got {self.batching!r}")
        if self.augment.hflip and self.model.category == "spatial":
            raise ValueError("horizontal flips swap left/right and would corrupt spatial preferences")
        fractions = tuple(float(f) for f in self.split_fractions)
        if len(fractions) != 3 or min(fractions) < 0 or abs(sum(fractions) - 1) > 1e-6:
            raise ValueError(
                f"split_fractions must be three non-negative numbers summing to 1, got {fractions}"
            )
        if self.eval_every_steps is not None and self.eval_every_steps < 1:
            raise ValueError("eval_every_steps must be >= 1")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError("max_steps must be >= 1")
        if self.num_workers < 0:
            raise ValueError("num_workers must be >= 0")
        object.__setattr__(self, "split_fractions", fractions)
        object.__setattr__(self, "betas", tuple(float(b) for b in self.betas))
