"""Pretrain the world's vision–language encoder: the synthetic stand-in for BLIP's pretraining.

IterComp's reward models start from a *pretrained* BLIP (70 % frozen). A from-scratch BLIP trained on a few
thousand gallery pairs learns which generator drew an image instead of what the image shows, and ranks the
base model's own samples at chance. This module trains a small BLIP (``BlipForImageTextRetrieval``: ViT with
4 px patches, text encoder with cross-attention, ITM and ITC heads) once, on rendered scenes with their true
captions and hard negatives, and saves it as an ordinary local HuggingFace BLIP folder, so that the reward
models load it exactly as they load a real BLIP (``RewardModelConfig(pretrained_path=...)``).

The training data never contains a diffusion model's sample scored by the oracle: every image is a render of a
*planned* scene (correct, or with the world's composition errors applied on purpose), in one of several
styles (clean, degraded, blob-like, noisy), and every label comes from the scene that was planned:
- **image–text matching** (ITM, BLIP's ``[ENC]`` + ``itm_head``): the caption is the prompt the scene was
  planned from or a one-word-edit hard negative of it (swapped or changed colour/texture/size, changed shape,
  reversed relation); it matches when every fact of the caption holds in the scene and nothing extra is drawn;
- **image–text contrastive** (ITC, ``vision_proj``/``text_proj``) over the batch's matching pairs;
- a **dense auxiliary loss**: for each 4 px cell of the 32 px image, which shape, colour and texture is drawn
  there (or nothing). Matching alone stays at chance (recorded in ``../shared/research``); the per-cell
  labels give the patch tokens something to learn first. The dense head is discarded after training.
"""

from __future__ import annotations

import dataclasses
import json
import math
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from torch import nn

from .degrade import DegradeConfig, degrade_array
from .errors import ERRORS_FOR, OPPOSITE, RELATION_ERRORS, _other, planned_scene
from .facts import (
    count_extra,
    is_inside,
    mask_distance,
    match_objects,
    scene_objects,
    truth_facts,
    truth_score,
)
from .grammar import PromptSpec, all_prompt_specs, is_held_out
from .layout import LayoutError
from .scene import render_scene_array
from .vocab import COLORS, REFERENCE_CANVAS, SHAPES, SIZES, SUBCATEGORIES, TEXTURES, grammar_words

ENCODER_DIR = Path(__file__).resolve().parent / "assets" / "encoder"
SPECIAL_TOKENS: tuple[str, ...] = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]", "[ENC]")
STYLES: tuple[str, ...] = ("clean", "degraded", "blob", "noisy")
# Label ids per cell: the object's shape/colour/texture, the last id of each meaning "nothing drawn here".
EMPTY_SHAPE, EMPTY_COLOR, EMPTY_TEXTURE = len(SHAPES), len(COLORS), len(TEXTURES)
_STYLE_DEGRADE: dict[str, DegradeConfig] = {
    "degraded": DegradeConfig(),
    # Blob-like: what an undertrained diffusion model draws (soft outlines, tinted, blotchy background).
    "blob": DegradeConfig(cast=(0.8, 1.1), blur_sigma=(1.0, 1.8), blotch_amplitude=(0.0, 0.08)),
    "noisy": DegradeConfig(cast=(0.8, 1.1), blur_sigma=(0.0, 0.5), noise_sigma=(0.05, 0.12)),
}


@dataclass(frozen=True)
class EncoderConfig:
    steps: int = 1200
    batch_size: int = 64
    learning_rate: float = 1e-3
    warmup_steps: int = 60
    weight_decay: float = 0.01
    hidden_size: int = 96
    layers: int = 4
    patch_size: int = 4
    image_size: int = REFERENCE_CANVAS
    # Share of examples whose caption is a hard negative of the planned prompt (the rest plan 0-2 errors
    # into the scene instead); together they give roughly balanced matches and mismatches.
    caption_negative_share: float = 0.3
    scene_error_share: float = 0.4
    # Relative weights of the hard-negative caption kinds: reversed relation, changed shape, attribute
    # swapped between the two objects, attribute changed. None: the four drawn alike, with the relation
    # kind falling back to a changed attribute in prompts without a relation (the committed encoder's
    # recipe). Swaps and reversals are the only kinds a bag of words cannot tell from the true caption.
    negative_kind_weights: tuple[float, float, float, float] | None = None
    dense_weight: float = 1.0
    # Grounding (0: off): per step, this many correct scenes whose caption words must point, through their
    # fused tokens, at the cells of the object they describe. Image-text matching and dense labels alone
    # leave a bag of objects (swapped colours and reversed relations ranked at chance, BENCHMARKS #14);
    # grounding is what binds an attribute word to the object that carries it.
    grounding_examples: int = 0
    grounding_weight: float = 1.0
    # Relation term of the grounding examples: from the two objects' fused shape tokens, predict where the
    # second lies relative to the first (offset) and whether one is inside or touching the other.
    relation_weight: float = 0.0
    # Location term: each object word's fused token alone must say which cells its object covers.
    location_weight: float = 0.0
    # Position term: each patch token of the grounding images must say where its cell is. The dense labels
    # ask patch tokens only what is drawn, so the last layer can drop the position embedding, and then no
    # caption token can learn where an object is from them.
    position_weight: float = 0.0
    # Attention term: each object word's cross-attention (every text layer, heads averaged) must fall on its
    # object's cells, so that what the word's token carries on is that object's content and position.
    attention_weight: float = 0.0
    # Ranked pairs per step (0: off): one caption, its correct render and a render with one binding or
    # relation error; a pairwise loss on the ITM margin prefers the correct one.
    ranked_pairs: int = 0
    rank_weight: float = 1.0
    # Share of the ranked pairs whose error is a relation's (None: subcategory first, ~1 in 10 spatial).
    relation_pair_share: float | None = None
    # Graded pairs per step (0: off): one caption, two renders that each carry 0 to ``graded_max_errors``
    # planned errors of the subcategory; the margin must prefer the one with fewer violated facts (every
    # fact of the caption and every extra object counts one, read from the plan). Two samples of a base
    # model are mostly both wrong, in several ways at once: ranked pairs (one error against none) do not
    # teach the margin to count.
    graded_pairs: int = 0
    graded_max_errors: int = 3
    itc_weight: float = 0.5
    itc_temperature: float = 0.07
    grad_clip: float = 1.0
    eval_examples: int = 2000
    seed: int = 0
    threads: int = 2

    def __post_init__(self) -> None:
        if min(self.steps, self.batch_size, self.layers, self.eval_examples, self.threads) < 1:
            raise ValueError("steps, batch_size, layers, eval_examples and threads must be positive")
        if self.hidden_size % 32 or self.hidden_size < 32:
            raise ValueError("hidden_size must be a positive multiple of 32 (32-wide attention heads)")
        if self.image_size % self.patch_size:
            raise ValueError("image_size must be a multiple of patch_size")
        if self.patch_size > 4:
            raise ValueError("objects are 8-12 px wide at 32 px: patches above 4 px leave too few tokens")
        for name in ("caption_negative_share", "scene_error_share"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be in [0, 1]")
        if self.learning_rate <= 0 or self.itc_temperature <= 0 or self.grad_clip <= 0:
            raise ValueError("learning_rate, itc_temperature and grad_clip must be positive")
        if min(self.dense_weight, self.itc_weight, self.weight_decay, self.warmup_steps) < 0:
            raise ValueError("loss weights, weight decay and warm-up must be non-negative")
        if self.relation_pair_share is not None and not 0 <= self.relation_pair_share <= 1:
            raise ValueError("relation_pair_share must be in [0, 1]")
        if min(self.grounding_examples, self.ranked_pairs, self.graded_pairs) < 0:
            raise ValueError("grounding_examples, ranked_pairs and graded_pairs must be non-negative")
        if not 1 <= self.graded_max_errors <= 6:
            raise ValueError("graded_max_errors must be between 1 and 6")
        weights = (
            self.grounding_weight,
            self.relation_weight,
            self.location_weight,
            self.position_weight,
            self.attention_weight,
        )
        if min(*weights, self.rank_weight) < 0:
            raise ValueError(
                "grounding, relation, location, position, attention and rank weights must be non-negative"
            )
        if max(weights[1:]) > 0 and self.grounding_examples == 0:
            raise ValueError(
                "relation_weight, location_weight, position_weight and attention_weight need "
                "grounding_examples: their terms read those scenes"
            )
        if self.negative_kind_weights is not None:
            weights = tuple(float(w) for w in self.negative_kind_weights)
            if len(weights) != 4 or min(weights) < 0 or sum(weights[1:]) <= 0:
                raise ValueError(
                    "negative_kind_weights: four non-negative weights (relation, shape, swap, change), "
                    "not all of shape/swap/change zero"
                )
            object.__setattr__(self, "negative_kind_weights", weights)


# ----------------------------------------------------------------------------------------- examples
def vocabulary() -> list[str]:
    return list(SPECIAL_TOKENS) + grammar_words()


def encoder_prompt_specs(held_out: bool) -> dict[str, list[PromptSpec]]:
    """Per subcategory, the training-split prompts (or the held-out ones the encoder never sees)."""
    return {
        sub: [spec for spec in all_prompt_specs(sub) if is_held_out(spec.text) == held_out]
        for sub in SUBCATEGORIES
    }


def hard_negative(
    spec: PromptSpec, rng: np.random.Generator, weights: tuple[float, ...] | None = None
) -> PromptSpec:
    """A caption one edit away from ``spec``: an attribute swapped between the objects or changed, a shape
    changed, or the relation reversed. Whether it still matches a scene is decided by the scene's facts.

    ``weights`` (relation, shape, swap, change): how often each kind is drawn; kinds the prompt cannot take
    (a relation, a swap of an attribute only one object states) are drawn again. None: all alike, and the
    relation kind becomes a changed attribute in prompts without one."""
    if weights is not None:
        usable = list(weights)
        if spec.relation is None:
            usable[0] = 0.0
        probabilities = np.asarray(usable) / sum(usable)
    for _ in range(20):
        first, second = spec.objects
        kind = int(rng.integers(4)) if weights is None else int(rng.choice(4, p=probabilities))
        try:
            if kind == 0 and spec.relation is not None:
                relation = OPPOSITE.get(spec.relation)
                if relation is None:  # inside / touching: swap the roles of the two objects
                    return dataclasses.replace(spec, objects=(second, first))
                return dataclasses.replace(spec, relation=relation)
            if kind == 1:
                target = int(rng.integers(2))
                objects = list(spec.objects)
                used = {obj.shape for obj in objects}
                objects[target] = dataclasses.replace(objects[target], shape=_other(list(SHAPES), used, rng))
                return dataclasses.replace(spec, objects=tuple(objects))
            stated = [(i, key) for i, obj in enumerate(spec.objects) for key in obj.attributes()]
            if not stated:
                continue
            i, key = stated[int(rng.integers(len(stated)))]
            objects = list(spec.objects)
            other = objects[1 - i]
            swappable = getattr(other, key) is not None and getattr(other, key) != getattr(objects[i], key)
            if weights is not None and kind == 2 and not swappable:
                continue
            if kind == 2 and swappable:
                a, b = getattr(objects[0], key), getattr(objects[1], key)
                objects[0] = dataclasses.replace(objects[0], **{key: b})
                objects[1] = dataclasses.replace(objects[1], **{key: a})
            else:
                values = {"color": list(COLORS), "texture": list(TEXTURES), "size": list(SIZES)}[key]
                exclude = {getattr(objects[i], key)} | ({other.color} if key == "color" else set())
                objects[i] = dataclasses.replace(objects[i], **{key: _other(values, exclude, rng)})
            return dataclasses.replace(spec, objects=tuple(objects))
        except ValueError:
            continue
    return spec


def cell_labels(coverages: list[np.ndarray], scene_objects: tuple, patch: int) -> np.ndarray:
    """[3, G, G] shape/colour/texture ids of the object covering most of each ``patch``-px cell (or empty)."""
    size = coverages[0].shape[0] if coverages else REFERENCE_CANVAS
    owner = np.full((size, size), -1, dtype=np.int64)
    for index, alpha in enumerate(coverages):  # drawing order: later objects are on top
        owner[alpha >= 0.5] = index
    grid = size // patch
    cells = owner.reshape(grid, patch, grid, patch).transpose(0, 2, 1, 3).reshape(grid, grid, -1)
    labels = np.empty((3, grid, grid), dtype=np.int64)
    labels[0], labels[1], labels[2] = EMPTY_SHAPE, EMPTY_COLOR, EMPTY_TEXTURE
    shapes, colors = list(SHAPES), list(COLORS)
    for gy in range(grid):
        for gx in range(grid):
            values, counts = np.unique(cells[gy, gx], return_counts=True)
            top = int(values[np.argmax(counts)])
            if top >= 0:
                obj = scene_objects[top]
                labels[:, gy, gx] = (
                    shapes.index(obj.shape),
                    colors.index(obj.color),
                    TEXTURES.index(obj.texture),
                )
    return labels


def render_style(img: np.ndarray, style: str, rng: np.random.Generator) -> np.ndarray:
    if style == "clean":
        return img
    out = degrade_array(img, rng, _STYLE_DEGRADE[style])
    if style == "blob" and rng.random() < 0.5:
        # Some blobs lose their outline entirely: a second blur of the colour field only.
        out = ndimage.gaussian_filter(out, sigma=(0.6, 0.6, 0))
    return out


ErrorPlanner = Callable[[str, np.random.Generator], tuple[str, ...]]


def plan_errors(sub: str, rng: np.random.Generator, config: EncoderConfig) -> tuple[str, ...]:
    """The errors pretraining plans into one scene of ``sub``: none, or (in ``scene_error_share`` of scenes)
    one of the subcategory's kinds, two in 30 % of those."""
    if not rng.random() < config.scene_error_share:
        return ()
    options = ERRORS_FOR[sub]
    count = 1 + int(rng.random() < 0.3)
    return tuple(options[int(rng.integers(len(options)))] for _ in range(count))


def draw_example(
    specs: dict[str, list[PromptSpec]],
    rng: np.random.Generator,
    config: EncoderConfig,
    planner: ErrorPlanner | None = None,
) -> tuple[np.ndarray, str, int, np.ndarray, str]:
    """(image HWC in [0,1], caption, 1 if the caption matches the scene, cell labels, style).

    ``planner(sub, rng)`` chooses the scene's planned errors; by default :func:`plan_errors`.
    """
    sub = SUBCATEGORIES[int(rng.integers(len(SUBCATEGORIES)))]
    pool = specs[sub]
    spec = pool[int(rng.integers(len(pool)))]
    errors = plan_errors(sub, rng, config) if planner is None else planner(sub, rng)
    try:
        scene = planned_scene(spec, rng, errors)
    except LayoutError:
        scene = planned_scene(spec, rng)
    caption_spec = (
        hard_negative(spec, rng, config.negative_kind_weights)
        if rng.random() < config.caption_negative_share
        else spec
    )
    match = int(truth_score(caption_spec, scene) == 1.0)
    img, coverages = render_scene_array(scene, config.image_size)
    style = STYLES[int(rng.integers(len(STYLES)))]
    labels = cell_labels(coverages, scene.objects, config.patch_size)
    return render_style(img, style, rng), caption_spec.text, match, labels, style


def draw_batch(
    specs: dict[str, list[PromptSpec]],
    rng: np.random.Generator,
    config: EncoderConfig,
    size: int,
    planner: ErrorPlanner | None = None,
) -> tuple[torch.Tensor, list[str], torch.Tensor, torch.Tensor, list[str]]:
    examples = [draw_example(specs, rng, config, planner) for _ in range(size)]
    images = torch.from_numpy(np.stack([e[0] for e in examples])).permute(0, 3, 1, 2).contiguous().float()
    return (
        images,
        [e[1] for e in examples],
        torch.tensor([e[2] for e in examples]),
        torch.from_numpy(np.stack([e[3] for e in examples])),
        [e[4] for e in examples],
    )


# Errors that a bag of objects cannot see: the same objects and attributes, bound or placed differently.
RANKED_ERRORS: tuple[str, ...] = ("swap_color", "swap_texture", "swap_size", "reverse", "random_layout")


def error_pair(spec: PromptSpec, error: str, rng: np.random.Generator):
    """(correct scene, scene with ``error``) for one caption, or None when the error changes no fact."""
    try:
        right = planned_scene(spec, rng)
        wrong = planned_scene(spec, rng, [error])
    except LayoutError:
        return None
    if truth_score(spec, right) != 1.0 or truth_score(spec, wrong) >= 1.0:
        return None
    return right, wrong


def render_pair(pair, image_size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Both scenes of a pair rendered in one drawn style."""
    style = STYLES[int(rng.integers(len(STYLES)))]
    return [render_style(render_scene_array(scene, image_size)[0], style, rng) for scene in pair]


def ranked_pair(
    specs: dict[str, list[PromptSpec]],
    rng: np.random.Generator,
    image_size: int,
    relation_share: float | None = None,
) -> tuple[str, list[np.ndarray], int]:
    """(caption, [correct render, render with one of :data:`RANKED_ERRORS`] in random order, index of the
    correct one), both in one drawn style.

    ``relation_share``: the share of pairs whose error is a relation's (reversed, random layout), the rest
    swapped attributes; None: a subcategory drawn first, then one of its kinds (about 1 pair in 10 is a
    spatial relation's)."""
    while True:
        if relation_share is None:
            sub = SUBCATEGORIES[int(rng.integers(len(SUBCATEGORIES)))]
            kinds = [e for e in ERRORS_FOR[sub] if e in RANKED_ERRORS]
        else:
            wanted = RELATION_ERRORS if rng.random() < relation_share else RANKED_ERRORS[:3]
            subs = [sub for sub in SUBCATEGORIES if set(ERRORS_FOR[sub]) & set(wanted)]
            sub = subs[int(rng.integers(len(subs)))]
            kinds = [e for e in ERRORS_FOR[sub] if e in wanted]
        if not kinds:
            continue
        spec = specs[sub][int(rng.integers(len(specs[sub])))]
        pair = error_pair(spec, kinds[int(rng.integers(len(kinds)))], rng)
        if pair is None:
            continue
        images = render_pair(pair, image_size, rng)
        if rng.random() < 0.5:
            return spec.text, images, 0
        return spec.text, images[::-1], 1


def violated_facts(spec: PromptSpec, scene) -> int:
    """How wrong a planned scene is for ``spec``: its false facts plus its extra objects, each counting one
    (the plan's own reading, deliberately not the oracle's weighting)."""
    facts = truth_facts(spec, scene)
    wrong = sum(not ok for key, ok in facts.items() if key != "no_extra")
    return wrong + count_extra(spec, scene_objects(scene))


def graded_pair(
    specs: dict[str, list[PromptSpec]], rng: np.random.Generator, image_size: int, max_errors: int = 3
) -> tuple[str, list[np.ndarray], int]:
    """(caption, the two scenes of :func:`graded_scenes` rendered in one drawn style, index of the better)."""
    spec, scenes, better = graded_scenes(specs, rng, max_errors)
    return spec.text, render_pair(scenes, image_size, rng), better


def graded_scenes(
    specs: dict[str, list[PromptSpec]], rng: np.random.Generator, max_errors: int = 3
) -> tuple[PromptSpec, list, int]:
    """(caption spec, two planned scenes of it with 0..``max_errors`` errors of its subcategory each, index
    of the one with fewer :func:`violated_facts`); pairs that violate as many facts are drawn again."""
    while True:
        sub = SUBCATEGORIES[int(rng.integers(len(SUBCATEGORIES)))]
        spec = specs[sub][int(rng.integers(len(specs[sub])))]
        options = ERRORS_FOR[sub]
        # Distinct kinds per scene: two extra objects and a changed shape could leave no shape to change to.
        plans = [
            [str(e) for e in rng.choice(options, size=int(rng.integers(max_errors + 1)), replace=False)]
            for _ in range(2)
        ]
        try:
            scenes = [planned_scene(spec, rng, plan) for plan in plans]
        except LayoutError:
            continue
        counts = [violated_facts(spec, scene) for scene in scenes]
        if counts[0] != counts[1]:
            return spec, scenes, int(counts[1] < counts[0])


def object_words(text: str, n_objects: int) -> list[list[int]]:
    """Per caption object (in the caption's order), the word positions of its attributes and its shape."""
    words = text.split()
    attributes = set(COLORS) | set(TEXTURES) | set(SIZES)
    groups: list[list[int]] = []
    for index, word in enumerate(words):
        if word in SHAPES:
            group = [index]
            back = index - 1
            while back >= 0 and words[back] in attributes:
                group.insert(0, back)
                back -= 1
            groups.append(group)
    if len(groups) != n_objects:
        raise ValueError(f"expected {n_objects} objects in {text!r}")
    return groups


@dataclass(frozen=True)
class GroundingExample:
    """A correct render, its caption, per caption object (token positions, normalised cell coverage), and
    the relation targets: the second object's centre minus the first's (in canvases) and whether the first
    is inside the second, the second inside the first, the two touch."""

    image: np.ndarray
    caption: str
    objects: tuple[tuple[tuple[int, ...], np.ndarray], ...]
    offset: tuple[float, float]
    flags: tuple[float, float, float]


def grounding_example(
    specs: dict[str, list[PromptSpec]], rng: np.random.Generator, image_size: int, patch: int
) -> GroundingExample:
    while True:
        sub = SUBCATEGORIES[int(rng.integers(len(SUBCATEGORIES)))]
        spec = specs[sub][int(rng.integers(len(specs[sub])))]
        try:
            scene = planned_scene(spec, rng)
        except LayoutError:
            continue
        if truth_score(spec, scene) != 1.0:  # every object present with its attributes, nothing extra
            continue
        seen = scene_objects(scene)
        matches = match_objects(spec, seen)
        img, coverages = render_scene_array(scene, image_size)
        grid = image_size // patch
        objects = []
        for words, match in zip(object_words(spec.text, len(spec.objects)), matches, strict=True):
            cells = coverages[match].reshape(grid, patch, grid, patch).mean(axis=(1, 3)).flatten()
            if cells.sum() <= 0:
                break
            # +1: the tokenizer's leading [ENC]; one word is one token in the world's vocabulary.
            objects.append((tuple(w + 1 for w in words), cells / cells.sum()))
        else:
            first, second = (seen[m] for m in matches)
            canvas = float(scene.canvas)
            offset = (
                (second.center[0] - first.center[0]) / canvas,
                (second.center[1] - first.center[1]) / canvas,
            )
            touching = not (is_inside(first, second) or is_inside(second, first)) and (
                mask_distance(first.mask, second.mask, 1) <= 1
            )
            flags = (float(is_inside(first, second)), float(is_inside(second, first)), float(touching))
            style = STYLES[int(rng.integers(len(STYLES)))]
            return GroundingExample(render_style(img, style, rng), spec.text, tuple(objects), offset, flags)


# ----------------------------------------------------------------------------------------- model
def build_tokenizer(folder: Path):
    from transformers import BertTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    vocab_file = folder / "vocab.txt"
    vocab_file.write_text("\n".join(vocabulary()) + "\n")
    tokenizer = BertTokenizer(str(vocab_file), do_lower_case=True)
    tokenizer.add_special_tokens({"bos_token": "[DEC]", "additional_special_tokens": ["[ENC]"]})
    tokenizer.enc_token_id = tokenizer.convert_tokens_to_ids("[ENC]")
    if len(tokenizer) != len(vocabulary()):
        raise RuntimeError("the world tokenizer grew beyond its vocabulary file")
    return tokenizer


def build_blip(config: EncoderConfig, vocab_size: int):
    from transformers import BlipConfig, BlipForImageTextRetrieval

    heads = config.hidden_size // 32
    blip_config = BlipConfig(
        vision_config=dict(
            hidden_size=config.hidden_size,
            intermediate_size=4 * config.hidden_size,
            num_hidden_layers=config.layers,
            num_attention_heads=heads,
            image_size=config.image_size,
            patch_size=config.patch_size,
            initializer_range=0.02,
        ),
        text_config=dict(
            vocab_size=vocab_size,
            hidden_size=config.hidden_size,
            encoder_hidden_size=config.hidden_size,
            intermediate_size=4 * config.hidden_size,
            num_hidden_layers=config.layers,
            num_attention_heads=heads,
            max_position_embeddings=40,
            initializer_range=0.02,
            is_decoder=True,
            use_cache=False,
            pad_token_id=SPECIAL_TOKENS.index("[PAD]"),
            bos_token_id=SPECIAL_TOKENS.index("[DEC]"),
            sep_token_id=SPECIAL_TOKENS.index("[SEP]"),
        ),
        projection_dim=config.hidden_size,
        image_text_hidden_size=config.hidden_size,
    )
    return BlipForImageTextRetrieval(blip_config)


class DenseHead(nn.Module):
    """Per-patch-token shape/colour/texture logits (pretraining only; not saved with the encoder)."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.shape = nn.Linear(hidden, EMPTY_SHAPE + 1)
        self.color = nn.Linear(hidden, EMPTY_COLOR + 1)
        self.texture = nn.Linear(hidden, EMPTY_TEXTURE + 1)

    def loss(self, patch_tokens: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean cross-entropy over the three label kinds, and the share of cells all three get right."""
        flat = labels.flatten(2)  # [B, 3, G*G]
        correct = torch.ones_like(flat[:, 0], dtype=torch.bool)
        total = patch_tokens.new_zeros(())
        for k, head in enumerate((self.shape, self.color, self.texture)):
            logits = head(patch_tokens)  # [B, G*G, C]
            total = total + F.cross_entropy(logits.transpose(1, 2), flat[:, k])
            correct &= logits.argmax(-1) == flat[:, k]
        return total / 3, correct.float().mean()


class GroundingHead(nn.Module):
    """Pretraining only: what a caption object's fused tokens, and the patch tokens, must be able to say.
    - *grounding*: which image cells it is (query · key over the patch tokens: a content match, so it binds
      words to objects but need not know where they are);
    - *location*: which cells it covers, from the token alone (a fixed linear map to the cells, so the
      token itself must carry the object's position);
    - *relation*: from the two objects' fused shape tokens, the second's offset from the first and whether
      one is inside or touching the other;
    - *position*: from each patch token alone, where its cell is (x, y in [-1, 1])."""

    def __init__(self, hidden: int, cells: int) -> None:
        super().__init__()
        self.query = nn.Linear(hidden, hidden)
        self.key = nn.Linear(hidden, hidden)
        self.where = nn.Linear(hidden, cells)
        self.position = nn.Linear(hidden, 2)
        self.relation = nn.Sequential(nn.Linear(2 * hidden, hidden), nn.GELU(), nn.Linear(hidden, 5))

    def loss(
        self,
        image_embeds: torch.Tensor,
        fused: torch.Tensor,
        examples: list[GroundingExample],
        cross_attentions: tuple[torch.Tensor, ...] | None = None,
    ) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
        """Losses {"ground", "location", "relation", "position"} and stats: cross-entropy of each object
        word's cell distribution against the object's coverage (through the image keys, then from the token
        alone); squared offset error (in eighths of the canvas) + BCE of the three flags; squared error of
        each patch token's cell position (in cells). With the text layers' ``cross_attentions``, also
        "attention": cross-entropy of each object word's head-averaged cross-attention over the cells (the
        image's [CLS] token a non-target) against the object's coverage, averaged over layers."""
        logits = self.query(fused) @ self.key(image_embeds[:, 1:, :]).transpose(1, 2)
        logits = logits / image_embeds.shape[-1] ** 0.5  # [B, L, cells]
        rows, positions, targets, shape_positions = [], [], [], []
        for b, example in enumerate(examples):
            for words, cells in example.objects:
                for position in words:
                    rows.append(b)
                    positions.append(position)
                    targets.append(cells)
            shape_positions.append([words[-1] for words, _ in example.objects])
        rows_at, words_at = torch.tensor(rows), torch.tensor(positions)
        target = torch.from_numpy(np.stack(targets)).float()

        def on_object(scores: torch.Tensor) -> float:
            """Share of object words whose highest-scored cell is one of their object's."""
            return float((target.gather(1, scores.argmax(-1, keepdim=True)) > 0).float().mean())

        log_p = F.log_softmax(logits[rows_at, words_at], dim=-1)
        ground = -(target * log_p).sum(-1).mean()
        where = F.log_softmax(self.where(fused[rows_at, words_at]), dim=-1)
        location = -(target * where).sum(-1).mean()
        index = torch.arange(len(examples))
        pair = torch.tensor(shape_positions)
        features = torch.cat([fused[index, pair[:, 0]], fused[index, pair[:, 1]]], dim=-1)
        predicted = self.relation(features)
        offset = torch.tensor([e.offset for e in examples], dtype=torch.float32)
        flags = torch.tensor([e.flags for e in examples], dtype=torch.float32)
        relation = F.mse_loss(
            predicted[:, :2] * 0.125, offset
        ) / 0.125**2 + F.binary_cross_entropy_with_logits(predicted[:, 2:], flags)
        # Which way the second object lies on the larger axis, as the relation words would say it.
        axis = offset.abs().argmax(-1, keepdim=True)
        sides = (predicted[:, :2].gather(1, axis) > 0) == (offset.gather(1, axis) > 0)
        stats = {
            "ground": float(ground.detach()),
            "ground_hit": on_object(log_p),
            "location": float(location.detach()),
            "location_hit": on_object(where),
            "relation": float(relation.detach()),
            "relation_side": float(sides.float().mean()),
        }
        patches = image_embeds[:, 1:, :]
        grid = int(round(patches.shape[1] ** 0.5))
        if grid * grid != patches.shape[1]:
            raise ValueError(f"{patches.shape[1]} patch tokens are not a square grid")
        centres = (torch.arange(grid, dtype=torch.float32) + 0.5) / grid * 2 - 1
        ys, xs = torch.meshgrid(centres, centres, indexing="ij")
        where_cells = torch.stack([xs.flatten(), ys.flatten()], dim=-1)  # row-major, as the patch tokens
        position = (
            F.mse_loss(self.position(patches), where_cells.expand_as(patches[..., :2])) * (grid / 2) ** 2
        )
        stats["position"] = float(position.detach())
        terms = {"ground": ground, "location": location, "relation": relation, "position": position}
        if cross_attentions is not None:
            layers = []
            for probabilities in cross_attentions:  # [B, heads, L, 1 + cells]
                looked = probabilities[rows_at, :, words_at].mean(1)[:, 1:]
                layers.append(-(target * torch.log(looked.clamp_min(1e-8))).sum(-1).mean())
            terms["attention"] = torch.stack(layers).mean()
            stats.update(attention=float(terms["attention"].detach()), attention_hit=on_object(looked))
        return terms, stats


def _pixel_values(images: torch.Tensor, image_size: int) -> torch.Tensor:
    from training.ml.preprocess import PreprocessConfig, preprocess_images

    return preprocess_images(images, PreprocessConfig(image_size=image_size))


def _tokenize(tokenizer, captions: list[str], first: str) -> tuple[torch.Tensor, torch.Tensor]:
    enc = tokenizer(captions, padding="longest", return_tensors="pt")
    ids = enc["input_ids"].clone()
    if first == "enc":
        ids[:, 0] = tokenizer.enc_token_id
    return ids, enc["attention_mask"]


def _fuse(
    blip,
    tokenizer,
    images: torch.Tensor,
    captions: list[str],
    config: EncoderConfig,
    attentions: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, ...] | None]:
    """Image tokens [B, T, D], the [ENC] caption's tokens [B, L, D] after cross-attending to them, and
    (with ``attentions``) each text layer's cross-attention probabilities [B, heads, L, T]."""
    image_embeds = blip.vision_model(pixel_values=_pixel_values(images, config.image_size)).last_hidden_state
    ids, mask = _tokenize(tokenizer, captions, "enc")
    fused = blip.text_encoder(
        input_ids=ids, attention_mask=mask, encoder_hidden_states=image_embeds, output_attentions=attentions
    )
    return image_embeds, fused.last_hidden_state, fused.cross_attentions if attentions else None


def _match(
    blip, tokenizer, images: torch.Tensor, captions: list[str], config: EncoderConfig
) -> tuple[torch.Tensor, torch.Tensor]:
    """Image tokens [B, T, D] and ITM logits [B, 2]: BLIP's [ENC] text cross-attending to the image."""
    image_embeds, fused, _ = _fuse(blip, tokenizer, images, captions, config)
    return image_embeds, blip.itm_head(fused[:, 0, :])


def losses(
    blip, dense: DenseHead, tokenizer, batch, config: EncoderConfig
) -> tuple[torch.Tensor, dict[str, float]]:
    images, captions, match, labels, _ = batch
    image_embeds, itm_logits = _match(blip, tokenizer, images, captions, config)
    itm = F.cross_entropy(itm_logits, match)
    dense_loss, cell_acc = dense.loss(image_embeds[:, 1:, :], labels)
    total = itm + config.dense_weight * dense_loss
    stats = {
        "itm": float(itm.detach()),
        "itm_acc": float((itm_logits.argmax(-1) == match).float().mean()),
        "dense": float(dense_loss.detach()),
        "cell_acc": float(cell_acc),
    }
    positives = match.nonzero().flatten()
    if config.itc_weight > 0 and positives.numel() >= 2:
        cls_ids, cls_mask = _tokenize(tokenizer, [captions[i] for i in positives.tolist()], "cls")
        text = blip.text_encoder(input_ids=cls_ids, attention_mask=cls_mask).last_hidden_state[:, 0, :]
        text_feat = F.normalize(blip.text_proj(text), dim=-1)
        image_feat = F.normalize(blip.vision_proj(image_embeds[positives, 0, :]), dim=-1)
        sim = image_feat @ text_feat.t() / config.itc_temperature
        # Identical captions in one batch are both right answers: soft targets over equal captions.
        same = torch.tensor(
            [[captions[i] == captions[j] for j in positives.tolist()] for i in positives.tolist()],
            dtype=torch.float32,
        )
        targets = same / same.sum(1, keepdim=True)
        itc = 0.5 * (
            torch.sum(-targets * F.log_softmax(sim, 1), 1).mean()
            + torch.sum(-targets * F.log_softmax(sim.t(), 1), 1).mean()
        )
        total = total + config.itc_weight * itc
        stats["itc"] = float(itc.detach())
    return total, stats


def ranked_loss(blip, tokenizer, pairs, config: EncoderConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """−log σ(margin(correct) − margin(wrong)) over :func:`ranked_pair` pairs, where margin is the ITM
    logit difference; and the share of pairs ordered right."""
    captions = [caption for caption, _, _ in pairs for _ in range(2)]
    images = torch.from_numpy(np.stack([image for _, both, _ in pairs for image in both]))
    _, logits = _match(blip, tokenizer, images.permute(0, 3, 1, 2).float(), captions, config)
    margin = (logits[:, 1] - logits[:, 0]).view(-1, 2)
    better = torch.tensor([b for _, _, b in pairs])[:, None]
    diff = (margin.gather(1, better) - margin.gather(1, 1 - better)).squeeze(1)
    return -F.logsigmoid(diff).mean(), (diff > 0).float().mean()


def composition_losses(
    blip,
    grounding: GroundingHead,
    tokenizer,
    specs: dict[str, list[PromptSpec]],
    rng: np.random.Generator,
    config: EncoderConfig,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The ranked-pair term and the grounding examples' terms (grounding, location, relation, position,
    attention) of one step, weighted; zero when ranked pairs and grounding examples are both off."""
    total, stats = torch.zeros(()), {}
    if config.ranked_pairs:
        pairs = [
            ranked_pair(specs, rng, config.image_size, config.relation_pair_share)
            for _ in range(config.ranked_pairs)
        ]
        rank, rank_acc = ranked_loss(blip, tokenizer, pairs, config)
        total = total + config.rank_weight * rank
        stats.update(rank=float(rank.detach()), rank_acc=float(rank_acc))
    if config.graded_pairs:
        pairs = [
            graded_pair(specs, rng, config.image_size, config.graded_max_errors)
            for _ in range(config.graded_pairs)
        ]
        graded, graded_acc = ranked_loss(blip, tokenizer, pairs, config)
        total = total + config.rank_weight * graded
        stats.update(graded=float(graded.detach()), graded_acc=float(graded_acc))
    if config.grounding_examples:
        examples = [
            grounding_example(specs, rng, config.image_size, config.patch_size)
            for _ in range(config.grounding_examples)
        ]
        images = torch.from_numpy(np.stack([e.image for e in examples])).permute(0, 3, 1, 2).float()
        image_embeds, fused, cross = _fuse(
            blip,
            tokenizer,
            images,
            [e.caption for e in examples],
            config,
            attentions=config.attention_weight > 0,
        )
        terms, ground_stats = grounding.loss(image_embeds, fused, examples, cross)
        total = (
            total
            + config.grounding_weight * terms["ground"]
            + config.location_weight * terms["location"]
            + config.relation_weight * terms["relation"]
            + config.position_weight * terms["position"]
        )
        if cross is not None:
            total = total + config.attention_weight * terms["attention"]
        stats.update(ground_stats)
    return total, stats


@torch.no_grad()
def ranked_accuracy(blip, tokenizer, config: EncoderConfig, seed: int, per_kind: int) -> dict[str, float]:
    """Held-out captions: the share of (correct render, render with one error) pairs whose ITM margin
    orders them right, per kind of :data:`RANKED_ERRORS` (styles drawn at random), and of
    :func:`graded_pair` pairs under ``graded``."""
    specs = encoder_prompt_specs(held_out=True)
    rng = np.random.default_rng(seed)
    report = {}
    for kind in RANKED_ERRORS:
        subs = [sub for sub in SUBCATEGORIES if kind in ERRORS_FOR[sub]]
        pairs: list[tuple[str, list[np.ndarray], int]] = []
        while len(pairs) < per_kind:
            sub = subs[int(rng.integers(len(subs)))]
            spec = specs[sub][int(rng.integers(len(specs[sub])))]
            pair = error_pair(spec, kind, rng)
            if pair is None:
                continue
            pairs.append((spec.text, render_pair(pair, config.image_size, rng), 0))
        report[kind] = _ordered_share(blip, tokenizer, pairs, config)
    graded = [graded_pair(specs, rng, config.image_size, config.graded_max_errors) for _ in range(per_kind)]
    report["graded"] = _ordered_share(blip, tokenizer, graded, config)
    return report


def _ordered_share(blip, tokenizer, pairs, config: EncoderConfig) -> float:
    """The share of ranked pairs whose ITM margin orders them right, in batches of 64."""
    right = sum(
        float(ranked_loss(blip, tokenizer, pairs[i : i + 64], config)[1]) * len(pairs[i : i + 64])
        for i in range(0, len(pairs), 64)
    )
    return round(right / len(pairs), 4)


@torch.no_grad()
def evaluate(blip, dense: DenseHead, tokenizer, config: EncoderConfig, seed: int) -> dict[str, Any]:
    """ITM accuracy and balanced accuracy per style on held-out prompts, and per-cell accuracy."""
    blip.eval()
    specs = encoder_prompt_specs(held_out=True)
    rng = np.random.default_rng(seed)
    per_style: dict[str, list[tuple[int, int]]] = {s: [] for s in STYLES}
    cell_accs = []
    remaining = config.eval_examples
    while remaining > 0:
        size = min(256, remaining)
        batch = draw_batch(specs, rng, config, size)
        images, captions, match, labels, styles = batch
        image_embeds, itm_logits = _match(blip, tokenizer, images, captions, config)
        predicted = itm_logits.argmax(-1)
        for style, p, m in zip(styles, predicted.tolist(), match.tolist(), strict=True):
            per_style[style].append((p, m))
        cell_accs.append(float(dense.loss(image_embeds[:, 1:, :], labels)[1]) * size)
        remaining -= size
    report: dict[str, Any] = {"examples": config.eval_examples, "styles": {}}
    every = [pm for rows in per_style.values() for pm in rows]
    for style, rows in [*per_style.items(), ("all", every)]:
        if not rows:
            continue
        pairs = np.array(rows)
        positives, negatives = pairs[pairs[:, 1] == 1], pairs[pairs[:, 1] == 0]
        tpr = float((positives[:, 0] == 1).mean()) if len(positives) else float("nan")
        tnr = float((negatives[:, 0] == 0).mean()) if len(negatives) else float("nan")
        entry = {
            "n": len(pairs),
            "match_share": round(float(pairs[:, 1].mean()), 3),
            "itm_accuracy": round(float((pairs[:, 0] == pairs[:, 1]).mean()), 4),
            "itm_balanced_accuracy": round((tpr + tnr) / 2, 4),
        }
        if style == "all":
            report.update(entry)
        else:
            report["styles"][style] = entry
    report["cell_accuracy"] = round(sum(cell_accs) / config.eval_examples, 4)
    report["ranked_accuracy"] = ranked_accuracy(
        blip, tokenizer, config, seed + 1, per_kind=max(4, config.eval_examples // 20)
    )
    blip.train()
    return report


def _lr(step: int, config: EncoderConfig) -> float:
    if step < config.warmup_steps:
        return config.learning_rate * (step + 1) / max(1, config.warmup_steps)
    progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
    return config.learning_rate * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def _continued_blip(init: Path, config: EncoderConfig):
    """The BLIP of folder ``init`` to train on, and its training record; refuses an architecture or a
    vocabulary other than ``config``'s."""
    from transformers import BlipForImageTextRetrieval

    vision = json.loads((init / "config.json").read_text())["vision_config"]
    found = (vision["hidden_size"], vision["num_hidden_layers"], vision["patch_size"], vision["image_size"])
    wanted = (config.hidden_size, config.layers, config.patch_size, config.image_size)
    if found != wanted:
        raise ValueError(f"{init}: hidden, layers, patch, image {found} differ from the config's {wanted}")
    if (init / "vocab.txt").read_text().split() != vocabulary():
        raise ValueError(f"{init}: its vocabulary is not the world's")
    info = init / "train_info.json"
    record = json.loads(info.read_text()) if info.is_file() else None
    return BlipForImageTextRetrieval.from_pretrained(str(init), local_files_only=True), record


def pretrain_encoder(
    config: EncoderConfig,
    out: str | Path,
    log: Callable[[str], None] | None = print,
    command: str | None = None,
    init: str | Path | None = None,
) -> dict[str, Any]:
    """Train from scratch (or continue the BLIP folder ``init``) and save a local HuggingFace BLIP folder at
    ``out``; returns the training record, which nests ``init``'s record so every stage stays on file."""
    from training.ml.preprocess import BLIP_MEAN, BLIP_STD

    out = Path(out)
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(config.threads)
    torch.use_deterministic_algorithms(True)
    try:
        torch.manual_seed(config.seed)
        init_record = None
        if init is not None:
            blip, init_record = _continued_blip(Path(init), config)
        tokenizer = build_tokenizer(out)
        if init is None:
            blip = build_blip(config, len(tokenizer))
        dense = DenseHead(config.hidden_size)
        grounding = GroundingHead(config.hidden_size, (config.image_size // config.patch_size) ** 2)
        blip.train()
        parameters = [p for p in blip.parameters()] + list(dense.parameters()) + list(grounding.parameters())
        optimizer = torch.optim.AdamW(parameters, lr=config.learning_rate, weight_decay=config.weight_decay)
        specs = encoder_prompt_specs(held_out=False)
        rng = np.random.default_rng(config.seed)
        history: list[dict[str, float]] = []
        start, cpu_start = time.perf_counter(), time.process_time()
        every = max(1, config.steps // 20)
        for step in range(config.steps):
            for group in optimizer.param_groups:
                group["lr"] = _lr(step, config)
            batch = draw_batch(specs, rng, config, config.batch_size)
            loss, stats = losses(blip, dense, tokenizer, batch, config)
            extra, extra_stats = composition_losses(blip, grounding, tokenizer, specs, rng, config)
            loss = loss + extra
            stats.update(extra_stats)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(parameters, config.grad_clip)
            optimizer.step()
            history.append(stats)
            if log is not None and (step + 1) % every == 0:
                recent = {k: float(np.mean([h.get(k, np.nan) for h in history[-every:]])) for k in stats}
                shown = " ".join(f"{k} {v:.3f}" for k, v in recent.items())
                log(f"step {step + 1}/{config.steps} {shown} {time.perf_counter() - start:.0f}s")
        train_seconds = time.perf_counter() - start
        evaluation = evaluate(blip, dense, tokenizer, config, seed=config.seed + 10_000)
        if log is not None:
            log(f"held-out: {json.dumps(evaluation)}")
        record = {
            "command": command,
            "config": asdict(config),
            "init": None if init is None else {"path": str(init), "record": init_record},
            "wall_seconds": round(train_seconds, 1),
            "cpu_seconds": round(time.process_time() - cpu_start, 1),
            "examples_seen": config.steps
            * (
                config.batch_size
                + 2 * (config.ranked_pairs + config.graded_pairs)
                + config.grounding_examples
            ),
            "parameters": sum(p.numel() for p in blip.parameters()),
            "curve": [
                {
                    k: round(float(np.mean([h.get(k, np.nan) for h in history[i : i + every]])), 4)
                    for k in history[i]
                }
                for i in range(0, len(history), every)
            ],
            "held_out": evaluation,
            "torch": torch.__version__,
            "machine": platform.machine(),
        }
        blip.save_pretrained(out)
        tokenizer.save_pretrained(out)
        # What BLIP's image processor would save; training.ml.preprocess reads the size, mean, std, resample.
        processor = {
            "image_processor_type": "BlipImageProcessor",
            "do_resize": True,
            "size": {"height": config.image_size, "width": config.image_size},
            "resample": 3,
            "do_rescale": True,
            "rescale_factor": 1 / 255,
            "do_normalize": True,
            "image_mean": list(BLIP_MEAN),
            "image_std": list(BLIP_STD),
            "do_convert_rgb": True,
        }
        (out / "preprocessor_config.json").write_text(json.dumps(processor, indent=1) + "\n")
        (out / "train_info.json").write_text(json.dumps(record, indent=1) + "\n")
        return record
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic)
