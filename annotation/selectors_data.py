"""Reads of the admins' data browser: tasks, rankings and annotators with what their tables show."""

from __future__ import annotations

from django.contrib.auth import get_user_model
from django.db.models import Count, F, Max, Q, QuerySet

from annotation.models import Ranking, RankingTask


def tasks_for_browser() -> QuerySet[RankingTask]:
    return (
        RankingTask.objects.select_related("prompt__category", "consensus")
        .annotate(n_rankings=Count("rankings", distinct=True), agreement=F("consensus__kendall_w"))
        .order_by("-id")
    )


def rankings_for_browser() -> QuerySet[Ranking]:
    return (
        Ranking.objects.select_related("task__prompt__category", "annotator", "task__consensus")
        .annotate(agreement=F("task__consensus__kendall_w"))
        .order_by("-id")
    )


def annotators_for_browser() -> QuerySet:
    """Everyone who has a role (annotators, admins and researchers may all rank) with their ranking counts."""
    return (
        get_user_model()
        .objects.filter(profile__isnull=False)
        .select_related("profile")
        .annotate(
            n_rankings=Count("rankings", distinct=True),
            n_imported=Count("rankings", filter=~Q(rankings__source="browser"), distinct=True),
            last_ranked=Max("rankings__created_at"),
            role=F("profile__role"),
            weight=F("profile__weight"),
        )
        .order_by("username")
    )
