"""IterComp files in the public repository's layouts (tests/fixtures/formats/itercomp_public): imported,
exported and imported back without change."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
from django.core.management import call_command

from annotation.gallery_exports import export_itercomp
from annotation.models import Ranking, RankingTask
from gallery.models import Generator, Image, Prompt
from rankmath.rankformats import IterCompRecord, itercomp_rank_to_ordering

from .conftest import png_bytes

pytestmark = pytest.mark.django_db

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "formats" / "itercomp_public"


def _materialise(tmp_path: Path, name: str) -> Path:
    """Copy the hand-written JSON and draw a distinct PNG at every image path it names."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / name
    shutil.copy(FIXTURES / name, path)
    seed = 0
    for record in json.loads(path.read_text()):
        for key, value in record.items():
            if key.startswith("image_"):
                target = tmp_path / value
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(png_bytes(1000 + seed))
                seed += 1
    return path


def _counts() -> tuple[int, ...]:
    return (
        Prompt.objects.count(),
        Image.objects.count(),
        RankingTask.objects.count(),
        Ranking.objects.count(),
    )


def _generators_by_rank(record: dict) -> list[str]:
    parsed = IterCompRecord.from_json(record, position=0)
    return [group[0] for group in parsed.ordering]


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _import(path: Path, *extra: str) -> None:
    call_command(
        "import_gallery",
        str(path),
        "--format",
        "itercomp",
        "--annotator",
        "ic-expert",
        "--no-progress",
        *extra,
    )


@pytest.mark.parametrize("name, images", [("color_public.json", 12), ("spatial_iterative.json", 15)])
def test_public_layout_round_trips(tmp_path, name, images):
    source = _materialise(tmp_path / "src", name)
    _import(source)
    assert _counts() == (2, images, 2, 2)
    originals = {r["prompt"]: r for r in json.loads(source.read_text())}
    for ranking in Ranking.objects.select_related("task__prompt"):
        by_id = {i.pk: i.generator.slug for i in Image.objects.filter(prompt=ranking.task.prompt)}
        assert [by_id[g[0]] for g in ranking.ordering] == _generators_by_rank(
            originals[ranking.task.prompt.text]
        )

    out = tmp_path / "out" / name
    from django.contrib.auth import get_user_model

    written, skipped = export_itercomp(
        out_path=out, annotator=get_user_model().objects.get(username="ic-expert")
    )
    assert (written, skipped) == (2, 0)
    exported = json.loads(out.read_text())
    for position, record in enumerate(json.loads(source.read_text())):
        back = next(r for r in exported if r["prompt"] == record["prompt"])
        assert back["index"] == position  # no index in the public file: its position stands in
        image_keys = [k for k in record if k.startswith("image_")]
        assert [k for k in back if k.startswith("image_")] == image_keys  # extra models in their place
        for key in image_keys:
            assert _sha(out.parent / back[key]) == _sha(source.parent / record[key])
        assert _generators_by_rank(back) == _generators_by_rank(record)
        if "initial_rank" in record:
            six = [k.removeprefix("image_") for k in image_keys[:6]]
            assert itercomp_rank_to_ordering(back["initial_rank"], six) == itercomp_rank_to_ordering(
                record["initial_rank"], six
            )
        else:
            assert "initial_rank" not in back

    # Importing the export, and the original again, adds nothing.
    _import(out, "--category", "color" if name.startswith("color") else "spatial")
    _import(source)
    assert _counts() == (2, images, 2, 2)


def test_iterative_records_register_their_extra_models_as_import_only(tmp_path):
    _import(_materialise(tmp_path, "spatial_iterative.json"))
    extra = Generator.objects.filter(slug__in=["sdxl_iteration1", "omost"])
    assert sorted(extra.values_list("slug", flat=True)) == ["omost", "sdxl_iteration1"]
    assert all(g.weights_uri == "" for g in extra)
    task = RankingTask.objects.get(prompt__text="a cat on the left of a dog")
    assert task.task_images.count() == 8


@pytest.mark.parametrize(
    "change, message",
    [
        ({"rank": "4325617"}, "rank must list all 8"),
        ({"rank": "43256199"}, "rank indices must be in 1..8"),
        ({"initial_rank": "4325"}, "rank indices must be in 1..4"),
        ({"initial_rank": "43256a"}, "only digits"),
        ({"rank": {"a": 1}}, "rank must be a list"),
        ({"image_omost": 7}, "must be a path"),
        ({"image_../x": "x.png", "rank": "473825619"}, "does not name a model"),
    ],
)
def test_malformed_iterative_record_fails_alone_and_writes_nothing(tmp_path, change, message, media):
    source = _materialise(tmp_path, "spatial_iterative.json")
    records = json.loads(source.read_text())
    records[0].update(change)
    source.write_text(json.dumps(records))
    from annotation.services.gallery_imports import ranked_gallery_import

    report = ranked_gallery_import(path=source, format="itercomp", annotator="ic-expert")
    assert report.rows_ok == 1 and report.rows_failed == 1, report.summary()
    assert message in report.errors[0][1], report.errors
    assert _counts() == (1, 7, 1, 1)
    assert not Generator.objects.filter(slug="omost").exists()  # only the failed record named it
    stored = [p for p in media.rglob("*") if p.is_file()]
    assert len(stored) == 14  # the good record's 7 images and 7 display derivatives, nothing of the bad one


@pytest.fixture
def media(settings, tmp_path):
    """An empty storage of this test's own, so its file list shows what the import wrote."""
    root = tmp_path / "media"
    default = settings.STORAGES["default"]
    settings.STORAGES = {
        **settings.STORAGES,
        "default": {**default, "OPTIONS": {**default.get("OPTIONS", {}), "location": str(root)}},
    }
    return root
