from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch
from PIL import Image

from training.ml.common import StopTraining, config_to_dict, read_checkpoint_meta
from training.ml.reward.checkpoint import load_reward_model
from training.ml.reward.cli import main as cli_main
from training.ml.reward.config import RewardModelConfig, RewardTrainConfig
from training.ml.reward.data import (
    GroupPair,
    ImageRef,
    PairRecord,
    assign_splits,
    dataset_fingerprint,
    write_pairs_jsonl,
)
from training.ml.reward.train import RewardData, train_reward_model

torch.set_num_threads(1)

COLORS = {"red": (0.9, 0.1, 0.1), "green": (0.1, 0.8, 0.2), "blue": (0.1, 0.2, 0.9)}


def _color_image(path: str, sha: str = "") -> torch.Tensor:
    """Images are named ``<colour>/<seed>``: a noisy flat colour, so the preference is learnable."""
    name, seed = path.split("/")
    gen = torch.Generator().manual_seed(int(seed.split(".")[0]))
    base = torch.tensor(COLORS[name]).view(3, 1, 1)
    return (base + 0.1 * torch.randn(3, 32, 32, generator=gen)).clamp(0, 1)


def _records(n_prompts: int, suffix: str = "") -> list[PairRecord]:
    """Per prompt "a <colour> picture": the matching image beats both others, which tie."""
    records = []
    for p in range(n_prompts):
        target = list(COLORS)[p % 3]
        prompt = f"a {target} picture number {p}"
        ids = {c: 1000 * p + i for i, c in enumerate(COLORS)}
        others = [c for c in COLORS if c != target]
        for w, loser, label in (
            (target, others[0], 1.0),
            (target, others[1], 1.0),
            (others[0], others[1], 0.5),
        ):
            records.append(
                PairRecord(
                    pair_id=len(records) + 1,
                    prompt_id=p,
                    prompt=prompt,
                    category="attribute_binding",
                    subcategory="color",
                    split=None,
                    winner_id=ids[w],
                    winner_sha256="0" * 64,
                    winner_path=f"{w}/{ids[w]}{suffix}",
                    loser_id=ids[loser],
                    loser_sha256="0" * 64,
                    loser_path=f"{loser}/{ids[loser]}{suffix}",
                    label=label,
                )
            )
    return records


def _config(tmp_path, **kw) -> RewardTrainConfig:
    defaults = dict(
        model=RewardModelConfig.tiny("attribute_binding", freeze_fraction=0.0),
        output_dir=str(tmp_path / "ckpt"),
        epochs=40,
        batch_groups=8,
        lr=2e-3,
        warmup_ratio=0.1,
        split_fractions=(0.6, 0.2, 0.2),
    )
    defaults.update(kw)
    return RewardTrainConfig(**defaults)


@pytest.mark.slow
def test_training_learns_a_learnable_preference_and_writes_a_selfdescribing_checkpoint(tmp_path):
    records = _records(60)
    seen: list[tuple[int, int, dict]] = []
    info = train_reward_model(
        _config(tmp_path), RewardData(records, _color_image), lambda s, t, m: seen.append((s, t, m))
    )

    assert info.metrics["test_accuracy"] >= 0.9
    assert info.metrics["test_strict_pairs"] > 0 and not info.stopped_early
    # Best-on-validation selection: the kept weights score the best validation accuracy seen.
    best_val = max(h["val_accuracy"] for h in info.metrics["history"])
    assert info.metrics["val_accuracy"] == pytest.approx(best_val)
    assert any("loss" in m and "lr" in m for _, _, m in seen) and seen[-1][1] == info.metrics["total_steps"]

    meta = read_checkpoint_meta(info.path)["metadata"]
    split_records = assign_splits(records, (0.6, 0.2, 0.2))
    assert meta["dataset"]["sha256"] == dataset_fingerprint(split_records)["sha256"]
    assert meta["dataset"]["counts"]["pairs"] == 180
    assert meta["train_config"] == config_to_dict(_config(tmp_path))

    # Normalisation is mean/std of the kept model's raw scores on the training images.
    model = load_reward_model(info.path)
    train = [r for r in split_records if r.split == "train"]
    keys = sorted({(r.prompt, r.winner_path) for r in train} | {(r.prompt, r.loser_path) for r in train})
    with torch.no_grad():
        scores = model.score([p for p, _ in keys], torch.stack([_color_image(path) for _, path in keys]))
    assert scores.mean().item() == pytest.approx(0.0, abs=1e-4)
    assert scores.std(unbiased=False).item() == pytest.approx(1.0, abs=1e-3)


@pytest.mark.parametrize("how", ["return_false", "raise"])
def test_progress_can_stop_training_and_a_valid_checkpoint_is_still_written(tmp_path, how):
    def progress(step, total, metrics):
        if step >= 3:
            if how == "raise":
                raise StopTraining
            return False
        return True

    info = train_reward_model(_config(tmp_path, epochs=5), RewardData(_records(30), _color_image), progress)
    assert info.stopped_early and info.metrics["stopped_early"]
    assert info.metrics["steps"] == 3
    assert load_reward_model(info.path).score(["a red picture"], torch.rand(1, 3, 32, 32)).shape == (1,)


def test_gradient_accumulation_takes_one_optimizer_step_per_accumulated_batches(tmp_path):
    records = _records(30)
    steps = []
    config = _config(tmp_path, epochs=2, batch_groups=2, grad_accum=3, eval_every_steps=2)
    info = train_reward_model(config, RewardData(records, _color_image), lambda s, t, m: steps.append((s, t)))
    n_train = len({r.prompt_id for r in assign_splits(records, (0.6, 0.2, 0.2)) if r.split == "train"})
    per_epoch = math.ceil(math.ceil(n_train / 2) / 3)
    assert info.metrics["total_steps"] == info.metrics["steps"] == 2 * per_epoch
    assert [h["step"] for h in info.metrics["history"]] == list(range(2, 2 * per_epoch + 1, 2))


def test_listwise_batching_encodes_each_image_once_per_epoch_pairwise_once_per_pair_side(tmp_path):
    records = _records(30)
    rows = {}
    for batching in ("listwise", "pairwise"):
        config = _config(tmp_path, epochs=1, batching=batching, output_dir=str(tmp_path / batching))
        rows[batching] = train_reward_model(config, RewardData(records, _color_image)).metrics[
            "train_image_encoder_rows"
        ]
    n_train = len({r.prompt_id for r in assign_splits(records, (0.6, 0.2, 0.2)) if r.split == "train"})
    assert rows["listwise"] == 3 * n_train  # three images per prompt, each once
    assert rows["pairwise"] == 6 * n_train  # three pairs per prompt, two images each


def test_a_prompt_never_appears_in_two_splits_of_a_training_run(tmp_path):
    records = _records(60)
    records = [dataclasses.replace(r, split="test" if r.prompt_id % 5 == 0 else None) for r in records]
    info = train_reward_model(_config(tmp_path, epochs=1), RewardData(records, _color_image))
    counts = read_checkpoint_meta(info.path)["metadata"]["dataset"]["counts"]
    assert counts["test_prompts"] >= 12  # the export's own test prompts are kept
    assert counts["train_prompts"] + counts["val_prompts"] + counts["test_prompts"] == 60


def test_cli_trains_evaluates_and_scores_from_files(tmp_path, capsys):
    root = tmp_path / "images"
    records = _records(18, suffix=".png")
    for r in records:
        for path in (r.winner_path, r.loser_path):
            (root / path).parent.mkdir(parents=True, exist_ok=True)
            pixels = (_color_image(path).permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()
            Image.fromarray(pixels).save(root / path)
    pairs = write_pairs_jsonl(records, tmp_path / "pairs.jsonl")
    config = config_to_dict(_config(tmp_path, epochs=1))
    config.pop("output_dir")
    (tmp_path / "config.json").write_text(json.dumps(config))
    out = tmp_path / "cli_ckpt"

    assert (
        cli_main(
            [
                "train",
                "--pairs",
                str(pairs),
                "--image-root",
                str(root),
                "--output",
                str(out),
                "--config",
                str(tmp_path / "config.json"),
            ]
        )
        == 0
    )
    trained = json.loads(capsys.readouterr().out)
    assert trained["checkpoint"] == str(out) and "test_accuracy" in trained

    assert (
        cli_main(
            [
                "evaluate",
                "--checkpoint",
                str(out),
                "--pairs",
                str(pairs),
                "--image-root",
                str(root),
                "--split",
                "all",
            ]
        )
        == 0
    )
    evaluated = json.loads(capsys.readouterr().out)
    assert evaluated["strict_pairs"] == 36 and 0 <= evaluated["accuracy"] <= 1

    image = str(root / records[0].winner_path)
    assert (
        cli_main(
            [
                "score",
                "--checkpoint",
                str(out),
                "--prompt",
                records[0].prompt,
                "--image",
                image,
                "--image",
                image,
            ]
        )
        == 0
    )
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(lines) == 2 and lines[0]["score"] == pytest.approx(lines[1]["score"])


def test_bf16_mixed_precision_trains_through_accelerate_and_keeps_fp32_weights(tmp_path):
    info = train_reward_model(
        _config(tmp_path, epochs=1, mixed_precision="bf16"), RewardData(_records(30), _color_image)
    )
    model = load_reward_model(info.path)
    assert info.metrics["steps"] == info.metrics["total_steps"] > 0
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert torch.isfinite(model.score(["a red picture"], torch.rand(1, 3, 32, 32))).all()


def test_extra_image_sources_join_their_prompt_group_in_training(tmp_path):
    records = _records(30)
    train_ids = sorted({r.prompt_id for r in assign_splits(records, (0.6, 0.2, 0.2)) if r.split == "train"})
    # A mid-trajectory x0 prediction of the matching image, ranked below it and above a wrong one.
    extra = {
        pid: (
            [ImageRef(key=f"x0-{pid}", tensor=_color_image(f"{list(COLORS)[pid % 3]}/{pid}"))],
            [GroupPair(0, 3), GroupPair(3, 1)],
        )
        for pid in train_ids[:4]
    }
    base = train_reward_model(
        _config(tmp_path, epochs=1, output_dir=str(tmp_path / "a")), RewardData(records, _color_image)
    )
    more = train_reward_model(
        _config(tmp_path, epochs=1, output_dir=str(tmp_path / "b")), RewardData(records, _color_image, extra)
    )
    assert more.metrics["train_image_encoder_rows"] == base.metrics["train_image_encoder_rows"] + 4
    counts = read_checkpoint_meta(more.path)["metadata"]["dataset"]["counts"]
    assert counts["extra_images"] == 4 and counts["extra_pairs"] == 8
    with pytest.raises(ValueError, match="unknown prompt_id"):
        train_reward_model(
            _config(tmp_path, epochs=1), RewardData(records, _color_image, {999: extra[train_ids[0]]})
        )


def test_stages_with_different_precisions_run_one_after_another_in_one_process(tmp_path):
    # A worker process trains many models; accelerate's process-wide state must not pin the first setting.
    for i, precision in enumerate(("bf16", "no", "bf16")):
        config = _config(
            tmp_path, epochs=1, max_steps=1, mixed_precision=precision, output_dir=str(tmp_path / str(i))
        )
        assert train_reward_model(config, RewardData(_records(12), _color_image)).metrics["steps"] == 1
