"""django-filter filter sets of the admins' data browser (category, status, agreement, annotator, source)."""

from __future__ import annotations

import django_filters
from django.contrib.auth import get_user_model

from annotation.models import Ranking, RankingTask, Role, TaskStatus
from gallery.models import Category


def _categories(request):
    return Category.objects.order_by("position", "slug")


class TaskFilter(django_filters.FilterSet):
    category = django_filters.ModelChoiceFilter(
        field_name="prompt__category",
        to_field_name="slug",
        queryset=_categories,
        empty_label="every category",
    )
    status = django_filters.ChoiceFilter(choices=TaskStatus.choices, empty_label="any status")
    min_agreement = django_filters.NumberFilter(
        field_name="agreement", lookup_expr="gte", label="Agreement ≥ (W)"
    )
    max_agreement = django_filters.NumberFilter(
        field_name="agreement", lookup_expr="lte", label="Agreement ≤ (W)"
    )
    source = django_filters.CharFilter(field_name="prompt__source", label="Prompt source")
    annotator = django_filters.CharFilter(
        field_name="rankings__annotator__username", label="Ranked by (username)", distinct=True
    )
    q = django_filters.CharFilter(field_name="prompt__text", lookup_expr="icontains", label="Prompt contains")

    class Meta:
        model = RankingTask
        fields = ["category", "status", "min_agreement", "max_agreement", "source", "annotator", "q"]


class RankingFilter(django_filters.FilterSet):
    category = django_filters.ModelChoiceFilter(
        field_name="task__prompt__category",
        to_field_name="slug",
        queryset=_categories,
        empty_label="every category",
    )
    status = django_filters.ChoiceFilter(
        field_name="task__status", choices=TaskStatus.choices, empty_label="any status"
    )
    min_agreement = django_filters.NumberFilter(
        field_name="agreement", lookup_expr="gte", label="Agreement ≥ (W)"
    )
    max_agreement = django_filters.NumberFilter(
        field_name="agreement", lookup_expr="lte", label="Agreement ≤ (W)"
    )
    annotator = django_filters.CharFilter(field_name="annotator__username", label="Annotator (username)")
    source = django_filters.CharFilter(field_name="source", label="Ranking source (browser, import…)")
    task = django_filters.NumberFilter(field_name="task_id", label="Task id")

    class Meta:
        model = Ranking
        fields = ["category", "status", "min_agreement", "max_agreement", "annotator", "source", "task"]


class AnnotatorFilter(django_filters.FilterSet):
    role = django_filters.ChoiceFilter(
        field_name="profile__role", choices=Role.choices, empty_label="any role"
    )
    username = django_filters.CharFilter(
        field_name="username", lookup_expr="icontains", label="Username contains"
    )
    category = django_filters.ModelChoiceFilter(
        field_name="rankings__task__prompt__category",
        to_field_name="slug",
        queryset=_categories,
        empty_label="every category",
        label="Ranked in",
        distinct=True,
    )

    class Meta:
        model = get_user_model()
        fields = ["role", "username", "category"]
