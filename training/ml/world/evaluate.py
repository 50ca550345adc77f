"""Score a world diffusion model with the oracle, per subcategory and per reward category."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .model import WorldDiffusionModel
from .oracle import oracle_report
from .vocab import REWARD_CATEGORIES, REWARD_CATEGORY


@dataclass(frozen=True)
class ModelScores:
    by_subcategory: dict[str, float]
    by_category: dict[str, float]
    n_images: int
    images: dict[str, torch.Tensor]  # first batch per subcategory, for contact sheets
    # Shares over all images: every named object present / every stated attribute right (of the images
    # whose prompt states one) / relation right (relation prompts) / at least one object not asked for.
    facts: dict[str, float] | None = None
    # (prompt, subcategory, seed, oracle score) of every image, in sampling order: two models evaluated on the
    # same prompts share their seeds, hence their starting noise, so their scores can be compared pair by pair.
    per_image: tuple[tuple[str, str, int, float], ...] = ()

    @property
    def overall(self) -> float:
        return float(np.mean(list(self.by_category.values())))


def evaluate_model(
    model: WorldDiffusionModel,
    prompts: dict[str, list[str]],
    seeds_per_prompt: int = 2,
    steps: int = 25,
    guidance: float = 3.0,
    batch_size: int = 64,
    base_seed: int = 1000,
) -> ModelScores:
    """Mean oracle score of samples for every prompt x seed, grouped by subcategory and category."""
    by_subcategory: dict[str, float] = {}
    per_category: dict[str, list[float]] = {cat: [] for cat in REWARD_CATEGORIES}
    first_images: dict[str, torch.Tensor] = {}
    total = 0
    counts = {"object_present": [], "attribute_right": [], "relation_right": [], "extras": []}
    per_image: list[tuple[str, str, int, float]] = []
    model.eval()
    for subcategory, texts in prompts.items():
        # Distinct starting noise for every (prompt, k): a shared seed would give every prompt the same layout.
        jobs = [
            (text, base_seed + i * seeds_per_prompt + k)
            for i, text in enumerate(texts)
            for k in range(seeds_per_prompt)
        ]
        scores: list[float] = []
        for start in range(0, len(jobs), batch_size):
            chunk = jobs[start : start + batch_size]
            images = model.sample(
                [t for t, _ in chunk], [s for _, s in chunk], steps=steps, guidance=guidance
            )
            if subcategory not in first_images:
                first_images[subcategory] = images
            for (text, seed), image in zip(chunk, images, strict=True):
                report = oracle_report(text, image)
                facts = report["facts"]
                scores.append(float(report["score"]))
                per_image.append((text, subcategory, seed, scores[-1]))
                counts["object_present"].append(all(v for k, v in facts.items() if k.startswith("present:")))
                attributes = [v for k, v in facts.items() if k.split(":")[0] in ("color", "texture", "size")]
                if attributes:
                    counts["attribute_right"].append(all(attributes))
                if "relation" in facts:
                    counts["relation_right"].append(facts["relation"])
                counts["extras"].append(report["n_extra"] > 0)
        by_subcategory[subcategory] = float(np.mean(scores))
        per_category[REWARD_CATEGORY[subcategory]] += scores
        total += len(scores)
    by_category = {cat: float(np.mean(v)) for cat, v in per_category.items() if v}
    shares = {k: float(np.mean(v)) for k, v in counts.items() if v}
    return ModelScores(by_subcategory, by_category, total, first_images, shares, tuple(per_image))
