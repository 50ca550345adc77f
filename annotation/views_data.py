"""The admins' data browser: tasks, rankings and annotators with filters and pagination (django-filter and
django-tables2, server-rendered), and one annotator's history. Thin: selectors read, the filter sets and
tables shape the page. htmx swaps only the table when a filter changes or a page link is followed; without
JavaScript the same links and form load the whole page."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, render
from django.views.decorators.http import require_GET
from django_tables2 import RequestConfig

from annotation import selectors_data
from annotation.filters import AnnotatorFilter, RankingFilter, TaskFilter
from annotation.tables import AnnotatorTable, RankingTable, TaskTable
from annotation.views import admin_page

PER_PAGE = 25


def _page(
    request: HttpRequest, *, title: str, section: str, filterset, table_class, intro: str
) -> HttpResponse:
    table = table_class(filterset.qs)
    RequestConfig(request, paginate={"per_page": PER_PAGE}).configure(table)
    context = {"title": title, "section": section, "filter": filterset, "table": table, "intro": intro}
    template = "annotation/data_browser.html"
    if request.headers.get("HX-Request") and not request.headers.get("HX-Boosted"):
        template += "#results"
    return render(
        request, template, context, status=400 if filterset.is_bound and not filterset.is_valid() else 200
    )


@require_GET
@admin_page
def data_tasks(request: HttpRequest) -> HttpResponse:
    return _page(
        request,
        title="Tasks",
        section="tasks",
        filterset=TaskFilter(request.GET or None, queryset=selectors_data.tasks_for_browser()),
        table_class=TaskTable,
        intro="Every ranking task with its rankings so far (of the K it needs) and the experts' agreement "
        "(Kendall's W of the consensus). A task's number lists its rankings.",
    )


@require_GET
@admin_page
def data_rankings(request: HttpRequest) -> HttpResponse:
    return _page(
        request,
        title="Rankings",
        section="rankings",
        filterset=RankingFilter(request.GET or None, queryset=selectors_data.rankings_for_browser()),
        table_class=RankingTable,
        intro="Every stored ranking, from the browser or imported, with its task's agreement.",
    )


@require_GET
@admin_page
def data_annotators(request: HttpRequest) -> HttpResponse:
    return _page(
        request,
        title="Annotators",
        section="annotators",
        filterset=AnnotatorFilter(request.GET or None, queryset=selectors_data.annotators_for_browser()),
        table_class=AnnotatorTable,
        intro="Everyone with a role, their consensus weight and how much they have ranked.",
    )


@require_GET
@admin_page
def data_annotator(request: HttpRequest, user_id: int) -> HttpResponse:
    """One annotator's history: every ranking they stored, newest first, filterable like the rankings list."""
    person = get_object_or_404(selectors_data.annotators_for_browser(), pk=user_id)
    filterset = RankingFilter(
        request.GET or None, queryset=selectors_data.rankings_for_browser().filter(annotator=person)
    )
    filterset.filters.pop("annotator", None)
    table = RankingTable(filterset.qs, exclude=("annotator",))
    RequestConfig(request, paginate={"per_page": PER_PAGE}).configure(table)
    context = {
        "title": f"{person.username}'s history",
        "section": "annotators",
        "filter": filterset,
        "table": table,
        "person": person,
        "intro": "",
    }
    template = "annotation/data_browser.html"
    if request.headers.get("HX-Request") and not request.headers.get("HX-Boosted"):
        template += "#results"
    return render(
        request, template, context, status=400 if filterset.is_bound and not filterset.is_valid() else 200
    )
