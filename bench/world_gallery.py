"""First-place shares of the six gallery generators per reward category, as ranked by simulated experts.

Usage: .venv/bin/python bench/world_gallery.py [--prompts 300] [--seed 0]
For every reward category, draws prompts evenly from its subcategories (repeating a subcategory's
prompts with new seeds where it has fewer distinct ones than its share), lets each generator draw one image
per prompt, and has the default panel's four experts (the careless annotator is left out) rank the six
images. Prints each generator's share of first places and mean oracle score per category, and writes a
bar chart to bench/out/world_gallery_first_places.png.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from training.ml.world import (  # noqa: E402
    GALLERY_GENERATORS,
    REWARD_CATEGORIES,
    REWARD_CATEGORY,
    SUBCATEGORIES,
    default_panel,
    generate_prompts,
)
from training.ml.world.annotators import cached_oracle_score  # noqa: E402

OUT = Path(__file__).resolve().parent / "out"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--prompts", type=int, default=300, help="prompts per reward category")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    start = time.perf_counter()
    names = list(GALLERY_GENERATORS)
    experts = [a for a in default_panel(args.seed) if not a.careless]
    shares: dict[str, dict[str, float]] = {}
    means: dict[str, dict[str, float]] = {}
    for category in REWARD_CATEGORIES:
        subcategories = [s for s in SUBCATEGORIES if REWARD_CATEGORY[s] == category]
        # Even weight per subcategory: a subcategory with fewer distinct prompts than its quota (shape has 48,
        # texture 72) repeats them; every repeat is drawn with a new seed, so it is a new image set.
        per_subcategory = args.prompts // len(subcategories)
        prompts = []
        for subcategory in subcategories:
            distinct = generate_prompts(subcategory, per_subcategory, args.seed)
            prompts += [distinct[i % len(distinct)] for i in range(per_subcategory)]
        firsts: Counter[str] = Counter()
        scores: dict[str, list[float]] = defaultdict(list)
        for index, prompt in enumerate(prompts):
            images = [
                GALLERY_GENERATORS[name].generate(prompt, args.seed * 100_000 + index) for name in names
            ]
            for name, image in zip(names, images, strict=True):
                scores[name].append(cached_oracle_score(prompt, image))
            for expert in experts:
                firsts[names[expert.rank(prompt, images)[0]]] += 1
        total = sum(firsts.values())
        shares[category] = {name: firsts[name] / total for name in names}
        means[category] = {name: float(np.mean(scores[name])) for name in names}
        print(f"{category} ({len(prompts)} prompts, {len(set(prompts))} distinct, x {len(experts)} experts):")
        for name in names:
            print(
                f"  {name:18s} first place {shares[category][name]:6.1%}   mean oracle score {means[category][name]:.3f}"
            )
    print()
    best = {
        category: max(shares[category], key=shares[category].__getitem__) for category in REWARD_CATEGORIES
    }
    for category, name in best.items():
        print(f"best in {category:18s}: {name} ({shares[category][name]:.1%})")
    distinct = len(set(best.values())) == len(best)
    spreads = {
        name: max(shares[c][name] for c in REWARD_CATEGORIES)
        - min(shares[c][name] for c in REWARD_CATEGORIES)
        for name in set(best.values())
    }
    print(f"a different generator is best in every category: {distinct}")
    print(
        "spread of each best generator's share across categories: "
        + ", ".join(f"{n} {v:.1%}" for n, v in spreads.items())
    )
    chart(names, shares)
    print(f"elapsed {time.perf_counter() - start:.0f}s")


def chart(names: list[str], shares: dict[str, dict[str, float]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    OUT.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(8, 4))
    width = 0.8 / len(shares)
    x = np.arange(len(names))
    for i, (category, share) in enumerate(shares.items()):
        ax.bar(x + i * width, [100 * share[n] for n in names], width, label=category)
    ax.set_xticks(x + width * (len(shares) - 1) / 2, names)
    ax.set_ylabel("first places (%)")
    ax.set_title("Synthetic world: gallery first-place shares by simulated experts")
    ax.legend()
    fig.tight_layout()
    path = OUT / "world_gallery_first_places.png"
    fig.savefig(path, dpi=120)
    print(f"chart: {path}")


if __name__ == "__main__":
    main()
