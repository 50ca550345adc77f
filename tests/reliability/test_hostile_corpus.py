"""Hostile-input corpus, second part (issue 17): prompt files, manifests, images, IterComp records, API
parameters and bodies. Every case gets a refusal naming the line or the limit (a CommandError, a per-row
import error, or a 4xx with a message) and leaves the database *and* the storage exactly as they were: row
counts of every table an import or the API writes, a hash of the rankings, and the list of stored files.
With the 39 cases of test_hostile_input.py (which now check storage too) the corpus holds over 60."""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path

import pytest
from django.contrib.auth import get_user_model
from django.core.management import CommandError, call_command
from django.test import Client
from PIL import Image as PILImage

from annotation.models import TaskImage
from gallery.models import Generator, Prompt
from rankmath.rankformats import ITERCOMP_GALLERY
from tests.consensus import factories as f

from .test_hostile_input import fingerprint, stored_files

pytestmark = pytest.mark.django_db


@dataclass
class Case:
    id: str
    kind: str  # prompts / manifest / itercomp / get / post
    data: object
    expect: str  # a fragment of the message


def _png(seed: int = 0, size=(16, 16)) -> bytes:
    out = io.BytesIO()
    PILImage.new("RGB", size, (seed * 40 % 256, seed * 90 % 256, 7)).save(out, format="PNG")
    return out.getvalue()


LONG = "a red cube " * 300  # 3,300 characters

PROMPT_FILES = [
    Case("nul-byte", "prompts", (b"a cup\nbad \x00 line\n", []), "line 2: NUL byte U+0000"),
    Case("3000-characters", "prompts", (f"ok\n{LONG}\n".encode(), []), "line 2: prompt is 3,299 characters"),
    Case("10-mb-line", "prompts", (b"ok\n" + b"x" * 10_000_000 + b"\n", []), "more than the limit of 1,000"),
    Case("invalid-utf8", "prompts", (b"ok\nbad \xff\xfe here\n", []), "line 2: not valid UTF-8 (byte 0xff"),
    Case("rtl-override", "prompts", ("a \u202ecat\n".encode(), []), "line 1: text direction control U+202E"),
    Case("bidi-isolate", "prompts", ("x\ny\na \u2067dog\u2069\n".encode(), []), "line 3: text direction"),
    Case("bell-control", "prompts", (b"ring \x07 bell\n", []), "control character U+0007"),
    Case("escape-sequence", "prompts", (b"\x1b[31mred\x1b[0m cup\n", []), "control character U+001B"),
    Case(
        "good-lines-then-bad", "prompts", (b"a cup\na mug\n\x00\n", []), "1 line(s) refused, nothing imported"
    ),
    Case("source-too-long", "prompts", (b"a cup\n", ["--source", "s" * 41]), "more than the limit of 40"),
    Case("source-not-slug", "prompts", (b"a cup\n", ["--source", "my source!"]), "must be a slug"),
    Case("licence-too-long", "prompts", (b"a cup\n", ["--licence", "L" * 81]), "more than the limit of 80"),
    Case("pinned-elsewhere", "prompts", (b"a held-out prompt\n", ["--split", "train"]), "pinned to test"),
    Case("second-file-bad", "prompts", ((b"a cup\n", b"\x00\n"), []), "color_b.txt: 1 line(s) refused"),
    Case("unknown-category-file", "prompts", ((b"a cup\n", "weather_train.txt"), []), "unknown category"),
]


def _row(**overrides) -> dict:
    return {"prompt": "a cup", "category": "color", "generator": "sdxl", "image": "ok.png", **overrides}


MANIFESTS = [
    Case("seed-10e30", "manifest", _row(seed=10**30), "outside the 64-bit range"),
    Case("seed-negative-huge", "manifest", _row(seed=-(10**20)), "outside the 64-bit range"),
    Case("seed-float-text", "manifest", _row(seed="1.5"), "seed must be an integer"),
    Case("prompt-nul", "manifest", _row(prompt="a\x00cup"), "NUL byte"),
    Case("prompt-3000", "manifest", _row(prompt=LONG), "more than the limit of 1,000"),
    Case("prompt-bidi", "manifest", _row(prompt="a \u202dcup"), "text direction control U+202D"),
    Case("prompt-only-invisible", "manifest", _row(prompt="\u200b\u200b"), "a prompt cannot be empty"),
    Case("generator-unknown", "manifest", _row(generator="dalle9"), "unknown generator 'dalle9'"),
    Case("params-not-object", "manifest", _row(params=[1, 2]), "params must be a JSON object"),
    Case("image-missing", "manifest", _row(image=""), "missing image"),
    Case("category-unknown", "manifest", _row(category="weather"), "unknown category 'weather'"),
    Case("image-zero-bytes", "manifest", _row(image="empty.png"), "file is empty"),
    Case("image-text-as-jpg", "manifest", _row(image="notes.jpg"), "not an image"),
    Case("image-is-folder", "manifest", _row(image="sub"), "is a folder"),
    Case("image-symlink-out", "manifest", _row(image="link.png"), "path traversal refused"),
    Case("image-too-many-bytes", "manifest", _row(image="big.png"), "more than the limit of 2,000"),
]


def _record(**overrides) -> dict:
    record = {"prompt": "a red cup and a blue mug"}
    record.update({f"image_{name}": f"img/{name}.png" for name in ITERCOMP_GALLERY})
    record["rank"] = "432561"
    record.update(overrides)
    return {k: v for k, v in record.items() if v is not None}


ITERCOMP = [
    Case("rank-repeats", "itercomp", _record(rank="112345"), "more than once: [1]"),
    Case("rank-short", "itercomp", _record(rank="43256"), "must list all 6"),
    Case("rank-letters", "itercomp", _record(rank="43x561"), "only digits"),
    Case("rank-zero", "itercomp", _record(rank=[0, 1, 2, 3, 4, 5]), "must be in 1..6"),
    Case("rank-missing", "itercomp", _record(rank=None), "lacks keys ['rank']"),
    Case("index-not-int", "itercomp", _record(index="seven"), "index must be an integer"),
    Case("prompt-not-string", "itercomp", _record(prompt=["a", "b"]), "prompt must be a string"),
    Case("same-file-twice", "itercomp", _record(image_sdxl="img/sd15.png"), "are identical files"),
    Case("initial-rank-bad", "itercomp", _record(initial_rank="99"), "rank indices must be in 1..2"),
]

HUGE = "9223372036854775808"
GET = [
    Case("pairs-limit-huge", "get", f"/api/pairs/?limit={HUGE}", "must be between 1 and 1000"),
    Case("rankings-limit-huge", "get", f"/api/rankings/?limit={HUGE}", "must be between 1 and 1000"),
    Case("pairs-offset-huge", "get", f"/api/pairs/?offset={HUGE}", "must be between 0 and"),
    Case("pairs-limit-zero", "get", "/api/pairs/?limit=0", "must be between 1 and 1000"),
    Case("pairs-limit-text", "get", "/api/pairs/?limit=all", "is not a whole number"),
    Case("iteration-beyond-int", "get", "/api/pairs/?iteration=99999999999", "iteration: must be between"),
    Case("split-comma-list", "get", "/api/pairs/?split=train,val", "not one value"),
    Case("date-empty", "get", "/api/rankings/?date_to=", "not one value"),
    Case("raw-not-boolean", "get", "/api/export/rankings/csv/?raw=maybe", "is not a boolean"),
    Case("export-hf-inline", "get", "/api/export/pairs/hf/", "too large for one request"),
    Case("api-unknown-path", "get", "/api/nothing/here/", "Not found."),
]
POST = [
    Case("snapshot-array", "post", ("/api/snapshots/", "[]"), "must be a JSON object, not list"),
    Case("snapshot-number", "post", ("/api/snapshots/", "5"), "must be a JSON object, not int"),
    Case("snapshot-string", "post", ("/api/snapshots/", '"all"'), "must be a JSON object, not str"),
    Case("snapshot-null", "post", ("/api/snapshots/", "null"), "must be a JSON object, not NoneType"),
    Case("snapshot-empty-body", "post", ("/api/snapshots/", ""), "send the filters as a JSON object"),
    Case(
        "snapshot-unknown-key", "post", ("/api/snapshots/", '{"prompt": "x"}'), "unknown filter(s) ['prompt']"
    ),
    Case("snapshot-null-value", "post", ("/api/snapshots/", '{"category": null}'), "null is not a filter"),
    Case("snapshot-wrong-type", "post", ("/api/snapshots/", '{"iteration": "1"}'), "has the wrong type"),
    Case("snapshot-form", "post-form", ("/api/snapshots/", "split=train"), "Unsupported media type"),
    Case("export-array", "post", ("/api/exports/", "[1]"), "must be a JSON object"),
    Case(
        "export-kind-format",
        "post",
        ("/api/exports/", '{"kind": "pairs", "format": "itercomp"}'),
        "cannot be",
    ),
    Case(
        "export-extra-field",
        "post",
        ("/api/exports/", '{"kind": "pairs", "format": "csv", "x": 1}'),
        "unknown",
    ),
    Case(
        "export-filters-type",
        "post",
        ("/api/exports/", '{"kind": "pairs", "format": "csv", "filters": {"min_agreement": "high"}}'),
        "has the wrong type",
    ),
    Case("export-form", "post-form", ("/api/exports/", "kind=pairs&format=csv"), "Unsupported media type"),
]
CASES = PROMPT_FILES + MANIFESTS + ITERCOMP + GET + POST


@pytest.fixture
def world(make_user, settings, tmp_path):
    from gallery.services.generators import generators_ensure_itercomp_gallery
    from gallery.services.prompts import category_get, prompts_import_texts

    root = tmp_path / "media"
    default = settings.STORAGES["default"]
    settings.STORAGES = {
        **settings.STORAGES,
        "default": {**default, "OPTIONS": {**default.get("OPTIONS", {}), "location": str(root)}},
    }
    settings.IMAGE_MAX_BYTES = 2000
    generators_ensure_itercomp_gallery()
    researcher = make_user("researcher")
    p = f.prompt("a red cube left of a blue ball", "spatial")
    t, ids = f.task(p)
    f.rank(t, make_user("annotator"), [[i] for i in ids])
    category, sub = category_get(("attribute_binding", "color"))
    prompts_import_texts(texts=["a held-out prompt"], category=category, subcategory=sub, split="test")
    return {"researcher": researcher, "media": root}


def _extended() -> tuple:
    return (
        fingerprint(),
        Generator.objects.count(),
        TaskImage.objects.count(),
        get_user_model().objects.count(),
        list(Prompt.objects.order_by("pk").values_list("text", "split", "split_pinned")),
    )


def _prompt_files(tmp_path: Path, data) -> tuple[list[Path], list[str]]:
    content, args = data
    if isinstance(content, tuple) and isinstance(content[1], str):
        path = tmp_path / content[1]
        path.write_bytes(content[0])
        return [path], args
    contents = content if isinstance(content, tuple) else (content,)
    paths = []
    for suffix, body in zip("ab", contents, strict=False):
        path = tmp_path / f"color_{suffix}.txt"
        path.write_bytes(body)
        paths.append(path)
    return paths, args


def _manifest(tmp_path: Path, row: dict):
    from gallery.services.imports import gallery_import

    folder = tmp_path / "batch"
    folder.mkdir()
    (folder / "ok.png").write_bytes(_png())
    (folder / "big.png").write_bytes(_png(size=(64, 64)) + b"\0" * 3000)
    (folder / "empty.png").write_bytes(b"")
    (folder / "notes.jpg").write_bytes(b"dear diary\n")
    (folder / "sub").mkdir()
    (tmp_path / "outside.png").write_bytes(_png(3))
    (folder / "link.png").symlink_to(tmp_path / "outside.png")
    manifest = folder / "manifest.jsonl"
    manifest.write_text(json.dumps(row) + "\n")
    return gallery_import(path=manifest, format="manifest")


def _itercomp(tmp_path: Path, record: dict):
    from annotation.services.gallery_imports import ranked_gallery_import

    for k, name in enumerate(ITERCOMP_GALLERY):
        target = tmp_path / "img" / f"{name}.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(_png(k + 10))
    path = tmp_path / "color_public.json"
    path.write_text(json.dumps([record]))
    return ranked_gallery_import(path=path, format="itercomp", annotator="hostile-expert")


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_hostile_input_is_refused_by_line_or_limit_and_writes_nothing(case, world, tmp_path):
    before, files_before = _extended(), stored_files()
    if case.kind == "prompts":
        paths, args = _prompt_files(tmp_path, case.data)
        with pytest.raises(CommandError) as refused:
            call_command("import_prompts", *map(str, paths), *args)
        message = str(refused.value)
    elif case.kind in ("manifest", "itercomp"):
        report = (_manifest if case.kind == "manifest" else _itercomp)(tmp_path, case.data)
        assert report.rows_ok == 0 and report.rows_failed == 1, report.summary()
        message = report.errors[0][1]
    else:
        client = Client()
        client.force_login(world["researcher"])
        if case.kind == "get":
            response = client.get(case.data)
        else:
            url, body = case.data
            kind = "application/json" if case.kind == "post" else "application/x-www-form-urlencoded"
            response = client.post(url, body, content_type=kind)
        assert 400 <= response.status_code < 500, (response.status_code, response.content[:300])
        message = response.content.decode(errors="replace")
    assert case.expect in message, message[:500]
    assert _extended() == before
    assert stored_files() == files_before


def test_corpus_has_at_least_sixty_cases():
    from .test_hostile_input import CASES as FIRST

    assert len(CASES) + len(FIRST) >= 60
