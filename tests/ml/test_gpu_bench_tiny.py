"""The prepared GPU benchmarks run end to end in their ``--tiny`` CPU mode and print their figure lines."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FIGURE = re.compile(r"^figure: (?P<name>[\w.]+)=(?P<value>\S+) (?P<unit>.+)$")

EXPECTED = {
    "gpu_dpo_sdxl.py": [
        "dpo_trainable_params_full",
        "dpo_encode_pairs_full_32px_b2pairs",
        "dpo_step_full_32px_b2pairs",
        "dpo_peak_mem_full_32px_b2pairs",
        "dpo_trainable_params_lora4",
        "dpo_encode_pairs_lora4_32px_b2pairs",
        "dpo_step_lora4_32px_b2pairs",
        "dpo_peak_mem_lora4_32px_b2pairs",
    ],
    "gpu_refl_sdxl.py": [
        "refl_trainable_params_full",
        "refl_step_full_32px_b2",
        "refl_peak_mem_full_32px_b2",
        "refl_trainable_params_lora4",
        "refl_step_lora4_32px_b2",
        "refl_peak_mem_lora4_32px_b2",
        "sample_project_32px_4steps_cfg5",
        "sample_diffusers_32px_4steps_cfg5",
        "sample_speedup_project_vs_diffusers",
        "sample_max_abs_image_diff",
        "sample_peak_mem_32px_4steps_cfg5",
    ],
    "gpu_reward_blip.py": [
        "reward_params_total",
        "reward_params_trainable",
        "reward_step_b24",
        "reward_train_images_per_s",
        "reward_peak_mem_b24",
    ],
}


@pytest.mark.slow
@pytest.mark.parametrize("script", sorted(EXPECTED))
def test_tiny_mode_prints_every_figure(script: str) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / script), "--tiny", "--device", "cpu", "--threads", "1"],
        capture_output=True,
        text=True,
        timeout=80,
        cwd=ROOT,
        env=env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    figures = {}
    for line in result.stdout.splitlines():
        match = FIGURE.match(line)
        if match:
            figures[match["name"]] = (match["value"], match["unit"])
    assert list(figures) == EXPECTED[script]
    for name, (value, _unit) in figures.items():
        if "peak_mem" not in name:  # no CUDA here: peak memory is "n/a"
            assert float(value) >= 0, name
    assert result.stdout.startswith("# device: cpu")
    if script == "gpu_dpo_sdxl.py":
        # LoRA trains a small fraction of what full fine-tuning trains, on the same UNet.
        assert (
            0
            < float(figures["dpo_trainable_params_lora4"][0])
            < float(figures["dpo_trainable_params_full"][0])
        )
    if script == "gpu_refl_sdxl.py":
        # Same components, scheduler and noise: the project's sampler reproduces the diffusers pipeline.
        assert float(figures["sample_max_abs_image_diff"][0]) < 1e-5
