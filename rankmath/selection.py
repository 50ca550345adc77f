"""Active selection: which ranking tasks teach the reward models most, as pure functions.

Expert rankings are the scarce input of the method. A task-priority *policy* per category orders the
claim queue (the app stores each task's priority in an indexed column; claiming only sorts by it):

- ``random``: a uniform, deterministic draw per task (the task's *selection draw*, from its prompt and
  image set, so it never changes and the tests can pin it down);
- ``uncertainty``: groups where the current reward models are least sure of the pair order — small
  margins or models that disagree (:func:`group_uncertainty`);
- ``disagreement``: prompts whose push-back ranking by the experts disagreed with the reward placement
  (:func:`placement_disagreement`);
- ``mix``: a fixed share of tasks keeps a random priority for unbiased evaluation, the rest are ordered
  by uncertainty. Membership in the random share depends on the selection draw only (``draw < share``),
  never on scores, so selected tasks never replace random ones; and the random-share priorities
  (``draw / share``, uniform on [0, 1)) interleave with the selected tasks' rank quantiles (evenly spread
  on (0, 1)), so any prefix of the queue holds the share in expectation (:func:`task_priorities`).

Every priority lies in [0, 1); higher is claimed first.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass

from rankmath.rankformats import Ordering, validate_ordering

POLICIES = ("random", "uncertainty", "disagreement", "mix")


def selection_draw(prompt_id: int, image_ids: Iterable[int]) -> float:
    """A task's uniform draw in [0, 1): a hash of its prompt and image set (a live task is unique by both).

    Known before the task row exists, so a task is tagged at creation and the tag never moves.
    """
    material = f"selection:{prompt_id}:{','.join(str(i) for i in sorted(image_ids))}".encode()
    return int.from_bytes(hashlib.sha256(material).digest()[:8], "big") / 2.0**64


def in_random_share(draw: float, share: float) -> bool:
    return draw < share


def initial_priority(policy: str, draw: float, share: float) -> float:
    """A new task's priority before any score exists: uniform on [0, 1) under every policy.

    Under ``mix`` the random-share tasks get ``draw / share`` and the others ``(draw - share) / (1 - share)``,
    so both halves are uniform (a bare ``draw`` would put every random-share task at the bottom).
    """
    _check(policy, share)
    if policy != "mix":
        return draw
    if in_random_share(draw, share):
        return draw / share
    return (draw - share) / (1.0 - share)


@dataclass(frozen=True)
class TaskScore:
    task_id: int
    draw: float
    uncertainty: float | None = None  # higher: the reward models know less about this group's order
    disagreement: float | None = None  # higher: the experts' push-back ranking contradicted the placement


def task_priorities(policy: str, tasks: Sequence[TaskScore], share: float = 0.0) -> dict[int, float]:
    """task id → priority in [0, 1) for one category's open tasks under ``policy``.

    Score-based policies rank tasks by (has a score, score, draw) and give rank quantiles
    ``(r + 0.5) / n``: scored tasks above unscored ones, ties and unscored tasks in random (draw) order.
    """
    _check(policy, share)
    if policy == "random":
        return {t.task_id: t.draw for t in tasks}
    if policy == "mix":
        random_part = [t for t in tasks if in_random_share(t.draw, share)]
        selected = [t for t in tasks if not in_random_share(t.draw, share)]
        out = {t.task_id: t.draw / share for t in random_part}
        out.update(_quantiles(selected, "uncertainty"))
        return out
    return _quantiles(list(tasks), policy)


def _quantiles(tasks: list[TaskScore], field: str) -> dict[int, float]:
    def key(t: TaskScore) -> tuple[bool, float, float]:
        score = getattr(t, field)
        return (score is not None, score if score is not None else 0.0, t.draw)

    ranked = sorted(tasks, key=key)
    return {t.task_id: (r + 0.5) / len(ranked) for r, t in enumerate(ranked)}


def _check(policy: str, share: float) -> None:
    if policy not in POLICIES:
        raise ValueError(f"unknown selection policy {policy!r}; known: {', '.join(POLICIES)}")
    if policy == "mix" and not 0.0 < share < 1.0:
        raise ValueError(f"a mix needs a random share strictly between 0 and 1, got {share}")


def _sigmoid(x: float) -> float:
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    e = math.exp(x)
    return e / (1.0 + e)


def group_uncertainty(score_sets: Sequence[Sequence[float]]) -> float:
    """How unsure reward models are of a group's pair order, in [0, 1].

    ``score_sets``: one score vector per model (the same images in the same order). For each pair the
    models' Bradley-Terry probabilities σ(s_i − s_j) — what the pairwise loss trains — are averaged, and
    4·q(1 − q) of the average is taken: 1 when the margin is zero *or* when confident models contradict
    each other (their probabilities average to ½), near 0 when all models agree by a wide margin. The
    group's value is the mean over its pairs.
    """
    if not score_sets:
        raise ValueError("no reward-model scores")
    n = len(score_sets[0])
    if any(len(s) != n for s in score_sets):
        raise ValueError("every model must score the same images")
    if n < 2:
        return 0.0
    total = 0.0
    for i in range(n):
        for j in range(i + 1, n):
            q = sum(_sigmoid(float(s[i]) - float(s[j])) for s in score_sets) / len(score_sets)
            total += 4.0 * q * (1.0 - q)
    return total / (n * (n - 1) / 2)


def placement_disagreement(
    ordering: Ordering, placed_pairs: Iterable[tuple[Hashable, Hashable]]
) -> float | None:
    """Share of the reward placement's pairs (winner, loser) that the experts' ordering reverses.

    Pairs with an image the ordering does not hold, or that the experts tied, say nothing and are left
    out; None when none is left.
    """
    rank = {item: r for r, group in enumerate(validate_ordering(ordering)) for item in group}
    judged = reversed_ = 0
    for winner, loser in placed_pairs:
        if winner not in rank or loser not in rank or rank[winner] == rank[loser]:
            continue
        judged += 1
        reversed_ += rank[winner] > rank[loser]
    return reversed_ / judged if judged else None


def binomial_tolerance(n: int, p: float, z: float = 4.0) -> float:
    """``z`` standard deviations of a Binomial(n, p) count: the slack a share test over n draws allows."""
    return z * math.sqrt(n * p * (1.0 - p))


def rankings_to_reach(curve: Sequence[tuple[float, float]], target: float) -> float | None:
    """Rankings spent (linear interpolation on a (rankings, accuracy) curve sorted by rankings) at which
    the curve first reaches ``target``; None when it never does."""
    previous: tuple[float, float] | None = None
    for x, y in curve:
        if y >= target:
            if previous is None or previous[1] >= target:
                return float(x)
            x0, y0 = previous
            return float(x0 + (target - y0) * (x - x0) / (y - y0))
        previous = (x, y)
    return None
