from __future__ import annotations

from django.db.models import QuerySet

from training.models import TERMINAL_STATUSES, EventKind, RoundEvent, RoundStatus, TrainingRound
from training.services import WORKER_STAGES

STAGE_ORDER = [RoundStatus.QUEUED, *WORKER_STAGES, RoundStatus.AWAITING_RANKING, RoundStatus.DONE]


def round_list() -> QuerySet[TrainingRound]:
    return TrainingRound.objects.select_related("created_by").prefetch_related("categories")


def round_is_terminal(training_round: TrainingRound) -> bool:
    return training_round.status in TERMINAL_STATUSES


def round_progress(training_round: TrainingRound) -> dict[str, object]:
    """Everything the round page's progress section shows, from the rows the workers write."""
    stages = []
    reached = STAGE_ORDER.index(training_round.status) if training_round.status in STAGE_ORDER else -1
    for index, status in enumerate(STAGE_ORDER[1:-1], start=1):
        state = "done" if index < reached else "current" if index == reached else "todo"
        stages.append({"name": RoundStatus(status).label, "state": state})
    live = training_round.progress or {}
    step, total = live.get("step"), live.get("total")
    percent = round(100 * step / total) if step is not None and total else None
    stages_per_iteration = len(WORKER_STAGES)
    done_here = max(0, min(reached, stages_per_iteration + 1) - 1)
    if training_round.status in WORKER_STAGES and percent is not None:
        done_here += percent / 100
    overall_total = training_round.iterations * stages_per_iteration
    overall_done = training_round.current_iteration * stages_per_iteration + done_here
    if training_round.status == RoundStatus.DONE:
        overall_done = overall_total
    return {
        "stages": stages,
        "label": live.get("label", ""),
        "step": step,
        "total": total,
        "percent": percent,
        "metrics": live.get("metrics", {}),
        "eta_s": live.get("eta_s"),
        "overall_percent": round(100 * min(overall_done, overall_total) / overall_total),
        "terminal": round_is_terminal(training_round),
    }


def round_recent_logs(training_round: TrainingRound, limit: int = 15) -> list[RoundEvent]:
    events = RoundEvent.objects.filter(training_round=training_round, kind=EventKind.LOG).order_by("-id")[
        :limit
    ]
    return list(reversed(events))


def round_metric_series(training_round: TrainingRound) -> list[dict[str, object]]:
    return list(
        RoundEvent.objects.filter(training_round=training_round, kind=EventKind.METRIC)
        .order_by("id")
        .values("stage", "iteration", "step", "data")
    )


# --- dashboards: each figure is a list of plain rows (downloadable as CSV/JSON) -------------------------


def reward_accuracy_rows(training_round: TrainingRound) -> list[dict[str, object]]:
    """Held-out pairwise accuracy of each category's reward model at each iteration."""
    rows = []
    for checkpoint in training_round.reward_checkpoints.select_related("category").order_by(
        "iteration", "category__position"
    ):
        metrics = checkpoint.metrics or {}
        rows.append(
            {
                "iteration": checkpoint.iteration,
                "category": checkpoint.category.slug,
                "val_accuracy": metrics.get("val_accuracy"),
                "test_accuracy": metrics.get("test_accuracy"),
                "train_prompts": metrics.get("train_prompts"),
            }
        )
    return rows


def guard_curve_rows(training_round: TrainingRound) -> list[dict[str, object]]:
    """The reward-hacking signal: optimised reward vs held-out score at each guard evaluation."""
    events = RoundEvent.objects.filter(training_round=training_round, kind=EventKind.METRIC, stage="guard")
    return [
        {
            "iteration": e.iteration,
            "step": e.step,
            "reward": e.data.get("reward"),
            "heldout": e.data.get("heldout"),
        }
        for e in events.order_by("iteration", "step")
    ]


def guard_stops(training_round: TrainingRound) -> list[dict[str, object]]:
    stops = []
    for checkpoint in training_round.diffusion_checkpoints.order_by("iteration"):
        metrics = checkpoint.metrics or {}
        stops.append(
            {
                "iteration": checkpoint.iteration,
                "stop_reason": metrics.get("stop_reason"),
                "best_step": metrics.get("best_step"),
                "steps": metrics.get("steps"),
            }
        )
    return stops


def iteration_score_rows(training_round: TrainingRound) -> list[dict[str, object]]:
    """Per iteration: the held-out score (the oracle in the synthetic world) and reward at the kept step."""
    rows = []
    for checkpoint in training_round.diffusion_checkpoints.order_by("iteration"):
        metrics = checkpoint.metrics or {}
        history = metrics.get("guard_history") or []
        kept = next(
            (h for h in history if h.get("step") == metrics.get("best_step")), history[-1] if history else {}
        )
        first = history[0] if history else {}
        rows.append(
            {
                "iteration": checkpoint.iteration + 1,
                "heldout_before": first.get("heldout"),
                "heldout_kept": kept.get("heldout"),
                "reward_before": first.get("reward"),
                "reward_kept": kept.get("reward"),
            }
        )
    return rows


def win_share_rows(training_round: TrainingRound) -> list[dict[str, object]]:
    """Share of pushed tasks whose human consensus put the newest base model's sample first."""
    from annotation.models import ConsensusRanking
    from gallery.models import Image

    rows = []
    for key, outputs in sorted(training_round.outputs.items(), key=lambda kv: int(kv[0])):
        generator_id, pushed = outputs.get("generator"), outputs.get("pushed_tasks") or []
        if generator_id is None or not pushed:
            continue
        consensus = list(
            ConsensusRanking.objects.filter(task_id__in=pushed).values_list("ordering", flat=True)
        )
        if not consensus:
            continue
        firsts = [ordering[0][0] for ordering in consensus if ordering]
        wins = Image.objects.filter(pk__in=firsts, generator_id=generator_id).count()
        rows.append(
            {
                "iteration": int(key) + 1,
                "ranked_tasks": len(firsts),
                "first_places": wins,
                "win_share": wins / len(firsts) if firsts else None,
            }
        )
    return rows
