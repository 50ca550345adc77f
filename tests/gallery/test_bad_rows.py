"""Bad inputs: each row's problem is reported with its line, and nothing of that row is written."""

from __future__ import annotations

import json
import os

import pytest
from django.core.management import CommandError, call_command

from annotation.models import Ranking, RankingTask
from annotation.services.gallery_imports import ranked_gallery_import
from gallery.models import Image, Prompt
from gallery.services.imports import GalleryImportError, gallery_import

from .conftest import png_bytes, write_itercomp

pytestmark = pytest.mark.django_db


def state() -> tuple[int, ...]:
    return (
        Prompt.objects.count(),
        Image.objects.count(),
        RankingTask.objects.count(),
        Ranking.objects.count(),
    )


@pytest.fixture
def manifest_folder(tmp_path, itercomp_generators, settings):
    settings.IMAGE_MAX_PIXELS = 128 * 128
    folder = tmp_path / "batch"
    (folder / "img").mkdir(parents=True)
    (folder / "img/good1.png").write_bytes(png_bytes(1))
    (folder / "img/good2.png").write_bytes(png_bytes(2))
    (folder / "img/notes.png").write_text("this is not an image")
    (folder / "img/cut.png").write_bytes(png_bytes(3, (64, 64))[:-30])
    (folder / "img/huge.png").write_bytes(png_bytes(4, (300, 300)))
    (tmp_path / "secret.png").write_bytes(png_bytes(5))
    return folder


def test_each_bad_manifest_row_is_named_and_skipped_while_good_rows_import(manifest_folder, capsys):
    lines = [
        {
            "prompt": "a red cup and a blue book",
            "category": "color",
            "generator": "sdxl",
            "image": "img/good1.png",
        },
        {"prompt": "bad one", "category": "color", "generator": "sdxl", "image": "img/missing.png"},
        {"prompt": "bad two", "category": "color", "generator": "sdxl", "image": "img/notes.png"},
        {"prompt": "bad three", "category": "color", "generator": "sdxl", "image": "img/cut.png"},
        {"prompt": "bad four", "category": "color", "generator": "sdxl", "image": "img/huge.png"},
        {"prompt": "bad five", "category": "color", "generator": "midjourney", "image": "img/good2.png"},
        {"prompt": "bad six", "category": "color", "generator": "sdxl", "image": "../secret.png"},
        {"prompt": "bad seven", "category": "color", "generator": "sdxl", "image": "/etc/passwd"},
        {"prompt": "bad eight", "category": "complex", "generator": "sdxl", "image": "img/good2.png"},
        {
            "prompt": "bad nine",
            "category": "color",
            "generator": "sdxl",
            "image": "img/good2.png",
            "seed": "x",
        },
        {
            "prompt": "a green cup and a pink book",
            "category": "color",
            "generator": "flux",
            "image": "img/good2.png",
        },
    ]
    path = manifest_folder / "manifest.jsonl"
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n{not json\n")
    with pytest.raises(CommandError, match="10 of 12 rows failed"):
        call_command("import_gallery", str(path), "--format", "manifest", "--no-progress")
    err = capsys.readouterr().err
    expected = {
        2: "image 'img/missing.png': image file not found",
        3: "image 'img/notes.png': not an image",
        4: "image 'img/cut.png': truncated or corrupt",
        5: "image 'img/huge.png': image is 300×300 = 90,000 pixels, more than the limit of 16,384",
        6: "unknown generator 'midjourney'",
        7: "image '../secret.png': path escapes the folder batch/ (path traversal refused)",
        8: "image '/etc/passwd': absolute path refused",
        9: "unknown category 'complex'",
        10: "seed must be an integer",
        12: "invalid JSON",
    }
    for line, message in expected.items():
        assert f"manifest.jsonl line {line}: {message}" in err, (line, err)
    assert sorted(Prompt.objects.values_list("text", flat=True)) == [
        "a green cup and a pink book",
        "a red cup and a blue book",
    ]
    assert Image.objects.count() == 2


def test_symlink_leaving_the_folder_is_refused(manifest_folder, capsys):
    os.symlink(manifest_folder.parent / "secret.png", manifest_folder / "img/link.png")
    path = manifest_folder / "m.csv"
    path.write_text("prompt,category,generator,image\na cat near a dog,spatial,sd15,img/link.png\n")
    with pytest.raises(CommandError):
        call_command("import_gallery", str(path), "--format", "manifest", "--no-progress")
    assert "m.csv line 2: image 'img/link.png': path escapes the folder" in capsys.readouterr().err
    assert state() == (0, 0, 0, 0)


def test_a_failing_image_late_in_an_itercomp_record_leaves_nothing_of_that_record(
    tmp_path, itercomp_generators, capsys
):
    path = write_itercomp(
        tmp_path,
        [
            {"prompt": "a gold clock and a white lamp", "rank": [1, 2, 3, 4, 5, 6]},
            {"prompt": "a gold lamp and a white clock", "rank": [1, 2, 3, 4, 5, 6]},
            {"prompt": "a brown bag and a black hat", "rank": [1, 2, 3, 4, 5]},
            {"prompt": "a brown hat and a black bag", "rank": [1, 1, 3, 4, 5, 6]},
            {"prompt": "a brown box and a black cup", "rank": [1, 2, 3, 4, 5, 9]},
        ],
    )
    (tmp_path / "images/instancediffusion/0001.png").write_text("broken")  # last image of record 2
    with pytest.raises(CommandError, match="4 of 5 rows failed"):
        call_command("import_gallery", str(path), "--format", "itercomp", "--annotator", "e", "--no-progress")
    err = capsys.readouterr().err
    # json.dumps(indent=1) opens each record on a line of its own: " {".
    starts = [n for n, line in enumerate(path.read_text().splitlines(), start=1) if line == " {"]
    assert f"line {starts[1]}: image 'images/instancediffusion/0001.png': not an image" in err
    assert f"line {starts[2]}: rank must list all 6 gallery models, got 5 entries" in err
    assert f"line {starts[3]}: rank lists gallery indices more than once: [1]" in err
    assert f"line {starts[4]}: rank indices must be in 1..6, got [9]" in err
    assert state() == (1, 6, 1, 1)
    assert Prompt.objects.get().text == "a gold clock and a white lamp"


def test_a_conflicting_reimported_ranking_is_refused_not_overwritten(tmp_path, itercomp_generators, capsys):
    path = write_itercomp(
        tmp_path, [{"prompt": "a red kite above a tree", "rank": [1, 2, 3, 4, 5, 6]}], name="spatial.json"
    )
    call_command("import_gallery", str(path), "--format", "itercomp", "--annotator", "e", "--no-progress")
    changed = json.loads(path.read_text())
    changed[0]["rank"] = [6, 5, 4, 3, 2, 1]
    path.write_text(json.dumps(changed))
    with pytest.raises(CommandError):
        call_command("import_gallery", str(path), "--format", "itercomp", "--annotator", "e", "--no-progress")
    assert "already ranked task" in capsys.readouterr().err
    assert state() == (1, 6, 1, 1)


def test_whole_file_problems_stop_before_any_row(tmp_path, itercomp_generators):
    with pytest.raises(GalleryImportError, match="does not exist"):
        ranked_gallery_import(path=tmp_path / "nope.json", format="itercomp", annotator="e")
    records = tmp_path / "records.json"
    records.write_text("[]")
    with pytest.raises(GalleryImportError, match="unknown category 'records'"):
        ranked_gallery_import(path=records, format="itercomp", annotator="e")
    with pytest.raises(GalleryImportError, match="--annotator"):
        gallery_import(path=records, format="itercomp", category="color")
    with pytest.raises(GalleryImportError, match="--generator"):
        ranked_gallery_import(path=records, format="imagereward", category="color", annotator="e")
    broken = tmp_path / "color.json"
    broken.write_text('[{"prompt": "x",\n "rank": [1,2,}]')
    with pytest.raises(GalleryImportError, match="invalid JSON at line 2"):
        ranked_gallery_import(path=broken, format="itercomp", annotator="e")
    csv_path = tmp_path / "m.csv"
    csv_path.write_text("prompt,model,image\n")
    with pytest.raises(GalleryImportError, match="missing: \\['generator'\\]; unknown: \\['model'\\]"):
        gallery_import(path=csv_path, format="manifest")
    assert state() == (0, 0, 0, 0)
