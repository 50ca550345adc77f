"""BLIP-large reward model training throughput and peak memory on one GPU (goal ≥ 1,000 images/s on an H100).

Prepared for a machine with one H100/H200; not yet run there (no GPU was lent to the work that wrote it).
The production reward model (``training.ml.reward.model.RewardModel`` via ``build_reward_model``) with the
BLIP-large architecture built from config with random weights (nothing can be downloaded; speed and
memory do not depend on the weight values): ViT-L/16 vision tower (hidden 1024, 24 layers, 16 heads,
224² images → 197 tokens) and the BERT-base text encoder (768 hidden, 12 layers) cross-attending to the
image tokens, ImageReward's MLP head, the first 70 % of both encoders' layers frozen (the model's own
``freeze_fraction``). One training step is what ``train_reward_model`` does per batch on one GPU: listwise
batch from the project's ``GroupCollator`` (64 prompt groups × 6 images, all C(6,2) = 15 pairs each →
384 images), bf16 autocast forward, ``listwise_pair_loss``, backward, gradient clipping at 1.0, AdamW over
the trainer's parameter groups. The batch is collated once and stays on the GPU, so data loading is not
in the figure. Median over the timed steps after warm-up.

Prints one ``figure: name=value unit`` line per figure. On the GPU machine, from the repository root:

    pip install -r bench/requirements-gpu.txt && python bench/gpu_refl_sdxl.py && python bench/gpu_reward_blip.py

(without a package index, carry the same packages as wheels: see bench/gpu_refl_sdxl.py's docstring).
CPU check of the script itself (tiny config, < 60 s): ``.venv/bin/python bench/gpu_reward_blip.py --tiny``.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gpu_common import figure, median_times, peak_gib, reset_memory, setup  # noqa: E402

from training.ml.reward.config import (  # noqa: E402
    RewardModelConfig,
    RewardTrainConfig,
    TextSpec,
    VisionSpec,
)
from training.ml.reward.data import GroupBatch, GroupCollator, GroupPair, ImageRef, PromptGroup  # noqa: E402
from training.ml.reward.losses import listwise_pair_loss  # noqa: E402
from training.ml.reward.model import RewardModel, build_reward_model  # noqa: E402
from training.ml.reward.train import _param_groups  # noqa: E402
from training.ml.world.grammar import generate_prompts  # noqa: E402

# Salesforce/blip-itm-large-coco's vision_config / text_config, at 224² as IterComp trains. Positional
# fields: hidden size, MLP size, layers, heads — ViT-L/16 (1024, 4096, 24, 16), BERT-base (768, 3072, 12, 12).
BLIP_LARGE_VISION = VisionSpec(1024, 4096, 24, 16, image_size=224, patch_size=16)
BLIP_TEXT = TextSpec(768, 3072, 12, 12, max_position_embeddings=512)


def listwise_batch(groups: int, images_per_group: int, image_size: int, preprocess) -> GroupBatch:
    """``groups`` prompt groups, each with every pair of its images, through the trainer's collator."""
    gen = torch.Generator().manual_seed(0)
    pairs = tuple(GroupPair(a, b) for a, b in itertools.combinations(range(images_per_group), 2))
    prompt_groups = []
    for g, prompt in enumerate(generate_prompts("spatial", groups, 0)):
        images = tuple(
            ImageRef(key=f"{g}/{k}", tensor=torch.rand(3, image_size, image_size, generator=gen))
            for k in range(images_per_group)
        )
        prompt_groups.append(PromptGroup(g, prompt, "spatial", None, "train", images, pairs))
    collator = GroupCollator(lambda path, sha: torch.zeros(0), preprocess, "listwise", cache=False)
    return collator(prompt_groups)


def build_model(args: argparse.Namespace, device: torch.device) -> tuple[RewardModel, RewardTrainConfig]:
    if args.tiny:
        model_cfg = RewardModelConfig.tiny("spatial", freeze_fraction=args.freeze)
    else:
        model_cfg = RewardModelConfig.small(
            "spatial", vision=BLIP_LARGE_VISION, text=BLIP_TEXT, freeze_fraction=args.freeze
        )
    config = RewardTrainConfig(
        model=model_cfg,
        output_dir=tempfile.gettempdir(),
        batch_groups=args.groups,
        mixed_precision="bf16" if device.type == "cuda" else "no",
    )
    with torch.device(device):  # random init directly on the GPU
        model = build_reward_model(model_cfg, seed=0)
    return model.to(device).train(), config


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--tiny", action="store_true", help="toy widths and sizes: checks the script on CPU")
    parser.add_argument("--groups", type=int, default=64, help="prompt groups per batch")
    parser.add_argument("--images", type=int, default=6, help="images per prompt group")
    parser.add_argument("--freeze", type=float, default=0.7, help="fraction of encoder layers frozen")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=20, help="timed steps")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args()
    if args.tiny:
        args.groups, args.warmup, args.steps = 4, 1, 3

    import transformers

    device = setup(
        args.device,
        args.threads,
        {"transformers": transformers.__version__},
        f"{'TINY config' if args.tiny else 'BLIP-large (ViT-L/16 224², BERT-base text)'}, random weights, "
        f"{args.freeze:.0%} of encoder layers frozen, {args.groups} groups × {args.images} images, "
        f"{'bf16 autocast, ' if args.device.startswith('cuda') else ''}median of {args.steps} steps after "
        f"{args.warmup} warm-up",
    )
    model, config = build_model(args, device)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(_param_groups(model, config), lr=config.lr, betas=config.betas)
    batch = listwise_batch(args.groups, args.images, model.preprocess.image_size, model.preprocess).to(device)
    input_ids, attention_mask = model.tokenize(batch.prompts)
    n_images = batch.images.shape[0]

    def step() -> float:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            scores = model(batch.images, batch.prompt_index, input_ids, attention_mask)
        loss = listwise_pair_loss(
            scores.float(), batch.winners, batch.losers, batch.labels, batch.weights, config.tie_mode
        )
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, config.max_grad_norm or float("inf"))
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return float(loss.detach())

    reset_memory(device)  # the peak then covers weights, AdamW state and the step's activations
    median = median_times({"step": step}, device, warmup=args.warmup, repeats=args.steps)["step"]
    total = sum(p.numel() for p in model.parameters())
    print(f"# loss after the timed steps {step():.4f}; {batch.winners.numel()} pairs per step", flush=True)
    figure("reward_params_total", f"{total / 1e6:.1f}", "M")
    figure("reward_params_trainable", f"{sum(p.numel() for p in trainable) / 1e6:.2f}", "M")
    figure(f"reward_step_b{n_images}", f"{median:.4f}", "s")
    figure("reward_train_images_per_s", f"{n_images / median:.0f}", "images/s")
    figure(f"reward_peak_mem_b{n_images}", peak_gib(device), "GiB")


if __name__ == "__main__":
    main()
