"""Round trips of the three gallery formats (manifest, IterComp, ImageReward) and idempotent re-imports."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command

from annotation.gallery_exports import export_imagereward, export_itercomp
from annotation.models import Ranking, RankingTask, TaskStatus
from gallery.exports import export_manifest
from gallery.models import Generator, Image, Prompt
from rankmath.rankformats import ITERCOMP_GALLERY

from .conftest import png_bytes, write_itercomp

pytestmark = pytest.mark.django_db


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def counts() -> tuple[int, ...]:
    return (
        Prompt.objects.count(),
        Image.objects.count(),
        RankingTask.objects.count(),
        Ranking.objects.count(),
    )


def test_itercomp_round_trip_imports_ranks_as_the_named_annotator(tmp_path, itercomp_generators):
    src = tmp_path / "src"
    path = write_itercomp(
        src,
        [
            {"prompt": "a green bench and a red car", "rank": [4, 3, 5, 2, 1, 6], "index": 17},
            {"prompt": "a red bench and a green car", "rank": "615243", "index": 18},
        ],
    )
    call_command(
        "import_gallery", str(path), "--format", "itercomp", "--annotator", "expert1", "--no-progress"
    )
    expert = get_user_model().objects.get(username="expert1")
    assert expert.profile.role == "annotator" and not expert.has_usable_password()
    assert counts() == (2, 12, 2, 2)
    prompt = Prompt.objects.get(text="a green bench and a red car")
    assert (prompt.category.slug, prompt.subcategory.slug) == ("attribute_binding", "color")  # from file name
    ranking = Ranking.objects.get(task__prompt=prompt)
    assert ranking.source == "import" and ranking.annotator == expert
    by_id = {image.pk: image.generator.slug for image in Image.objects.filter(prompt=prompt)}
    assert [by_id[group[0]] for group in ranking.ordering] == [
        "flux",
        "sd3",
        "rpg",
        "sdxl",
        "sd15",
        "instancediffusion",
    ]
    assert ranking.task.task_images.count() == 6 and ranking.task.required_rankings == 3

    out = tmp_path / "out" / "itercomp.json"
    written, skipped = export_itercomp(out_path=out, annotator=expert)
    assert (written, skipped) == (2, 0)
    original = {r["prompt"]: r for r in json.loads(path.read_text())}
    for record in json.loads(out.read_text()):
        source = original[record["prompt"]]
        expected_rank = (
            source["rank"] if isinstance(source["rank"], list) else [int(c) for c in source["rank"]]
        )
        assert record["rank"] == expected_rank and record["index"] == source["index"]
        for name in ITERCOMP_GALLERY:
            key = f"image_{name}"
            assert sha(out.parent / record[key]) == sha(src / source[key])

    # The export imports back into the same rows: nothing new.
    call_command(
        "import_gallery",
        str(out),
        "--format",
        "itercomp",
        "--annotator",
        "expert1",
        "--category",
        "color",
        "--no-progress",
    )
    call_command(
        "import_gallery", str(path), "--format", "itercomp", "--annotator", "expert1", "--no-progress"
    )
    assert counts() == (2, 12, 2, 2)
    # A second expert's ranks land on the same tasks.
    call_command(
        "import_gallery", str(path), "--format", "itercomp", "--annotator", "expert2", "--no-progress"
    )
    assert counts() == (2, 12, 2, 4)


def test_imagereward_round_trip_keeps_ties(tmp_path, db):
    Generator.objects.create(name="ImageReward mix", slug="imagereward-mix")
    src = tmp_path / "src"
    (src / "gen").mkdir(parents=True)
    records = []
    rankings = {"r1": [1, 2, 1, 4, 3, 4], "r2": [2, 1, 3, 3], "r3": [1, 2, 3]}
    for n, (record_id, ranking) in enumerate(rankings.items()):
        generations = []
        for k in range(len(ranking)):
            relative = f"gen/{record_id}-{k}.png"
            (src / relative).write_bytes(png_bytes(100 * n + k))
            generations.append(relative)
        records.append(
            {
                "id": record_id,
                "prompt": f"a cat on top of a box {n}",
                "generations": generations,
                "ranking": ranking,
            }
        )
    path = src / "records.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    call_command(
        "import_gallery", str(path), "--format", "imagereward", "--generator", "imagereward-mix",
        "--category", "spatial", "--annotator", "ir-expert", "--no-progress",
    )  # fmt: skip
    assert counts() == (3, 13, 3, 3)
    tied = Ranking.objects.get(task__prompt__text="a cat on top of a box 0")
    assert [len(group) for group in tied.ordering] == [2, 1, 1, 2]

    out = tmp_path / "out" / "ir.json"
    assert export_imagereward(out_path=out, annotator=get_user_model().objects.get(username="ir-expert")) == 3
    for source, record in zip(
        records, sorted(json.loads(out.read_text()), key=lambda r: r["id"]), strict=True
    ):
        assert record["id"] == source["id"] and record["prompt"] == source["prompt"]
        original = {
            sha(src / g): rank for g, rank in zip(source["generations"], source["ranking"], strict=True)
        }
        exported = {
            sha(out.parent / g): rank
            for g, rank in zip(record["generations"], record["ranking"], strict=True)
        }
        assert exported == original
    call_command(
        "import_gallery", str(path), "--format", "imagereward", "--generator", "imagereward-mix",
        "--category", "spatial", "--annotator", "ir-expert", "--no-progress",
    )  # fmt: skip
    assert counts() == (3, 13, 3, 3)


@pytest.mark.parametrize("suffix", ["csv", "jsonl"])
def test_manifest_round_trip_with_seeds_and_params(tmp_path, itercomp_generators, suffix):
    src = tmp_path / "src"
    (src / "imgs").mkdir(parents=True)
    rows = []
    for n, (prompt, category, generator) in enumerate(
        [
            ("a wooden chair and a glass vase", "texture", "sdxl"),
            ("a wooden chair and a glass vase", "texture", "flux"),
            ("a horse below a bird", "spatial", "sd3"),
            ("a man holding an umbrella", "non_spatial", "rpg"),
        ]
    ):
        (src / f"imgs/{n}.png").write_bytes(png_bytes(n, (24, 20)))
        rows.append(
            {"prompt": prompt, "category": category, "generator": generator, "image": f"imgs/{n}.png",
             "seed": n * 11 if n != 3 else None, "params": {"steps": 30, "guidance": 5.5} if n != 3 else {}}
        )  # fmt: skip
    path = src / f"manifest.{suffix}"
    if suffix == "csv":
        with open(path, "w", newline="") as handle:
            writer = csv.DictWriter(
                handle, fieldnames=["prompt", "category", "generator", "image", "seed", "params"]
            )
            writer.writeheader()
            for row in rows:
                writer.writerow(
                    {
                        **row,
                        "seed": "" if row["seed"] is None else row["seed"],
                        "params": json.dumps(row["params"]),
                    }
                )
    else:
        path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    call_command("import_gallery", str(path), "--format", "manifest", "--no-progress")
    assert counts() == (3, 4, 0, 0)

    out = tmp_path / "out" / f"manifest.{suffix}"
    assert export_manifest(out_path=out) == 4
    call_command("import_gallery", str(out), "--format", "manifest", "--no-progress")
    assert counts() == (3, 4, 0, 0)
    if suffix == "csv":
        with open(out, newline="") as handle:
            exported = [
                {**r, "seed": int(r["seed"]) if r["seed"] else None, "params": json.loads(r["params"])}
                for r in csv.DictReader(handle)
            ]
    else:
        exported = [json.loads(line) for line in out.read_text().splitlines()]

    def key(row, folder):
        return (
            row["prompt"],
            row["category"],
            row["generator"],
            sha(folder / row["image"]),
            row["seed"],
            json.dumps(row["params"], sort_keys=True),
        )

    assert sorted(key(r, out.parent) for r in exported) == sorted(key(r, src) for r in rows)


def test_folder_import_reads_t2i_compbench_sample_names(tmp_path, itercomp_generators):
    root = tmp_path / "color_samples"
    for g, generator in enumerate(("sd15", "sdxl")):
        (root / generator).mkdir(parents=True)
        for k in range(2):
            (root / generator / f"a blue cup and a red book_{k:06d}.png").write_bytes(png_bytes(10 * g + k))
    (root / ".DS_Store").write_bytes(b"junk")
    call_command("import_gallery", str(root), "--format", "folder", "--no-progress")
    prompt = Prompt.objects.get()
    assert (prompt.text, prompt.subcategory.slug) == ("a blue cup and a red book", "color")
    assert sorted(prompt.images.values_list("generator__slug", flat=True)) == ["sd15", "sd15", "sdxl", "sdxl"]
    call_command("import_gallery", str(root), "--format", "folder", "--no-progress")
    assert Image.objects.count() == 4


def test_imported_task_completes_once_it_has_its_required_rankings(tmp_path, itercomp_generators, settings):
    settings.RANKINGS_PER_TASK = 2
    path = write_itercomp(tmp_path, [{"prompt": "a pink hat and a gray box", "rank": [1, 2, 3, 4, 5, 6]}])
    call_command("import_gallery", str(path), "--format", "itercomp", "--annotator", "a1", "--no-progress")
    assert RankingTask.objects.get().status == TaskStatus.OPEN
    call_command("import_gallery", str(path), "--format", "itercomp", "--annotator", "a2", "--no-progress")
    assert RankingTask.objects.get().status == TaskStatus.COMPLETE
