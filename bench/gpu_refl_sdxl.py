"""Full-size SDXL on one GPU: ReFL step time / peak memory (full UNet vs LoRA) and 40-step 1024² sampling.

Prepared for a machine with one H100/H200; not yet run there (no GPU was lent to the work that wrote it).
The SDXL-base architecture is built from its configs (embedded below) with random weights: nothing can be
downloaded, and speed and memory do not depend on the weight values. The two CLIP tokenizers are the
committed fixture (tests/fixtures/tokenizers/clip, a reduced BPE vocabulary: token ids, not text quality,
are what the text encoders need); the text encoders themselves are full-size CLIP-L and OpenCLIP-bigG.

(a) ReFL: ``ReFLTrainer.train_step`` (no-grad DDIM to a stop step in the last 10 of T = 40, one UNet call
    with gradients, x0, VAE decode, reward, backward, AdamW) at 512², batch 4, bf16 autocast, gradient
    checkpointing; full UNet vs LoRA (rank 64 on the attention projections). The reward is the mean of
    the red channel (a stand-in: a BLIP reward model adds its own cost, see bench/gpu_reward_blip.py).
(b) Sampling: 40 DDIM steps at 1024², batch 1, bf16 weights, CFG 5: the project's sampler
    (``training.ml.refl.sampler.sample`` through ``SDXLAdapter``) vs diffusers' ``StableDiffusionXLPipeline``
    over the same components and scheduler; median of a few repeats after a warm-up, alternating order.
    Goal: the project's sampler ≥ 1.25× faster and < 3.4 s on an H100.

Prints one ``figure: name=value unit`` line per figure. On the GPU machine, from the repository root:

    pip install -r bench/requirements-gpu.txt && python bench/gpu_refl_sdxl.py && python bench/gpu_reward_blip.py

A machine that cannot reach a package index (this workplace's device machines) takes the same packages
as wheels: download them here (``python3 -m pip download --no-deps --only-binary=:all: --python-version
3.12 --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform
manylinux2014_x86_64 -d .whl -r bench/requirements-gpu.txt``, with ``/.whl/`` in .git/info/exclude),
carry ``.whl`` and run there:

    python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site && python3 bench/gpu_refl_sdxl.py && python3 bench/gpu_reward_blip.py

CPU check of the script itself (tiny configs, < 60 s): ``.venv/bin/python bench/gpu_refl_sdxl.py --tiny``.
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gpu_common import figure, median_times, peak_gib, reset_memory, setup  # noqa: E402

from training.ml.refl.adapters import SDXLAdapter  # noqa: E402
from training.ml.refl.config import GuardConfig, LoRASettings, ReFLConfig  # noqa: E402
from training.ml.refl.sampler import sample  # noqa: E402
from training.ml.refl.trainer import ReFLTrainer  # noqa: E402

TOKENIZER = ROOT / "tests" / "fixtures" / "tokenizers" / "clip"
PROMPTS = [
    "a red cube to the left of a blue ball",
    "two green cats sitting on a wooden bench",
    "a small house under a large oak tree",
    "a yellow dog on top of a purple car",
]
CLIP_VOCAB = 49408

# stabilityai/stable-diffusion-xl-base-1.0, unet/config.json (the fields that differ from diffusers' defaults
# are all given; the rest are the defaults).
SDXL_UNET: dict[str, Any] = {
    "sample_size": 128,
    "in_channels": 4,
    "out_channels": 4,
    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    "block_out_channels": (320, 640, 1280),
    "layers_per_block": 2,
    "transformer_layers_per_block": (1, 2, 10),
    "attention_head_dim": (5, 10, 20),
    "cross_attention_dim": 2048,
    "use_linear_projection": True,
    "addition_embed_type": "text_time",
    "addition_time_embed_dim": 256,
    "projection_class_embeddings_input_dim": 2816,  # six time ids × 256 + pooled bigG text (1280)
    "norm_num_groups": 32,
}
# vae/config.json (force_upcast: diffusers decodes fp16 in float32; bf16 stays bf16).
SDXL_VAE: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
    "block_out_channels": (128, 256, 512, 512),
    "layers_per_block": 2,
    "latent_channels": 4,
    "norm_num_groups": 32,
    "sample_size": 1024,
    "scaling_factor": 0.13025,
    "force_upcast": True,
}
# text_encoder (CLIP ViT-L/14 text tower) and text_encoder_2 (OpenCLIP ViT-bigG/14 text tower).
CLIP_L: dict[str, Any] = {
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "projection_dim": 768,
    "hidden_act": "quick_gelu",
}
OPENCLIP_BIGG: dict[str, Any] = {
    "hidden_size": 1280,
    "intermediate_size": 5120,
    "num_hidden_layers": 32,
    "num_attention_heads": 20,
    "projection_dim": 1280,
    "hidden_act": "gelu",
}
# scheduler/scheduler_config.json (SDXL ships Euler; the adapter switches to DDIM with the same betas).
SDXL_SCHEDULER: dict[str, Any] = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
    "steps_offset": 1,
    "timestep_spacing": "leading",
}

FULL = {"unet": SDXL_UNET, "vae": SDXL_VAE, "text_encoder": CLIP_L, "text_encoder_2": OPENCLIP_BIGG}


def tiny_configs() -> dict[str, dict[str, Any]]:
    """The same block structure at toy widths, for checking the script on a CPU."""
    cfg = copy.deepcopy(FULL)
    cfg["unet"].update(
        sample_size=16,
        block_out_channels=(16, 32, 32),
        layers_per_block=1,
        transformer_layers_per_block=(1, 1, 1),
        attention_head_dim=(2, 4, 4),
        cross_attention_dim=64,  # 32 + 32 below
        addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=6 * 8 + 32,
        norm_num_groups=8,
    )
    cfg["vae"].update(
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        block_out_channels=(8, 16),
        layers_per_block=1,
        norm_num_groups=4,
        sample_size=32,
    )
    small_text = {
        "hidden_size": 32,
        "intermediate_size": 37,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
    }
    cfg["text_encoder"].update(small_text, projection_dim=32)
    cfg["text_encoder_2"].update(small_text, projection_dim=32)
    return cfg


def build_pipeline(configs: dict[str, dict[str, Any]], device: torch.device, vocab_size: int | None):
    """StableDiffusionXLPipeline with random weights, created directly on ``device`` (fast init on GPU)."""
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(str(TOKENIZER))

    def text_config(spec: dict[str, Any]) -> CLIPTextConfig:
        return CLIPTextConfig(
            **spec,
            vocab_size=vocab_size or len(tokenizer),
            max_position_embeddings=tokenizer.model_max_length,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )

    torch.manual_seed(0)
    with torch.device(device):
        unet = UNet2DConditionModel(**configs["unet"])
        vae = AutoencoderKL(**configs["vae"])
        text_encoder = CLIPTextModel(text_config(configs["text_encoder"]))
        text_encoder_2 = CLIPTextModelWithProjection(text_config(configs["text_encoder_2"]))
    return StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=tokenizer,
        tokenizer_2=copy.deepcopy(tokenizer),
        unet=unet,
        scheduler=DDIMScheduler(**SDXL_SCHEDULER, clip_sample=False, set_alpha_to_one=False),
        add_watermarker=False,
    )


def mean_red(prompts: list[str], images: torch.Tensor) -> torch.Tensor:
    return images[:, 0].mean((1, 2))


def bench_refl(args: argparse.Namespace, configs: dict[str, dict[str, Any]], device: torch.device) -> None:
    for mode in args.modes.split(","):
        label = "full" if mode == "full" else f"lora{args.lora_rank}"
        pipe = build_pipeline(configs, device, args.vocab_size)
        adapter = SDXLAdapter(pipe)
        cfg = ReFLConfig(
            num_inference_steps=args.refl_steps,
            late_steps=min(10, args.refl_steps),
            batch_size=args.refl_batch,
            height=args.refl_size,
            width=args.refl_size,
            max_steps=args.refl_reps + 1,
            train_mode=mode,
            lora=LoRASettings(rank=args.lora_rank),
            gradient_checkpointing=True,
            mixed_precision="bf16" if device.type == "cuda" else "no",
            guidance_scale=args.refl_guidance,
            guard=GuardConfig(every=0),
        )
        reset_memory(device)
        trainer = ReFLTrainer(adapter, cfg, {"red": mean_red}, PROMPTS)
        trainable = sum(p.numel() for p in trainer.named_params.values())
        # One warm-up step (allocator, cuBLAS heuristics, AdamW state), then the timed ones.
        step = median_times({"refl": trainer.train_step}, device, warmup=1, repeats=args.refl_reps)["refl"]
        size = f"{args.refl_size}px_b{args.refl_batch}"
        figure(f"refl_trainable_params_{label}", f"{trainable / 1e6:.3f}", "M")
        figure(f"refl_step_{label}_{size}", f"{step:.3f}", "s")
        figure(f"refl_peak_mem_{label}_{size}", peak_gib(device), "GiB")
        trainer.accelerator.free_memory()  # the Accelerator holds the prepared UNet and optimiser
        del trainer, adapter, pipe
        reset_memory(device)


def bench_sampling(
    args: argparse.Namespace, configs: dict[str, dict[str, Any]], device: torch.device
) -> None:
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    pipe = build_pipeline(configs, device, args.vocab_size).to(device, dtype)
    adapter = SDXLAdapter(pipe)  # DDIM on the pipeline too: both samplers share every component
    size, steps, guidance = args.sample_size, args.sample_steps, args.sample_guidance
    prompt = PROMPTS[:1]
    # One set of arguments for both, and the same CPU-generator noise (x_T drawn as diffusers draws it).
    settings = {"num_inference_steps": steps, "guidance_scale": guidance, "height": size, "width": size}

    def project() -> torch.Tensor:
        return sample(adapter, prompt, generator=torch.Generator().manual_seed(0), **settings)

    def diffusers_pipeline() -> torch.Tensor:
        generator = torch.Generator().manual_seed(0)
        return pipe(prompt, generator=generator, output_type="pt", **settings).images

    reset_memory(device)
    with torch.no_grad():
        medians = median_times(
            {"project": project, "diffusers": diffusers_pipeline}, device, warmup=1, repeats=args.sample_reps
        )
        gap = (project().float() - diffusers_pipeline().float()).abs().max().item()
    tag = f"{size}px_{steps}steps_cfg{guidance:g}"
    figure(f"sample_project_{tag}", f"{medians['project']:.3f}", "s")
    figure(f"sample_diffusers_{tag}", f"{medians['diffusers']:.3f}", "s")
    figure("sample_speedup_project_vs_diffusers", f"{medians['diffusers'] / medians['project']:.2f}", "x")
    figure("sample_max_abs_image_diff", f"{gap:.2e}", "(0-1 scale)")
    figure(f"sample_peak_mem_{tag}", peak_gib(device), "GiB")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--tiny", action="store_true", help="toy widths and sizes: checks the script on CPU")
    parser.add_argument("--parts", default="refl,sample", help="comma list of refl, sample")
    parser.add_argument("--modes", default="full,lora", help="ReFL train modes to measure")
    parser.add_argument("--lora-rank", type=int, default=64)
    parser.add_argument("--refl-size", type=int, default=512)
    parser.add_argument("--refl-batch", type=int, default=4)
    parser.add_argument("--refl-steps", type=int, default=40)
    parser.add_argument("--refl-guidance", type=float, default=1.0, help="ReFLConfig's default: no CFG")
    parser.add_argument("--refl-reps", type=int, default=5)
    parser.add_argument("--sample-size", type=int, default=1024)
    parser.add_argument("--sample-steps", type=int, default=40)
    parser.add_argument("--sample-guidance", type=float, default=5.0, help="the SDXL pipeline's default")
    parser.add_argument("--sample-reps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args()
    configs = FULL
    args.vocab_size = CLIP_VOCAB
    if args.tiny:
        configs, args.vocab_size = tiny_configs(), None
        args.refl_size, args.refl_batch, args.refl_steps, args.refl_reps = 32, 2, 4, 2
        args.sample_size, args.sample_steps, args.sample_reps, args.lora_rank = 32, 4, 1, 4
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
    parts = set(args.parts.split(","))
    if "refl" in parts:
        print(
            f"# ReFL: T={args.refl_steps}, grad step in the last {min(10, args.refl_steps)}, "
            f"{args.refl_size}px, batch {args.refl_batch}, CFG {args.refl_guidance:g}, reward = mean red "
            f"channel, {'bf16 autocast, ' if device.type == 'cuda' else ''}gradient checkpointing, "
            f"median of {args.refl_reps} steps after 1 warm-up",
            flush=True,
        )
        bench_refl(args, configs, device)
    if "sample" in parts:
        print(
            f"# sampling: {args.sample_steps} DDIM steps, {args.sample_size}px, batch 1, "
            f"CFG {args.sample_guidance:g}, median of {args.sample_reps} after 1 warm-up each",
            flush=True,
        )
        bench_sampling(args, configs, device)


if __name__ == "__main__":
    main()
