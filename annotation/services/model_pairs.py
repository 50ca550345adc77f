"""Model-source pairs: the reward models place new samples into a prompt's human consensus."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from django.db import transaction

from annotation.models import ConsensusRanking, PairSource, PreferencePair
from gallery.models import Image, Prompt
from rankmath.pairs import insert_by_score, pairs_from_ordering


@transaction.atomic
def model_pairs_replace(
    *,
    prompt: Prompt,
    consensus: ConsensusRanking,
    new_images: Sequence[Image],
    scores: Mapping[int, float],
    iteration: int,
) -> list[list[int]]:
    """Insert `new_images` into the consensus by reward score, keeping the human order, and store the
    pairs that involve a new image as model-source pairs of `iteration` (replacing earlier ones).

    `scores` maps image id → reward score for the consensus images and the new ones. Returns the
    extended ordering.
    """
    human = [list(group) for group in consensus.ordering]
    human_ids = {item for group in human for item in group}
    new_ids = [image.pk for image in new_images]
    if human_ids & set(new_ids):
        raise ValueError("a new sample is already part of the human ranking")
    missing = [i for i in [*human_ids, *new_ids] if i not in scores]
    if missing:
        raise ValueError(f"no reward score for images {sorted(missing)}")
    extended = insert_by_score(human, {i: scores[i] for i in human_ids}, {i: scores[i] for i in new_ids})
    new_set = set(new_ids)
    PreferencePair.objects.filter(prompt=prompt, source=PairSource.MODEL, iteration=iteration).delete()
    PreferencePair.objects.bulk_create(
        PreferencePair(
            prompt=prompt,
            category_id=prompt.category_id,
            winner_id=pair.winner,
            loser_id=pair.loser,
            source=PairSource.MODEL,
            iteration=iteration,
            weight=1.0,
            label=pair.label,
        )
        for pair in pairs_from_ordering(extended, ties="skip")
        if pair.winner in new_set or pair.loser in new_set
    )
    return extended
