from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from training.ml.preprocess import PreprocessConfig
from training.ml.reward.augment import augment_image
from training.ml.reward.config import AugmentConfig, RewardModelConfig, RewardTrainConfig
from training.ml.reward.data import (
    PAIR_FIELDS,
    FolderImageLoader,
    GroupCollator,
    GroupPair,
    ImageRef,
    PairRecord,
    assign_splits,
    build_groups,
    check_no_prompt_leak,
    dataset_fingerprint,
    hash_split,
    read_pairs,
    write_pairs_jsonl,
)

torch.set_num_threads(1)


def _row(pair_id: int, prompt_id: int, winner: int, loser: int, **kw) -> dict:
    row = {
        "pair_id": pair_id,
        "prompt_id": prompt_id,
        "prompt": f"prompt number {prompt_id}",
        "category": "spatial",
        "subcategory": "2d",
        "split": "train",
        "winner_id": winner,
        "winner_sha256": f"{winner:064x}",
        "winner_path": f"img/{winner}.png",
        "loser_id": loser,
        "loser_sha256": f"{loser:064x}",
        "loser_path": f"img/{loser}.png",
        "label": 1.0,
        "source": "human",
        "iteration": 0,
        "weight": 1.0,
    }
    row.update(kw)
    return row


def _rows() -> list[dict]:
    return [
        _row(1, 10, 100, 101),
        _row(2, 10, 100, 102, label=0.5, weight=0.5),
        _row(3, 10, 101, 102),
        _row(4, 11, 200, 201, split="val", subcategory=None, source="model", iteration=1),
    ]


def test_reads_the_same_pairs_from_jsonl_csv_and_parquet(tmp_path):
    rows = _rows()
    jsonl = tmp_path / "pairs.jsonl"
    jsonl.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=PAIR_FIELDS)
    writer.writeheader()
    writer.writerows({k: ("" if v is None else v) for k, v in r.items()} for r in rows)
    (tmp_path / "pairs.csv").write_text(buf.getvalue())
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "pairs.parquet")

    from_jsonl = read_pairs(jsonl)
    assert from_jsonl == read_pairs(tmp_path / "pairs.csv") == read_pairs(tmp_path / "pairs.parquet")
    assert from_jsonl[1].label == 0.5 and from_jsonl[3].subcategory is None and from_jsonl[3].iteration == 1
    write_pairs_jsonl(from_jsonl, tmp_path / "again.jsonl")
    assert read_pairs(tmp_path / "again.jsonl") == from_jsonl


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"label": 0.0}, "label"),
        ({"category": "counting"}, "category"),
        ({"split": "dev"}, "split"),
        ({"loser_id": 100}, "same image"),
        ({"weight": -1.0}, "weight"),
    ],
)
def test_invalid_pair_rows_are_refused_with_their_line_number(tmp_path, change, message):
    path = tmp_path / "pairs.jsonl"
    path.write_text(
        json.dumps(_row(1, 1, 100, 101)) + "\n" + json.dumps(_row(2, 1, 100, 101, **change)) + "\n"
    )
    with pytest.raises(ValueError, match=rf"pairs.jsonl:2: .*{message}"):
        read_pairs(path)


def test_hash_split_is_deterministic_prompt_level_and_roughly_proportional():
    prompts = [f"a red cube number {i} left of a ball" for i in range(3000)]
    splits = [hash_split(p) for p in prompts]
    assert splits == [hash_split(p) for p in prompts]
    assert hash_split("A Red  cube") == hash_split("a red cube")  # same prompt text, same split
    share = {s: splits.count(s) / len(splits) for s in ("train", "val", "test")}
    assert share["train"] == pytest.approx(0.8, abs=0.03)
    assert share["val"] == pytest.approx(0.1, abs=0.02)
    assert hash_split(prompts[0], salt="other") in ("train", "val", "test")


def test_assigned_splits_keep_the_export_split_and_leak_no_prompt():
    records = [PairRecord.from_mapping(r) for r in _rows()]
    unsplit = [
        dataclasses.replace(
            PairRecord.from_mapping(_row(100 + i, 50 + i // 3, 1000 + i, 2000 + i)), split=None
        )
        for i in range(300)
    ]
    out = assign_splits(records + unsplit)
    assert [r.split for r in out[:4]] == ["train", "train", "train", "val"]
    seen: dict[int, set] = {}
    for r in out:
        seen.setdefault(r.prompt_id, set()).add(r.split)
    assert all(len(s) == 1 for s in seen.values())
    assert {r.split for r in out[4:]} == {"train", "val", "test"}


def test_an_export_with_one_prompt_in_two_splits_is_refused():
    records = [
        PairRecord.from_mapping(_row(1, 10, 1, 2)),
        PairRecord.from_mapping(_row(2, 10, 1, 3, split="test")),
    ]
    with pytest.raises(ValueError, match="several splits"):
        check_no_prompt_leak(records)
    # The same text under another prompt id also leaks.
    other = PairRecord.from_mapping(_row(3, 11, 4, 5, prompt="prompt number 10", split="test"))
    with pytest.raises(ValueError, match="several splits"):
        check_no_prompt_leak([records[0], other])


def test_groups_hold_each_image_once_with_pairs_as_indices():
    groups = build_groups([PairRecord.from_mapping(r) for r in _rows()], category="spatial")
    assert [g.prompt_id for g in groups] == [10, 11]
    g = groups[0]
    assert [ref.key for ref in g.images] == ["100", "101", "102"]
    assert g.pairs == (GroupPair(0, 1, 1.0, 1.0), GroupPair(0, 2, 0.5, 0.5), GroupPair(1, 2, 1.0, 1.0))
    assert build_groups([PairRecord.from_mapping(r) for r in _rows()], category="non_spatial") == []


def test_extra_image_sources_join_a_prompt_group():
    g = build_groups([PairRecord.from_mapping(r) for r in _rows()])[0]
    x0 = ImageRef(key="x0-of-100", tensor=torch.rand(3, 16, 16))
    bigger = g.with_images([x0], [GroupPair(3, 2)])
    assert len(bigger.images) == 4 and bigger.pairs[-1] == GroupPair(3, 2)
    with pytest.raises(ValueError, match="bad pair"):
        g.with_images([x0], [GroupPair(4, 0)])
    with pytest.raises(ValueError, match="exactly one"):
        ImageRef(key="both", path="a.png", tensor=torch.rand(3, 2, 2))


def test_collator_encodes_each_image_once_listwise_and_twice_per_pair_pairwise():
    loaded: list[str] = []

    def loader(path: str, sha: str) -> torch.Tensor:
        loaded.append(path)
        return torch.full((3, 20, 24), 0.5)

    groups = build_groups([PairRecord.from_mapping(r) for r in _rows()])
    pre = PreprocessConfig(image_size=16)
    listwise = GroupCollator(loader, pre, "listwise", cache=True)(groups)
    assert listwise.images.shape == (5, 3, 16, 16)
    assert listwise.prompt_index.tolist() == [0, 0, 0, 1, 1]
    assert listwise.winners.tolist() == [0, 0, 1, 3] and listwise.losers.tolist() == [1, 2, 2, 4]
    pairwise = GroupCollator(loader, pre, "pairwise", cache=True)(groups)
    assert pairwise.images.shape == (8, 3, 16, 16)
    assert pairwise.winners.tolist() == [0, 2, 4, 6] and pairwise.losers.tolist() == [1, 3, 5, 7]
    assert pairwise.labels.tolist() == listwise.labels.tolist() == [1.0, 0.5, 1.0, 1.0]
    assert len(loaded) == 10  # each collator loads each file once (cache), pairwise reuses it


def test_folder_loader_reads_rgb_in_unit_range_and_checks_sha256(tmp_path):
    (tmp_path / "img").mkdir()
    Image.new("RGB", (8, 6), (255, 0, 128)).save(tmp_path / "img" / "a.png")
    sha = hashlib.sha256((tmp_path / "img" / "a.png").read_bytes()).hexdigest()
    image = FolderImageLoader(tmp_path, verify_sha256=True)("img/a.png", sha)
    assert image.shape == (3, 6, 8)
    assert image[:, 0, 0].tolist() == pytest.approx([1.0, 0.0, 128 / 255])
    with pytest.raises(ValueError, match="sha256"):
        FolderImageLoader(tmp_path, verify_sha256=True)("img/a.png", "0" * 64)


def test_dataset_fingerprint_ignores_order_but_not_content():
    records = [PairRecord.from_mapping(r) for r in _rows()]
    fp = dataset_fingerprint(records)
    assert fp == dataset_fingerprint(list(reversed(records)))
    assert fp["counts"]["pairs"] == 4 and fp["counts"]["prompts"] == 2 and fp["counts"]["images"] == 5
    assert fp["counts"]["ties"] == 1 and fp["counts"]["val_pairs"] == 1
    changed = [dataclasses.replace(records[0], label=0.5), *records[1:]]
    assert dataset_fingerprint(changed)["sha256"] != fp["sha256"]


def test_augmentation_keeps_shape_and_range_and_is_seeded():
    image = torch.rand(3, 32, 32)
    config = AugmentConfig(
        crop_scale=(0.6, 0.9), brightness=0.3, contrast=0.3, saturation=0.3, noise_std=0.05
    )
    a = augment_image(image, config, torch.Generator().manual_seed(1))
    b = augment_image(image, config, torch.Generator().manual_seed(1))
    assert a.shape == image.shape and torch.equal(a, b)
    assert a.min() >= 0 and a.max() <= 1 and not torch.equal(a, image)
    flipped = augment_image(image, AugmentConfig(hflip=True), torch.Generator().manual_seed(0))
    assert torch.equal(flipped, image) or torch.equal(flipped, image.flip(-1))


def test_horizontal_flips_are_refused_for_spatial_reward_models():
    with pytest.raises(ValueError, match="left/right"):
        RewardTrainConfig(
            model=RewardModelConfig.tiny("spatial"), output_dir="x", augment=AugmentConfig(hflip=True)
        )
    RewardTrainConfig(
        model=RewardModelConfig.tiny("non_spatial"), output_dir="x", augment=AugmentConfig(hflip=True)
    )
