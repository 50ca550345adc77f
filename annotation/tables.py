"""django-tables2 tables of the admins' data browser: sortable columns, pagination, links between them."""

from __future__ import annotations

import django_tables2 as tables
from django.urls import reverse
from django.utils.html import format_html

from annotation.models import Ranking, RankingTask

ATTRS = {"class": "table data-table"}


def _agreement(value) -> str:
    return "—" if value is None else f"{value:.2f}"


class TaskTable(tables.Table):
    id = tables.Column(verbose_name="Task")
    prompt = tables.Column(
        accessor="prompt__text",
        verbose_name="Prompt",
        order_by="prompt__text",
        attrs={"td": {"class": "prompt"}},
    )
    category = tables.Column(accessor="prompt__category__name", verbose_name="Category")
    status = tables.Column()
    rankings = tables.Column(accessor="n_rankings", verbose_name="Rankings / K", order_by="n_rankings")
    agreement = tables.Column(verbose_name="Agreement (W)", empty_values=())
    source = tables.Column(accessor="prompt__source", verbose_name="Source")
    iteration = tables.Column(verbose_name="Iteration")
    created_at = tables.DateTimeColumn(verbose_name="Created", format="Y-m-d H:i")

    class Meta:
        model = RankingTask
        fields = (
            "id",
            "prompt",
            "category",
            "status",
            "rankings",
            "agreement",
            "source",
            "iteration",
            "created_at",
        )
        attrs = ATTRS
        row_attrs = {"data-task": lambda record: record.pk}

    def render_id(self, value):
        return format_html('<a href="{}?task={}">#{}</a>', reverse("data-rankings"), value, value)

    def render_rankings(self, value, record):
        gold = " · gold" if record.is_gold else ""
        return f"{value} / {record.required_rankings}{gold}"

    def render_agreement(self, value):
        return _agreement(value)


class RankingTable(tables.Table):
    id = tables.Column(verbose_name="Ranking")
    task = tables.Column(accessor="task_id", verbose_name="Task")
    prompt = tables.Column(
        accessor="task__prompt__text",
        verbose_name="Prompt",
        order_by="task__prompt__text",
        attrs={"td": {"class": "prompt"}},
    )
    category = tables.Column(accessor="task__prompt__category__name", verbose_name="Category")
    annotator = tables.Column(accessor="annotator__username", verbose_name="Annotator")
    source = tables.Column(verbose_name="Source")
    agreement = tables.Column(verbose_name="Task agreement (W)", empty_values=())
    seconds = tables.Column(accessor="time_spent_ms", verbose_name="Time", order_by="time_spent_ms")
    created_at = tables.DateTimeColumn(verbose_name="Ranked", format="Y-m-d H:i")

    class Meta:
        model = Ranking
        fields = (
            "id",
            "task",
            "prompt",
            "category",
            "annotator",
            "source",
            "agreement",
            "seconds",
            "created_at",
        )
        attrs = ATTRS
        row_attrs = {"data-ranking": lambda record: record.pk}

    def render_task(self, value):
        return format_html('<a href="{}?task={}">#{}</a>', reverse("data-rankings"), value, value)

    def render_annotator(self, value, record):
        return format_html(
            '<a href="{}">{}</a>', reverse("data-annotator", args=[record.annotator_id]), value
        )

    def render_agreement(self, value):
        return _agreement(value)

    def render_seconds(self, value):
        return f"{value / 1000:.1f} s" if value else "—"


class AnnotatorTable(tables.Table):
    username = tables.Column(verbose_name="Username")
    role = tables.Column(verbose_name="Role")
    weight = tables.Column(verbose_name="Weight")
    n_rankings = tables.Column(verbose_name="Rankings")
    n_imported = tables.Column(verbose_name="of them imported")
    last_ranked = tables.DateTimeColumn(verbose_name="Last ranking", format="Y-m-d H:i", default="never")

    class Meta:
        attrs = ATTRS
        row_attrs = {"data-annotator": lambda record: record.username}
        order_by = ("username",)

    def render_username(self, value, record):
        return format_html('<a href="{}">{}</a>', reverse("data-annotator", args=[record.pk]), value)

    def render_weight(self, value):
        return f"{value:.2f}"
