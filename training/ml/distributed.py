"""What the trainers share to run under ``accelerate launch --num_processes N`` (one process per GPU).

The rule every trainer follows: a configured batch size is the *combined* batch of all processes, and a
run on N processes computes what one process computes on that batch.

- every process draws the combined batch's random choices (items, noise, timesteps) from the same
  per-step generator, then keeps its own contiguous share (:func:`shard`): the draws belong to a global
  sample index and a step, never to a process;
- the gradient is the combined batch's mean: DDP averages the processes' gradients, so a process whose
  share is a mean over an equal share needs nothing more (a weighted mean rescales, see the reward trainer);
- the main process alone reports progress, evaluates guards and writes checkpoints, and its answers
  (carry on or stop) are handed to the others (:func:`main_decides`), so that all take the same steps.

With one process every helper is a no-op and no collective call is made.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import torch

T = TypeVar("T")


def ddp_handlers() -> list[Any]:
    """Accelerator kwargs handlers of every trainer: DDP tolerates trainable parameters a step leaves unused
    (a BLIP text pooler the score never reads, a UNet's unused embeddings); one process ignores them."""
    from accelerate.utils import DistributedDataParallelKwargs

    return [DistributedDataParallelKwargs(find_unused_parameters=True)]


def shard(total: int, process_index: int, num_processes: int, what: str = "batch size") -> slice:
    """This process's contiguous share of ``total`` items; ``total`` must split evenly."""
    if total % num_processes:
        raise ValueError(
            f"{what} {total} does not split evenly over {num_processes} processes: "
            "choose a multiple of the number of processes"
        )
    size = total // num_processes
    return slice(process_index * size, (process_index + 1) * size)


def main_decides(accelerator: Any, decide: Callable[[], T]) -> T:
    """``decide()`` on the main process only; every process returns the main process's answer."""
    if accelerator.num_processes == 1:
        return decide()
    from accelerate.utils import broadcast_object_list

    box: list[Any] = [decide() if accelerator.is_main_process else None]
    broadcast_object_list(box, from_process=0)
    return box[0]


def main_writes(accelerator: Any, write: Callable[[], Any]) -> None:
    """``write`` on the main process alone (every process holds the same state); the others wait for it."""
    if accelerator.is_main_process:
        write()
    accelerator.wait_for_everyone()


def mean_across(accelerator: Any, values: Mapping[str, float]) -> dict[str, float]:
    """Per-key mean over the processes (one collective call): the combined batch's mean of equal shares."""
    if accelerator.num_processes == 1 or not values:
        return dict(values)
    keys = sorted(values)
    local = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=accelerator.device)
    total = accelerator.reduce(local, reduction="sum").cpu() / accelerator.num_processes
    return dict(zip(keys, total.tolist(), strict=True))


def sum_across(accelerator: Any, value: torch.Tensor) -> torch.Tensor:
    if accelerator.num_processes == 1:
        return value
    return accelerator.reduce(value.detach().clone().to(accelerator.device), reduction="sum")


def process_state() -> Any:
    """accelerate's process state, set up on first use (by a launched run, before its first Accelerator).

    Without a GPU it must be created with ``cpu=True``: otherwise accelerate does not join a launch's
    processes into one gloo group and each would train alone as a single process.
    """
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available())


def is_main_process() -> bool:
    """True outside a multi-process launch, and in its rank-0 process."""
    return process_state().is_main_process
