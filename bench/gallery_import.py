"""Benchmark: import 3,500 prompts × 6 gallery images (synthetic small PNGs) in IterComp format, with ranks.

Creates its own PostgreSQL database (dropped at the end) and media folder, so it never touches the demo:

    .venv/bin/python bench/gallery_import.py [--prompts 3500] [--size 64]

Uses DATABASE_URL's server (default postgresql://postgres@127.0.0.1:5432/postgres) and CELERY_BROKER_URL
(default redis://127.0.0.1:6379/14; nothing is enqueued). Prints the figures recorded in BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

KINDS = ("color", "shape", "texture", "spatial", "non_spatial")


def _db_url(base: str, name: str) -> str:
    parts = urlsplit(base)
    return urlunsplit((parts.scheme, parts.netloc, f"/{name}", parts.query, parts.fragment))


def make_png(rng: random.Random, size: int) -> bytes:
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (size, size), tuple(rng.randrange(256) for _ in range(3)))
    draw = ImageDraw.Draw(image)
    for _ in range(3):  # a few shapes so each file is distinct and compresses like a small real image
        x0, y0 = rng.randrange(size), rng.randrange(size)
        draw.ellipse(
            (x0, y0, x0 + size // 3, y0 + size // 3), fill=tuple(rng.randrange(256) for _ in range(3))
        )
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def write_dataset(folder: Path, n_prompts: int, size: int) -> list[Path]:
    from gallery.promptgen import generate_prompts
    from rankmath.rankformats import ITERCOMP_GALLERY

    rng = random.Random(0)
    per_kind = [n_prompts // len(KINDS) + (i < n_prompts % len(KINDS)) for i in range(len(KINDS))]
    files = []
    for kind, count in zip(KINDS, per_kind, strict=True):
        records = []
        for index, prompt in enumerate(generate_prompts(kind, count, seed=1)):
            record = {"prompt": prompt}
            for name in ITERCOMP_GALLERY:
                relative = f"images/{kind}/{name}/{index:05d}.png"
                (folder / relative).parent.mkdir(parents=True, exist_ok=True)
                (folder / relative).write_bytes(make_png(rng, size))
                record[f"image_{name}"] = relative
            record["index"] = index
            record["rank"] = rng.sample(range(1, 7), 6)
            records.append(record)
        path = folder / f"{kind}_bench.json"
        path.write_text(json.dumps(records))
        files.append(path)
    return files


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=3500)
    parser.add_argument("--size", type=int, default=64, help="side of the synthetic PNGs (px)")
    args = parser.parse_args()

    server = os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
    db_name = f"bench_gallery_{os.getpid()}"
    work = Path(tempfile.mkdtemp(prefix="bench-gallery-"))
    os.environ.update(
        {
            "DATABASE_URL": _db_url(server, db_name),
            "CELERY_BROKER_URL": os.environ.get("CELERY_BROKER_URL", "redis://127.0.0.1:6379/14"),
            "DEBUG": "1",
            "MEDIA_ROOT": str(work / "media"),
            "DJANGO_SETTINGS_MODULE": "config.settings",
        }
    )
    import psycopg

    admin_url = _db_url(server, "postgres")
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{db_name}"')
    try:
        import django

        django.setup()
        from django.core.management import call_command

        call_command("migrate", verbosity=0)
        return run(args, work)
    finally:
        from django.db import connections

        connections.close_all()
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)')
        shutil.rmtree(work, ignore_errors=True)


def _storage_bytes(root: Path) -> tuple[int, int]:
    files = [p for p in root.rglob("*") if p.is_file()]
    return len(files), sum(p.stat().st_size for p in files)


def run(args: argparse.Namespace, work: Path) -> int:
    from annotation.models import Ranking, RankingTask
    from annotation.services.gallery_imports import ranked_gallery_import
    from annotation.services.tasks import ranking_tasks_create_for_complete_galleries
    from gallery.models import Image, Prompt

    data = work / "data"
    t0 = time.perf_counter()
    files = write_dataset(data, args.prompts, args.size)
    n_images = args.prompts * 6
    print(
        f"dataset: {args.prompts} prompts × 6 images = {n_images} PNGs of {args.size}×{args.size} "
        f"({sum(p.stat().st_size for p in data.rglob('*.png')) / 1e6:.1f} MB) written in {time.perf_counter() - t0:.1f} s"
    )

    from django.db import connection

    def import_all(label: str) -> float:
        queries = 0

        def count(execute, sql, params, many, context):
            nonlocal queries
            queries += 1
            return execute(sql, params, many, context)

        start, cpu = time.perf_counter(), time.process_time()
        failed = 0
        with connection.execute_wrapper(count):
            for path in files:
                report = ranked_gallery_import(path=path, format="itercomp", annotator="bench-expert")
                failed += report.rows_failed
        elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
        print(
            f"{label}: {elapsed:.1f} s wall ({cpu:.1f} s CPU in this process) — {args.prompts / elapsed:.0f} "
            f"prompts/s, {n_images / elapsed:.0f} images/s ({1000 * elapsed / n_images:.2f} ms/image); "
            f"{queries / args.prompts:.1f} SQL statements per prompt; {failed} failed rows"
        )
        return elapsed

    first = import_all("first import (validate, store original + WebP derivative, rows, task, ranking)")
    counts = (
        Prompt.objects.count(),
        Image.objects.count(),
        RankingTask.objects.count(),
        Ranking.objects.count(),
    )
    files_stored, bytes_stored = _storage_bytes(work / "media")
    print(
        f"rows: {counts[0]} prompts, {counts[1]} images, {counts[2]} tasks, {counts[3]} rankings; "
        f"storage: {files_stored} files, {bytes_stored / 1e6:.1f} MB"
    )
    second = import_all("re-import (idempotent: everything already present)")
    after = (
        Prompt.objects.count(),
        Image.objects.count(),
        RankingTask.objects.count(),
        Ranking.objects.count(),
    )
    assert after == counts, (after, counts)
    start = time.perf_counter()
    report = ranking_tasks_create_for_complete_galleries()
    print(
        f"ranking-task pass over {report.complete_galleries} complete galleries: "
        f"{report.created} new, {report.existing} existing in {time.perf_counter() - start:.1f} s"
    )
    print(f"SUMMARY first={first:.1f}s reimport={second:.1f}s images={n_images}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
