"""Admin pages for work that was CLI-only: importing T2I-CompBench prompt files and galleries, and creating
ranking tasks (with the number of rankings K each needs) from the browser.

Thin: the file's category comes from its name (as ``manage import_prompts`` does) or the admin's choice, and
the gallery's own import service does the writing; the page reports each file line by line.
"""

from __future__ import annotations

from dataclasses import dataclass

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_http_methods

from annotation.services.gallery_uploads import UploadRefused, gallery_upload_import
from annotation.services.tasks import ranking_tasks_create_for_complete_galleries
from annotation.views import admin_page
from gallery.models import Category
from gallery.promptfiles import FILE_STEMS, UnknownCategory, category_from_file_name, resolve_category
from gallery.selectors import GALLERY_SIZE
from gallery.services.imports import GalleryImportError
from gallery.services.prompts import PromptFileRefused, PromptImportResult, prompts_import_texts
from gallery.services.prompts import category_get as gallery_category_get
from gallery.sources import FORMATS
from gallery.splits import SPLITS

MAX_PROMPT_FILE_BYTES = 5 * 1024 * 1024


@dataclass(frozen=True)
class FileReport:
    name: str
    result: PromptImportResult | None = None
    error: str = ""


def _import_one(upload, *, category: str, source: str, licence: str, split: str | None) -> FileReport:
    name = upload.name
    if upload.size > MAX_PROMPT_FILE_BYTES:
        return FileReport(name, error=f"larger than {MAX_PROMPT_FILE_BYTES // (1024 * 1024)} MB; split it")
    try:
        key = resolve_category(category) if category else category_from_file_name(name)
        # utf-8-sig: files saved on Windows start with a BOM that would otherwise stick to the first prompt.
        lines = upload.read().decode("utf-8-sig").splitlines()
        parent, sub = gallery_category_get(key)
        result = prompts_import_texts(
            texts=lines, category=parent, subcategory=sub, source=source, licence=licence, split=split
        )
    except (UnknownCategory, PromptFileRefused) as exc:
        # The prompt rules refuse the whole file and name each refused line; nothing of it was written.
        return FileReport(name, error=str(exc))
    except UnicodeDecodeError:
        return FileReport(name, error="not UTF-8 text: one prompt per line is expected")
    return FileReport(name, result=result)


@require_http_methods(["GET", "POST"])
@admin_page
def prompts_import(request: HttpRequest) -> HttpResponse:
    reports: list[FileReport] = []
    status = 200
    if request.method == "POST":
        uploads = request.FILES.getlist("files")
        split = request.POST.get("split", "") or None
        if split is not None and split not in SPLITS:
            reports.append(FileReport("—", error=f"split must be one of {', '.join(SPLITS)}"))
            uploads = []
        elif not uploads:
            reports.append(FileReport("—", error="choose at least one prompt file"))
        for upload in uploads:
            reports.append(
                _import_one(
                    upload,
                    category=request.POST.get("category", ""),
                    source=request.POST.get("source", "").strip() or "upload",
                    licence=request.POST.get("licence", "").strip(),
                    split=split,
                )
            )
        if any(r.error for r in reports):
            status = 400
    return render(
        request,
        "annotation/prompts_import.html",
        {"reports": reports, "stems": sorted(FILE_STEMS), "splits": SPLITS, "values": request.POST},
        status=status,
    )


def _bounded_int(value: str | None, *, default: int, low: int, high: int) -> int | None:
    try:
        number = int(value) if value not in (None, "") else default
    except ValueError:
        return None
    return number if low <= number <= high else None


@require_http_methods(["GET", "POST"])
@admin_page
def tasks_create(request: HttpRequest) -> HttpResponse:
    """A ranking task for every prompt whose gallery is complete, each needing K rankings (safe to re-run)."""
    context: dict[str, object] = {
        "categories": Category.objects.order_by("position", "slug"),
        "values": request.POST,
        "gallery_size": GALLERY_SIZE,
    }
    status = 200
    if request.method == "POST":
        k = _bounded_int(request.POST.get("rankings"), default=3, low=1, high=20)
        minimum = _bounded_int(request.POST.get("min_generators"), default=GALLERY_SIZE, low=2, high=50)
        slug = request.POST.get("category", "")
        category = Category.objects.filter(slug=slug).first() if slug else None
        if k is None or minimum is None or (slug and category is None):
            context["error"] = "K must be 1–20, the generators 2–50, and the category one of the list."
            status = 400
        else:
            context["report"] = ranking_tasks_create_for_complete_galleries(
                required_rankings=k, category=category, min_generators=minimum
            )
            context["k"] = k
    return render(request, "annotation/tasks_create.html", context, status=status)


@require_http_methods(["GET", "POST"])
@admin_page
def gallery_upload(request: HttpRequest) -> HttpResponse:
    """Upload a gallery (zip or manifest with its images) and read the per-line report.

    Synchronous on purpose: the import of a few thousand rows takes seconds (the browser shows the upload's
    progress meanwhile); an upload over the size limits is refused with a pointer to the CLI.
    """
    context: dict[str, object] = {"formats": FORMATS, "values": request.POST, "stems": sorted(FILE_STEMS)}
    status = 200
    if request.method == "POST":
        iteration = _bounded_int(request.POST.get("iteration"), default=0, low=0, high=1000)
        try:
            if iteration is None:
                raise UploadRefused("iteration must be 0–1000")
            context["result"] = gallery_upload_import(
                uploads=request.FILES.getlist("files"),
                format=request.POST.get("format", ""),
                category=request.POST.get("category", "").strip() or None,
                generator=request.POST.get("generator", "").strip() or None,
                annotator=request.POST.get("annotator", "").strip() or None,
                source=request.POST.get("source", "").strip() or None,
                iteration=iteration,
            )
        except (UploadRefused, GalleryImportError) as exc:
            context["error"] = str(exc)
            status = 400
    template = "annotation/gallery_upload.html"
    if request.headers.get("HX-Request"):
        template += "#report"
    return render(request, template, context, status=status)
