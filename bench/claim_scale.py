#!/usr/bin/env python3
"""The claim path at scale: next-task claim and ranking submit against 10,000 and 1,000,000 images.

    nice -n 19 .venv/bin/python bench/claim_scale.py [--sizes 10000,1000000] [--ops 300] [--refill]

For each size N it keeps a database ``itercomp_bench_<10k|1m>`` on the PostgreSQL server of
``DATABASE_URL`` (default 127.0.0.1:5432, user postgres), migrates it (so new index migrations apply to an
existing fill) and, when it is empty or ``--refill`` is given, fills it with bulk SQL
(``INSERT … SELECT generate_series``, never the ORM per row):

- N images, six per prompt (one per generator), one ranking task of K=3 per prompt (N/6 tasks, the three
  categories interleaved), 200 annotators;
- a ranking history: the first 60 % of tasks (in id order, as the queue hands them out) are complete with
  3 rankings and 3 submitted claims each (every tenth asked for a 4th ranking after low agreement, 1 in 200
  retired by an admin, 1 in 50 also skipped once: a released claim and a skip flag), a consensus row each;
  the next 100 tasks are the frontier: 0–2 rankings, one active claim (half of them lapsed leases) — the
  same 100 at both sizes, as work in flight depends on how many annotators are active, not on the gallery
  size; the rest open and untouched;
- 30 gold tasks per category (a curated set whose size does not grow with the gallery), ranked by every
  annotator at the 10 % gold rate (so at 1M every annotator has exhausted them, at 10k few have).

Then, in one process and on one connection, it measures ``task_claim_next`` and ``ranking_submit``
(annotation/services/claims.py and submission.py, the services the views call, Celery publish of the
consensus recompute included) alternately on both databases in blocks of 25, so both sizes see the same
machine load; 20 operations per size are a warm-up. It prints p50/p95/p99 per size and the 1M/10k ratios,
and writes every statement of one claim and one submit with its ``EXPLAIN (ANALYZE, BUFFERS)`` to
``bench/out/claim_scale_plans_<size>.txt`` (run inside a savepoint that is rolled back before the real
statement runs). The PostgreSQL backends this script uses are reniced to 19 like the script itself.

Databases are kept for the next run (``--drop`` removes them). BENCHMARKS.md "Claim path at scale" has
the figures.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
OUT = ROOT / "bench" / "out"

N_GENERATORS = 6
N_ANNOTATORS = 200
REQUIRED = 3
GOLD_PER_CATEGORY = 30
COMPLETE_FRACTION = 0.60
FRONTIER_TASKS = 100
BLOCK = 25
WARMUP = 20


def log(message: str) -> None:
    print(f"[claim_scale] {message}", flush=True)


def _with_db(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, f"/{name}", parts.query, parts.fragment))


DB_PREFIX = "itercomp_bench_"


def size_label(n_images: int) -> str:
    return f"{n_images // 1_000_000}m" if n_images % 1_000_000 == 0 else f"{n_images // 1000}k"


def db_name(n_images: int, prefix: str = DB_PREFIX) -> str:
    return f"{prefix}{size_label(n_images)}"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def renice_backend(conn) -> None:
    """The server's backend for this connection runs at nice 19 too (the machine is shared)."""
    pid = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
    try:
        os.setpriority(os.PRIO_PROCESS, pid, 19)
    except (PermissionError, ProcessLookupError):
        log(f"could not renice PostgreSQL backend {pid} (not root, or a remote server)")


# --------------------------------------------------------------------------------------------------------
# Filling (bulk SQL on one psycopg connection)
# --------------------------------------------------------------------------------------------------------

# Everything is computed from g, the task's ordinal 0..T-1: prompt id p0+g, task id t0+g, image ids
# i0+6g..i0+6g+5; annotator a(g, k) = (7g + 61k) mod 200 is the k-th ranker of task g (distinct for k<4).
FILL_SQL = """
CREATE TEMP TABLE fill_params AS SELECT
    %(T)s::bigint AS t_count, %(A)s::int AS a_count,
    (SELECT coalesce(max(id), 0) + 1 FROM gallery_prompt) AS p0,
    (SELECT coalesce(max(id), 0) + 1 FROM annotation_rankingtask) AS t0,
    (SELECT coalesce(max(id), 0) + 1 FROM gallery_image) AS i0,
    floor(%(T)s * %(complete)s)::bigint AS g_complete,
    floor(%(T)s * %(complete)s)::bigint + %(frontier)s AS g_frontier;

CREATE TEMP TABLE fill_annotators AS
    SELECT (row_number() OVER (ORDER BY id)) - 1 AS a, id AS user_id
    FROM auth_user WHERE username LIKE 'scale-annotator-%%';

CREATE TEMP TABLE fill_generators AS
    SELECT (row_number() OVER (ORDER BY id)) - 1 AS i, id AS generator_id
    FROM gallery_generator WHERE slug LIKE 'scale-gen-%%';

CREATE TEMP TABLE fill_categories AS
    SELECT (row_number() OVER (ORDER BY id)) - 1 AS c, id AS category_id FROM gallery_category;

INSERT INTO gallery_prompt (id, text, category_id, subcategory_id, source, licence, split, split_pinned, created_at)
SELECT p.p0 + g, 'scale prompt ' || g || ': a red cube to the left of a blue ball', c.category_id, NULL,
       'bench', '', CASE WHEN g %% 10 < 8 THEN 'train' WHEN g %% 10 = 8 THEN 'val' ELSE 'test' END, false,
       now() - interval '200 days'
FROM fill_params p, generate_series(0, p.t_count - 1) g
JOIN fill_categories c ON c.c = g %% (SELECT count(*) FROM fill_categories);

INSERT INTO gallery_image (id, file, sha256, format, width, height, seed, params, iteration, display_file,
                           created_at, generator_id, prompt_id)
SELECT p.i0 + 6 * g + gen.i, 'images/' || md5(g || '-' || gen.i) || '.png',
       md5(g || '-' || gen.i) || md5(gen.i || '-' || g), 'PNG', 1024, 1024, g, '{}'::jsonb, 0,
       'display/' || md5(g || '-' || gen.i) || '.webp', now() - interval '200 days', gen.generator_id, p.p0 + g
FROM fill_params p, generate_series(0, p.t_count - 1) g, fill_generators gen;

INSERT INTO annotation_rankingtask (id, required_rankings, status, is_gold, gold_ordering, iteration, created_at,
                                    prompt_id)
SELECT p.t0 + g,
       CASE WHEN g < p.g_complete AND g %% 10 = 3 THEN 4 ELSE 3 END,
       CASE WHEN g < p.g_complete AND g %% 200 = 1 THEN 'retired'
            WHEN g < p.g_complete THEN 'complete' ELSE 'open' END,
       false, NULL, 0, now() - interval '200 days', p.p0 + g
FROM fill_params p, generate_series(0, p.t_count - 1) g;

INSERT INTO annotation_taskimage (task_id, image_id, position)
SELECT p.t0 + g, p.i0 + 6 * g + pos, pos
FROM fill_params p, generate_series(0, p.t_count - 1) g, generate_series(0, 5) pos;

-- Who ranked what: complete tasks have required_rankings rankers, frontier tasks g mod 3 of them.
CREATE TEMP TABLE fill_rankers AS
SELECT g, k, (7 * g + 61 * k) %% p.a_count AS a,
       -- spread over the last 180 days in queue order
       now() - make_interval(secs => (180 * 86400.0) * (1 - g::float8 / p.t_count) - 600 * k) AS at
FROM fill_params p, generate_series(0, p.g_frontier - 1) g, generate_series(0, 3) k
WHERE (g < p.g_complete AND k < CASE WHEN g %% 10 = 3 THEN 4 ELSE 3 END)
   OR (g >= p.g_complete AND k < g %% 3);

INSERT INTO annotation_taskclaim (task_id, annotator_id, status, shown_order, claimed_at, expires_at)
SELECT p.t0 + r.g, fa.user_id, 'submitted',
       (SELECT jsonb_agg(p.i0 + 6 * r.g + ((pos * 5 + r.g + r.k + 1) %% 6) ORDER BY pos) FROM generate_series(0, 5) pos),
       r.at - interval '2 minutes', r.at + interval '13 minutes'
FROM fill_rankers r JOIN fill_annotators fa ON fa.a = r.a, fill_params p;

INSERT INTO annotation_ranking (task_id, annotator_id, ordering, shown_order, time_spent_ms, idempotency_key,
                                source, created_at, updated_at)
SELECT p.t0 + r.g, fa.user_id,
       (SELECT jsonb_agg(jsonb_build_array(p.i0 + 6 * r.g + ((pos * 5 + r.g + r.k) %% 6)) ORDER BY pos)
        FROM generate_series(0, 5) pos),
       (SELECT jsonb_agg(p.i0 + 6 * r.g + ((pos * 5 + r.g + r.k + 1) %% 6) ORDER BY pos) FROM generate_series(0, 5) pos),
       20000 + (r.g * 7919 + r.k * 104729) %% 60000, md5('scale-' || r.g || '-' || r.k)::uuid, 'browser', r.at, r.at
FROM fill_rankers r JOIN fill_annotators fa ON fa.a = r.a, fill_params p;

-- Skips: 1 in 50 complete tasks was skipped once by a fifth annotator (released claim + skip flag).
INSERT INTO annotation_taskclaim (task_id, annotator_id, status, shown_order, claimed_at, expires_at)
SELECT p.t0 + g, fa.user_id, 'released', '[]'::jsonb, now() - interval '190 days', now() - interval '190 days'
FROM fill_params p, generate_series(0, p.g_complete - 1) g
JOIN fill_annotators fa ON fa.a = (7 * g + 61 * 4) %% (SELECT a_count FROM fill_params)
WHERE g %% 50 = 0;
INSERT INTO annotation_taskflag (kind, reason, created_at, resolved_at, resolution, annotator_id, resolved_by_id,
                                 task_id)
SELECT 'skip', '', c.claimed_at, NULL, '', c.annotator_id, NULL, c.task_id
FROM annotation_taskclaim c WHERE c.status = 'released';

-- Frontier: one more claim per task, active; half of the leases lapsed (the queue expires them lazily).
INSERT INTO annotation_taskclaim (task_id, annotator_id, status, shown_order, claimed_at, expires_at)
SELECT p.t0 + g, fa.user_id, 'active', '[]'::jsonb, now() - interval '5 minutes',
       CASE WHEN g %% 2 = 0 THEN now() + interval '10 minutes' ELSE now() - interval '1 minute' END
FROM fill_params p, generate_series(p.g_complete, p.g_frontier - 1) g
JOIN fill_annotators fa ON fa.a = (7 * g + 61 * (g %% 3)) %% (SELECT a_count FROM fill_params);

INSERT INTO annotation_consensusranking (ordering, method, scores, n_rankings, kendall_w, updated_at, task_id)
SELECT '[]'::jsonb, 'borda', '{}'::jsonb, 3, 0.5 + (g %% 50) / 100.0, now(), p.t0 + g
FROM fill_params p, generate_series(0, p.g_complete - 1) g;

-- Gold: 30 per category on the last prompts' images, ranked by each annotator on every tenth claim.
INSERT INTO annotation_rankingtask (id, required_rankings, status, is_gold, gold_ordering, iteration,
                                    created_at, prompt_id)
SELECT p.t0 + p.t_count + g - (p.t_count - 3 * %(gold)s), 1000, 'open', true,
       (SELECT jsonb_agg(jsonb_build_array(p.i0 + 6 * g + pos) ORDER BY pos) FROM generate_series(0, 5) pos),
       0, now() - interval '200 days', p.p0 + g
FROM fill_params p, generate_series(p.t_count - 3 * %(gold)s, p.t_count - 1) g;
INSERT INTO annotation_taskimage (task_id, image_id, position)
SELECT t.id, p.i0 + 6 * (t.prompt_id - p.p0) + pos, pos
FROM annotation_rankingtask t, fill_params p, generate_series(0, 5) pos WHERE t.is_gold;
CREATE TEMP TABLE fill_gold AS
SELECT t.id AS task_id, fa.user_id, now() - interval '100 days' AS at
FROM (SELECT id, row_number() OVER (ORDER BY id) - 1 AS j FROM annotation_rankingtask WHERE is_gold) t
CROSS JOIN fill_annotators fa
WHERE t.j < least(3 * %(gold)s,
                  (SELECT count(*) FROM annotation_ranking r WHERE r.annotator_id = fa.user_id) / 10);
INSERT INTO annotation_taskclaim (task_id, annotator_id, status, shown_order, claimed_at, expires_at)
SELECT task_id, user_id, 'submitted', '[]'::jsonb, at, at + interval '15 minutes' FROM fill_gold;
INSERT INTO annotation_ranking (task_id, annotator_id, ordering, shown_order, time_spent_ms, idempotency_key,
                                source, created_at, updated_at)
SELECT task_id, user_id, '[]'::jsonb, '[]'::jsonb, 30000, md5('gold-' || task_id || '-' || user_id)::uuid,
       'browser', at, at
FROM fill_gold;
"""

SEQUENCES = [
    "gallery_prompt",
    "gallery_image",
    "annotation_rankingtask",
    "annotation_taskimage",
    "annotation_taskclaim",
    "annotation_ranking",
    "annotation_taskflag",
    "annotation_consensusranking",
]


# rankmath.selection.selection_draw in SQL (the first 8 bytes of the SHA-256 of "selection:<prompt>:<sorted
# image ids>" over 2**64), and the random policy's priority, which is the draw: the queue in the order the
# app hands a gallery out when no policy has scored it.
SELECTION_SQL = """
WITH draws AS (
    SELECT t.id, ('x' || left(encode(sha256(convert_to(
               'selection:' || t.prompt_id || ':' || string_agg(ti.image_id::text, ',' ORDER BY ti.image_id),
               'UTF8')), 'hex'), 16))::bit(64)::bigint AS h
    FROM annotation_rankingtask t JOIN annotation_taskimage ti ON ti.task_id = t.id
    GROUP BY t.id
)
UPDATE annotation_rankingtask t
SET selection_draw = (CASE WHEN d.h < 0 THEN d.h + 2.0 ^ 64 ELSE d.h END) / 2.0 ^ 64,
    priority = (CASE WHEN d.h < 0 THEN d.h + 2.0 ^ 64 ELSE d.h END) / 2.0 ^ 64
FROM draws d WHERE d.id = t.id
"""


def _has_selection_columns(conn) -> bool:
    """Whether the schema has the active-selection columns (issue #19); the bench also runs on code from
    before them, to compare the claim path with and without the priority order."""
    row = conn.execute(
        "SELECT count(*) FROM information_schema.columns"
        " WHERE table_name = 'annotation_rankingtask' AND column_name IN ('selection_draw', 'priority')"
    ).fetchone()
    return row[0] == 2


def fill(url: str, n_images: int) -> None:
    import psycopg

    n_tasks = n_images // N_GENERATORS
    with psycopg.connect(url, autocommit=True) as conn:
        renice_backend(conn)
        conn.execute("SET synchronous_commit = off")
        conn.execute("SET maintenance_work_mem = '256MB'")
        selection = _has_selection_columns(conn)
        if selection:
            # The fill's task INSERTs name no selection columns; a temporary default lets them in and
            # SELECTION_SQL then gives every task the draw the app would have given it. (Outside the fill's
            # transaction: its deferred foreign-key checks forbid an ALTER TABLE inside it.)
            conn.execute(
                "ALTER TABLE annotation_rankingtask ALTER COLUMN selection_draw SET DEFAULT 0,"
                " ALTER COLUMN priority SET DEFAULT 0"
            )
        with conn.transaction():
            # The small tables through plain INSERTs: 6 generators, 200 users with annotator profiles.
            conn.execute(
                "INSERT INTO gallery_generator (name, slug, kind, weights_uri, pipeline_class, joined_iteration,"
                " base_iteration, default_params, description, created_at, itercomp_name)"
                " SELECT 'scale-gen-' || i, 'scale-gen-' || i, 'gallery', '', '', 0, NULL, '{}', '', now(), ''"
                " FROM generate_series(0, %s) i",
                [N_GENERATORS - 1],
            )
            conn.execute(
                "INSERT INTO auth_user (password, is_superuser, username, first_name, last_name, email,"
                " is_staff, is_active, date_joined)"
                " SELECT '!', false, 'scale-annotator-' || lpad(a::text, 4, '0'), '', '', '', false, true, now()"
                " FROM generate_series(0, %s) a",
                [N_ANNOTATORS - 1],
            )
            conn.execute(
                "INSERT INTO annotation_annotatorprofile (user_id, role, weight, created_at)"
                " SELECT id, 'annotator', 1.0, now() FROM auth_user WHERE username LIKE 'scale-annotator-%'"
            )
            started = time.perf_counter()
            for statement in FILL_SQL.split(";\n"):
                if not statement.strip():
                    continue
                t = time.perf_counter()
                cur = conn.execute(
                    statement,
                    {
                        "T": n_tasks,
                        "A": N_ANNOTATORS,
                        "complete": COMPLETE_FRACTION,
                        "frontier": FRONTIER_TASKS,
                        "gold": GOLD_PER_CATEGORY,
                    },
                )
                head = " ".join(statement.split())[:70]
                log(f"  {time.perf_counter() - t:6.1f}s  {cur.rowcount:>9} rows  {head}")
            if selection:
                t = time.perf_counter()
                cur = conn.execute(SELECTION_SQL)
                log(f"  {time.perf_counter() - t:6.1f}s  {cur.rowcount:>9} rows  selection draw and priority")
            for table in SEQUENCES:
                conn.execute(
                    f"SELECT setval(pg_get_serial_sequence('{table}', 'id'),"
                    f" (SELECT coalesce(max(id), 1) FROM {table}))"
                )
            log(f"fill of {n_images:,} images: {time.perf_counter() - started:.0f}s")
        if selection:
            conn.execute(
                "ALTER TABLE annotation_rankingtask ALTER COLUMN selection_draw DROP DEFAULT,"
                " ALTER COLUMN priority DROP DEFAULT"
            )
        t = time.perf_counter()
        conn.execute("VACUUM (ANALYZE)")
        log(f"VACUUM ANALYZE {time.perf_counter() - t:.0f}s")


def ensure_database(
    base_url: str, n_images: int, *, refill: bool, env: dict[str, str], prefix: str = DB_PREFIX
) -> str:
    import psycopg

    name = db_name(n_images, prefix)
    url = _with_db(base_url, name)
    with psycopg.connect(_with_db(base_url, "postgres"), autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone()
        if exists and refill:
            conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
            exists = None
        if not exists:
            conn.execute(f'CREATE DATABASE "{name}"')
    log(f"{name}: migrate")
    subprocess.run(
        [PY, "manage.py", "migrate", "-v", "0"], cwd=ROOT, env={**env, "DATABASE_URL": url}, check=True
    )
    with psycopg.connect(url, autocommit=True) as conn:
        have = conn.execute("SELECT count(*) FROM gallery_image").fetchone()[0]
    if have == 0:
        log(f"{name}: filling {n_images:,} images")
        fill(url, n_images)
    elif have != n_images // N_GENERATORS * N_GENERATORS:
        raise SystemExit(f"{name} holds {have} images, not {n_images}; rerun with --refill")
    else:
        log(f"{name}: already filled ({have:,} images)")
    return name


# --------------------------------------------------------------------------------------------------------
# Measuring (in this process, after django.setup(), switching the one connection between databases)
# --------------------------------------------------------------------------------------------------------


def use_database(name: str) -> None:
    from django.db import connection

    connection.close()
    connection.settings_dict["NAME"] = name
    connection.ensure_connection()
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        pid = cursor.fetchone()[0]
    with contextlib.suppress(PermissionError, ProcessLookupError):
        os.setpriority(os.PRIO_PROCESS, pid, 19)


class Driver:
    """Claims and submits for the bench annotators of one database, round-robin over categories."""

    def __init__(self, name: str) -> None:
        from django.contrib.auth import get_user_model

        from gallery.models import Category

        self.name = name
        use_database(name)
        User = get_user_model()
        # The bench annotators are ones with a history (the first 20 of the 200).
        self.users = list(User.objects.filter(username__startswith="scale-annotator-").order_by("id")[:20])
        self.categories = list(Category.objects.order_by("id"))
        self.i = 0
        self.claim_ms: list[float] = []
        self.submit_ms: list[float] = []
        self.empty = 0

    def one(self, *, record: bool = True) -> None:
        from annotation.services.claims import task_claim_next
        from annotation.services.submission import ranking_submit

        user = self.users[self.i % len(self.users)]
        category = self.categories[(self.i // len(self.users)) % len(self.categories)]
        self.i += 1
        t = time.perf_counter()
        claim = task_claim_next(annotator=user, category=category)
        claim_ms = (time.perf_counter() - t) * 1000
        if claim is None:
            self.empty += 1
            return
        n = len(claim.shown_order)
        fields = {f"rank_{label}": [str(n + 1 - label)] for label in range(1, n + 1)}
        t = time.perf_counter()
        ranking_submit(claim_id=claim.pk, annotator=user, fields=fields, idempotency_key=uuid.uuid4())
        submit_ms = (time.perf_counter() - t) * 1000
        if record:
            self.claim_ms.append(claim_ms)
            self.submit_ms.append(submit_ms)


def explain_one(driver: Driver) -> str:
    """Every statement of one claim and one submit, each with EXPLAIN (ANALYZE, BUFFERS) run first and
    rolled back (so the plan's side effects never happen), then the real statement; and, from the next
    claims, the first draw from the gold pool (every tenth claim looks there first)."""
    from django.db import connection

    report: list[str] = []
    state = {"all": True, "gold_seen": False}

    def wrapper(execute, sql, params, many, context):
        raw = context["cursor"].cursor
        head = sql.lstrip().split(None, 1)[0].upper()
        # A gold turn's draw: ordered gold first (one draw over both pools), or, before that, a draw
        # from the gold pool alone (neither the ordinary pool's NOT is_gold nor the ordinary order).
        gold_draw = "FOR NO KEY UPDATE" in sql and (
            '"is_gold" DESC' in sql
            or ('"is_gold" ASC' not in sql and 'NOT "annotation_rankingtask"."is_gold"' not in sql)
        )
        wanted = state["all"] or (gold_draw and not state["gold_seen"])
        if wanted and head in {"SELECT", "WITH", "UPDATE", "INSERT"} and not many:
            state["gold_seen"] = state["gold_seen"] or gold_draw
            # Inside the claim's transaction a savepoint undoes the EXPLAIN's writes and locks; after
            # commit (the submit's completion update) a transaction of its own does.
            inside = connection.in_atomic_block
            raw.execute("SAVEPOINT bench_explain" if inside else "BEGIN")
            raw.execute("EXPLAIN (ANALYZE, BUFFERS) " + sql, params)
            plan = "\n".join(row[0] for row in raw.fetchall())
            raw.execute("ROLLBACK TO SAVEPOINT bench_explain" if inside else "ROLLBACK")
            shown = raw.mogrify(sql, params) if params else sql
            report.append(f"--- statement\n{shown}\n--- plan\n{plan}\n")
        return execute(sql, params, many, context)

    use_database(driver.name)
    # The claim and submit run as in production (autocommit), so the after-commit completion update is
    # seen too.
    with connection.execute_wrapper(wrapper):
        report.append("=== one claim (task_claim_next) and its submit (ranking_submit)\n")
        driver.one(record=False)
        state["all"] = False
        report.append("=== the first gold-turn draw of the following claims\n")
        for _ in range(len(driver.users) * 10):
            if state["gold_seen"]:
                break
            driver.one(record=False)
    return "\n".join(report)


def summary(values: list[float]) -> tuple[float, float, float]:
    return percentile(values, 0.5), percentile(values, 0.95), percentile(values, 0.99)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="10000,1000000", help="image counts, comma-separated")
    parser.add_argument(
        "--ops", type=int, default=300, help="measured claim+submit pairs per size (0: only the plans)"
    )
    parser.add_argument("--refill", action="store_true", help="drop and refill the databases")
    parser.add_argument("--fill-only", action="store_true")
    parser.add_argument("--drop", action="store_true", help="drop the bench databases and exit")
    parser.add_argument(
        "--db-prefix",
        default=DB_PREFIX,
        help="database name prefix (another prefix keeps a second code version's databases apart)",
    )
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]

    base_url = os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
    if args.drop:
        import psycopg

        with psycopg.connect(_with_db(base_url, "postgres"), autocommit=True) as conn:
            for n in sizes:
                conn.execute(f'DROP DATABASE IF EXISTS "{db_name(n, args.db_prefix)}" WITH (FORCE)')
        return
    work = Path(tempfile.mkdtemp(prefix="bench-claim-scale-"))
    prefix = f"bench{os.getpid()}-"
    env = {
        **os.environ,
        "CELERY_BROKER_URL": os.environ.get("CELERY_BROKER_URL", "redis://127.0.0.1:6379/14"),
        "CELERY_QUEUE_PREFIX": prefix,
        "DEBUG": "0",
        "SECRET_KEY": "bench-" + secrets.token_urlsafe(48),
        "ALLOWED_HOSTS": "127.0.0.1",
        "MEDIA_ROOT": str(work / "media"),
        "LOG_LEVEL": "WARNING",
        "DJANGO_SETTINGS_MODULE": "config.settings",
    }
    names = [ensure_database(base_url, n, refill=args.refill, env=env, prefix=args.db_prefix) for n in sizes]
    if args.fill_only:
        return

    os.environ.update(env)
    os.environ["DATABASE_URL"] = _with_db(base_url, names[0])
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()
    from django.conf import settings

    drivers = [Driver(name) for name in names]
    try:
        for driver in drivers:
            use_database(driver.name)
            for _ in range(WARMUP):
                driver.one(record=False)
        load_before = os.getloadavg()
        started = time.perf_counter()
        while any(len(d.claim_ms) < args.ops for d in drivers):
            for driver in drivers:
                if len(driver.claim_ms) >= args.ops:
                    continue
                use_database(driver.name)
                for _ in range(min(BLOCK, args.ops - len(driver.claim_ms))):
                    driver.one()
        load_after = os.getloadavg()
        elapsed = time.perf_counter() - started
        OUT.mkdir(parents=True, exist_ok=True)
        for driver, n in zip(drivers, sizes, strict=True):
            path = (
                OUT / f"claim_scale_plans_{args.db_prefix.removeprefix('itercomp_bench_')}{size_label(n)}.txt"
            )
            path.write_text(explain_one(driver))
            log(f"plans: {path.relative_to(ROOT)}")
    finally:
        from django.db import connection

        connection.close()
        import redis

        client = redis.Redis.from_url(settings.CELERY_BROKER_URL)
        for key in client.scan_iter(f"{prefix}*"):
            client.delete(key)

    if args.ops == 0:  # --ops 0: the plans only
        return
    print()
    print(
        f"machine: {os.cpu_count()} CPUs, load average {load_before[0]:.2f} before, {load_after[0]:.2f} after;"
        f" {elapsed:.0f}s measuring; GOLD_TASK_RATE {settings.GOLD_TASK_RATE}"
    )
    print("| images | claim p50 | claim p95 | claim p99 | submit p50 | submit p95 | submit p99 | n |")
    print("|---|---|---|---|---|---|---|---|")
    rows = []
    for driver, n in zip(drivers, sizes, strict=True):
        c, s = summary(driver.claim_ms), summary(driver.submit_ms)
        rows.append((c, s))
        print(
            f"| {n:,} | {c[0]:.1f} ms | {c[1]:.1f} ms | {c[2]:.1f} ms | {s[0]:.1f} ms | {s[1]:.1f} ms |"
            f" {s[2]:.1f} ms | {len(driver.claim_ms)} (+{driver.empty} empty) |"
        )
        print(
            f"  claim mean {statistics.fmean(driver.claim_ms):.1f} ms, submit mean {statistics.fmean(driver.submit_ms):.1f} ms"
        )
    if len(rows) == 2:
        (c0, s0), (c1, s1) = rows
        print(
            f"ratio {sizes[1]:,}/{sizes[0]:,}: claim p95 {c1[1] / c0[1]:.2f}, submit p95 {s1[1] / s0[1]:.2f}"
            f" (claim p50 {c1[0] / c0[0]:.2f}, submit p50 {s1[0] / s0[0]:.2f})"
        )


if __name__ == "__main__":
    main()
