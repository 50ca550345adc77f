"""Are the panel's verdicts on p_0's own samples decided by what an image shows, or by pixel-level details?

Issue #14's open question: the pretrained world encoder ranks two planned scenes of a caption right ~0.77 of
the time and two of the base model's own samples ~0.55. This bench asks whether the own-sample pairs are
*readable* at all: it perturbs each image in ways that do not change what it shows (Gaussian noise of
2/255, a one-pixel shift, a 0.4 px blur, 3 % brightness) and re-reads it with the oracle. Where the oracle's
order of a panel pair flips under such a change, the pair's label rests on details below what any
perceptual scorer (or person) can see; a reward model cannot be asked to learn it.

On the same held-out panel pairs as ``bench/encoder_zero_shot.py`` (same prompts, samples, panel, gate
metric ``pair_accuracy``), and, as the comparison the side study names, on within-generator groups of the
world's gallery generators (``--generators``: four seeds of one generator per held-out prompt, ranked by the
same panel). Per image source:

- ``changed``: share of images whose oracle score changes under each perturbation;
- ``flipped``: share of the panel's non-tied pairs whose oracle order reverses or becomes a tie;
- ``robust_share``: pairs whose oracle order survives every perturbation;
- the encoder's zero-shot ITM accuracy (``--encoder``, no fine-tuning) on all, robust and fragile pairs.

Measured only: nothing trains on the oracle.

    .venv/bin/python bench/oracle_fragility.py [--categories ...] [--seeds 1] [--generators sd15 sdxl]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import active_selection  # noqa: E402
from encoder_zero_shot import ItmScorer  # noqa: E402

from training.ml.algorithm1.gate import pair_accuracy  # noqa: E402
from training.ml.loop import RankedPrompt, expert_ranking  # noqa: E402
from training.ml.world.encoder import ENCODER_DIR  # noqa: E402
from training.ml.world.gallery import GALLERY_GENERATORS  # noqa: E402
from training.ml.world.oracle import oracle_report, oracle_score  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--encoder", default=str(ENCODER_DIR), help="pretrained BLIP folder for the ITM column")
    p.add_argument("--generators", nargs="*", default=["sd15", "sdxl"], choices=sorted(GALLERY_GENERATORS))
    active_selection.add_held_out_group_args(p, "oracle_fragility")
    return p


def _noise(image: np.ndarray, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.rint(np.clip(image + rng.normal(0.0, 2.0 / 255.0, image.shape), 0, 1) * 255) / 255


def _shift(image: np.ndarray, seed: int) -> np.ndarray:
    # One pixel right, edge column repeated: the border (the oracle's background estimate) is unchanged.
    return np.concatenate([image[:, :1], image[:, :-1]], axis=1)


def _blur(image: np.ndarray, seed: int) -> np.ndarray:
    from scipy import ndimage

    return np.rint(ndimage.gaussian_filter(image, sigma=(0.4, 0.4, 0)) * 255) / 255


def _brighter(image: np.ndarray, seed: int) -> np.ndarray:
    return np.rint(np.clip(image * 1.03, 0, 1) * 255) / 255


PERTURBATIONS = {"noise_2": _noise, "shift_1px": _shift, "blur_0.4": _blur, "bright_3pct": _brighter}


def perturbed_scores(prompt: str, image: torch.Tensor, seed: int) -> dict[str, float]:
    """The oracle's score of an image (CHW in [0, 1]) as stored and under each perturbation."""
    hwc = image.permute(1, 2, 0).numpy().astype(np.float64)
    report = oracle_report(prompt, hwc.astype(np.float32))
    scores: dict[str, Any] = {"original": float(report["score"]), "facts": report["facts"]}
    scores["n_extra"] = report["n_extra"]
    for name, perturb in PERTURBATIONS.items():
        scores[name] = oracle_score(prompt, perturb(hwc, seed).astype(np.float32))
    return scores


def _sign(x: float) -> int:
    return 0 if abs(x) < 1e-9 else (1 if x > 0 else -1)


def fragility(records: list, oracle: dict[int, dict[str, float]], itm: dict[int, float], seed: int) -> dict:
    """Per-perturbation change/flip shares and the ITM accuracy on robust and fragile pairs."""
    strict = [r for r in records if r.label == 1.0]  # expert ties have no order to flip
    images = sorted(oracle)
    row: dict[str, Any] = {"images": len(images), "pairs": len(strict), "changed": {}, "flipped": {}}

    def order(r, name: str) -> int:
        return _sign(oracle[r.winner_id][name] - oracle[r.loser_id][name])

    ordered = [i for i, r in enumerate(strict) if order(r, "original") != 0]
    fragile_pairs: set[int] = set()
    for name in PERTURBATIONS:
        row["changed"][name] = float(np.mean([oracle[i][name] != oracle[i]["original"] for i in images]))
        flipped = {i for i in ordered if order(strict[i], name) != order(strict[i], "original")}
        row["flipped"][name] = len(flipped) / max(1, len(ordered))
        fragile_pairs |= flipped
    row["itm_by_difference"] = by_difference(strict, oracle, itm, seed)
    robust = [r for i, r in enumerate(strict) if i not in fragile_pairs]
    fragile = [r for i, r in enumerate(strict) if i in fragile_pairs]
    row["robust_share"] = len(robust) / max(1, len(strict))
    original = {i: oracle[i]["original"] for i in images}
    row["oracle_accuracy"] = dataclasses.asdict(pair_accuracy(records, original, seed=seed))
    row["itm_accuracy"] = {
        "all": dataclasses.asdict(pair_accuracy(records, itm, seed=seed)),
        "robust": dataclasses.asdict(pair_accuracy(robust, itm, seed=seed)) if robust else None,
        "fragile": dataclasses.asdict(pair_accuracy(fragile, itm, seed=seed)) if fragile else None,
    }
    return row


def difference_kinds(a: dict[str, Any], b: dict[str, Any]) -> set[str]:
    """What separates two oracle readings: an object present, an attribute, the relation, extra objects."""
    kinds = set()
    for key in set(a["facts"]) | set(b["facts"]):
        if key == "no_extra" or a["facts"].get(key) == b["facts"].get(key):
            continue
        kinds.add(
            "relation" if key == "relation" else "present" if key.startswith("present:") else "attribute"
        )
    if a["n_extra"] != b["n_extra"]:
        kinds.add("extra")
    return kinds


def by_difference(strict: list, oracle: dict, itm: dict[int, float], seed: int) -> dict[str, Any]:
    """ITM accuracy on the pairs whose two images differ (for the oracle) in exactly one kind of fact."""
    groups: dict[str, list] = {}
    for r in strict:
        kinds = difference_kinds(oracle[r.winner_id], oracle[r.loser_id])
        key = next(iter(kinds)) if len(kinds) == 1 else ("none" if not kinds else "several")
        groups.setdefault(key, []).append(r)
    return {k: dataclasses.asdict(pair_accuracy(v, itm, seed=seed)) for k, v in sorted(groups.items())}


def gallery_groups(args, loop, data, prompts, offset: int, generator: str) -> list[active_selection.Group]:
    """Four seeds of one gallery generator per prompt, stored and ranked by the panel like p_0's groups."""
    groups = []
    for i, (text, sub) in enumerate(prompts):
        arrays = [
            GALLERY_GENERATORS[generator].generate_array(text, 1000 + s) for s in range(args.group_size)
        ]
        ids = [data.add_image(np.asarray(a, dtype=np.float32), generator, 0) for a in arrays]
        ordering = expert_ranking(loop, data, text, ids)
        entry = RankedPrompt(offset + i, text, sub, ordering, tuple(ids), "own")
        groups.append(active_selection.Group(entry, 0.0))
    return groups


def measure(data, groups, scorer: ItmScorer, seed: int) -> dict[str, Any]:
    records = active_selection.records_of(data, groups)
    oracle: dict[int, dict[str, float]] = {}
    itm: dict[int, float] = {}
    for group in groups:
        ids = list(group.entry.human)
        images = data.load(ids)
        itm.update(zip(ids, scorer(group.entry.prompt, images), strict=True))
        for image_id, image in zip(ids, images, strict=True):
            oracle[image_id] = perturbed_scores(group.entry.prompt, image, seed * 100_003 + image_id)
    return fragility(records, oracle, itm, seed)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = build_parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    scorer = ItmScorer(args.encoder)
    results: dict[str, list[dict[str, Any]]] = {}
    for category in args.categories:
        results[category] = []
        for seed in range(args.seeds):
            loop, data, prompts, own = active_selection.held_out_groups(args, category, seed)
            row: dict[str, Any] = {"seed": seed, "sources": {"p_0": measure(data, own, scorer, seed)}}
            for generator in args.generators:
                groups = gallery_groups(args, loop, data, prompts, args.pool_prompts, generator)
                row["sources"][generator] = measure(data, groups, scorer, seed)
            results[category].append(row)
            print(json.dumps({"category": category, **row}), flush=True)
    return active_selection.write_result(args, started, categories=results)


if __name__ == "__main__":
    main()
