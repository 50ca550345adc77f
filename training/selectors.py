from __future__ import annotations

from django.db.models import QuerySet

from training.models import TERMINAL_STATUSES, EventKind, RoundEvent, RoundStatus, TrainingRound
from training.services import WORKER_STAGES

STAGE_ORDER = [RoundStatus.QUEUED, *WORKER_STAGES, RoundStatus.AWAITING_RANKING, RoundStatus.DONE]


def round_list() -> QuerySet[TrainingRound]:
    return TrainingRound.objects.select_related("created_by").prefetch_related("categories")


def round_is_terminal(training_round: TrainingRound) -> bool:
    return training_round.status in TERMINAL_STATUSES


def round_stopped_at(training_round: TrainingRound) -> str | None:
    """The stage a cancelled or failed round was in when it ended (its last event from a stage)."""
    if training_round.status in STAGE_ORDER:
        return None
    last = (
        RoundEvent.objects.filter(training_round=training_round, stage__in=STAGE_ORDER[:-1])
        .order_by("-id")
        .values_list("stage", flat=True)
        .first()
    )
    return last or RoundStatus.QUEUED


def round_progress(training_round: TrainingRound) -> dict[str, object]:
    """Everything the round page's progress section shows, from the rows the workers write.

    A cancelled or failed round is drawn where it stopped: the stages before it done, that one marked.
    """
    stages = []
    stopped_at = round_stopped_at(training_round)
    position = stopped_at if stopped_at is not None else training_round.status
    reached = STAGE_ORDER.index(position) if position in STAGE_ORDER else -1
    for index, status in enumerate(STAGE_ORDER[1:-1], start=1):
        state = "done" if index < reached else "current" if index == reached else "todo"
        if index == reached and stopped_at is not None:
            state = "stopped"
        stages.append({"name": RoundStatus(status).label, "state": state})
    live = training_round.progress or {}
    step, total = live.get("step"), live.get("total")
    percent = round(100 * step / total) if step is not None and total else None
    stages_per_iteration = len(WORKER_STAGES)
    done_here = max(0, min(reached, stages_per_iteration + 1) - 1)
    if position in WORKER_STAGES and percent is not None:
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
        "stopped_at": RoundStatus(stopped_at).label if stopped_at is not None else None,
    }


def round_awaiting(training_round: TrainingRound) -> dict[str, object] | None:
    """While a round awaits human ranking: the pushed tasks still open and the rankings they still need,
    per category (the link on the page goes to that category's queue)."""
    if training_round.status != RoundStatus.AWAITING_RANKING:
        return None
    from django.db.models import Count

    from annotation.models import RankingTask, TaskStatus

    pushed = training_round.outputs.get(str(training_round.current_iteration), {}).get("pushed_tasks", [])
    rows = (
        RankingTask.objects.filter(pk__in=pushed, status=TaskStatus.OPEN)
        .annotate(n_ranked=Count("rankings"))
        .values("pk", "required_rankings", "n_ranked", "prompt__category__slug", "prompt__category__name")
    )
    by_category: dict[str, dict[str, object]] = {}
    for row in rows:
        missing = max(0, row["required_rankings"] - row["n_ranked"])
        if not missing:
            continue
        entry = by_category.setdefault(
            row["prompt__category__slug"],
            {
                "slug": row["prompt__category__slug"],
                "name": row["prompt__category__name"],
                "tasks": 0,
                "rankings": 0,
            },
        )
        entry["tasks"] += 1
        entry["rankings"] += missing
    categories = sorted(by_category.values(), key=lambda e: e["name"])
    return {
        "pushed": len(pushed),
        "tasks": sum(e["tasks"] for e in categories),
        "rankings": sum(e["rankings"] for e in categories),
        "categories": categories,
    }


def round_checkpoint_count(training_round: TrainingRound) -> int:
    return training_round.reward_checkpoints.count() + training_round.diffusion_checkpoints.count()


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


def round_ranking_steps(training_round: TrainingRound) -> list[dict[str, object]]:
    """Who ranked each iteration's new samples, for the lineage: the experts, or the reward model's
    placement when an admin continued without them (with who, when and what was still missing)."""
    steps = []
    for key, outputs in sorted(training_round.outputs.items(), key=lambda item: int(item[0])):
        ranking = outputs.get("ranking") if isinstance(outputs, dict) else None
        if ranking:
            steps.append({"iteration": int(key), **ranking})
    return steps


def selection_curves(category_ids: list[int] | None = None) -> list[dict[str, object]]:
    """Per category, the reward models' accuracy on held-out own-sample pairs (the gate's measurement, with
    its 95 % interval) against the expert rankings spent when they were trained, per selection policy.

    One point per reward checkpoint that measured it (``own_accuracy``) and recorded ``rankings_spent``
    (training/stages.py writes both); each policy's points in order of rankings spent, with an SVG chart.
    """
    from gallery.models import Category
    from training.charts import line_chart
    from training.models import RewardModelCheckpoint

    rows = RewardModelCheckpoint.objects.filter(
        metrics__own_accuracy__isnull=False, metrics__rankings_spent__isnull=False
    ).order_by("created_at", "id")
    categories = Category.objects.order_by("position")
    if category_ids is not None:
        rows = rows.filter(category_id__in=category_ids)
        categories = categories.filter(pk__in=category_ids)
    by_category: dict[int, dict[str, list[dict[str, object]]]] = {}
    for row in rows:
        metrics = row.metrics
        if metrics.get("own_accuracy") is None or metrics.get("rankings_spent") is None:
            continue  # JSON null passes the isnull filter above: no own-sample pairs were measured
        by_category.setdefault(row.category_id, {}).setdefault(
            metrics.get("selection_policy", "random"), []
        ).append(
            {
                "rankings": int(metrics["rankings_spent"]),
                "accuracy": float(metrics["own_accuracy"]),
                "low": metrics.get("own_accuracy_ci_low"),
                "high": metrics.get("own_accuracy_ci_high"),
                "pairs": metrics.get("own_pairs"),
                "round": row.training_round_id,
                "iteration": row.iteration,
            }
        )
    out = []
    for category in categories:
        policies = {
            p: sorted(v, key=lambda point: point["rankings"])
            for p, v in by_category.get(category.pk, {}).items()
        }
        chart = line_chart(
            f"{category.name}: own-sample accuracy vs rankings spent",
            {p: [(pt["rankings"], pt["accuracy"]) for pt in v] for p, v in sorted(policies.items())},
            x_label="expert rankings spent",
            y_label="pair accuracy",
        )
        out.append({"category": category, "policies": dict(sorted(policies.items())), "svg": chart})
    return out


def round_objective(training_round: TrainingRound) -> str:
    """ "refl", "dpo" or "raft" (rounds stored before the choice existed were ReFL rounds)."""
    return (training_round.config or {}).get("objective", "refl")


def dpo_curve_rows(training_round: TrainingRound) -> list[dict[str, object]]:
    """Diffusion-DPO per recorded step: the training loss and batch implicit accuracy, and where it was
    measured the loss and implicit reward accuracy on held-out pairs (share of pairs whose implicit
    reward, relative to the frozen reference, prefers the experts' winner; ½ at step 0 by construction)."""
    events = RoundEvent.objects.filter(training_round=training_round, kind=EventKind.METRIC, stage="dpo")
    return [
        {
            "iteration": e.iteration,
            "step": e.step,
            "loss": e.data.get("loss"),
            "implicit_acc": e.data.get("implicit_acc"),
            "heldout_loss": e.data.get("val/loss"),
            "heldout_implicit_acc": e.data.get("val/implicit_acc"),
        }
        for e in events.order_by("iteration", "step", "id")
    ]
