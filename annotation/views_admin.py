"""Admin pages for work that was CLI-only: importing T2I-CompBench prompt files from the browser.

Thin: the file's category comes from its name (as ``manage import_prompts`` does) or the admin's choice, and
the gallery's own import service does the writing; the page reports each file line by line.
"""

from __future__ import annotations

from dataclasses import dataclass

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_http_methods

from annotation.views import admin_page
from gallery.promptfiles import FILE_STEMS, UnknownCategory, category_from_file_name, resolve_category
from gallery.services.prompts import PromptImportResult, prompts_import_texts
from gallery.services.prompts import category_get as gallery_category_get

MAX_PROMPT_FILE_BYTES = 5 * 1024 * 1024


@dataclass(frozen=True)
class FileReport:
    name: str
    result: PromptImportResult | None = None
    error: str = ""


def _import_one(upload, *, category: str, source: str, licence: str) -> FileReport:
    name = upload.name
    if upload.size > MAX_PROMPT_FILE_BYTES:
        return FileReport(name, error=f"larger than {MAX_PROMPT_FILE_BYTES // (1024 * 1024)} MB; split it")
    try:
        key = resolve_category(category) if category else category_from_file_name(name)
        # utf-8-sig: files saved on Windows start with a BOM that would otherwise stick to the first prompt.
        lines = upload.read().decode("utf-8-sig").splitlines()
        parent, sub = gallery_category_get(key)
        result = prompts_import_texts(
            texts=lines, category=parent, subcategory=sub, source=source, licence=licence
        )
    except UnknownCategory as exc:
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
        if not uploads:
            reports.append(FileReport("—", error="choose at least one prompt file"))
        for upload in uploads:
            reports.append(
                _import_one(
                    upload,
                    category=request.POST.get("category", ""),
                    source=request.POST.get("source", "").strip() or "upload",
                    licence=request.POST.get("licence", "").strip(),
                )
            )
        if any(r.error for r in reports):
            status = 400
    return render(
        request,
        "annotation/prompts_import.html",
        {"reports": reports, "stems": sorted(FILE_STEMS), "values": request.POST},
        status=status,
    )
