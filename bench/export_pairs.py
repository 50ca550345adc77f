#!/usr/bin/env python3
"""Pair export speed and memory, against a database of its own.

    .venv/bin/python bench/export_pairs.py [--pairs 52500] [--big 1000000] [--repeat 3] [--keep]

Creates bench_export_<pid> on the PostgreSQL server of DATABASE_URL (default: the local one), migrates it,
and fills it with COPY: prompts of six images each (15 pairs per prompt). Then measures

  (a) Parquet export of ``--pairs`` pairs through the export path (server-side cursor + values_list +
      pyarrow record batches), best of ``--repeat``;
  (b) the same export the naive way in the same run: the DRF ModelSerializer of the paginated API over the
      whole queryset (select_related), then pyarrow from the list of dicts;
  (c) ``--big`` pairs streamed as JSONL (what StreamingHttpResponse sends) and written as Parquet, each in a
      fresh child process whose peak RSS (VmHWM) is reported next to the RSS of an idle child that
      only imported Django and the exporters.

Drops the database at the end unless --keep. Prints figures; BENCHMARKS.md "## Consensus and export"
records them.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def log(message: str) -> None:
    print(f"[bench] {message}", flush=True)


def _with_db(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, f"/{name}", parts.query, parts.fragment))


def _setup_django(db_url: str) -> None:
    os.environ["DATABASE_URL"] = db_url
    os.environ.setdefault("CELERY_BROKER_URL", "redis://127.0.0.1:6379/14")
    os.environ.setdefault("DEBUG", "1")
    os.environ["DJANGO_SETTINGS_MODULE"] = "config.settings"
    import django

    django.setup()


# --------------------------------------------------------------------------------------------------------
# Data (COPY)
# --------------------------------------------------------------------------------------------------------


def _copy(table: str, columns: list[str], rows) -> int:
    from django.db import connection

    n = 0
    with (
        connection.cursor() as cursor,
        cursor.cursor.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy,
    ):
        for row in rows:
            copy.write_row(row)
            n += 1
    return n


def seed(n_prompts: int, start: int = 0) -> int:
    """``n_prompts`` prompts (ids from ``start`` + 1) of six images each and their 15 pairs."""
    from django.db import connection
    from django.utils import timezone

    from gallery.models import Category, Generator, Subcategory

    now = timezone.now()
    generators = []
    for slug in ("sd15", "sdxl", "sd3", "flux", "rpg", "instancediffusion"):
        generators.append(Generator.objects.get_or_create(slug=slug, defaults={"name": slug.upper()})[0].pk)
    categories = list(Category.objects.order_by("position").values_list("pk", "slug"))
    subs = list(Subcategory.objects.filter(category__slug="attribute_binding").values_list("pk", flat=True))
    splits = ("train", "train", "train", "train", "train", "train", "train", "train", "val", "test")

    def prompts():
        for i in range(start + 1, start + n_prompts + 1):
            category_id, slug = categories[i % len(categories)]
            sub = subs[i % len(subs)] if slug == "attribute_binding" else None
            yield (
                i,
                f"bench prompt {i}: a red object left of a blue one",
                category_id,
                sub,
                "bench",
                "CC-BY-4.0",
                splits[i % 10],
                now,
            )

    def images():
        for i in range(start + 1, start + n_prompts + 1):
            for g, generator_id in enumerate(generators):
                image_id = i * 6 + g
                sha = hashlib.sha256(str(image_id).encode()).hexdigest()
                yield (
                    image_id,
                    i,
                    generator_id,
                    f"images/{sha[:2]}/{sha}.png",
                    sha,
                    "png",
                    1024,
                    1024,
                    "{}",
                    0,
                    "",
                    now,
                )

    def pairs():
        for i in range(start + 1, start + n_prompts + 1):
            category_id = categories[i % len(categories)][0]
            ids = [i * 6 + g for g in range(6)]
            for a in range(6):
                for b in range(a + 1, 6):
                    pair_id = i * 36 + a * 6 + b
                    yield (pair_id, i, category_id, ids[a], ids[b], "human", 0, 1.0, 1.0, now)

    _copy(
        "gallery_prompt",
        ["id", "text", "category_id", "subcategory_id", "source", "licence", "split", "created_at"],
        prompts(),
    )
    _copy(
        "gallery_image",
        [
            "id",
            "prompt_id",
            "generator_id",
            "file",
            "sha256",
            "format",
            "width",
            "height",
            "params",
            "iteration",
            "display_file",
            "created_at",
        ],
        images(),
    )
    n = _copy(
        "annotation_preferencepair",
        [
            "id",
            "prompt_id",
            "category_id",
            "winner_id",
            "loser_id",
            "source",
            "iteration",
            "weight",
            "label",
            "created_at",
        ],
        pairs(),
    )
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE gallery_prompt; ANALYZE gallery_image; ANALYZE annotation_preferencepair;")
    return n


# --------------------------------------------------------------------------------------------------------
# Measurements
# --------------------------------------------------------------------------------------------------------


def export_fast(out: Path) -> int:
    from annotation.exporters.filters import ExportFilters
    from annotation.services.export import ExportSpec, export_write

    spec = ExportSpec(kind="pairs", format="parquet", filters=ExportFilters())
    with open(out, "wb") as fh:
        export_write(spec, fh)
    import pyarrow.parquet as pq

    return pq.read_metadata(out).num_rows


def export_naive(out: Path) -> int:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from annotation.models import PreferencePair
    from annotation.serializers import PreferencePairSerializer

    qs = PreferencePair.objects.select_related("prompt__subcategory", "category", "winner", "loser").order_by(
        "id"
    )
    rows = PreferencePairSerializer(qs, many=True).data
    table = pa.Table.from_pylist([dict(r) for r in rows])
    pq.write_table(table, out)
    return table.num_rows


def child(mode: str, out: str) -> None:
    """Runs in a fresh process: ``idle`` (imports only), ``jsonl`` (stream) or ``parquet``; prints JSON."""
    from annotation.exporters.filters import ExportFilters
    from annotation.services.export import ExportSpec, export_stream, export_write

    started = time.perf_counter()
    rows = 0
    if mode == "jsonl":
        spec = ExportSpec(kind="pairs", format="jsonl", filters=ExportFilters())
        size = 0
        with open(out, "wb") as fh:
            for chunk in export_stream(spec):  # exactly what the StreamingHttpResponse iterates
                fh.write(chunk)
                size += len(chunk)
                rows += chunk.count(b"\n")
    elif mode == "parquet":
        spec = ExportSpec(kind="pairs", format="parquet", filters=ExportFilters())
        with open(out, "wb") as fh:
            export_write(spec, fh)
        import pyarrow.parquet as pq

        rows = pq.read_metadata(out).num_rows
    elapsed = time.perf_counter() - started
    print(json.dumps({"mode": mode, "rows": rows, "seconds": elapsed, "peak_rss_mb": _peak_rss_mb()}))


def _peak_rss_mb() -> float:
    """VmHWM: this process's peak resident set. (ru_maxrss is not used: after fork+exec it can report the
    parent's peak, which would charge the seeding process's memory to the export.)"""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def run_child(db_url: str, mode: str, out: Path) -> dict:
    env = {**os.environ, "DATABASE_URL": db_url}
    result = subprocess.run(
        [sys.executable, __file__, "--child", mode, "--out", str(out)],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=600,
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pairs", type=int, default=52_500)
    parser.add_argument("--big", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--keep", action="store_true")
    parser.add_argument("--child", choices=["idle", "jsonl", "parquet"])
    parser.add_argument("--out")
    args = parser.parse_args()

    base_url = os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
    if args.child:
        _setup_django(base_url)
        child(args.child, args.out or os.devnull)
        return 0

    import psycopg

    name = f"bench_export_{os.getpid()}"
    admin_url = _with_db(base_url, "postgres")
    db_url = _with_db(base_url, name)
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    log(f"database {name}")
    tmp = Path(os.environ.get("TMPDIR", "/tmp")) / name
    tmp.mkdir(parents=True, exist_ok=True)
    try:
        _setup_django(db_url)
        from django.core.management import call_command
        from django.db import connection

        t = time.perf_counter()
        call_command("migrate", verbosity=0)
        log(f"migrated in {time.perf_counter() - t:.1f} s")

        n_prompts = args.pairs // 15
        t = time.perf_counter()
        n = seed(n_prompts)
        log(
            f"seeded {n} pairs ({n_prompts} prompts, {n_prompts * 6} images) by COPY in {time.perf_counter() - t:.1f} s"
        )

        fast_times = []
        for _ in range(args.repeat):
            t = time.perf_counter()
            rows = export_fast(tmp / "fast.parquet")
            fast_times.append(time.perf_counter() - t)
        assert rows == n, (rows, n)
        fast = min(fast_times)
        log(
            f"(a) export path -> Parquet: {rows} pairs in {fast:.2f} s (best of {args.repeat}: "
            f"{', '.join(f'{x:.2f}' for x in fast_times)}) = {rows / fast:,.0f} pairs/s"
        )

        t = time.perf_counter()
        naive_rows = export_naive(tmp / "naive.parquet")
        naive = time.perf_counter() - t
        assert naive_rows == n
        log(
            f"(b) naive DRF serializer -> Parquet: {naive_rows} pairs in {naive:.2f} s; "
            f"export path is {naive / fast:.1f}x faster"
        )

        big_prompts = args.big // 15
        t = time.perf_counter()
        more = seed(big_prompts - n_prompts, start=n_prompts)
        total = n + more
        log(f"seeded up to {total} pairs ({big_prompts * 6} images) in {time.perf_counter() - t:.1f} s")
        connection.close()

        idle = run_child(db_url, "idle", tmp / "idle")
        log(f"(c) idle child (Django + exporters imported): peak RSS {idle['peak_rss_mb']:.0f} MB")
        for mode in ("jsonl", "parquet"):
            result = run_child(db_url, mode, tmp / f"big.{mode}")
            size_mb = (tmp / f"big.{mode}").stat().st_size / 2**20
            log(
                f"(c) {result['rows']} pairs streamed as {mode} in {result['seconds']:.1f} s "
                f"({result['rows'] / result['seconds']:,.0f} pairs/s, {size_mb:.0f} MiB file): "
                f"peak RSS {result['peak_rss_mb']:.0f} MB"
            )
    finally:
        from django.db import connections

        connections.close_all()
        if not args.keep:
            with psycopg.connect(admin_url, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            log(f"dropped {name}")
        for path in tmp.glob("*"):
            path.unlink()
        tmp.rmdir()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
