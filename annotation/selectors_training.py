"""Which image-rank pairs a training iteration learns from.

Per prompt: the pairs of its most recent human consensus, plus model-source pairs newer than that
consensus. A pushed task (gallery images + the fine-tuned model's samples) that humans have ranked
therefore replaces every older pair of its prompt, model-source ones included.
"""

from __future__ import annotations

from django.db.models import F, Max, OuterRef, Q, QuerySet, Subquery
from django.db.models.functions import Coalesce

from annotation.models import PairSource, PreferencePair


def pairs_for_training(*, category_slug: str, upto_iteration: int) -> QuerySet[PreferencePair]:
    latest_human = (
        PreferencePair.objects.filter(
            prompt_id=OuterRef("prompt_id"), source=PairSource.HUMAN, iteration__lte=upto_iteration
        )
        .values("prompt_id")
        .annotate(latest=Max("iteration"))
        .values("latest")
    )
    return (
        PreferencePair.objects.filter(category__slug=category_slug, iteration__lte=upto_iteration)
        .annotate(latest_human=Coalesce(Subquery(latest_human), -1))
        .filter(
            Q(source=PairSource.HUMAN, iteration=F("latest_human"))
            | Q(source=PairSource.MODEL, iteration__gt=F("latest_human"))
        )
    )
