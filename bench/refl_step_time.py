"""ReFL step time vs plain no-grad sampling of the same denoising steps (goal: ratio ≤ 1.5×).

A ReFL step = no-grad DDIM to the stop step s, one denoiser call with gradients, x0, decode, reward,
backward, optimiser step. The baseline runs the same s + 1 denoiser calls and the decode without
gradients — what sampling those steps costs anyway. Both wall time and process CPU time are measured;
with one thread the CPU-time ratio is the one that survives other jobs sharing the machine. Prints one
line per configuration:

    .venv/bin/python bench/refl_step_time.py [--model sd15|sdxl|world] [--steps 40] [--reps 8]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from training.ml.refl.adapters import SD15Adapter, SDXLAdapter  # noqa: E402
from training.ml.refl.config import GuardConfig, ReFLConfig  # noqa: E402
from training.ml.refl.sampler import denoise_loop, initial_noise  # noqa: E402
from training.ml.refl.tiny import tiny_sd15_pipeline, tiny_sdxl_pipeline  # noqa: E402
from training.ml.refl.trainer import ReFLTrainer  # noqa: E402

TOKENIZER = ROOT / "tests" / "fixtures" / "tokenizers" / "clip"
PROMPTS = ["a red cube left of a blue ball", "two green cats", "a small house under a tree", "a dog"]


def build_adapter(model: str):
    if model == "sd15":
        return SD15Adapter(tiny_sd15_pipeline(TOKENIZER, sample_size=32)), "tiny SD1.x (64 px, latents 32²)"
    if model == "sdxl":
        return SDXLAdapter(tiny_sdxl_pipeline(TOKENIZER, sample_size=32)), "tiny SDXL (64 px, latents 32²)"
    if model == "world":
        from training.ml.refl.world_adapter import build_world_adapter_for_bench

        return build_world_adapter_for_bench()
    raise SystemExit(f"unknown model {model!r}")


def redness(prompts: list[str], images: torch.Tensor) -> torch.Tensor:
    return images[:, 0].mean((1, 2))


def measure(model: str, mode: str, steps: int, reps: int, batch: int, guidance: float) -> dict[str, float]:
    adapter, label = build_adapter(model)
    cfg = ReFLConfig(
        num_inference_steps=steps,
        batch_size=batch,
        max_steps=reps + 1,
        train_mode=mode,
        guidance_scale=guidance,
        learning_rate=1e-5,
        guard=GuardConfig(every=0),
    )
    trainer = ReFLTrainer(adapter, cfg, {"red": redness}, PROMPTS)
    trainer.train_step()  # warm-up (allocator, lazy init)
    ratios, cpu_ratios, refl_times, sample_times = [], [], [], []
    for rep in range(reps):
        t0, c0 = time.perf_counter(), time.process_time()
        metrics = trainer.train_step()
        refl, refl_cpu = time.perf_counter() - t0, time.process_time() - c0
        stop = int(metrics["stop_index"])
        h, w = trainer.height, trainer.width
        t0, c0 = time.perf_counter(), time.process_time()
        with torch.no_grad():
            cond = adapter.encode_prompts(PROMPTS[:batch], guided=guidance > 1, height=h, width=w)
            noise = initial_noise(adapter, batch, h, w, torch.Generator().manual_seed(rep))
            x = denoise_loop(
                adapter, cond, noise, num_inference_steps=steps, guidance_scale=guidance, stop_index=stop + 1
            )
            adapter.decode(x)
        plain, plain_cpu = time.perf_counter() - t0, time.process_time() - c0
        ratios.append(refl / plain)
        cpu_ratios.append(refl_cpu / plain_cpu)
        refl_times.append(refl)
        sample_times.append(plain)
    return {
        "label": label,
        "refl_s": statistics.median(refl_times),
        "sample_s": statistics.median(sample_times),
        "ratio": statistics.median(ratios),
        "ratio_max": max(ratios),
        "cpu_ratio": statistics.median(cpu_ratios),
        "cpu_ratio_max": max(cpu_ratios),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="sd15", choices=["sd15", "sdxl", "world"])
    parser.add_argument("--modes", default="lora,full")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--reps", type=int, default=6)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--guidance", type=float, default=1.0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(
        f"# torch {torch.__version__}, threads={args.threads}, T={args.steps}, batch={args.batch}, cfg={args.guidance}"
    )
    for mode in args.modes.split(","):
        r = measure(args.model, mode, args.steps, args.reps, args.batch, args.guidance)
        print(
            f"{args.model:5s} {mode:4s} {r['label']}: ReFL step {r['refl_s'] * 1e3:7.1f} ms, "
            f"no-grad sampling of the same steps {r['sample_s'] * 1e3:7.1f} ms, "
            f"wall ratio median {r['ratio']:.2f}x (max {r['ratio_max']:.2f}x), "
            f"CPU-time ratio median {r['cpu_ratio']:.2f}x (max {r['cpu_ratio_max']:.2f}x)"
        )


if __name__ == "__main__":
    main()
