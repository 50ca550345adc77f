"""Orderings (rankings with ties) and the on-disk rank formats they are imported from and exported to.

An *ordering* is a list of tie groups, best first: ``[[3], [1, 2], [0]]`` means 3 is best, 1 and 2 are
tied, 0 is last. A strict ranking has only singleton groups. Every module in this package speaks orderings;
this one also converts them to and from the two public dataset formats the project reads and writes:

* IterComp records (``rank`` lists 1-based gallery indices in rank order: ``[4, 3, 5, 2, 1, 6]`` means
  FLUX first, InstanceDiffusion last). The official IterComp code parses the field with
  ``[int(char) for char in item["rank"]]``, so a digit string such as ``"435216"`` is accepted as well.
  The public repository's files carry no ``index`` (the record's position in the file stands in), and its
  iterative files add images after the six (``image_sdxl_iteration1``, ``image_omost``: the gallery is the
  six, then the extra ``image_*`` keys in the record's order), a ``rank`` over all of them and the
  ``initial_rank`` of the first six before the new images were inserted.
* ImageReward records (``ranking[k]`` is the rank of ``generations[k]``, 1 = best, equal ranks = tie).

Pure Python, no Django: the gallery import, the annotation services and the exporters call these functions.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

T = TypeVar("T", bound=Hashable)

Ordering = list[list[T]]


class OrderingError(ValueError):
    """An ordering or rank record is malformed (missing, duplicate or foreign items, forbidden ties...)."""


def item_sort_key(item: Hashable) -> tuple[int, Any]:
    """A total order over the item ids we meet (ints, strings, anything else by repr).

    Used wherever a deterministic order is needed inside a tie group or as the last tie-break, because
    mixed-type ids (``1`` and ``"1"``) are not comparable with ``<``.
    """
    if isinstance(item, bool):
        return (2, repr(item))
    if isinstance(item, int | float):
        return (0, item)
    if isinstance(item, str):
        return (1, item)
    return (2, repr(item))


def _is_scalar(element: object) -> bool:
    # Strings are iterable but are item ids, never tie groups.
    return isinstance(element, str | bytes) or not isinstance(element, Iterable)


def normalize_ordering(ordering: Iterable[Any]) -> Ordering:
    """Canonical form: every element a list, empty groups dropped, each tie group sorted.

    A bare item stands for a singleton group, so a flat strict ranking ``[3, 1, 0]`` is accepted and
    becomes ``[[3], [1], [0]]``. Sorting inside groups makes equal orderings compare equal with ``==``.
    Duplicates are *not* removed here; :func:`validate_ordering` reports them.
    """
    groups: Ordering = []
    for element in ordering:
        group = [element] if _is_scalar(element) else list(element)
        if group:
            groups.append(sorted(group, key=item_sort_key))
    return groups


def ordering_items(ordering: Ordering) -> list[Hashable]:
    """All items of an ordering, best first (tie groups in their stored order)."""
    return [item for group in ordering for item in group]


def is_strict(ordering: Ordering) -> bool:
    """True when no two items are tied."""
    return all(len(group) == 1 for group in ordering)


def validate_ordering(
    ordering: Iterable[Any], items: Iterable[Hashable] | None = None, allow_ties: bool = True
) -> Ordering:
    """Check an ordering and return its normalized form.

    Raises :class:`OrderingError` naming the offending items when an item appears twice, when ``items`` is
    given and the ordering misses some of them or contains others, or when ties are present but
    ``allow_ties`` is false.
    """
    groups = normalize_ordering(ordering)
    seen: set[Hashable] = set()
    duplicates: list[Hashable] = []
    for item in ordering_items(groups):
        if item in seen:
            duplicates.append(item)
        seen.add(item)
    if duplicates:
        raise OrderingError(f"duplicate items in ordering: {_fmt(duplicates)}")
    if items is not None:
        expected = set(items)
        missing = expected - seen
        foreign = seen - expected
        problems = []
        if missing:
            problems.append(f"missing items {_fmt(missing)}")
        if foreign:
            problems.append(f"foreign items {_fmt(foreign)}")
        if problems:
            raise OrderingError("ordering does not cover the expected items: " + "; ".join(problems))
    if not allow_ties and not is_strict(groups):
        tied = [group for group in groups if len(group) > 1]
        raise OrderingError(f"ties are not allowed here, got tied groups {tied}")
    return groups


def positions(ordering: Ordering) -> dict[Hashable, float]:
    """1-based rank of each item; tied items share the mean of the ranks they span.

    ``positions([[3], [1, 2], [0]]) == {3: 1.0, 1: 2.5, 2: 2.5, 0: 4.0}`` (the "fractional ranking" that
    Kendall's W, Spearman and scipy use).
    """
    result: dict[Hashable, float] = {}
    start = 1
    for group in ordering:
        mean_rank = start + (len(group) - 1) / 2
        for item in group:
            result[item] = mean_rank
        start += len(group)
    return result


def ordering_from_scores(scores: Mapping[Hashable, float], *, higher_is_better: bool = True) -> Ordering:
    """Group items by exactly equal score, best first (used for reward-model scores and rank lists)."""
    buckets: dict[float, list[Hashable]] = {}
    for item, score in scores.items():
        buckets.setdefault(score, []).append(item)
    ordered = sorted(buckets, reverse=higher_is_better)
    return normalize_ordering(buckets[score] for score in ordered)


def _fmt(items: Iterable[Hashable]) -> str:
    return "[" + ", ".join(repr(item) for item in sorted(items, key=item_sort_key)) + "]"


# --------------------------------------------------------------------------------------------------------
# IterComp records
# --------------------------------------------------------------------------------------------------------

ITERCOMP_GALLERY: tuple[str, ...] = ("sd15", "sdxl", "sd3", "flux", "rpg", "instancediffusion")


def itercomp_image_key(generator: str) -> str:
    """JSON key holding a generator's image path in an IterComp record (``"flux"`` -> ``"image_flux"``)."""
    return f"image_{generator}"


def _parse_rank_field(rank: Sequence[int] | str, gallery_size: int) -> list[int]:
    if isinstance(rank, str):
        # The official loader reads one digit per model, which only works for galleries of up to nine.
        if gallery_size > 9:
            raise OrderingError("a digit-string rank is ambiguous for galleries of more than 9 models")
        if not rank.isascii() or not rank.isdigit():
            raise OrderingError(f"rank string must contain only digits, got {rank[:40]!r}")
        return [int(char) for char in rank]
    if isinstance(rank, bytes | Mapping) or not isinstance(rank, Iterable):
        raise OrderingError(f"rank must be a list of integers or a digit string, got {type(rank).__name__}")
    values = []
    for value in rank:
        if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) < 4:
            value = int(value)  # ["4", "3", ...]: what the official loader's int(char) also reads
        if isinstance(value, bool) or not isinstance(value, int):
            raise OrderingError(f"rank entries must be integers, got {value!r}")
        values.append(value)
    return values


def itercomp_rank_to_ordering(
    rank: Sequence[int] | str, gallery: Sequence[str] = ITERCOMP_GALLERY
) -> Ordering:
    """``[4, 3, 5, 2, 1, 6]`` -> ``[["flux"], ["sd3"], ["rpg"], ["sdxl"], ["sd15"], ["instancediffusion"]]``.

    Raises :class:`OrderingError` for a wrong length, duplicates or indices outside ``1..len(gallery)``.
    """
    values = _parse_rank_field(rank, len(gallery))
    if len(values) != len(gallery):
        raise OrderingError(f"rank must list all {len(gallery)} gallery models, got {len(values)} entries")
    out_of_range = [v for v in values if not 1 <= v <= len(gallery)]
    if out_of_range:
        raise OrderingError(f"rank indices must be in 1..{len(gallery)}, got {out_of_range}")
    if len(set(values)) != len(values):
        duplicates = sorted({v for v in values if values.count(v) > 1})
        raise OrderingError(f"rank lists gallery indices more than once: {duplicates}")
    return [[gallery[v - 1]] for v in values]


def ordering_to_itercomp_rank(ordering: Ordering, gallery: Sequence[str] = ITERCOMP_GALLERY) -> list[int]:
    """Inverse of :func:`itercomp_rank_to_ordering`; the format cannot express ties, so they are refused."""
    groups = validate_ordering(ordering, items=gallery, allow_ties=False)
    index = {name: i + 1 for i, name in enumerate(gallery)}
    return [index[group[0]] for group in groups]


_IMAGE_PREFIX = "image_"


@dataclass(frozen=True)
class IterCompRecord:
    """One prompt of the IterComp preference dataset: image path per gallery model plus the expert rank.

    ``gallery`` is the six models, then any extra models of an iterative record; ``initial_ordering`` is the
    ``initial_rank`` of an iterative record (over the first models of the gallery), None otherwise.
    """

    index: int
    prompt: str
    images: dict[str, str]
    ordering: Ordering
    gallery: tuple[str, ...] = ITERCOMP_GALLERY
    initial_ordering: Ordering | None = None

    def __post_init__(self) -> None:
        missing = [name for name in self.gallery if name not in self.images]
        if missing:
            raise OrderingError(f"record {self.index}: no image for {missing}")
        if len(set(self.gallery)) != len(self.gallery):
            raise OrderingError(f"record {self.index}: a model appears twice in the gallery")
        groups = validate_ordering(self.ordering, items=self.gallery, allow_ties=False)
        object.__setattr__(self, "ordering", groups)
        if self.initial_ordering is not None:
            initial = validate_ordering(self.initial_ordering, allow_ties=False)
            size = len(ordering_items(initial))
            validate_ordering(initial, items=self.gallery[:size], allow_ties=False)
            object.__setattr__(self, "initial_ordering", initial)

    @classmethod
    def from_json(
        cls,
        record: Mapping[str, Any],
        gallery: Sequence[str] = ITERCOMP_GALLERY,
        position: int | None = None,
    ) -> IterCompRecord:
        """Parse one JSON object; a missing key is an :class:`OrderingError` naming it.

        Without ``index`` the record's ``position`` in its file is its index (the public files have none);
        ``image_*`` keys beyond ``gallery`` extend it in the record's key order.
        """
        keys = ["prompt", "rank", *(itercomp_image_key(name) for name in gallery)]
        if position is None:
            keys.insert(0, "index")
        missing = [key for key in keys if key not in record]
        if missing:
            raise OrderingError(f"IterComp record lacks keys {missing}")
        if not isinstance(record["prompt"], str):
            raise OrderingError(f"prompt must be a string, got {type(record['prompt']).__name__}")
        index = record.get("index", position)
        if isinstance(index, bool) or not isinstance(index, int | str):
            raise OrderingError(f"index must be an integer, got {index!r}")
        try:
            index = int(index)
        except ValueError:
            raise OrderingError(f"index must be an integer, got {index!r}") from None
        extra = [
            key.removeprefix(_IMAGE_PREFIX)
            for key in record
            if key.startswith(_IMAGE_PREFIX) and key.removeprefix(_IMAGE_PREFIX) not in gallery
        ]
        full = (*gallery, *extra)
        for name in full:
            if not isinstance(record[itercomp_image_key(name)], str):
                raise OrderingError(f"{itercomp_image_key(name)} must be a path (a string)")
        initial = None
        if record.get("initial_rank") is not None:
            values = _parse_rank_field(record["initial_rank"], len(full))
            if not values or len(values) > len(full):
                raise OrderingError(
                    f"initial_rank must rank the first models of the gallery, got {len(values)} entries"
                )
            initial = itercomp_rank_to_ordering(values, full[: len(values)])
        return cls(
            index=index,
            prompt=record["prompt"],
            images={name: record[itercomp_image_key(name)] for name in full},
            ordering=itercomp_rank_to_ordering(record["rank"], full),
            gallery=full,
            initial_ordering=initial,
        )

    def to_json(self) -> dict[str, Any]:
        """The record with keys in the order of the published files; ``rank`` as a list of ints."""
        record: dict[str, Any] = {"prompt": self.prompt}
        for name in self.gallery:
            record[itercomp_image_key(name)] = self.images[name]
        record["index"] = self.index
        if self.initial_ordering is not None:
            size = len(ordering_items(self.initial_ordering))
            record["initial_rank"] = ordering_to_itercomp_rank(self.initial_ordering, self.gallery[:size])
        record["rank"] = ordering_to_itercomp_rank(self.ordering, self.gallery)
        return record


# --------------------------------------------------------------------------------------------------------
# ImageReward records
# --------------------------------------------------------------------------------------------------------
#
# What the published data looks like (THUDM/ImageReward, data/test.json): ``ranking`` holds one integer per
# generation, smaller is better, equal values are ties. Tied records use *dense* ranks - the group after a
# tie takes the next integer: [1, 2, 1, 4, 3, 4] (two pairs of ties, values 1..4 for six images),
# [1, 2, 2, 1, 4, 4, 3], [1, 3, 2, 2]; competition ranking would have written [1, 3, 1, 5, 4, 5]. Some
# records also skip values or do not start at 1 ([1, 2, 5, 3], [2, 3, 4, 2]), evidently because
# generations were filtered after ranking. ImageReward's own pair builder (train/src/rank_pair_dataset.py)
# only compares values (``<``, ``>``, equal -> skipped), so we read any positive integers by value and write
# dense ranks from 1.


def imagereward_ranking_to_ordering(ranking: Sequence[int]) -> Ordering:
    """``[2, 1, 2, 3]`` -> ``[[1], [0, 2], [3]]`` (indices into ``generations``, best first)."""
    values = list(ranking)
    if not values:
        raise OrderingError("ranking is empty")
    for value in values:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise OrderingError(f"ranking entries must be positive integers, got {value!r}")
    return ordering_from_scores(dict(enumerate(values)), higher_is_better=False)


def ordering_to_imagereward_ranking(ordering: Ordering, n: int) -> list[int]:
    """Dense ranks per generation index ``0..n-1``: ``[[1], [0, 2], [3]], 4`` -> ``[2, 1, 2, 3]``."""
    groups = validate_ordering(ordering, items=range(n), allow_ties=True)
    ranking = [0] * n
    for rank, group in enumerate(groups, start=1):
        for index in group:
            ranking[index] = rank
    return ranking


@dataclass(frozen=True)
class ImageRewardRecord:
    """One ImageReward-format record: a prompt, its generations, and the expert ordering over them."""

    id: str
    prompt: str
    generations: tuple[str, ...]
    ordering: Ordering

    def __post_init__(self) -> None:
        groups = validate_ordering(self.ordering, items=range(len(self.generations)), allow_ties=True)
        object.__setattr__(self, "ordering", groups)

    @classmethod
    def from_json(cls, record: Mapping[str, Any]) -> ImageRewardRecord:
        missing = [key for key in ("id", "prompt", "generations", "ranking") if key not in record]
        if missing:
            raise OrderingError(f"ImageReward record lacks keys {missing}")
        generations = tuple(str(path) for path in record["generations"])
        ranking = list(record["ranking"])
        if len(ranking) != len(generations):
            raise OrderingError(
                f"record {record['id']}: {len(ranking)} ranks for {len(generations)} generations"
            )
        return cls(
            id=str(record["id"]),
            prompt=str(record["prompt"]),
            generations=generations,
            ordering=imagereward_ranking_to_ordering(ranking),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "prompt": self.prompt,
            "generations": list(self.generations),
            "ranking": ordering_to_imagereward_ranking(self.ordering, len(self.generations)),
        }
