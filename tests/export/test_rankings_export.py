"""Ranking exports: JSONL/CSV/Parquet with hashed raw annotations, and IterComp's and ImageReward's files
reproduced from the committed fixtures through the gallery importer (the formats' consumer here)."""

from __future__ import annotations

import hashlib
import hmac
import json
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
from django.conf import settings
from django.core.files.storage import default_storage
from django.core.management import call_command

from annotation.exporters.filters import ExportFilters
from annotation.models import RankingTask
from annotation.services.consensus import consensus_recompute
from annotation.services.export import ExportSpec, export_write
from gallery.models import Image
from rankmath.rankformats import ImageRewardRecord, IterCompRecord
from tests.consensus import factories as f

pytestmark = pytest.mark.django_db

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "formats"


def _export(tmp_path: Path, fmt: str, suffix: str, **filters) -> Path:
    path = tmp_path / f"rankings.{suffix}"
    spec = ExportSpec(kind="rankings", format=fmt, filters=ExportFilters.from_mapping(filters))
    with open(path, "wb") as fh:
        export_write(spec, fh)
    return path


def _sha_of_storage(name: str) -> str:
    with default_storage.open(name, "rb") as fh:
        return hashlib.sha256(fh.read()).hexdigest()


def test_jsonl_rankings_carry_consensus_ranks_and_hashed_raw_annotations(dataset, tmp_path):
    records = [json.loads(x) for x in _export(tmp_path, "jsonl", "jsonl", raw="1").read_text().splitlines()]
    assert len(records) == 5
    first = records[0]
    t = dataset.tasks[0]
    assert (first["task_id"], first["prompt"], first["category"], first["subcategory"]) == (
        t.task.pk,
        t.prompt.text,
        "attribute_binding",
        "color",
    )
    assert (first["prompt_source"], first["prompt_licence"], first["source"]) == (
        "t2i-compbench",
        "MIT",
        "human",
    )
    # HPDv2's convention: rank[k] is the rank of image_path[k]; image k was ranked k-th by the majority.
    assert first["rank"] == [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
    assert [_sha_of_storage(p) for p in first["image_path"]] == first["image_sha256"]
    raw = first["raw_annotations"]
    assert len(raw) == 3 and raw[2]["rank"] == [1.0, 2.0, 3.0, 5.0, 4.0, 6.0]
    expected_hashes = [
        hmac.new(
            settings.ANNOTATOR_ID_SALT.encode(), f"annotator:{u.pk}".encode(), hashlib.sha256
        ).hexdigest()
        for u in dataset.experts
    ]
    assert [r["user_hash"] for r in raw] == expected_hashes
    text = json.dumps(records)
    assert all(u.username not in text for u in dataset.experts)
    assert records[4]["source"] == "model"


def test_annotator_hashes_are_stable_across_exports_and_absent_without_raw(dataset, tmp_path):
    one = [json.loads(x) for x in _export(tmp_path, "jsonl", "jsonl", raw="1").read_text().splitlines()]
    (tmp_path / "again").mkdir()
    two = [
        json.loads(x) for x in _export(tmp_path / "again", "jsonl", "jsonl", raw="1").read_text().splitlines()
    ]
    assert [r["raw_annotations"] for r in one] == [r["raw_annotations"] for r in two]
    plain = [json.loads(x) for x in _export(tmp_path, "jsonl", "jsonl").read_text().splitlines()]
    assert all("raw_annotations" not in r for r in plain)


def test_parquet_rankings_load_with_pyarrow_pandas_and_hf_datasets(dataset, tmp_path):
    import datasets

    path = _export(tmp_path, "parquet", "parquet", raw="1", category="spatial")
    table = pq.read_table(path)
    assert table.num_rows == 3
    assert table.column("raw_annotations").to_pylist()[0][0]["rank"] == [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
    loaded = datasets.load_dataset("parquet", data_files=str(path), cache_dir=str(tmp_path / "cache"))[
        "train"
    ]
    assert loaded.num_rows == 3 and loaded[0]["category"] == "spatial"
    assert len(loaded[0]["image_path"]) == 6
    frame = pd.read_csv(_export(tmp_path, "csv", "csv", category="spatial"))
    assert len(frame) == 3 and json.loads(frame.loc[0, "rank"]) == [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]


def _import(path: Path, fmt: str, *options: str) -> None:
    call_command(
        "import_gallery",
        str(path),
        f"--format={fmt}",
        "--annotator=fixture-expert",
        "--no-progress",
        *options,
    )
    for task_id in RankingTask.objects.values_list("pk", flat=True):
        consensus_recompute(task_id=task_id)


def _fixture_sha(folder: str, relative: str) -> str:
    return hashlib.sha256((FIXTURES / folder / relative).read_bytes()).hexdigest()


def test_itercomp_export_reproduces_the_imported_fixture(tmp_path):
    fixture = FIXTURES / "itercomp" / "attribute_binding_data.json"
    _import(fixture, "itercomp", "--category=color")
    out = tmp_path / "attribute_binding.json"
    call_command("export_rankings", "--format", "itercomp", "--output", str(out))
    exported = {r["prompt"]: r for r in json.loads(out.read_text())}
    originals = json.loads(fixture.read_text())
    assert set(exported) == {r["prompt"] for r in originals}
    for original in originals:
        record = exported[original["prompt"]]
        assert list(record)[:2] == ["index", "prompt"]
        assert record["rank"] == original["rank"]
        for key, value in original.items():
            if key.startswith("image_"):
                assert _sha_of_storage(record[key]) == _fixture_sha("itercomp", value)
        assert IterCompRecord.from_json(record).ordering == IterCompRecord.from_json(original).ordering
    # Importing the export again (paths relative to the storage root) is recognised as the same data.
    images_before = Image.objects.count()
    call_command(
        "import_gallery",
        str(out),
        "--format=itercomp",
        "--category=color",
        "--annotator=fixture-expert",
        f"--images-root={settings.MEDIA_ROOT}",
        "--no-progress",
    )
    assert Image.objects.count() == images_before


def test_imagereward_export_reproduces_the_imported_fixture_including_its_tie(tmp_path):
    fixture = FIXTURES / "imagereward" / "test.json"
    f.generator("sd14")  # ImageReward's generations come from one model named on import
    _import(fixture, "imagereward", "--category=spatial", "--generator=sd14")
    out = tmp_path / "test.json"
    call_command("export_rankings", "--format", "imagereward", "--output", str(out))
    exported = {r["prompt"]: r for r in json.loads(out.read_text())}
    for original in json.loads(fixture.read_text()):
        record = exported[original["prompt"]]
        assert list(record) == ["id", "prompt", "generations", "ranking"]

        def groups(rec, shas):
            parsed = ImageRewardRecord.from_json(rec)
            return [{shas[i] for i in group} for group in parsed.ordering]

        original_shas = [_fixture_sha("imagereward", g) for g in original["generations"]]
        exported_shas = [_sha_of_storage(g) for g in record["generations"]]
        # Same images, same order, same ties; ranks are written dense from 1 ([1, 2, 5, 3] -> [1, 2, 4, 3]).
        assert groups(record, exported_shas) == groups(original, original_shas)
        assert sorted(record["ranking"]) == sorted(
            {v: k for k, v in enumerate(sorted(set(original["ranking"])), start=1)}[x]
            for x in original["ranking"]
        )
