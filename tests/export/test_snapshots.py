"""Dataset snapshots: frozen, versioned, content-addressed, immutable, cited by training rounds."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest
from django.core.files.storage import default_storage
from django.core.management import call_command
from django.db import IntegrityError, transaction
from django.db.models.deletion import ProtectedError

from annotation.exporters.filters import ExportFilters
from annotation.exporters.pairs import PAIR_FIELDS
from annotation.models import DatasetSnapshot
from annotation.services.consensus import consensus_recompute
from annotation.services.snapshots import EmptySnapshotError, snapshot_create
from tests.consensus import factories as f
from training.models import TrainingRound

pytestmark = pytest.mark.django_db


def _read(snapshot: DatasetSnapshot):
    with default_storage.open(snapshot.file.name, "rb") as fh:
        return pq.read_table(fh)


def test_a_snapshot_freezes_the_pairs_with_each_prompts_source_and_licence(dataset, make_user):
    researcher = make_user("researcher")
    snapshot, created = snapshot_create(
        filters=ExportFilters.from_mapping({"source": "human"}), created_by=researcher
    )
    assert created and snapshot.version == 1 and len(snapshot.content_hash) == 64
    assert snapshot.filters == {"sources": ["human"]}
    assert snapshot.counts["pairs"] == 60 and snapshot.counts["prompts"] == 4
    assert snapshot.counts["by_category"] == {"attribute_binding": 15, "non_spatial": 15, "spatial": 30}
    table = _read(snapshot)
    assert table.column_names == [*PAIR_FIELDS, "prompt_source", "prompt_licence"]
    assert set(table.column("prompt_source").to_pylist()) == {"t2i-compbench"}
    assert set(table.column("prompt_licence").to_pylist()) == {"MIT"}
    meta = table.schema.metadata
    assert meta[b"itercomp.snapshot.version"] == b"1"
    assert json.loads(meta[b"itercomp.snapshot.filters"]) == {"sources": ["human"]}


def test_the_same_content_returns_the_existing_version_even_after_pairs_are_rebuilt(dataset):
    first, _ = snapshot_create(filters=ExportFilters())
    # Recomputing gives new pair ids but the same pairs: nothing new to freeze.
    for t in dataset.tasks:
        consensus_recompute(task_id=t.task.pk)
    again, created = snapshot_create(filters=ExportFilters())
    assert not created and again.pk == first.pk
    # New data is a new version with a new hash.
    t, ids = f.task(f.prompt("a new prompt"), ["sd15", "sdxl", "sd3"], required=1)
    f.rank(t, dataset.experts[0], ids)
    consensus_recompute(task_id=t.pk)
    second, created = snapshot_create(filters=ExportFilters())
    assert created and second.version == 2 and second.content_hash != first.content_hash
    assert second.counts["pairs"] == 78


def test_snapshot_rows_cannot_be_updated(dataset):
    snapshot, _ = snapshot_create(filters=ExportFilters())
    snapshot.counts = {"pairs": 1}
    with pytest.raises(IntegrityError, match="immutable"), transaction.atomic():
        snapshot.save()
    with pytest.raises(IntegrityError), transaction.atomic():
        DatasetSnapshot.objects.filter(pk=snapshot.pk).update(file="elsewhere.parquet")


def test_training_rounds_record_their_snapshot_which_is_then_protected(dataset, make_user):
    snapshot, _ = snapshot_create(filters=ExportFilters())
    TrainingRound.objects.create(created_by=make_user("admin"), dataset_snapshot=snapshot)
    assert snapshot.training_rounds.count() == 1
    with pytest.raises(ProtectedError):
        snapshot.delete()


def test_an_empty_selection_is_refused(dataset):
    with pytest.raises(EmptySnapshotError):
        snapshot_create(filters=ExportFilters.from_mapping({"category": "no_such_category"}))


def test_snapshot_command_and_api_create_versions(dataset, researcher_client, capsys):
    call_command("export_snapshot", "--category", "spatial")
    assert capsys.readouterr().out.startswith("created v1 ")
    created = researcher_client.post(
        "/api/snapshots/", {"category": ["spatial"]}, content_type="application/json"
    )
    assert created.status_code == 200 and created.json()["version"] == 1  # same content
    created = researcher_client.post("/api/snapshots/", {"split": "train"}, content_type="application/json")
    assert created.status_code == 201 and created.json()["version"] == 2
    download = researcher_client.get(created.json()["download_url"])
    assert download.status_code == 200
    listing = researcher_client.get("/research/snapshots/").content.decode()
    assert "v2" in listing and "v1" in listing
