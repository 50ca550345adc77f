"""The pretrained world base model's oracle scores on held-out prompts (IterComp iteration 0), and a
reproducibility check of pretraining.

Usage: .venv/bin/python bench/world_basemodel.py [--model DIR] [--compare DIR] [--prompts 40] [--seeds 2]
       [--repro-steps 60] [--out FILE.json]
1. Loads the committed checkpoint (training/ml/world/assets/base) and samples every held-out prompt (never
   seen in pretraining; up to --prompts per subcategory) with --seeds seeds, at guidance 1 and 3, DDIM 25
   steps; prints the mean oracle score per subcategory and per reward category.
   --compare DIR samples a second model on the same prompts and noise and prints the paired difference
   (--model minus --compare) with a 95 % bootstrap interval that resamples prompts.
2. Runs a shortened pretraining (--repro-steps steps, same seed, same settings otherwise) twice and compares
   the two models' weights and oracle scores on a fixed prompt set.
Contact sheets go to bench/out/world_basemodel_*.png.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from refl_loop import paired_bootstrap  # noqa: E402

from training.ml.world.evaluate import evaluate_model  # noqa: E402
from training.ml.world.model import PRETRAINED_DIR, WorldDiffusionModel  # noqa: E402
from training.ml.world.pretrain import PretrainConfig, held_out_prompts, pretrain  # noqa: E402

OUT = Path(__file__).resolve().parent / "out"


def pick(prompts: dict[str, list[str]], per_subcategory: int, seed: int) -> dict[str, list[str]]:
    rng = np.random.default_rng(seed)
    chosen = {}
    for subcategory, texts in prompts.items():
        order = rng.permutation(len(texts))[:per_subcategory]
        chosen[subcategory] = [texts[i] for i in sorted(order)]
    return chosen


def save_sheet(images: dict[str, torch.Tensor], path: Path, per_row: int = 12) -> None:
    from PIL import Image

    rows = [torch.cat(list(batch[:per_row]), dim=2) for batch in images.values()]
    width = max(r.shape[2] for r in rows)
    rows = [torch.nn.functional.pad(r, (0, width - r.shape[2]), value=1.0) for r in rows]
    grid = (torch.cat(rows, dim=1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    OUT.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid).resize((grid.shape[1] * 3, grid.shape[0] * 3), Image.NEAREST).save(path)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", type=Path, default=PRETRAINED_DIR)
    parser.add_argument("--prompts", type=int, default=40, help="held-out prompts per subcategory (at most)")
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--repro-steps", type=int, default=60, help="0 skips the reproducibility check")
    parser.add_argument("--compare", type=Path, help="a second model, scored on the same prompts and noise")
    parser.add_argument("--out", type=Path, help="write the figures as JSON")
    args = parser.parse_args()
    torch.set_num_threads(1)
    start = time.perf_counter()

    model = WorldDiffusionModel.from_pretrained(args.model)
    info_path = args.model / "train_info.json"
    info = json.loads(info_path.read_text()) if info_path.exists() else {}
    print(f"model: {args.model} ({model.num_parameters() / 1e6:.2f}M parameters)")
    if info:
        print(f"trained by: {info.get('command')}")
        print(f"training wall time {info.get('wall_seconds')}s, {info.get('seconds_per_step')}s/step")
    prompts = pick(held_out_prompts(), args.prompts, seed=0)
    print("held-out prompts per subcategory: " + ", ".join(f"{k} {len(v)}" for k, v in prompts.items()))
    models = {"model": model}
    if args.compare is not None:
        print(f"compared with: {args.compare}")
        models["compare"] = WorldDiffusionModel.from_pretrained(args.compare)
    record: dict = {"model": str(args.model), "compare": str(args.compare) if args.compare else None}
    record.update(prompts=sum(len(v) for v in prompts.values()), seeds=args.seeds, steps=args.steps)
    record["guidance"] = {}
    for guidance in (1.0, 3.0):
        results = {}
        for role, net in models.items():
            scores = evaluate_model(
                net, prompts, seeds_per_prompt=args.seeds, steps=args.steps, guidance=guidance
            )
            results[role] = scores
            subs = "  ".join(f"{k} {v:.3f}" for k, v in scores.by_subcategory.items())
            cats = "  ".join(f"{k} {v:.3f}" for k, v in scores.by_category.items())
            print(f"[{role}] guidance {guidance:g}: {scores.n_images} images | {subs}")
            print(
                f"[{role}] guidance {guidance:g}: per category | {cats} | mean of categories {scores.overall:.3f}"
            )
            facts = "  ".join(f"{k} {v:.3f}" for k, v in (scores.facts or {}).items())
            print(f"[{role}] guidance {guidance:g}: oracle facts (share of images) | {facts}")
            suffix = "" if role == "model" else "_compare"
            save_sheet(scores.images, OUT / f"world_basemodel_g{guidance:g}{suffix}.png")
        entry = {
            role: {
                "by_subcategory": s.by_subcategory,
                "by_category": s.by_category,
                "overall": s.overall,
                "facts": s.facts,
                "images": s.n_images,
            }
            for role, s in results.items()
        }
        if "compare" in results:
            mine, theirs = results["model"].per_image, results["compare"].per_image
            items = [(p, sub, seed) for p, sub, seed, _ in mine]
            assert items == [(p, sub, seed) for p, sub, seed, _ in theirs]
            diff = paired_bootstrap(items, [r[3] for r in theirs], [r[3] for r in mine], reps=2000, seed=0)
            entry["difference"] = diff
            print(
                f"guidance {guidance:g}: model minus compare, same noise [95 % CI by prompt] | "
                + "  ".join(f"{k} {v['diff']:+.3f} [{v['lo']:+.3f}, {v['hi']:+.3f}]" for k, v in diff.items())
            )
        record["guidance"][f"{guidance:g}"] = entry
    print(f"contact sheets in {OUT}")

    if args.repro_steps > 0:
        base = PretrainConfig(
            # From scratch even when the model was a continuation: the check is of pretraining itself.
            **{k: v for k, v in info.get("config", {}).items() if k not in ("model", "steps", "init")}
        )
        config = replace(base, steps=args.repro_steps, model=model.config)
        probe = pick(held_out_prompts(), 8, seed=1)
        runs = []
        for attempt in range(2):
            t0 = time.perf_counter()
            trained, record = pretrain(config, log=None)
            scores = evaluate_model(trained, probe, seeds_per_prompt=1, steps=args.steps, guidance=3.0)
            runs.append((trained, scores))
            print(
                f"repro run {attempt + 1}: {args.repro_steps} steps in {time.perf_counter() - t0:.0f}s, "
                f"final loss {record['loss_curve'][-1]:.4f}, oracle per category "
                + " ".join(f"{k} {v:.3f}" for k, v in scores.by_category.items())
            )
        (a, sa), (b, sb) = runs
        weight_diff = max(
            float((x - y).abs().max())
            for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True)
        )
        score_diff = max(abs(sa.by_subcategory[k] - sb.by_subcategory[k]) for k in sa.by_subcategory)
        identical = all(
            torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True)
        )
        print(
            f"repro: max |weight difference| {weight_diff:.3g} (bit-identical: {identical}), "
            f"max |oracle score difference| {score_diff:.4f} (within 0.01: {score_diff <= 0.01})"
        )
        record["repro"] = {
            "steps": args.repro_steps,
            "max_weight_difference": weight_diff,
            "bit_identical": identical,
            "max_oracle_difference": score_diff,
        }
    record["elapsed_seconds"] = round(time.perf_counter() - start, 1)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(record, indent=1) + "\n")
    print(f"elapsed {time.perf_counter() - start:.0f}s")


if __name__ == "__main__":
    main()
