"""Pair exports read back by their consumers: the reward-model trainer, pyarrow, pandas, HF datasets."""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
from django.core.files.storage import default_storage
from django.core.management import call_command

from annotation.exporters.filters import ExportFilters
from annotation.exporters.pairs import PAIR_FIELDS
from annotation.models import PreferencePair
from annotation.services.export import ExportSpec, export_to_tempfile, export_write
from training.ml.reward.data import read_pairs

pytestmark = pytest.mark.django_db


def _spec(fmt: str, **filters) -> ExportSpec:
    return ExportSpec(kind="pairs", format=fmt, filters=ExportFilters.from_mapping(filters))


def _write(tmp_path: Path, fmt: str, suffix: str, **filters) -> Path:
    path = tmp_path / f"pairs.{suffix}"
    with open(path, "wb") as fh:
        export_write(_spec(fmt, **filters), fh)
    return path


def test_jsonl_has_exactly_the_fixed_schema_and_the_trainer_reads_it(dataset, tmp_path):
    path = _write(tmp_path, "jsonl", "jsonl")
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(lines) == 75
    assert all(list(line) == list(PAIR_FIELDS) for line in lines)
    first = (
        PreferencePair.objects.select_related("prompt", "winner", "loser", "category").order_by("id").first()
    )
    assert lines[0] == {
        "pair_id": first.pk,
        "prompt_id": first.prompt_id,
        "prompt": first.prompt.text,
        "category": first.category.slug,
        "subcategory": "color",
        "split": "train",
        "winner_id": first.winner_id,
        "winner_sha256": first.winner.sha256,
        "winner_path": first.winner.file.name,
        "loser_id": first.loser_id,
        "loser_sha256": first.loser.sha256,
        "loser_path": first.loser.file.name,
        "label": 1.0,
        "source": "human",
        "iteration": 0,
        "weight": 1.0,
    }
    records = read_pairs(path)  # the reward-model trainer's own reader validates every row
    assert len(records) == 75
    assert {r.category for r in records} == {"attribute_binding", "spatial", "non_spatial"}
    assert {r.source for r in records} == {"human", "model"}
    # The paths are storage names: the bytes behind them hash to the recorded sha256.
    r = records[0]
    with default_storage.open(r.winner_path, "rb") as fh:
        assert hashlib.sha256(fh.read()).hexdigest() == r.winner_sha256


def test_csv_and_parquet_carry_the_same_rows_for_pandas_pyarrow_and_the_trainer(dataset, tmp_path):
    jsonl = read_pairs(_write(tmp_path, "jsonl", "jsonl"))
    csv_path = _write(tmp_path, "csv", "csv")
    parquet_path = _write(tmp_path, "parquet", "parquet")
    assert read_pairs(csv_path) == jsonl == read_pairs(parquet_path)
    table = pq.read_table(parquet_path)
    assert table.column_names == list(PAIR_FIELDS)
    assert (
        str(table.schema.field("pair_id").type) == "int64"
        and str(table.schema.field("label").type) == "double"
    )
    frame = pd.read_csv(csv_path)
    assert list(frame.columns) == list(PAIR_FIELDS) and len(frame) == 75
    assert frame["subcategory"].isna().sum() == 60  # only the attribute-binding prompt has one
    parquet_frame = pd.read_parquet(parquet_path)
    assert parquet_frame["pair_id"].tolist() == frame["pair_id"].tolist()


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        ({"category": "spatial"}, 45),
        ({"category": "spatial,non_spatial"}, 60),
        ({"split": "val"}, 15),
        ({"iteration": "1"}, 30),
        ({"source": "model"}, 15),
        ({"source": "human", "iteration": "1"}, 15),
        # W of the browser tasks is 0.9746 (one expert swaps two images); the model task has one ranking, no W.
        ({"min_agreement": "0.97"}, 60),
        ({"min_agreement": "0.98"}, 0),
        ({"generator": "flux"}, 25),
        ({"date_from": "2000-01-01", "date_to": "2000-01-02"}, 0),
    ],
)
def test_filters_select_the_expected_pairs(dataset, filters, expected):
    from annotation.services.export import export_count

    assert export_count(_spec("jsonl", **filters)) == expected


def test_hf_folder_loads_with_datasets_imagefolder_with_both_images_per_pair(dataset, tmp_path):
    import datasets

    out = tmp_path / "hf"
    call_command("export_pairs", "--format", "hf", "--output", str(out), "--category", "spatial")
    assert sorted(p.name for p in out.iterdir()) == ["train", "val"]
    loaded = datasets.load_dataset("imagefolder", data_dir=str(out), cache_dir=str(tmp_path / "cache"))
    assert set(loaded) == {"train", "validation"}
    assert (loaded["train"].num_rows, loaded["validation"].num_rows) == (30, 15)
    row = loaded["validation"][0]
    assert set(PAIR_FIELDS) <= set(row) and {"winner", "loser"} <= set(row)
    # The decoded images are the stored ones: same pixels as the file behind winner_path.
    from PIL import Image as PILImage

    with default_storage.open(row["winner_path"], "rb") as fh:
        original = PILImage.open(io.BytesIO(fh.read())).convert("RGB")
    assert row["winner"].convert("RGB").tobytes() == original.tobytes()
    assert row["category"] == "spatial" and row["split"] == "val"


def test_hf_export_as_one_file_is_a_zip_of_that_folder(dataset, tmp_path):
    import datasets

    with export_to_tempfile(_spec("hf", split="test")) as archive:
        zipfile.ZipFile(archive).extractall(tmp_path / "unzipped")
    loaded = datasets.load_dataset(
        "imagefolder", data_dir=str(tmp_path / "unzipped"), cache_dir=str(tmp_path / "cache")
    )
    assert list(loaded) == ["test"] and loaded["test"].num_rows == 15


def test_export_pairs_command_writes_jsonl_to_a_file(dataset, tmp_path):
    path = tmp_path / "out.jsonl"
    call_command("export_pairs", "--output", str(path), "--split", "train", "--source", "human")
    assert len(read_pairs(path)) == 30
