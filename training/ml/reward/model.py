"""BLIP-based composition-aware reward model (IterComp / ImageReward architecture).

The image goes through BLIP's ViT once; the prompt goes through BLIP's text encoder, whose
cross-attention layers attend to the image tokens; the first-token output feeds an MLP score head.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import (
    AutoTokenizer,
    BertTokenizer,
    BlipForImageTextRetrieval,
    BlipTextConfig,
    BlipTextModel,
    BlipVisionConfig,
    BlipVisionModel,
    PreTrainedTokenizerBase,
)

from training.ml.preprocess import PreprocessConfig, preprocess_images, resize_images
from training.ml.reward.config import RewardModelConfig

BERT_VOCAB_DIR = Path(__file__).resolve().parents[1] / "assets" / "tokenizers" / "bert"
DEC_TOKEN = "[DEC]"
ENC_TOKEN = "[ENC]"


def build_blip_tokenizer(folder: str | os.PathLike[str] | None = None) -> PreTrainedTokenizerBase:
    """BERT-base-uncased WordPiece + ``[DEC]`` (bos) + ``[ENC]``, as BLIP's ``init_tokenizer``.

    ``folder=None`` uses the vocab committed under training/ml/assets; nothing is ever downloaded.
    """
    if folder is None:
        tokenizer = BertTokenizer.from_pretrained(str(BERT_VOCAB_DIR), local_files_only=True)
    else:
        tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    vocab = tokenizer.get_vocab()
    if DEC_TOKEN not in vocab:
        tokenizer.add_special_tokens({"bos_token": DEC_TOKEN})
    if ENC_TOKEN not in tokenizer.get_vocab():
        tokenizer.add_special_tokens({"additional_special_tokens": [ENC_TOKEN]})
    tokenizer.enc_token_id = tokenizer.convert_tokens_to_ids(ENC_TOKEN)
    return tokenizer


class ScoreHead(nn.Module):
    """hidden → 1024 → 128 → 64 → 16 → 1 with dropout (ImageReward's MLP and its initialisation)."""

    def __init__(
        self,
        in_dim: int,
        dims: Sequence[int],
        dropout: Sequence[float],
        activation: str,
        init: str = "imagereward",
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        prev = in_dim
        for dim, p in zip(dims, dropout, strict=True):
            layers.append(nn.Linear(prev, dim))
            if activation == "gelu":
                layers.append(nn.GELU())
            elif activation == "relu":
                layers.append(nn.ReLU())
            if p > 0:
                layers.append(nn.Dropout(p))
            prev = dim
        layers.append(nn.Linear(prev, 1))
        self.layers = nn.Sequential(*layers)
        for module in self.layers:
            if isinstance(module, nn.Linear) and init == "imagereward":
                # ImageReward: N(0, 1/(fan_in+1)) keeps the stacked linear maps from blowing up.
                nn.init.normal_(module.weight, mean=0.0, std=1.0 / (module.in_features + 1))
                nn.init.zeros_(module.bias)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.layers(features).squeeze(-1)


class RewardModel(nn.Module):
    """Scores (prompt, image) pairs. ``score`` is the contract feedback learning builds on."""

    def __init__(
        self,
        config: RewardModelConfig,
        vision_model: BlipVisionModel,
        text_encoder: BlipTextModel,
        tokenizer: PreTrainedTokenizerBase,
        preprocess: PreprocessConfig,
    ) -> None:
        super().__init__()
        if vision_model.config.hidden_size != text_encoder.config.encoder_hidden_size:
            raise ValueError(
                f"text encoder cross-attends to {text_encoder.config.encoder_hidden_size}-d image tokens, "
                f"vision model emits {vision_model.config.hidden_size}-d"
            )
        if not text_encoder.config.is_decoder:
            raise ValueError(
                "the BLIP text config must have is_decoder=True so its layers hold cross-attention"
            )
        self.config = config
        self.vision_model = vision_model
        self.text_encoder = text_encoder
        self.tokenizer = tokenizer
        self.preprocess = preprocess
        self.head = ScoreHead(
            text_encoder.config.hidden_size,
            config.head_dims,
            config.head_dropout,
            config.head_activation,
            # The MLP beside an ITM head starts as ImageReward's, near zero: the score starts as the margin.
            "imagereward" if config.head_init == "itm" else config.head_init,
        )
        # head_init "itm": BLIP's image-text-matching head beside the MLP; build_reward_model loads its
        # pretrained weights, a checkpoint load overwrites them with the fine-tuned ones.
        self.itm_head = nn.Linear(text_encoder.config.hidden_size, 2) if config.head_init == "itm" else None
        # Normalisation of raw scores (mean/std on the training set), saved with the weights.
        self.register_buffer("score_mean", torch.zeros(()))
        self.register_buffer("score_std", torch.ones(()))
        # Rows pushed through the image encoder since construction; the listwise benchmark reads it.
        self.image_encoder_rows = 0
        self.text_encoder_rows = 0
        self.freeze(config.freeze_fraction)

    # ----------------------------------------------------------------------------- construction
    def freeze(self, fraction: float) -> None:
        """Freeze embeddings and the first ``int(L * fraction)`` layers of both encoders (ImageReward).

        Everything else (later layers, vision post-layernorm, score head) stays trainable.
        """
        for p in self.parameters():
            p.requires_grad_(True)
        if fraction <= 0:
            return
        frozen: list[nn.Module] = [self.vision_model.embeddings, self.text_encoder.embeddings]
        vision_layers = self.vision_model.encoder.layers
        text_layers = self.text_encoder.encoder.layer
        frozen += list(vision_layers[: int(len(vision_layers) * fraction)])
        frozen += list(text_layers[: int(len(text_layers) * fraction)])
        for module in frozen:
            for p in module.parameters():
                p.requires_grad_(False)

    @property
    def device(self) -> torch.device:
        return self.score_mean.device

    # ----------------------------------------------------------------------------- building blocks
    def tokenize(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        if isinstance(prompts, str):
            raise TypeError("prompts must be a list of strings, not a single string")
        enc = self.tokenizer(
            list(prompts),
            padding="longest",
            truncation=True,
            max_length=self.config.max_length,
            return_tensors="pt",
        )
        input_ids = enc["input_ids"].to(self.device)
        if self.config.first_token == "enc":
            input_ids = input_ids.clone()
            input_ids[:, 0] = self.tokenizer.enc_token_id
        return input_ids, enc["attention_mask"].to(self.device)

    def encode_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Normalised pixel values ``[M,3,S,S]`` → image tokens ``[M,T,D]``."""
        self.image_encoder_rows += pixel_values.shape[0]
        return self.vision_model(pixel_values=pixel_values).last_hidden_state

    def fuse(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, image_embeds: torch.Tensor
    ) -> torch.Tensor:
        """Text encoder cross-attending to image tokens; raw score from the first token."""
        self.text_encoder_rows += input_ids.shape[0]
        # No encoder_attention_mask: every image token is real, which equals BLIP's all-ones mask.
        out = self.text_encoder(
            input_ids=input_ids,
            attention_mask=attention_mask,
            encoder_hidden_states=image_embeds,
        ).last_hidden_state
        first = out[:, 0, :]
        scores = self.head(first)
        if self.itm_head is not None:
            logits = self.itm_head(first)
            scores = scores + (logits[:, 1] - logits[:, 0])
        # Half-precision scores would make the pairwise loss coarse; float32/float64 pass through.
        return scores if scores.dtype in (torch.float32, torch.float64) else scores.float()

    def forward(
        self,
        images: torch.Tensor,
        prompt_index: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
    ) -> torch.Tensor:
        """Raw scores for ``M`` images in [0,1], image ``m`` paired with prompt ``prompt_index[m]``.

        Each image is encoded once however many pairs it appears in — the listwise saving.
        """
        pixel_values = preprocess_images(images, self.preprocess)
        image_embeds = self.encode_images(pixel_values)
        return self.fuse(input_ids[prompt_index], attention_mask[prompt_index], image_embeds)

    # ----------------------------------------------------------------------------- public contract
    def raw_score(self, prompts: Sequence[str], images: torch.Tensor) -> torch.Tensor:
        if len(prompts) != images.shape[0]:
            raise ValueError(f"{len(prompts)} prompts for {images.shape[0]} images")
        # Tokenise each distinct prompt once; ReFL batches often repeat one prompt.
        unique = list(dict.fromkeys(prompts))
        position = {p: i for i, p in enumerate(unique)}
        index = torch.tensor([position[p] for p in prompts], device=self.device)
        input_ids, attention_mask = self.tokenize(unique)
        return self(images.to(self.device), index, input_ids, attention_mask)

    def normalize(self, raw: torch.Tensor) -> torch.Tensor:
        return (raw - self.score_mean) / self.score_std

    def score(self, prompts: Sequence[str], images: torch.Tensor) -> torch.Tensor:
        """``prompts`` (B) and ``images`` ``[B,3,H,W]`` in [0,1] → normalised scores ``[B]``.

        Differentiable w.r.t. ``images`` (resize + normalise happen inside, via training.ml.preprocess).
        Call ``model.eval()`` first for deterministic scores (dropout).
        """
        return self.normalize(self.raw_score(prompts, images))

    def score_images(self, prompts: Sequence[str], images: Sequence[torch.Tensor]) -> torch.Tensor:
        """:meth:`score` for ``[3,H,W]`` images of different sizes (a gallery's models draw at their own)."""
        if not images:
            return torch.zeros(0, device=self.device)
        resized = [resize_images(image.unsqueeze(0).float(), self.preprocess)[0] for image in images]
        return self.score(prompts, torch.stack(resized))

    def resize_for_model(self, images: torch.Tensor) -> torch.Tensor:
        return resize_images(images, self.preprocess)

    def set_normalization(self, mean: float, std: float) -> None:
        if not std > 0:
            raise ValueError(f"score std must be positive, got {std}")
        self.score_mean.fill_(float(mean))
        self.score_std.fill_(float(std))

    def trainable_parameter_names(self) -> list[str]:
        return [n for n, p in self.named_parameters() if p.requires_grad]

    def backbone_configs(self) -> dict[str, Any]:
        """The concrete BLIP configs, stored in checkpoints so loading needs no original folder."""
        return {
            "vision": self.vision_model.config.to_dict(),
            "text": self.text_encoder.config.to_dict(),
        }


# --------------------------------------------------------------------------------- factories
def _small_backbone(config: RewardModelConfig, vocab_size: int) -> tuple[BlipVisionModel, BlipTextModel]:
    assert config.vision is not None and config.text is not None
    v, t = config.vision, config.text
    vision_cfg = BlipVisionConfig(
        hidden_size=v.hidden_size,
        intermediate_size=v.intermediate_size,
        num_hidden_layers=v.num_hidden_layers,
        num_attention_heads=v.num_attention_heads,
        image_size=v.image_size,
        patch_size=v.patch_size,
        initializer_range=v.initializer_range,
    )
    text_cfg = BlipTextConfig(
        vocab_size=vocab_size,
        hidden_size=t.hidden_size,
        encoder_hidden_size=v.hidden_size,
        intermediate_size=t.intermediate_size,
        num_hidden_layers=t.num_hidden_layers,
        num_attention_heads=t.num_attention_heads,
        max_position_embeddings=t.max_position_embeddings,
        initializer_range=t.initializer_range,
        is_decoder=True,
        use_cache=False,
    )
    return BlipVisionModel(vision_cfg), BlipTextModel(text_cfg, add_pooling_layer=False)


def _pretrained_blip(folder: str) -> BlipForImageTextRetrieval:
    path = Path(folder)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{folder}: not a local HuggingFace BLIP folder (no config.json)")
    return BlipForImageTextRetrieval.from_pretrained(str(path), local_files_only=True)


def build_reward_model(config: RewardModelConfig, seed: int | None = None) -> RewardModel:
    """Build from a local BLIP folder (pretrained weights) or from the small from-scratch config."""
    if seed is not None:
        torch.manual_seed(seed)
    if config.pretrained_path is not None:
        tokenizer = build_blip_tokenizer(config.pretrained_path)
        blip = _pretrained_blip(config.pretrained_path)
        vision, text = blip.vision_model, blip.text_encoder
        if len(tokenizer) > text.config.vocab_size:
            # The folder's tokenizer lacked [DEC]/[ENC]; grow the embeddings as BLIP does.
            text.resize_token_embeddings(len(tokenizer))
        model = RewardModel(config, vision, text, tokenizer, config.resolved_preprocess())
        if model.itm_head is not None:
            model.itm_head.load_state_dict(blip.itm_head.state_dict())
        return model
    tokenizer = build_blip_tokenizer(None)
    vision, text = _small_backbone(config, vocab_size=len(tokenizer))
    return RewardModel(config, vision, text, tokenizer, config.resolved_preprocess())


def build_from_backbone_configs(
    config: RewardModelConfig,
    backbone: dict[str, Any],
    tokenizer: PreTrainedTokenizerBase,
    preprocess: PreprocessConfig,
) -> RewardModel:
    """Rebuild the exact architecture recorded in a checkpoint (weights are loaded afterwards)."""
    vision_cfg = BlipVisionConfig.from_dict(backbone["vision"])
    text_cfg = BlipTextConfig.from_dict(backbone["text"])
    vision = BlipVisionModel(vision_cfg)
    text = BlipTextModel(text_cfg, add_pooling_layer=False)
    return RewardModel(config, vision, text, tokenizer, preprocess)
