"""Zero-shot: does a pretrained world encoder's image–text matching head rank p_0's own samples?

On the held-out evaluation groups of ``bench/active_selection.py`` (the same prompts, samples, panel and
pairs for the same ``--seed`` and ``--pool-prompts``), each image is scored by the encoder's ITM margin
(logit "match" − logit "no match" of ``BlipForImageTextRetrieval.itm_head`` on the [ENC] token) with no
fine-tuning at all, and the pair accuracy is measured exactly as the gate measures a reward model
(``training.ml.algorithm1.gate.pair_accuracy``: expert ties skipped, 95 % interval resampling prompts).
Beside it, the oracle's accuracy on the same pairs (``panel_ceiling``): what any scorer can reach.

If the ITM head already ranked the model's own samples, a reward model could start from it; this measures
whether it does.

``by_difference``: the same accuracy split by what the oracle reads differently in the two images of a pair
(``present``: an asked-for object found in one only; ``attribute``: a colour/texture/size/shape verdict;
``relation``; ``extra``: the count of unasked-for objects), for pairs that differ in exactly one of these,
and ``several`` for the rest — with the oracle's own accuracy on each share (the panel's noise there).
Measured only: nothing trains on the oracle.

    .venv/bin/python bench/encoder_zero_shot.py [--encoders DIR ...] [--categories ...] [--seeds 2]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import active_selection  # noqa: E402

from training.ml.algorithm1.gate import pair_accuracy  # noqa: E402
from training.ml.world.encoder import ENCODER_DIR  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--encoders", nargs="+", default=[str(ENCODER_DIR)], help="pretrained BLIP folders")
    active_selection.add_held_out_group_args(p, "encoder_zero_shot")
    return p


class ItmScorer:
    """A pretrained world BLIP's ITM margin for (prompt, image) — no reward head, no fine-tuning."""

    def __init__(self, folder: str) -> None:
        from transformers import BlipForImageTextRetrieval

        from training.ml.preprocess import preprocess_config_from_folder
        from training.ml.reward.model import build_blip_tokenizer

        self.blip = BlipForImageTextRetrieval.from_pretrained(folder, local_files_only=True).eval()
        self.tokenizer = build_blip_tokenizer(folder)
        self.preprocess = preprocess_config_from_folder(folder)

    @torch.no_grad()
    def __call__(self, prompt: str, images: torch.Tensor) -> list[float]:
        from training.ml.preprocess import preprocess_images

        enc = self.tokenizer([prompt] * len(images), padding="longest", return_tensors="pt")
        ids = enc["input_ids"].clone()
        ids[:, 0] = self.tokenizer.enc_token_id  # BLIP's ITM reads [ENC], as the encoder was trained
        pixels = preprocess_images(images.float(), self.preprocess)
        image_embeds = self.blip.vision_model(pixel_values=pixels).last_hidden_state
        fused = self.blip.text_encoder(
            input_ids=ids, attention_mask=enc["attention_mask"], encoder_hidden_states=image_embeds
        ).last_hidden_state
        logits = self.blip.itm_head(fused[:, 0, :])
        return (logits[:, 1] - logits[:, 0]).tolist()


def difference_kind(a: dict[str, Any], b: dict[str, Any]) -> str:
    """What two oracle reports of one prompt's images disagree on (one kind, or ``several``/``none``)."""
    kinds = set()
    for key in a["facts"].keys() | b["facts"].keys():
        if key == "no_extra" or a["facts"].get(key) == b["facts"].get(key):
            continue
        kinds.add(
            "present" if key.startswith("present:") else "relation" if key == "relation" else "attribute"
        )
    if a["n_extra"] != b["n_extra"]:
        kinds.add("extra")
    return kinds.pop() if len(kinds) == 1 else "several" if kinds else "none"


def pair_differences(data: Any, records: list) -> tuple[dict[str, list], dict[int, float]]:
    """(non-tied records by :func:`difference_kind`, oracle score per image)."""
    from training.ml.world.oracle import oracle_report

    prompts = {r.prompt_id: r.prompt for r in records}
    ids = sorted({i for r in records for i in (r.winner_id, r.loser_id)})
    image_prompt = {i: prompts[r.prompt_id] for r in records for i in (r.winner_id, r.loser_id)}
    reports = {i: oracle_report(image_prompt[i], im) for i, im in zip(ids, data.load(ids), strict=True)}
    kinds: dict[str, list] = {}
    for r in records:
        if r.label == 1.0:
            kinds.setdefault(difference_kind(reports[r.winner_id], reports[r.loser_id]), []).append(r)
    return kinds, {i: float(report["score"]) for i, report in reports.items()}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = build_parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    scorers = {folder: ItmScorer(folder) for folder in args.encoders}
    results: dict[str, list[dict[str, Any]]] = {}
    for category in args.categories:
        results[category] = []
        for seed in range(args.seeds):
            _, data, _, groups = active_selection.held_out_groups(args, category, seed)
            records = active_selection.records_of(data, groups)
            # One oracle read per image: the kinds of difference and the panel ceiling (its accuracy).
            kinds, oracle = pair_differences(data, records)
            row: dict[str, Any] = {
                "seed": seed,
                "panel_ceiling": dataclasses.asdict(pair_accuracy(records, oracle, seed=seed)),
                "itm": {},
                "by_difference": {},
            }
            for folder, scorer in scorers.items():
                scores: dict[int, float] = {}
                for group in groups:
                    ids = list(group.entry.human)
                    scores.update(zip(ids, scorer(group.entry.prompt, data.load(ids)), strict=True))
                row["itm"][folder] = dataclasses.asdict(pair_accuracy(records, scores, seed=seed))
                row["by_difference"][folder] = {
                    kind: {
                        "itm": dataclasses.asdict(pair_accuracy(subset, scores, seed=seed)),
                        "oracle": pair_accuracy(subset, oracle, seed=seed).accuracy,
                    }
                    for kind, subset in sorted(kinds.items())
                }
            results[category].append(row)
            print(json.dumps({"category": category, **row}), flush=True)
    return active_selection.write_result(args, started, categories=results)


if __name__ == "__main__":
    main()
