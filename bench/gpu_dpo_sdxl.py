"""Full-size SDXL on one GPU: Diffusion-DPO step time and peak memory at 512², batch 4 pairs, LoRA and full.

Prepared for a machine with one H100/H200; not yet run there (no GPU was lent to the work that wrote it).
The model is built as in bench/gpu_refl_sdxl.py: the SDXL-base architecture from its configs with random
weights (nothing is downloaded; speed and memory do not depend on the weight values), full-size CLIP-L and
OpenCLIP-bigG text encoders, the committed reduced CLIP tokenizer fixture.

What one step is: ``DPOTrainer.train_step`` — draw 4 pairs, one timestep and one noise per pair, noise
winner and loser alike, one UNet forward with gradients on the 8 latents (winners and losers together, as
the authors' code), one no-grad forward of the frozen reference (the same UNet with LoRA switched off in
LoRA mode; a bf16 copy of the UNet in full mode), the DPO loss, backward, gradient clipping, AdamW. bf16
autocast and gradient checkpointing on CUDA. Pair latents are VAE-encoded once and cached (as in training):
the first (warm-up) step encodes them, its time is printed separately (``dpo_encode_pairs``), the timed
steps are the median of ``--reps`` after it.

Prints one ``figure: name=value unit`` line per figure. On the GPU machine, from the repository root (see
bench/gpu_refl_sdxl.py for the offline wheel route):

    pip install -r bench/requirements-gpu.txt && python bench/gpu_dpo_sdxl.py

CPU check of the script itself (tiny configs, < 60 s): ``.venv/bin/python bench/gpu_dpo_sdxl.py --tiny``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from gpu_common import figure, median_times, peak_gib, reset_memory, setup, sync  # noqa: E402
from gpu_refl_sdxl import CLIP_VOCAB, FULL, PROMPTS, build_pipeline, tiny_configs  # noqa: E402

from training.ml.dpo.config import DPOConfig  # noqa: E402
from training.ml.dpo.trainer import DPOTrainer  # noqa: E402
from training.ml.refl.adapters import SDXLAdapter  # noqa: E402
from training.ml.refl.config import LoRASettings  # noqa: E402
from training.ml.reward.data import PairRecord  # noqa: E402


class RandomImages:
    """The trainer's image loader: a fixed random RGB image per path (the pixels do not change the cost)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.cache: dict[str, torch.Tensor] = {}

    def __call__(self, path: str, sha256: str) -> torch.Tensor:
        if path not in self.cache:
            generator = torch.Generator().manual_seed(int(sha256))
            self.cache[path] = torch.rand(3, self.size, self.size, generator=generator)
        return self.cache[path]


def pairs(n: int) -> list[PairRecord]:
    return [
        PairRecord(
            pair_id=i,
            prompt_id=i,
            prompt=PROMPTS[i % len(PROMPTS)],
            category="spatial",
            subcategory=None,
            split="train",
            winner_id=2 * i,
            winner_sha256=str(2 * i),
            winner_path=f"w{i}.png",
            loser_id=2 * i + 1,
            loser_sha256=str(2 * i + 1),
            loser_path=f"l{i}.png",
        )
        for i in range(n)
    ]


def bench_dpo(args: argparse.Namespace, configs: dict[str, dict[str, Any]], device: torch.device) -> None:
    for mode in args.modes.split(","):
        label = "full" if mode == "full" else f"lora{args.lora_rank}"
        pipe = build_pipeline(configs, device, args.vocab_size)
        adapter = SDXLAdapter(pipe)
        cfg = DPOConfig(
            beta=5000.0,
            batch_size=args.batch,
            max_steps=args.reps + 1,
            height=args.size,
            width=args.size,
            train_mode=mode,
            lora=LoRASettings(rank=args.lora_rank),
            gradient_checkpointing=True,
            mixed_precision="bf16" if device.type == "cuda" else "no",
        )
        reset_memory(device)
        # As many pairs as one batch: the warm-up step draws (with replacement) and encodes most of them;
        # every pair's latents are encoded before timing so no timed step pays for the VAE.
        records = pairs(args.batch)
        trainer = DPOTrainer(adapter, cfg, records, RandomImages(args.size))
        sync(device)
        t0 = time.perf_counter()
        for record in records:
            trainer.pair_latents(record)
        sync(device)
        encode = time.perf_counter() - t0
        trainable = sum(p.numel() for p in trainer.named_params.values())
        step = median_times({"dpo": trainer.train_step}, device, warmup=1, repeats=args.reps)["dpo"]
        size = f"{args.size}px_b{args.batch}pairs"
        figure(f"dpo_trainable_params_{label}", f"{trainable / 1e6:.3f}", "M")
        figure(f"dpo_encode_pairs_{label}_{size}", f"{encode:.3f}", "s")
        figure(f"dpo_step_{label}_{size}", f"{step:.3f}", "s")
        figure(f"dpo_peak_mem_{label}_{size}", peak_gib(device), "GiB")
        trainer.accelerator.free_memory()
        del trainer, adapter, pipe
        reset_memory(device)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--tiny", action="store_true", help="toy widths and sizes: checks the script on CPU")
    parser.add_argument("--modes", default="full,lora", help="train modes to measure")
    parser.add_argument("--lora-rank", type=int, default=64)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--batch", type=int, default=4, help="pairs per step (two UNet rows each)")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args()
    configs = FULL
    args.vocab_size = CLIP_VOCAB
    if args.tiny:
        configs, args.vocab_size = tiny_configs(), None
        args.size, args.batch, args.reps, args.lora_rank = 32, 2, 2, 4
    import diffusers
    import peft
    import transformers

    device = setup(
        args.device,
        args.threads,
        {
            "diffusers": diffusers.__version__,
            "transformers": transformers.__version__,
            "peft": peft.__version__,
        },
        f"{'TINY configs' if args.tiny else 'full-size SDXL-base configs (CLIP-L + OpenCLIP-bigG)'}, random "
        "weights; tokenizers: the committed CLIP fixture (reduced vocabulary)",
    )
    print(
        f"# Diffusion-DPO: {args.size}px, {args.batch} pairs a step, β 5000, "
        f"{'bf16 autocast, ' if device.type == 'cuda' else ''}gradient checkpointing, pair latents cached, "
        f"median of {args.reps} steps after 1 warm-up",
        flush=True,
    )
    bench_dpo(args, configs, device)


if __name__ == "__main__":
    main()
