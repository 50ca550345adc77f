"""Prototype: continue the committed world encoder's pretraining with a graded matching signal from the plan.

For one true caption, two planned scenes with different numbers of violated caption facts (each fact and
each extra object weighs one — deliberately not the oracle's score formula); a ranking loss on the ITM
margin prefers the scene with fewer. The usual ITM + dense + ITC batches continue beside it. Labels come
from the plan; the oracle is never consulted.

A research prototype for issue #14 (BENCHMARKS "five checks"): it writes a BLIP folder that
``bench/encoder_zero_shot.py --encoders DIR`` and ``bench/active_selection.py --reward-init DIR`` measure;
nothing in the app reads it. The recorded runs:

    .venv/bin/python bench/encoder_graded_prototype.py --out /work/runs/enc_graded --steps 600
    .venv/bin/python bench/encoder_graded_prototype.py --out /work/runs/enc_relmix --steps 600 --error-mix relation
    .venv/bin/python bench/encoder_graded_prototype.py --out /work/runs/enc_binding --steps 1500 --error-mix binding
    .venv/bin/python bench/encoder_graded_prototype.py --out /work/runs/enc_pairsonly --steps 800 --pairs 64 \
        --lr 5e-4 --error-mix binding
    .venv/bin/python bench/encoder_graded_prototype.py --out /work/runs/enc_ground --steps 1500 \
        --error-mix binding --grounding 16
    .venv/bin/python bench/encoder_graded_prototype.py --out /work/runs/enc_ground2 --init /work/runs/enc_ground \
        --steps 2500 --error-mix binding --grounding 16
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from encoder_error_pairs import error_pair  # noqa: E402

from training.ml.world.encoder import (  # noqa: E402
    ENCODER_DIR,
    STYLES,
    DenseHead,
    EncoderConfig,
    _fuse,
    _match,
    draw_batch,
    encoder_prompt_specs,
    evaluate,
    losses,
    plan_errors,
    render_style,
)
from training.ml.world.errors import ERRORS_FOR, RELATION_ERRORS, planned_scene  # noqa: E402
from training.ml.world.facts import (  # noqa: E402
    count_extra,
    match_objects,
    prompt_facts,
    scene_objects,
    truth_score,
)
from training.ml.world.layout import LayoutError  # noqa: E402
from training.ml.world.scene import render_scene_array  # noqa: E402
from training.ml.world.vocab import COLORS, SHAPES, SIZES, SUBCATEGORIES, TEXTURES  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument(
        "--init", default=str(ENCODER_DIR), help="BLIP folder to continue (default: the committed one)"
    )
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument(
        "--pairs", type=int, default=32, help="images per batch given to ranked scene pairs (64: pairs only)"
    )
    p.add_argument("--rank-weight", type=float, default=1.0)
    p.add_argument(
        "--error-mix",
        choices=("plan", "relation", "binding"),
        default="plan",
        help="plan: the encoder pretraining's errors; relation: spatial / non-spatial scenes planned with the "
        "base model's mix (relation wrong in 70 %%, up to two further errors, bench/error_repertoire.py); "
        "binding: the ranked pairs are a correct scene and one with a single swapped attribute or a wrong "
        "relation (the errors bench/encoder_error_pairs.py finds the committed encoder blind to)",
    )
    p.add_argument(
        "--grounding",
        type=int,
        default=0,
        help="images per step for a grounding loss: each word of a true caption's object (its attributes and "
        "its shape) must point, through its fused token, at that object's 4 px cells (0: off)",
    )
    p.add_argument("--grounding-weight", type=float, default=1.0)
    p.add_argument("--threads", type=int, default=1)
    return p


def violations(spec, scene) -> int:
    """Caption facts that do not hold in the planned scene, plus objects it has that the caption lacks."""
    seen = scene_objects(scene)
    return sum(not held for held in prompt_facts(spec, seen, touch_px=1).values()) + count_extra(spec, seen)


def relation_mix_errors(sub: str, rng: np.random.Generator) -> tuple[str, ...]:
    """Errors for a relation-category scene in the base model's proportions: the relation wrong in 70 %,
    then 0-2 errors of the subcategory's other kinds (the base model often breaks several facts at once)."""
    others = [e for e in ERRORS_FOR[sub] if e not in RELATION_ERRORS]
    errors = [RELATION_ERRORS[int(rng.integers(len(RELATION_ERRORS)))]] if rng.random() < 0.7 else []
    errors += [others[int(rng.integers(len(others)))] for _ in range(int(rng.integers(0, 3)))]
    return tuple(errors)


BINDING_ERRORS = ("swap_color", "swap_texture", "swap_size", "reverse", "random_layout")


def binding_pair(specs, rng: np.random.Generator, image_size: int) -> tuple[str, list[np.ndarray], int]:
    """(caption, [correct render, render with one binding/relation error] in random order, index of the
    correct one); only errors that change a fact of the caption count (truth scores 1 and < 1)."""
    while True:
        sub = SUBCATEGORIES[int(rng.integers(len(SUBCATEGORIES)))]
        kinds = [e for e in ERRORS_FOR[sub] if e in BINDING_ERRORS]
        if not kinds:
            continue
        spec = specs[sub][int(rng.integers(len(specs[sub])))]
        pair = error_pair(spec, kinds[int(rng.integers(len(kinds)))], rng)
        if pair is None:
            continue
        style = STYLES[int(rng.integers(len(STYLES)))]
        images = [render_style(render_scene_array(s, image_size)[0], style, rng) for s in pair]
        if rng.random() < 0.5:
            return spec.text, images, 0
        return spec.text, images[::-1], 1


def scene_pair(
    specs, rng: np.random.Generator, image_size: int, mix: str = "plan"
) -> tuple[str, list[np.ndarray], int]:
    """(caption, two renders of scenes planned for it with 0-2 errors each, index of the less wrong one)."""
    if mix == "binding":
        return binding_pair(specs, rng, image_size)
    while True:
        sub = SUBCATEGORIES[int(rng.integers(len(SUBCATEGORIES)))]
        spec = specs[sub][int(rng.integers(len(specs[sub])))]
        options = ERRORS_FOR[sub]
        scenes = []
        for _ in range(2):
            if mix == "relation" and sub in ("spatial", "non_spatial"):
                errors = relation_mix_errors(sub, rng)
            else:
                errors = tuple(
                    options[int(rng.integers(len(options)))] for _ in range(int(rng.integers(0, 3)))
                )
            try:
                scenes.append(planned_scene(spec, rng, errors))
            except LayoutError:
                scenes.append(planned_scene(spec, rng))
        first, second = violations(spec, scenes[0]), violations(spec, scenes[1])
        if first == second:
            continue
        style = STYLES[int(rng.integers(len(STYLES)))]
        images = [render_style(render_scene_array(s, image_size)[0], style, rng) for s in scenes]
        return spec.text, images, 0 if first < second else 1


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


def grounding_example(specs, rng: np.random.Generator, image_size: int, patch: int):
    """(render, true caption, [(token positions, cell target distribution)] per caption object) for a
    correctly planned scene; targets are each object's coverage per cell, normalised."""
    while True:
        sub = SUBCATEGORIES[int(rng.integers(len(SUBCATEGORIES)))]
        spec = specs[sub][int(rng.integers(len(specs[sub])))]
        try:
            scene = planned_scene(spec, rng)
        except LayoutError:
            continue
        if truth_score(spec, scene) != 1.0:  # every object present with its attributes, and no extra
            continue
        matches = match_objects(spec, scene_objects(scene))
        img, coverages = render_scene_array(scene, image_size)
        grid = image_size // patch
        targets = []
        for words, match in zip(object_words(spec.text, len(spec.objects)), matches, strict=True):
            cells = coverages[match].reshape(grid, patch, grid, patch).mean(axis=(1, 3)).flatten()
            if cells.sum() <= 0:
                break
            # +1: the tokenizer's leading [CLS]/[ENC]; one word is one token in the world's vocabulary.
            targets.append(([w + 1 for w in words], cells / cells.sum()))
        else:
            style = STYLES[int(rng.integers(len(STYLES)))]
            return render_style(img, style, rng), spec.text, targets


class GroundingHead(torch.nn.Module):
    """Scores each image cell for a fused caption token: query · key over the patch tokens (prototype only)."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.query = torch.nn.Linear(hidden, hidden)
        self.key = torch.nn.Linear(hidden, hidden)

    def loss(self, blip, tokenizer, examples, config) -> tuple[torch.Tensor, float]:
        images = torch.from_numpy(np.stack([e[0] for e in examples])).permute(0, 3, 1, 2).float()
        image_embeds, fused = _fuse(blip, tokenizer, images, [e[1] for e in examples], config)
        tokens = self.query(fused)  # [B, L, D]
        keys = self.key(image_embeds[:, 1:, :])  # [B, cells, D]
        logits = tokens @ keys.transpose(1, 2) / keys.shape[-1] ** 0.5  # [B, L, cells]
        total, count, hits = logits.new_zeros(()), 0, 0
        for b, (_, _, targets) in enumerate(examples):
            for positions, cells in targets:
                target = torch.from_numpy(cells).float()
                for position in positions:
                    log_p = F.log_softmax(logits[b, position], dim=-1)
                    total = total - (target * log_p).sum()
                    hits += int(target[int(log_p.argmax())] > 0)
                    count += 1
        return total / max(1, count), hits / max(1, count)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    from transformers import BlipForImageTextRetrieval

    from training.ml.reward.model import build_blip_tokenizer

    args = build_parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    config = EncoderConfig(threads=args.threads, batch_size=64)
    specs = encoder_prompt_specs(held_out=False)
    rng = np.random.default_rng(7)
    start = Path(args.init)
    blip = BlipForImageTextRetrieval.from_pretrained(str(start), local_files_only=True).train()
    tokenizer = build_blip_tokenizer(str(start))
    dense = DenseHead(config.hidden_size)
    grounding = GroundingHead(config.hidden_size)
    parameters = list(blip.parameters()) + list(dense.parameters()) + list(grounding.parameters())
    optimizer = torch.optim.AdamW(parameters, lr=args.lr, weight_decay=0.01)
    planner = None
    if args.error_mix == "relation":

        def planner(sub: str, rng: np.random.Generator) -> tuple[str, ...]:
            if sub in ("spatial", "non_spatial"):
                return relation_mix_errors(sub, rng)
            return plan_errors(sub, rng, config)

    started = time.perf_counter()
    history: list[dict[str, float]] = []
    for step in range(args.steps):
        cosine = 0.1 + 0.9 * 0.5 * (1 + np.cos(np.pi * step / args.steps))
        for group in optimizer.param_groups:
            group["lr"] = args.lr * min(1.0, (step + 1) / 30) * cosine
        if args.pairs < 64:
            batch = draw_batch(specs, rng, config, 64 - args.pairs, planner)
            loss, stats = losses(blip, dense, tokenizer, batch, config)
        else:  # ranked pairs only: does the pair ranking alone teach what it asks?
            loss, stats = torch.zeros(()), {}
        pairs = [scene_pair(specs, rng, config.image_size, args.error_mix) for _ in range(args.pairs // 2)]
        captions = [caption for caption, _, _ in pairs for _ in range(2)]
        images = np.stack([image for _, both, _ in pairs for image in both])
        _, logits = _match(
            blip, tokenizer, torch.from_numpy(images).permute(0, 3, 1, 2).float(), captions, config
        )
        margin = (logits[:, 1] - logits[:, 0]).view(-1, 2)
        better = torch.tensor([b for _, _, b in pairs])
        diff = margin.gather(1, better[:, None]).squeeze(1) - margin.gather(1, (1 - better)[:, None]).squeeze(
            1
        )
        rank = -F.logsigmoid(diff).mean()
        stats["rank"] = float(rank.detach())
        stats["rank_acc"] = float((diff > 0).float().mean())
        if args.grounding:
            examples = [
                grounding_example(specs, rng, config.image_size, config.patch_size)
                for _ in range(args.grounding)
            ]
            ground, hit = grounding.loss(blip, tokenizer, examples, config)
            loss = loss + args.grounding_weight * ground
            stats["ground"], stats["ground_hit"] = float(ground.detach()), hit
        optimizer.zero_grad(set_to_none=True)
        (loss + args.rank_weight * rank).backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        history.append(stats)
        if (step + 1) % 50 == 0:
            recent = {k: round(float(np.mean([h.get(k, np.nan) for h in history[-50:]])), 3) for k in stats}
            print(step + 1, recent, round(time.perf_counter() - started), flush=True)
    blip.eval()
    held_out = evaluate(blip, dense, tokenizer, config, seed=10_000)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    blip.save_pretrained(out)
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "preprocessor_config.json"):
        shutil.copy(start / name, out / name)
    record = {
        "prototype": vars(args),
        "held_out": held_out,
        "seconds": round(time.perf_counter() - started, 1),
        "last_50_steps": {k: float(np.mean([h[k] for h in history[-50:]])) for k in history[-1]},
    }
    (out / "train_info.json").write_text(json.dumps(record, indent=1))
    print("held-out itm", held_out["itm_accuracy"], "cells", held_out["cell_accuracy"], flush=True)
    return record


if __name__ == "__main__":
    main()
