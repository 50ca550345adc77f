"""Research pages: figures (first places, agreement, pairs), exports with a job progress bar, snapshots,
API tokens, and the admins' gold-agreement page. Thin: selectors read, services write."""

from __future__ import annotations

import csv
import io
from collections import defaultdict
from collections.abc import Callable
from functools import wraps
from typing import Any

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.core.files.storage import default_storage
from django.http import FileResponse, Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.html import escape
from django.utils.safestring import mark_safe
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from annotation import selectors_research as research
from annotation.api import export_http_response
from annotation.exporters.charts import Bar, horizontal_bars
from annotation.exporters.filters import ExportFilters, FilterError
from annotation.roles import is_admin, is_researcher
from annotation.services.consensus import consensus_schedule_all
from annotation.services.export import (
    FORMATS,
    ExportError,
    ExportSpec,
    api_token_rotate,
    export_count,
    export_job_create,
    export_problem,
)
from annotation.services.gold import annotator_weights_schedule
from annotation.services.snapshots import EmptySnapshotError, snapshot_create
from gallery.models import Category, Generator
from jobs.models import JobStatus

HTMX_STOP_POLLING = 286


def researcher_page(view: Callable) -> Callable:
    @login_required
    @wraps(view)
    def wrapped(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        if not is_researcher(request.user):
            raise PermissionDenied("Only researchers and admins see research data.")
        return view(request, *args, **kwargs)

    return wrapped


def admin_only_page(view: Callable) -> Callable:
    @login_required
    @wraps(view)
    def wrapped(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        if not is_admin(request.user):
            raise PermissionDenied("Only admins see per-annotator agreement.")
        return view(request, *args, **kwargs)

    return wrapped


# --------------------------------------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------------------------------------

FIGURES: dict[str, Callable[[], list[dict[str, object]]]] = {
    "first-places": research.first_place_shares,
    "agreement": research.agreement_by_category,
    "pairs": research.pair_counts,
}


def _fmt(value: object, digits: int = 3) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


@require_GET
@researcher_page
def research_home(request: HttpRequest) -> HttpResponse:
    firsts = research.first_place_shares()
    agreement = research.agreement_by_category()
    pair_rows = research.pair_counts()
    by_category: dict[str, list[dict[str, object]]] = defaultdict(list)
    for row in firsts:
        by_category[row["category"]].append(row)
    pairs_by_category: dict[str, int] = defaultdict(int)
    for row in pair_rows:
        pairs_by_category[row["category"]] += row["pairs"]
    names = dict(Category.objects.values_list("slug", "name"))
    first_charts = [
        {
            "category": names.get(slug, slug),
            "tasks": rows[0]["tasks"] if rows else 0,
            "svg": mark_safe(  # noqa: S308 - built by horizontal_bars, which escapes every label
                horizontal_bars(
                    f"First places · {names.get(slug, slug)}",
                    [
                        Bar(
                            str(r["generator"]),
                            float(r["share"]),
                            f"{float(r['share']):.0%} ({r['first_places']})",
                        )
                        for r in rows
                    ],
                    max_value=1.0,
                )
            ),
        }
        for slug, rows in by_category.items()
    ]
    agreement_svg = mark_safe(  # noqa: S308 - escaped by horizontal_bars
        horizontal_bars(
            "Kendall's W (mean per task)",
            [Bar(str(r["name"]), float(r["kendall_w"] or 0.0), _fmt(r["kendall_w"])) for r in agreement],
            max_value=1.0,
        )
    )
    pairs_svg = mark_safe(  # noqa: S308 - escaped by horizontal_bars
        horizontal_bars(
            "Image-rank pairs",
            [Bar(str(names.get(s, s)), float(n), str(n)) for s, n in sorted(pairs_by_category.items())],
        )
    )
    return render(
        request,
        "research/home.html",
        {
            "first_charts": first_charts,
            "agreement": agreement,
            "agreement_svg": agreement_svg,
            "pair_rows": pair_rows,
            "pairs_svg": pairs_svg,
        },
    )


@require_GET
@researcher_page
def research_data(request: HttpRequest, name: str, ext: str) -> HttpResponse:
    if name not in FIGURES or ext not in ("csv", "json"):
        raise Http404("unknown figure")
    rows = FIGURES[name]()
    if ext == "json":
        response: HttpResponse = JsonResponse({"figure": name, "rows": rows})
    else:
        buffer = io.StringIO()
        columns = list(rows[0]) if rows else []
        writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        response = HttpResponse(buffer.getvalue(), content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="{name}.{ext}"'
    return response


# --------------------------------------------------------------------------------------------------------
# Exports
# --------------------------------------------------------------------------------------------------------


FORMAT_CHOICES = (
    ("jsonl", "JSONL (pairs: reward-model trainer schema)"),
    ("csv", "CSV"),
    ("parquet", "Parquet"),
    ("hf", "Hugging Face imagefolder, zip with images (pairs; background job)"),
    ("itercomp", "IterComp per-prompt JSON (rankings)"),
    ("imagereward", "ImageReward {id, prompt, generations, ranking} (rankings)"),
)


def _export_form_context(request: HttpRequest, **extra: object) -> dict[str, object]:
    return {
        "categories": Category.objects.order_by("position", "slug"),
        "generators": Generator.objects.order_by("joined_iteration", "name"),
        "formats": FORMATS,
        "format_choices": FORMAT_CHOICES,
        "jobs": research.export_jobs_visible_to(request.user)[:20],
        "values": request.GET,
        **extra,
    }


@require_GET
@researcher_page
def research_export(request: HttpRequest) -> HttpResponse:
    return render(request, "research/export.html", _export_form_context(request))


@require_GET
@researcher_page
def research_export_download(request: HttpRequest) -> HttpResponse:
    try:
        spec = ExportSpec.parse(
            request.GET.get("kind", "pairs"), request.GET.get("format", "jsonl"), request.GET
        )
    except ExportError as exc:
        messages.error(request, str(exc))
        return render(request, "research/export.html", _export_form_context(request), status=400)
    problem = export_problem(spec)
    if problem:
        return render(
            request, "research/export.html", _export_form_context(request, problem=problem), status=409
        )
    response = export_http_response(spec)
    if response is None:
        if spec.format == "hf":
            why = "A Hugging Face export carries the images, so it always runs as a background job"
        else:
            why = f"{spec.format.capitalize()} files above {settings.EXPORT_INLINE_MAX_ROWS} rows are built by a worker"
        messages.info(request, f"{why}: press “Run as background job” (your choices are kept).")
        return redirect(f"{reverse('research-export')}?{request.GET.urlencode()}")
    return response


@require_GET
@researcher_page
def research_export_check(request: HttpRequest) -> HttpResponse:
    """What the export form would produce, shown beside it as the researcher changes it (htmx)."""
    try:
        spec = ExportSpec.parse(
            request.GET.get("kind", "pairs"), request.GET.get("format", "jsonl"), request.GET
        )
    except ExportError as exc:
        return render(request, "research/export.html#check", {"problem": str(exc)})
    problem = export_problem(spec)
    rows = None if problem else export_count(spec)
    return render(request, "research/export.html#check", {"problem": problem, "rows": rows, "spec": spec})


@require_POST
@researcher_page
def research_export_start(request: HttpRequest) -> HttpResponse:
    try:
        spec = ExportSpec.parse(
            request.POST.get("kind", "pairs"), request.POST.get("format", "jsonl"), request.POST
        )
    except ExportError as exc:
        if request.htmx:
            return HttpResponse(f'<p class="error" role="alert">{escape(str(exc))}</p>', status=400)
        messages.error(request, str(exc))
        return redirect("research-export")
    job = export_job_create(requested_by=request.user, spec=spec)
    if request.htmx:
        return render(request, "research/export_job.html#job-progress", {"job": job})
    return redirect("research-export-job", job_id=job.pk)


def _job_or_404(request: HttpRequest, job_id: int):
    job = research.export_job_for(request.user, job_id)
    if job is None:
        raise Http404("no such export job")
    return job


@require_GET
@researcher_page
def research_export_job(request: HttpRequest, job_id: int) -> HttpResponse:
    job = _job_or_404(request, job_id)
    if request.htmx:
        response = render(request, "research/export_job.html#job-progress", {"job": job})
        if job.status in (JobStatus.DONE, JobStatus.FAILED):
            response.status_code = HTMX_STOP_POLLING
        return response
    return render(request, "research/export_job.html", {"job": job})


@require_GET
@researcher_page
def research_export_job_download(request: HttpRequest, job_id: int) -> HttpResponse:
    job = _job_or_404(request, job_id)
    if job.status != JobStatus.DONE or not job.file:
        raise Http404("this export has no file yet")
    return FileResponse(
        default_storage.open(job.file.name, "rb"),
        as_attachment=True,
        filename=job.file.name.rsplit("/", 1)[-1],
    )


# --------------------------------------------------------------------------------------------------------
# Snapshots and tokens
# --------------------------------------------------------------------------------------------------------


@require_http_methods(["GET", "POST"])
@researcher_page
def research_snapshots(request: HttpRequest) -> HttpResponse:
    if request.method == "POST":
        try:
            filters = ExportFilters.from_mapping(request.POST)
            snapshot, created = snapshot_create(filters=filters, created_by=request.user)
        except (FilterError, EmptySnapshotError) as exc:
            messages.error(request, str(exc))
        else:
            if created:
                messages.success(
                    request, f"Dataset v{snapshot.version} frozen ({snapshot.counts['pairs']} pairs)."
                )
            else:
                messages.info(
                    request,
                    f"Nothing changed since v{snapshot.version}; that snapshot already holds these pairs.",
                )
        return redirect("research-snapshots")
    return render(
        request,
        "research/snapshots.html",
        {"snapshots": research.snapshots_list(), "categories": Category.objects.order_by("position", "slug")},
    )


@require_GET
@researcher_page
def research_snapshot_download(request: HttpRequest, snapshot_id: int) -> HttpResponse:
    snapshot = research.snapshots_list().filter(pk=snapshot_id).first()
    if snapshot is None:
        raise Http404("no such snapshot")
    return FileResponse(
        default_storage.open(snapshot.file.name, "rb"),
        as_attachment=True,
        filename=f"dataset-v{snapshot.version}.parquet",
    )


@require_http_methods(["GET", "POST"])
@researcher_page
def research_token(request: HttpRequest) -> HttpResponse:
    from rest_framework.authtoken.models import Token

    key = None
    if request.method == "POST":
        key = api_token_rotate(user=request.user).key
    has_token = key is not None or Token.objects.filter(user=request.user).exists()
    return render(request, "research/token.html", {"key": key, "has_token": has_token})


# --------------------------------------------------------------------------------------------------------
# Gold agreement (admins)
# --------------------------------------------------------------------------------------------------------


@require_GET
@admin_only_page
def research_gold(request: HttpRequest) -> HttpResponse:
    return render(
        request,
        "research/gold.html",
        {"rows": research.annotator_agreement(), "gold_tasks": research.gold_tasks_count()},
    )


@require_POST
@admin_only_page
def research_derive_weights(request: HttpRequest) -> HttpResponse:
    annotator_weights_schedule()
    messages.success(request, "Deriving annotator weights from agreement; reload in a moment to see them.")
    return redirect("research-gold")


@require_POST
@admin_only_page
def research_recompute_all(request: HttpRequest) -> HttpResponse:
    n = consensus_schedule_all()
    messages.success(request, f"Recomputing the consensus of {n} tasks in the background.")
    return redirect("research-gold")
