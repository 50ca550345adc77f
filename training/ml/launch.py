"""Run Algorithm 1's training steps from JSON specs, on one process or on several (one per GPU).

    accelerate launch --multi_gpu --num_processes N -m training.ml.launch --spec reward.json [--spec ...]

A spec names its ``stage`` — ``reward`` (:func:`steps.train_reward`), ``refl`` (:func:`steps.finetune`)
or ``dpo`` (:func:`steps.finetune_dpo`) — and holds that step's inputs as plain JSON: the round
configuration, file paths (pair exports, checkpoints, base model, local copies of the images), prompts.
Every process runs the step (each on its share of the combined batches, see ``training.ml.distributed``);
the main process alone writes the checkpoint, appends each progress report to ``progress`` (a JSON line)
and writes the step's outcome to ``result``. A file at ``stop`` asks the run to stop at its next step,
as a progress callback returning False does in one process.

:func:`launch` is the caller's side (the app's Celery stage): it writes the specs, runs the command above
(``accelerate launch`` on CPU falls back to the gloo backend), relays the progress lines to a callback
while it waits, and returns the results. Nothing here imports Django.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
STAGES = ("reward", "refl", "dpo")
Progress = Callable[[int, int, Mapping[str, float]], bool | None]


class LaunchError(RuntimeError):
    """The multi-process run failed; the message ends with the tail of its log."""


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=lambda v: v.item() if hasattr(v, "item") else str(v)))


def _write_json(path: Path, value: Any) -> None:
    # Renamed into place: a reader never sees half a result.
    partial = path.with_name(f".{path.name}.part")
    partial.write_text(json.dumps(_jsonable(value)))
    os.replace(partial, path)


# ------------------------------------------------------------------------------------ inside the run


class _LocalImages:
    """The image loader of a launched step: stored names mapped to local files the caller fetched."""

    def __init__(self, images: Mapping[str, str], root: str | None) -> None:
        from training.ml.reward.data import FolderImageLoader

        self.images = dict(images)
        self.folder = FolderImageLoader(root or "/")

    def __call__(self, path: str, sha256: str):
        return self.folder(self.images.get(path, path), sha256)


def _reporter(spec: Mapping[str, Any], log: list[dict[str, Any]]) -> Progress:
    progress_path = Path(spec["progress"]) if spec.get("progress") else None
    stop_path = Path(spec["stop"]) if spec.get("stop") else None

    def report(step: int, total: int, metrics: Mapping[str, float]) -> bool:
        entry = _jsonable({"step": step, "total": total, "metrics": dict(metrics)})
        log.append(entry)
        if progress_path is not None:
            with open(progress_path, "a") as handle:
                handle.write(json.dumps(entry) + "\n")
        return stop_path is None or not stop_path.exists()

    return report


def save_pretrain(data: Sequence[tuple[str, Any]] | None, path: Path) -> dict[str, Any] | None:
    """The pretraining loss's (prompt, image) pairs as a spec entry (images in one safetensors file)."""
    if not data:
        return None
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({f"image_{i}": image.contiguous() for i, (_, image) in enumerate(data)}, str(path))
    return {"prompts": [prompt for prompt, _ in data], "images": str(path)}


def _pretrain(spec: Mapping[str, Any]):
    if not spec.get("pretrain"):
        return None
    from safetensors.torch import load_file

    tensors = load_file(spec["pretrain"]["images"])
    return [(prompt, tensors[f"image_{i}"]) for i, prompt in enumerate(spec["pretrain"]["prompts"])]


def run_spec(spec: Mapping[str, Any]) -> dict[str, Any]:
    """Run one spec's step in this process (one of the launched ones); returns the main process's result."""
    from training.ml.algorithm1 import steps
    from training.ml.algorithm1.config import RoundConfig
    from training.ml.distributed import is_main_process, process_state
    from training.ml.reward.data import read_pairs

    stage = spec["stage"]
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; known: {STAGES}")
    config = RoundConfig.from_dict(spec["round_config"])
    main = is_main_process()
    log: list[dict[str, Any]] = []
    progress = _reporter(spec, log) if main else None
    loader = _LocalImages(spec.get("images") or {}, spec.get("image_root"))
    curve: list[dict[str, float]] = []
    if stage == "reward":
        info = steps.train_reward(
            config,
            spec["category"],
            read_pairs(spec["pairs"]),
            loader,
            spec["output_dir"],
            spec["iteration"],
            pretrained_path=spec.get("pretrained_path"),
            progress=progress,
            own_images=set(spec.get("own_images") or ()),
            previous=spec.get("previous"),
        )
    elif stage == "refl":
        heldout = None
        if spec.get("heldout") == "world_oracle":
            from training.ml.refl.world_adapter import oracle_evaluator

            heldout = oracle_evaluator
        result = steps.finetune(
            config,
            family=spec["family"],
            base_path=spec["base_path"],
            chain=spec.get("chain") or [],
            rewards=spec["rewards"],
            prompts=spec["prompts"],
            validation_prompts=spec.get("validation_prompts") or [],
            output_dir=spec["output_dir"],
            iteration=spec["iteration"],
            categories=spec.get("categories"),
            pretrain=_pretrain(spec),
            heldout=heldout,
            progress=progress,
            reward_metrics=spec.get("reward_metrics"),
        )
        info, curve = result.checkpoint, result.curve
    else:
        result = steps.finetune_dpo(
            config,
            family=spec["family"],
            base_path=spec["base_path"],
            chain=spec.get("chain") or [],
            pairs=read_pairs(spec["pairs"]),
            loader=loader,
            output_dir=spec["output_dir"],
            iteration=spec["iteration"],
            heldout_pairs=read_pairs(spec["heldout_pairs"]) if spec.get("heldout_pairs") else (),
            progress=progress,
        )
        info, curve = result.checkpoint, result.curve
    outcome = {
        "stage": stage,
        "num_processes": process_state().num_processes,
        "checkpoint": {
            "path": str(info.path),
            "kind": info.kind,
            "metrics": info.metrics,
            "stopped_early": info.stopped_early,
        },
        "curve": curve,
        "progress": log,
    }
    if main and spec.get("result"):
        _write_json(Path(spec["result"]), outcome)
    return outcome


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.ml.launch", description=__doc__.split("\n")[0])
    parser.add_argument("--spec", action="append", required=True, help="a step's JSON spec (repeatable)")
    args = parser.parse_args(argv)
    import torch

    # What the caller asked for (OMP_NUM_THREADS), not what torchrun's defaults would give.
    if os.environ.get("OMP_NUM_THREADS"):
        torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    from training.ml.distributed import process_state

    state = process_state()  # joins the launch's processes before any trainer builds an Accelerator
    for path in args.spec:
        run_spec(json.loads(Path(path).read_text()))
    state.wait_for_everyone()
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    return 0


# ------------------------------------------------------------------------------------ the caller's side


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def launch_command(spec_paths: Sequence[Path], num_processes: int) -> list[str]:
    """The command for ``num_processes`` processes; one process runs without ``accelerate launch``."""
    if num_processes < 1:
        raise ValueError(f"num_processes must be >= 1, got {num_processes}")
    specs = [arg for path in spec_paths for arg in ("--spec", str(path))]
    if num_processes == 1:
        return [sys.executable, "-m", "training.ml.launch", *specs]
    return [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        # torchrun's launcher: one process per GPU on a GPU machine, gloo on CPU.
        "--multi_gpu",
        "--num_processes",
        str(num_processes),
        "--num_machines",
        "1",
        # The trainers set their own precision; this only silences the launcher's defaults warning.
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        str(_free_port()),
        "-m",
        "training.ml.launch",
        *specs,
    ]


def _relay(path: Path, offset: int, progress: Progress | None, stop: Path) -> int:
    """Hand the progress lines written since ``offset`` to ``progress``; its False asks the run to stop."""
    if not path.exists():
        return offset
    with open(path) as handle:
        handle.seek(offset)
        while True:
            line = handle.readline()
            if not line.endswith("\n"):
                break  # a line still being written is read on the next call
            offset += len(line.encode())
            entry = json.loads(line)
            if progress is not None and progress(entry["step"], entry["total"], entry["metrics"]) is False:
                stop.touch()
    return offset


def launch(
    specs: Sequence[Mapping[str, Any]],
    workdir: str | os.PathLike[str],
    num_processes: int,
    *,
    progress: Progress | None = None,
    env: Mapping[str, str] | None = None,
    poll_s: float = 0.5,
) -> list[dict[str, Any]]:
    """Run ``specs`` in order on ``num_processes`` processes and return their results.

    ``progress`` gets every step's report as the run makes it; returning False stops the run at its next
    step (it still writes its checkpoint and result). Raises :class:`LaunchError` when the run fails.
    """
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    progress_path, stop_path, log_path = workdir / "progress.jsonl", workdir / "stop", workdir / "launch.log"
    paths = []
    for index, spec in enumerate(specs):
        result = workdir / f"result-{index}.json"
        for stale in (result, progress_path, stop_path):
            stale.unlink(missing_ok=True)
        path = workdir / f"spec-{index}.json"
        full = {**spec, "result": str(result), "progress": str(progress_path), "stop": str(stop_path)}
        path.write_text(json.dumps(_jsonable(full), indent=1))
        paths.append(path)
    command = launch_command(paths, num_processes)
    child_env = {**os.environ, **(env or {})}
    child_env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), child_env.get("PYTHONPATH")]))
    offset = 0
    with open(log_path, "wb") as log:
        # Its own process group, so that the launcher and every training process it started end together.
        process = subprocess.Popen(
            command, cwd=ROOT, env=child_env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            while process.poll() is None:
                offset = _relay(progress_path, offset, progress, stop_path)
                time.sleep(poll_s)
            _relay(progress_path, offset, progress, stop_path)
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
                try:
                    process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait()
    if process.returncode != 0:
        tail = log_path.read_bytes()[-4000:].decode(errors="replace")
        raise LaunchError(
            f"{' '.join(command[:4])} ... exited with {process.returncode}; last lines of {log_path}:\n{tail}"
        )
    results = []
    for index in range(len(specs)):
        result = workdir / f"result-{index}.json"
        if not result.is_file():
            raise LaunchError(f"the run ended without writing {result}")
        results.append(json.loads(result.read_text()))
    return results


if __name__ == "__main__":
    sys.exit(main())
