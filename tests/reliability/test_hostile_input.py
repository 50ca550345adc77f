"""Hostile input: each malformed input gets a 4xx with a message (or, for gallery imports, a per-row error
naming the problem) and leaves the database exactly as it was (row counts and a hash of the rankings)."""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass

import pytest
from django.test import Client
from PIL import Image as PILImage

from annotation.models import ExportJob, Ranking, RankingTask, TaskClaim
from gallery.models import Image, Prompt
from tests.consensus import factories as f

pytestmark = pytest.mark.django_db


def stored_files() -> list[str]:
    """Every file in the default storage (what an import or export wrote), sorted."""
    from django.core.files.storage import default_storage

    found: list[str] = []

    def walk(folder: str) -> None:
        try:
            folders, files = default_storage.listdir(folder)
        except FileNotFoundError:
            return
        found.extend(f"{folder}/{name}".lstrip("/") for name in files)
        for sub in folders:
            walk(f"{folder}/{sub}".lstrip("/"))

    walk("")
    return sorted(found)


def fingerprint() -> tuple:
    from annotation.models import DatasetSnapshot, PreferencePair

    orderings = json.dumps(list(Ranking.objects.order_by("pk").values_list("pk", "ordering")))
    return (
        Prompt.objects.count(),
        Image.objects.count(),
        RankingTask.objects.count(),
        Ranking.objects.count(),
        TaskClaim.objects.filter(closed_at__isnull=True).count()
        if hasattr(TaskClaim, "closed_at")
        else TaskClaim.objects.count(),
        PreferencePair.objects.count(),
        ExportJob.objects.count(),
        DatasetSnapshot.objects.count(),
        hashlib.sha256(orderings.encode()).hexdigest(),
    )


@dataclass
class Case:
    id: str
    kind: str  # rank / api / token / import
    data: object
    expect: str  # a fragment of the message


RANK = [
    Case("no-ranks", "rank", {}, ""),
    Case("rank-out-of-range", "rank", {"rank_1": "9"}, ""),
    Case("rank-zero", "rank", {"rank_1": "0"}, ""),
    Case("rank-negative", "rank", {"rank_1": "-1"}, ""),
    Case("rank-not-a-number", "rank", {"rank_1": "first"}, ""),
    Case("rank-huge", "rank", {"rank_1": "9" * 400}, ""),
    Case("unknown-label", "rank", {"rank_99": "1"}, ""),
    Case("label-injection", "rank", {"rank_1;DROP TABLE x": "1"}, ""),
    Case("wrong-task-id", "rank", {"task": "999999"}, ""),
    Case("task-id-garbage", "rank", {"task": "'; select 1"}, ""),
    Case("bad-idempotency-key", "rank", {"idempotency_key": "not-a-uuid"}, ""),
    Case("other-annotators-claim", "rank", {"claim": "other"}, ""),
]
API = [
    Case("split-unknown", "api", "/api/pairs/?split=holiday", ""),
    Case("iteration-not-int", "api", "/api/pairs/?iteration=abc", ""),
    Case("date-garbage", "api", "/api/pairs/?date_from=yesterday", ""),
    Case("date-impossible", "api", "/api/pairs/?date_to=2026-02-31", ""),
    Case("min-agreement-nan", "api", "/api/pairs/?min_agreement=nan", ""),
    Case("min-agreement-text", "api", "/api/rankings/?min_agreement=high", ""),
    Case("source-unknown", "api", "/api/rankings/?source=robots", ""),
    Case("export-kind-unknown", "api", "/api/export/users/jsonl/", ""),
    Case("export-format-unknown", "api", "/api/export/pairs/exe/", ""),
    Case("export-format-traversal", "api", "/api/export/pairs/..%2f..%2fetc/", ""),
    Case("export-job-bad-json", "api-post", ("/api/exports/", "{not json"), ""),
    Case("export-job-bad-kind", "api-post", ("/api/exports/", '{"kind": "x", "format": "csv"}'), ""),
    Case("snapshot-bad-filter", "api-post", ("/api/snapshots/", '{"split": ["nope"]}'), ""),
    Case("category-nul-byte", "api", "/api/pairs/?category=a%00b", ""),  # found by schemathesis: was a 500
    Case("figure-unknown", "api", "/api/research/passwords/", ""),
]
TOKENS = [
    Case("token-unknown", "token", "Token 0123456789abcdef0123456789abcdef01234567", ""),
    Case("token-empty", "token", "Token ", ""),
    Case("token-with-spaces", "token", "Token a b c", ""),
    Case("token-sql", "token", "Token ' OR '1'='1", ""),
    Case("token-huge", "token", "Token " + "a" * 10000, ""),
    Case("bearer-scheme", "token", "Bearer abc", ""),
]


def _png(size=(16, 16), mode="RGB") -> bytes:
    out = io.BytesIO()
    PILImage.new(mode, size).save(out, format="PNG")
    return out.getvalue()


IMPORTS = [
    Case("image-truncated", "import", ("cut.png", _png((64, 64))[:-40]), "truncated or corrupt"),
    Case("image-wrong-type", "import", ("notes.png", b"#!/bin/sh\necho hi\n"), "not an image"),
    Case("image-bomb", "import", ("bomb.png", _png((6000, 6000), mode="1")), "more than the limit"),
    Case("path-traversal", "import", ("../secret.png", None), "path traversal refused"),
    Case("absolute-path", "import", ("/etc/passwd", None), "absolute path refused"),
    Case("manifest-not-json", "import", ("{not json", None), "invalid JSON"),
]
CASES = RANK + API + TOKENS + IMPORTS


@pytest.fixture
def setup(make_user):
    annotator, other, researcher = make_user("annotator"), make_user("annotator"), make_user("researcher")
    p = f.prompt("a red cube left of a blue ball", "spatial")
    t, ids = f.task(p)
    f.rank(t, other, [[i] for i in ids])
    claim = TaskClaim.objects.create(
        task=t, annotator=annotator, shown_order=ids, expires_at="2099-01-01T00:00:00Z"
    )
    theirs = TaskClaim.objects.create(
        task=t, annotator=other, shown_order=ids, expires_at="2099-01-01T00:00:00Z"
    )
    return {"annotator": annotator, "researcher": researcher, "claim": claim, "theirs": theirs, "task": t}


def _rank(setup, data: dict):
    client = Client()
    client.force_login(setup["annotator"])
    claim = setup["theirs"] if data.get("claim") == "other" else setup["claim"]
    body = {"task": str(setup["task"].pk), **{f"rank_{k}": str(k) for k in range(1, 7)}}
    if data and set(data) <= {"claim"}:
        pass
    elif "task" in data or "idempotency_key" in data:
        body.update(data)
    else:
        body = {"task": str(setup["task"].pk), **data}
    body = {k: v for k, v in body.items() if k != "claim"}
    return client.post(f"/rank/claims/{claim.pk}/submit/", body)


def _import(tmp_path, name: str, content: bytes | None, settings):
    from gallery.services.generators import generators_ensure_itercomp_gallery
    from gallery.services.imports import gallery_import

    generators_ensure_itercomp_gallery()
    folder = tmp_path / "batch"
    folder.mkdir()
    (tmp_path / "secret.png").write_bytes(_png())
    manifest = folder / "manifest.jsonl"
    if content is not None:
        (folder / name).write_bytes(content)
    if name.startswith("{"):
        manifest.write_text(name + "\n")
    else:
        row = {"prompt": "a cup", "category": "color", "generator": "sdxl", "image": name}
        manifest.write_text(json.dumps(row) + "\n")
    return gallery_import(path=manifest, format="manifest")


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_malformed_input_is_refused_with_a_message_and_changes_nothing(case, setup, tmp_path, settings):
    settings.IMAGE_MAX_PIXELS = 4096 * 4096
    if case.kind == "import":
        from gallery.services.generators import generators_ensure_itercomp_gallery

        generators_ensure_itercomp_gallery()
    before, files_before = fingerprint(), stored_files()
    if case.kind == "import":
        report = _import(tmp_path, *case.data, settings)
        assert report.rows_ok == 0 and report.rows_failed == 1, report.summary()
        assert case.expect in report.errors[0][1], report.errors
    else:
        if case.kind == "rank":
            response = _rank(setup, case.data)
        elif case.kind == "token":
            response = Client().get("/api/pairs/", HTTP_AUTHORIZATION=case.data)
        else:
            client = Client()
            client.force_login(setup["researcher"])
            if case.kind == "api":
                response = client.get(case.data)
            else:
                url, body = case.data
                response = client.post(url, body, content_type="application/json")
        assert 400 <= response.status_code < 500, (response.status_code, response.content[:300])
        body = response.content.decode(errors="replace")
        assert len(body.strip()) > 0, "a refusal says why"
    assert fingerprint() == before
    assert stored_files() == files_before
