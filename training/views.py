from __future__ import annotations

import csv
import io

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.core.files.storage import default_storage
from django.http import FileResponse, Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from annotation.roles import is_admin, is_researcher
from training import selectors
from training.forms import RoundForm
from training.models import DiffusionCheckpoint, RewardModelCheckpoint, TrainingRound
from training.services import (
    RoundError,
    round_cancel,
    round_continue_without_experts,
    round_create,
    round_resume,
)

HTMX_STOP_POLLING = 286


def _require(check, request: HttpRequest, what: str) -> None:
    if not check(request.user):
        raise PermissionDenied(what)


@login_required
@require_GET
def round_list(request: HttpRequest) -> HttpResponse:
    _require(is_researcher, request, "Only admins and researchers can see training rounds.")
    return render(request, "training/round_list.html", {"rounds": selectors.round_list()[:100]})


@login_required
@require_http_methods(["GET", "POST"])
def round_new(request: HttpRequest) -> HttpResponse:
    _require(is_admin, request, "Only admins can start training rounds.")
    form = RoundForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            training_round = round_create(
                created_by=request.user,
                categories=list(form.cleaned_data["categories"]),
                base_generator=form.cleaned_data["base_generator"],
                iterations=form.cleaned_data["iterations"],
                config=form.cleaned_data["config"].to_dict(),
            )
        except RoundError as exc:
            form.add_error(None, str(exc))
        else:
            messages.success(request, f"Round {training_round.pk} queued.")
            return redirect("training:round-detail", pk=training_round.pk)
    return render(request, "training/round_new.html", {"form": form}, status=400 if form.errors else 200)


@login_required
@require_GET
def selection_curves(request: HttpRequest) -> HttpResponse:
    """Reward-model accuracy on own-sample pairs against expert rankings spent, per category and policy;
    /quality/ loads its partial with htmx."""
    _require(is_researcher, request, "Only admins and researchers can see training results.")
    context = {"curves": selectors.selection_curves()}
    template = "training/selection_curves.html#curves" if request.htmx else "training/selection_curves.html"
    return render(request, template, context)


def _detail_context(training_round: TrainingRound, *, figures: bool = False) -> dict[str, object]:
    context = {
        "round": training_round,
        "progress": selectors.round_progress(training_round),
        "logs": selectors.round_recent_logs(training_round),
        "awaiting": selectors.round_awaiting(training_round),
        "checkpoint_count": selectors.round_checkpoint_count(training_round),
        "ranking_steps": selectors.round_ranking_steps(training_round),
    }
    if figures:
        context["figures"] = _figures(training_round)
        context["curves"] = selectors.selection_curves(
            list(training_round.categories.values_list("pk", flat=True))
        )
        context["reward_checkpoints"] = training_round.reward_checkpoints.select_related("category").order_by(
            "iteration"
        )
        context["diffusion_checkpoints"] = training_round.diffusion_checkpoints.select_related(
            "generator"
        ).order_by("iteration")
    return context


@login_required
@require_GET
def round_detail(request: HttpRequest, pk: int) -> HttpResponse:
    _require(is_researcher, request, "Only admins and researchers can see training rounds.")
    training_round = get_object_or_404(TrainingRound, pk=pk)
    return render(request, "training/round_detail.html", _detail_context(training_round, figures=True))


@login_required
@require_GET
def round_progress(request: HttpRequest, pk: int) -> HttpResponse:
    _require(is_researcher, request, "Only admins and researchers can see training rounds.")
    training_round = get_object_or_404(TrainingRound, pk=pk)
    if not request.htmx:
        return render(request, "training/round_detail.html", _detail_context(training_round, figures=True))
    # The lineage table and the charts change only when a checkpoint is recorded (or the round ends): the
    # poll says how many checkpoints its page shows, and only then are they sent too (out-of-band swaps).
    seen = request.GET.get("checkpoints", "")
    count = selectors.round_checkpoint_count(training_round)
    terminal = selectors.round_is_terminal(training_round)
    refresh = seen != str(count) or terminal
    context = _detail_context(training_round, figures=refresh)
    context["refresh_results"] = refresh
    context["polled"] = True
    response = render(request, "training/round_detail.html#progress", context)
    if context["progress"]["terminal"]:
        response.status_code = HTMX_STOP_POLLING
    return response


@login_required
@require_POST
def round_cancel_view(request: HttpRequest, pk: int) -> HttpResponse:
    _require(is_admin, request, "Only admins can cancel training rounds.")
    try:
        round_cancel(round_id=get_object_or_404(TrainingRound, pk=pk).pk)
    except RoundError as exc:
        messages.error(request, str(exc))
    return redirect("training:round-detail", pk=pk)


@login_required
@require_POST
def round_resume_view(request: HttpRequest, pk: int) -> HttpResponse:
    _require(is_admin, request, "Only admins can resume training rounds.")
    try:
        round_resume(round_id=get_object_or_404(TrainingRound, pk=pk).pk)
    except RoundError as exc:
        messages.error(request, str(exc))
    return redirect("training:round-detail", pk=pk)


@login_required
@require_POST
def round_continue_view(request: HttpRequest, pk: int) -> HttpResponse:
    """Experts are not available: continue with the reward model's placement (recorded in the lineage)."""
    _require(is_admin, request, "Only admins can continue a round without expert rankings.")
    try:
        round_continue_without_experts(
            round_id=get_object_or_404(TrainingRound, pk=pk).pk, admin=request.user
        )
    except RoundError as exc:
        messages.error(request, str(exc))
    else:
        messages.success(request, "Continued with the reward model's placement; recorded in the lineage.")
    return redirect("training:round-detail", pk=pk)


FIGURES = {
    "reward-accuracy": selectors.reward_accuracy_rows,
    "hacking-signal": selectors.guard_curve_rows,
    "iteration-scores": selectors.iteration_score_rows,
    "win-share": selectors.win_share_rows,
    "dpo-loss": selectors.dpo_curve_rows,
    "dpo-implicit-accuracy": selectors.dpo_curve_rows,
}


def _figures(training_round: TrainingRound) -> list[dict[str, str]]:
    from training.charts import line_chart

    accuracy = selectors.reward_accuracy_rows(training_round)
    by_category: dict[str, list[tuple[float, float]]] = {}
    for row in accuracy:
        if row["val_accuracy"] is not None:
            # Iterations are numbered from 1 on the page (progress, lineage); the chart says the same.
            by_category.setdefault(row["category"], []).append((row["iteration"] + 1, row["val_accuracy"]))
    guard = selectors.guard_curve_rows(training_round)
    signal: dict[str, list[tuple[float, float]]] = {}
    markers = []
    for iteration in sorted({row["iteration"] for row in guard}):
        points = [row for row in guard if row["iteration"] == iteration]
        signal[f"optimised reward (it {iteration + 1})"] = [(r["step"], r["reward"]) for r in points]
        signal[f"held-out (it {iteration + 1})"] = [(r["step"], r["heldout"]) for r in points]
    for stop in selectors.guard_stops(training_round):
        if stop["best_step"] is not None:
            markers.append((stop["best_step"], f"kept (it {stop['iteration'] + 1}, {stop['stop_reason']})"))
    scores = selectors.iteration_score_rows(training_round)
    wins = selectors.win_share_rows(training_round)
    reward_accuracy = {
        "name": "reward-accuracy",
        "svg": line_chart(
            "Reward models: held-out pair accuracy", by_category, x_label="iteration", y_label="accuracy"
        ),
    }
    win_share = {
        "name": "win-share",
        "svg": line_chart(
            "Newest base model's share of first places in human rankings",
            {"win share": [(r["iteration"], r["win_share"]) for r in wins if r["win_share"] is not None]},
            x_label="iteration",
            y_label="share",
        ),
    }
    objective = selectors.round_objective(training_round)
    if objective == "dpo":
        # No reward is optimised, so there is no hacking signal or guard: the DPO loss and the implicit
        # reward accuracy on held-out pairs show what fine-tuning learned.
        return [*_dpo_figures(training_round), reward_accuracy, win_share]
    return [
        reward_accuracy,
        {
            "name": "hacking-signal",
            "svg": line_chart(
                "Reward hacking signal: optimised vs held-out",
                signal,
                # Reward-ranked fine-tuning has the same guard; its steps are denoising-loss steps.
                x_label="ReFL step" if objective == "refl" else "fine-tuning step",
                y_label="score",
                markers=markers,
            ),
        },
        {
            "name": "iteration-scores",
            "svg": line_chart(
                "Held-out score per iteration (oracle in the synthetic world)",
                {
                    "held-out": [
                        (r["iteration"], r["heldout_kept"]) for r in scores if r["heldout_kept"] is not None
                    ],
                    "reward": [
                        (r["iteration"], r["reward_kept"]) for r in scores if r["reward_kept"] is not None
                    ],
                },
                x_label="iteration",
                y_label="score",
            ),
        },
        win_share,
    ]


def _dpo_figures(training_round: TrainingRound) -> list[dict[str, str]]:
    from training.charts import line_chart

    rows = selectors.dpo_curve_rows(training_round)
    loss: dict[str, list[tuple[float, float]]] = {}
    accuracy: dict[str, list[tuple[float, float]]] = {}
    for row in rows:
        it = row["iteration"] + 1
        if row["loss"] is not None:
            loss.setdefault(f"training loss (it {it})", []).append((row["step"], row["loss"]))
        if row["heldout_loss"] is not None:
            loss.setdefault(f"held-out loss (it {it})", []).append((row["step"], row["heldout_loss"]))
        if row["heldout_implicit_acc"] is not None:
            accuracy.setdefault(f"held-out pairs (it {it})", []).append(
                (row["step"], row["heldout_implicit_acc"])
            )
    return [
        {
            "name": "dpo-loss",
            "svg": line_chart("Diffusion-DPO loss", loss, x_label="DPO step", y_label="loss"),
        },
        {
            "name": "dpo-implicit-accuracy",
            "svg": line_chart(
                "Diffusion-DPO: implicit reward accuracy on held-out expert pairs",
                accuracy,
                x_label="DPO step",
                y_label="accuracy",
            ),
        },
    ]


@login_required
@require_GET
def round_figure_data(request: HttpRequest, pk: int, name: str, fmt: str) -> HttpResponse:
    _require(is_researcher, request, "Only admins and researchers can see training rounds.")
    training_round = get_object_or_404(TrainingRound, pk=pk)
    if name not in FIGURES:
        raise Http404("unknown figure")
    rows = FIGURES[name](training_round)
    if fmt == "json":
        return JsonResponse({"figure": name, "round": pk, "rows": rows})
    buffer = io.StringIO()
    fields = list(rows[0]) if rows else []
    writer = csv.DictWriter(buffer, fieldnames=fields)
    writer.writeheader()
    writer.writerows(rows)
    response = HttpResponse(buffer.getvalue(), content_type="text/csv")
    response["Content-Disposition"] = f'attachment; filename="round{pk}-{name}.csv"'
    return response


@login_required
@require_GET
def checkpoint_download(request: HttpRequest, kind: str, pk: int) -> FileResponse:
    _require(is_researcher, request, "Only admins and researchers can download checkpoints.")
    model = {"reward": RewardModelCheckpoint, "diffusion": DiffusionCheckpoint}.get(kind)
    if model is None:
        raise Http404("unknown checkpoint kind")
    checkpoint = get_object_or_404(model, pk=pk)
    handle = default_storage.open(checkpoint.file.name, "rb")
    return FileResponse(
        handle, as_attachment=True, filename=f"{kind}-checkpoint-{pk}-{checkpoint.sha256[:12]}.tar"
    )
