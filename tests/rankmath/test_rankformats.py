from __future__ import annotations

import itertools
import random

import pytest

from rankmath.rankformats import (
    ITERCOMP_GALLERY,
    ImageRewardRecord,
    IterCompRecord,
    OrderingError,
    imagereward_ranking_to_ordering,
    itercomp_rank_to_ordering,
    normalize_ordering,
    ordering_from_scores,
    ordering_to_imagereward_ranking,
    ordering_to_itercomp_rank,
    positions,
    validate_ordering,
)


def test_normalize_accepts_flat_rankings_drops_empty_groups_and_sorts_ties():
    assert normalize_ordering([3, 1, 0]) == [[3], [1], [0]]
    assert normalize_ordering([[3], [], (2, 1), [0]]) == [[3], [1, 2], [0]]
    assert normalize_ordering(["flux", ["sdxl", "sd15"]]) == [["flux"], ["sd15", "sdxl"]]


def test_validate_reports_duplicates_missing_and_foreign_items():
    with pytest.raises(OrderingError, match=r"duplicate items in ordering: \[1\]"):
        validate_ordering([[1], [0, 1]])
    with pytest.raises(OrderingError, match=r"missing items \[2\]; foreign items \[7\]"):
        validate_ordering([[0], [1], [7]], items=[0, 1, 2])
    with pytest.raises(OrderingError, match="ties are not allowed"):
        validate_ordering([[0, 1], [2]], items=[0, 1, 2], allow_ties=False)
    assert validate_ordering([2, [1, 0]], items=range(3)) == [[2], [0, 1]]


def test_ordering_error_is_a_value_error():
    assert issubclass(OrderingError, ValueError)


def test_positions_give_mean_rank_to_tied_items():
    assert positions([[3], [1, 2], [0]]) == {3: 1.0, 1: 2.5, 2: 2.5, 0: 4.0}
    assert positions([[0, 1, 2]]) == {0: 2.0, 1: 2.0, 2: 2.0}


def test_ordering_from_scores_groups_equal_scores():
    assert ordering_from_scores({"a": 0.5, "b": 2.0, "c": 0.5}) == [["b"], ["a", "c"]]
    assert ordering_from_scores({"a": 1, "b": 2}, higher_is_better=False) == [["a"], ["b"]]


def test_itercomp_rank_lists_gallery_indices_best_first():
    ordering = itercomp_rank_to_ordering([4, 3, 5, 2, 1, 6])
    assert ordering == [["flux"], ["sd3"], ["rpg"], ["sdxl"], ["sd15"], ["instancediffusion"]]
    # The official loader iterates characters, so digit strings appear in the wild too.
    assert itercomp_rank_to_ordering("435216") == ordering
    assert ordering_to_itercomp_rank(ordering) == [4, 3, 5, 2, 1, 6]


@pytest.mark.parametrize(
    ("rank", "message"),
    [
        ([4, 3, 5, 2, 1], "all 6 gallery models, got 5"),
        ([4, 3, 5, 2, 1, 6, 1], "got 7"),
        ([4, 4, 5, 2, 1, 6], r"more than once: \[4\]"),
        ([0, 3, 5, 2, 1, 6], r"in 1..6, got \[0\]"),
        ([4, 3, 5, 2, 1, 7], r"in 1..6, got \[7\]"),
        ([4, 3, 5, 2, 1, 6.0], "must be integers"),
        ([4, 3, 5, 2, 1, True], "must be integers"),
        ("43521x", "only digits"),
    ],
)
def test_itercomp_rank_rejects_malformed_lists(rank, message):
    with pytest.raises(OrderingError, match=message):
        itercomp_rank_to_ordering(rank)


def test_itercomp_rank_round_trips_every_permutation():
    for permutation in itertools.permutations(range(1, 7)):
        rank = list(permutation)
        assert ordering_to_itercomp_rank(itercomp_rank_to_ordering(rank)) == rank


def test_itercomp_format_cannot_express_ties():
    tied = [["flux", "sd3"], ["rpg"], ["sdxl"], ["sd15"], ["instancediffusion"]]
    with pytest.raises(OrderingError, match="ties are not allowed"):
        ordering_to_itercomp_rank(tied)


def test_itercomp_expanded_gallery_uses_its_own_indices():
    gallery = (*ITERCOMP_GALLERY, "sdxl_iteration1", "omost")
    ordering = itercomp_rank_to_ordering([8, 4, 7, 3, 5, 2, 1, 6], gallery)
    assert ordering[0] == ["omost"] and ordering[2] == ["sdxl_iteration1"]
    assert ordering_to_itercomp_rank(ordering, gallery) == [8, 4, 7, 3, 5, 2, 1, 6]


def _itercomp_json(rank):
    record = {"prompt": "a red cube left of a blue ball"}
    record.update({f"image_{name}": f"img/{name}/17.png" for name in ITERCOMP_GALLERY})
    record.update({"index": 17, "rank": rank})
    return record


def test_itercomp_record_round_trips_through_json():
    source = _itercomp_json([4, 3, 5, 2, 1, 6])
    record = IterCompRecord.from_json(source)
    assert record.ordering[0] == ["flux"]
    assert record.images["rpg"] == "img/rpg/17.png"
    assert record.to_json() == source
    assert list(record.to_json()) == list(source)


def test_itercomp_record_names_missing_keys():
    source = _itercomp_json([4, 3, 5, 2, 1, 6])
    del source["image_sd3"]
    with pytest.raises(OrderingError, match="image_sd3"):
        IterCompRecord.from_json(source)


# Rankings copied from THUDM/ImageReward data/test.json: tied records use dense ranks.
PUBLISHED_TIED = [[1, 2, 1, 4, 3, 4], [1, 2, 2, 1, 4, 4, 3], [1, 3, 2, 2], [4, 5, 3, 2, 1, 5]]


def test_imagereward_ranking_groups_equal_ranks():
    assert imagereward_ranking_to_ordering([1, 2, 1, 4, 3, 4]) == [[0, 2], [1], [4], [3, 5]]
    assert imagereward_ranking_to_ordering([2, 1, 2, 3]) == [[1], [0, 2], [3]]


@pytest.mark.parametrize("ranking", PUBLISHED_TIED)
def test_imagereward_published_tied_rankings_round_trip_exactly(ranking):
    ordering = imagereward_ranking_to_ordering(ranking)
    assert ordering_to_imagereward_ranking(ordering, len(ranking)) == ranking


def test_imagereward_gapped_rankings_are_read_by_value_and_written_dense():
    # Published records such as [1, 2, 5, 3] and [2, 3, 4, 2] skip values or start above 1.
    assert imagereward_ranking_to_ordering([1, 2, 5, 3]) == [[0], [1], [3], [2]]
    assert ordering_to_imagereward_ranking(imagereward_ranking_to_ordering([1, 2, 5, 3]), 4) == [1, 2, 4, 3]
    assert ordering_to_imagereward_ranking(imagereward_ranking_to_ordering([2, 3, 4, 2]), 4) == [1, 2, 3, 1]


def test_imagereward_orderings_with_ties_round_trip():
    rng = random.Random(7)
    for _ in range(200):
        n = rng.randint(1, 9)
        items = list(range(n))
        rng.shuffle(items)
        cuts = sorted(rng.sample(range(1, n), rng.randint(0, n - 1))) if n > 1 else []
        groups = [items[a:b] for a, b in zip([0, *cuts], [*cuts, n], strict=True)]
        ordering = normalize_ordering(groups)
        ranking = ordering_to_imagereward_ranking(ordering, n)
        assert imagereward_ranking_to_ordering(ranking) == ordering
        assert sorted(set(ranking)) == list(range(1, len(ordering) + 1))


@pytest.mark.parametrize("ranking", [[], [1, 0, 2], [1, -2], [1, 2.0], [True, 2]])
def test_imagereward_rejects_bad_rankings(ranking):
    with pytest.raises(OrderingError):
        imagereward_ranking_to_ordering(ranking)


def test_imagereward_ordering_must_cover_all_generations():
    with pytest.raises(OrderingError, match=r"missing items \[3\]"):
        ordering_to_imagereward_ranking([[0], [1, 2]], 4)


def test_imagereward_record_round_trips_and_checks_lengths():
    source = {
        "id": "005658-0040",
        "prompt": "p",
        "generations": ["a.webp", "b.webp", "c.webp"],
        "ranking": [2, 1, 2],
    }
    record = ImageRewardRecord.from_json(source)
    assert record.ordering == [[1], [0, 2]]
    assert record.to_json() == source
    with pytest.raises(OrderingError, match="2 ranks for 3 generations"):
        ImageRewardRecord.from_json({**source, "ranking": [1, 2]})
