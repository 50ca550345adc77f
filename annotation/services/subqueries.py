"""ORM expressions the claim and task-status writes share."""

from __future__ import annotations

from typing import Any

from django.db.models import Count, IntegerField, Subquery
from django.db.models.functions import Coalesce


def count_subquery(qs: Any) -> Coalesce:
    """How many rows ``qs`` (a ``.values(<group>)`` queryset filtered on an OuterRef) holds, 0 for none."""
    counted = qs.annotate(c=Count("pk")).values("c")
    return Coalesce(Subquery(counted, output_field=IntegerField()), 0)
