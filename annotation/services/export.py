"""Research exports: what each (kind, format) writes, inline streams, background jobs, API tokens.

Kinds and formats:

* ``pairs``: ``jsonl`` (fixed schema read by the reward-model trainer), ``csv``, ``parquet``, ``hf`` (a zip
  of a folder that Hugging Face ``datasets`` loads as ``imagefolder``).
* ``rankings``: ``jsonl``, ``csv``, ``parquet`` (one record per consensus; ``raw`` adds every expert's
  ranking with a hashed annotator id), ``itercomp`` (IterComp's per-prompt JSON), ``imagereward``
  (ImageReward's ``{id, prompt, generations, ranking}`` JSON).

JSONL and CSV stream with bounded memory whatever their size. The other formats are built in a temporary
file; above settings.EXPORT_INLINE_MAX_ROWS rows, and always for ``hf`` (it carries the images), they run
as an :class:`ExportJob` in a worker and the result is downloaded from storage.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from django.conf import settings
from django.core.files import File
from django.core.files.storage import default_storage
from django.db import transaction
from django.db.models import Count, Q
from django.urls import reverse

from annotation.exporters import pairs
from annotation.exporters.filters import ExportFilters, FilterError
from annotation.models import ExportJob
from annotation.roles import is_researcher
from jobs.models import JobStatus
from jobs.registry import JobKind
from jobs.services import job_claim, job_enqueue, job_fail, job_finish, job_heartbeat, worker_identity

logger = logging.getLogger(__name__)

FORMATS: dict[str, tuple[str, ...]] = {
    "pairs": ("jsonl", "csv", "parquet", "hf"),
    "rankings": ("jsonl", "csv", "parquet", "itercomp", "imagereward"),
}
STREAMING_FORMATS = frozenset({"jsonl", "csv"})
EXTENSIONS = {
    "jsonl": "jsonl",
    "csv": "csv",
    "parquet": "parquet",
    "hf": "zip",
    "itercomp": "json",
    "imagereward": "json",
}
CONTENT_TYPES = {
    "jsonl": "application/x-ndjson",
    "csv": "text/csv; charset=utf-8",
    "parquet": "application/vnd.apache.parquet",
    "zip": "application/zip",
    "json": "application/json",
}

Progress = Callable[[int], None]


class ExportError(ValueError):
    """The export request is not valid (unknown kind or format, bad filter)."""


@dataclass(frozen=True)
class ExportSpec:
    kind: str
    format: str
    filters: ExportFilters

    def __post_init__(self) -> None:
        if self.kind not in FORMATS:
            raise ExportError(f"unknown export kind {self.kind!r}; choose one of {sorted(FORMATS)}")
        if self.format not in FORMATS[self.kind]:
            raise ExportError(
                f"{self.kind} cannot be exported as {self.format!r}; choose one of {list(FORMATS[self.kind])}"
            )

    @classmethod
    def parse(cls, kind: str, format: str, params, strict: bool = False) -> ExportSpec:
        try:
            return cls(kind=kind, format=format, filters=ExportFilters.from_mapping(params, strict=strict))
        except FilterError as exc:
            raise ExportError(str(exc)) from None

    @property
    def extension(self) -> str:
        return EXTENSIONS[self.format]

    @property
    def content_type(self) -> str:
        return CONTENT_TYPES[self.extension]

    @property
    def streams(self) -> bool:
        return self.format in STREAMING_FORMATS

    def filename(self, stem: str | None = None) -> str:
        return f"{stem or self.kind}.{self.extension}"


# --------------------------------------------------------------------------------------------------------
# Reading: rows and records of a spec
# --------------------------------------------------------------------------------------------------------


def export_count(spec: ExportSpec) -> int:
    from annotation.selectors_research import consensus_for_export, pairs_for_export

    if spec.kind == "pairs":
        return pairs_for_export(spec.filters).count()
    return consensus_for_export(spec.filters).count()


def export_problem(spec: ExportSpec) -> str | None:
    """Why this export would come out empty, in words a researcher can act on; None when it has rows.

    Asked before a download starts, so nobody downloads ``[]`` and wonders why.
    """
    from annotation.selectors_research import consensus_for_export

    what = "image-rank pairs" if spec.kind == "pairs" else "consensus rankings"
    if export_count(spec) == 0:
        return f"No {what} match these filters, so the file would be empty. Widen the filters."
    if spec.format == "itercomp":
        from annotation.exporters.rankings import itercomp_model_name
        from gallery.models import Generator
        from gallery.selectors import itercomp_name_mapping
        from rankmath.rankformats import ITERCOMP_GALLERY

        mapped = itercomp_name_mapping()
        slugs_of: dict[str, list[str]] = {}
        for slug in Generator.objects.values_list("slug", flat=True):
            slugs_of.setdefault(itercomp_model_name(slug, mapped), []).append(slug)
        missing = [name for name in ITERCOMP_GALLERY if name not in slugs_of]
        six = ", ".join(ITERCOMP_GALLERY)
        if missing:
            return (
                f"The IterComp format needs every task to have images from all six IterComp gallery models "
                f"({six}), and no generator stands for {', '.join(missing)}. Map your generators to the six "
                f"first (People → Generators, {reverse('generators')}), or export as ImageReward JSON or "
                f"JSONL, which take any generators."
            )
        gallery_slugs = [slug for name in ITERCOMP_GALLERY for slug in slugs_of[name]]
        complete = (
            consensus_for_export(spec.filters)
            .alias(
                n_gallery=Count(
                    "task__images__generator__slug",
                    filter=Q(task__images__generator__slug__in=gallery_slugs),
                    distinct=True,
                )
            )
            .filter(n_gallery__gte=len(ITERCOMP_GALLERY))
        )
        if not complete.exists():
            return (
                f"No task among these {what} has images from all six IterComp gallery models ({six}); "
                f"the IterComp format would be empty. Map your generators to the six "
                f"({reverse('generators')}), or export as ImageReward JSON or JSONL instead."
            )
    return None


def _pair_rows(spec: ExportSpec, lookups: tuple[str, ...] = pairs.PAIR_LOOKUPS) -> Iterator[tuple]:
    from annotation.selectors_research import pairs_for_export

    qs = pairs_for_export(spec.filters).order_by("id").values_list(*lookups)
    # A server-side cursor: PostgreSQL hands the rows over chunk by chunk.
    return qs.iterator(chunk_size=settings.EXPORT_CHUNK_SIZE)


def _ranking_records(spec: ExportSpec) -> Iterator[dict]:
    from annotation.selectors_research import consensus_for_export, ranking_records

    return ranking_records(
        consensus_for_export(spec.filters), chunk_size=min(settings.EXPORT_CHUNK_SIZE, 2000)
    )


def _counting(rows, progress: Progress | None, every: int):
    n = 0
    for row in rows:
        yield row
        n += 1
        if progress and n % every == 0:
            progress(n)
    if progress:
        progress(n)


def export_stream(spec: ExportSpec, progress: Progress | None = None) -> Iterator[bytes]:
    """The export as byte chunks (JSONL, CSV and the JSON formats; not Parquet or hf)."""
    salt = settings.ANNOTATOR_ID_SALT
    every = settings.EXPORT_CHUNK_SIZE
    if spec.kind == "pairs":
        rows = _counting(_pair_rows(spec), progress, every)
        if spec.format == "jsonl":
            return pairs.jsonl_chunks(rows)
        if spec.format == "csv":
            return pairs.csv_chunks(rows)
    else:
        from annotation.exporters import rankings

        records = _counting(_ranking_records(spec), progress, min(every, 1000))
        if spec.format == "jsonl":
            return rankings.jsonl_chunks(records, raw=spec.filters.raw, salt=salt)
        if spec.format == "csv":
            return rankings.csv_chunks(records, raw=spec.filters.raw, salt=salt)
        if spec.format == "itercomp":
            from gallery.selectors import itercomp_name_mapping

            mapped = itercomp_name_mapping()
            return rankings.json_array_chunks(
                records, lambda record: rankings.itercomp_record(record, mapped)
            )
        if spec.format == "imagereward":
            return rankings.json_array_chunks(records, rankings.imagereward_record)
    raise ExportError(f"{spec.kind}/{spec.format} is not written as a byte stream")


def export_write(spec: ExportSpec, fh: BinaryIO, progress: Progress | None = None) -> None:
    """Write any single-file format (everything but ``hf``) to a binary file object."""
    if spec.format == "parquet":
        if spec.kind == "pairs":
            pairs.write_parquet(_pair_rows(spec), fh, progress=progress)
        else:
            from annotation.exporters import rankings

            rankings.write_parquet(
                _ranking_records(spec),
                fh,
                raw=spec.filters.raw,
                salt=settings.ANNOTATOR_ID_SALT,
                progress=progress,
            )
        return
    if spec.format == "hf":
        raise ExportError("the hf format is a folder; use export_write_hf")
    pairs.write_chunks(export_stream(spec, progress), fh)


def _open_image(name: str) -> BinaryIO:
    return default_storage.open(name, "rb")


def export_write_hf(spec: ExportSpec, root: Path, progress: Progress | None = None) -> int:
    """Write the pairs and their images as a Hugging Face imagefolder under ``root``."""
    if spec.kind != "pairs" or spec.format != "hf":
        raise ExportError("only pairs are exported as a Hugging Face folder")
    from annotation.exporters import hf

    return hf.write_hf_folder(_pair_rows(spec), root, _open_image, progress=progress)


def export_to_tempfile(spec: ExportSpec, progress: Progress | None = None) -> BinaryIO:
    """The finished export in a temporary file (rewound), for a one-request download or a job."""
    out = tempfile.TemporaryFile()
    if spec.format == "hf":
        from annotation.exporters import hf

        with tempfile.TemporaryDirectory(prefix="hf-export-") as folder:
            export_write_hf(spec, Path(folder), progress)
            hf.zip_folder(Path(folder), out)
    else:
        export_write(spec, out, progress)
    out.seek(0)
    return out


def export_fits_one_request(spec: ExportSpec) -> bool:
    """Streaming formats always fit; files are built in one request only up to EXPORT_INLINE_MAX_ROWS."""
    if spec.streams:
        return True
    if spec.format == "hf":
        return False
    return export_count(spec) <= settings.EXPORT_INLINE_MAX_ROWS


# --------------------------------------------------------------------------------------------------------
# Background jobs
# --------------------------------------------------------------------------------------------------------


def spec_of(job: ExportJob) -> ExportSpec:
    return ExportSpec.parse(job.kind, job.format, job.filters)


def _export_stale_after_s() -> int:
    # A run older than the default queue's hard time limit was killed, so a silent export is a dead one.
    return settings.CELERY_DEFAULT_SOFT_TIME_LIMIT_S + 60


# Exports are claimed, heart-beaten (at every progress update) and reconciled by jobs.services; a job
# whose worker died 3 times (jobs.registry.DEFAULT_MAX_LOSSES) is failed with the reason.
EXPORT_JOBS = JobKind(
    name="export", model=ExportJob, task="annotation.export_run", stale_after_s=_export_stale_after_s
)


@transaction.atomic
def export_job_create(*, requested_by, spec: ExportSpec) -> ExportJob:
    """Record an export job and hand it to a worker once this transaction commits."""
    if not is_researcher(requested_by):
        raise PermissionError("only researchers and admins export data")
    job = ExportJob.objects.create(
        requested_by=requested_by, kind=spec.kind, format=spec.format, filters=spec.filters.to_json()
    )
    job_enqueue(EXPORT_JOBS, job=job)
    return job


def export_job_run(*, job_id: int, worker: str | None = None) -> str:
    """Claim and run a job: count, write the file with progress, store it, mark the job done.

    Deliberately not one transaction: the progress updates must be visible to the polling page while the
    file is being written, and a long transaction would hold a snapshot for nothing. A duplicated or
    redelivered message finds nothing to claim.
    """
    worker = worker or worker_identity(None)
    if not job_claim(EXPORT_JOBS, pk=job_id, worker=worker, rows_done=0):
        return "not claimed"
    job = ExportJob.objects.get(pk=job_id)
    try:
        spec = spec_of(job)
        total = export_count(spec)
        job_heartbeat(EXPORT_JOBS, pk=job_id, worker=worker, rows_done=0, rows_total=total)
        done = {"rows": 0}

        def progress(n: int) -> None:
            done["rows"] = n
            job_heartbeat(EXPORT_JOBS, pk=job_id, worker=worker, rows_done=n)

        with export_to_tempfile(spec, progress) as out:
            name = default_storage.save(
                f"exports/{job.pk}/{spec.filename(f'{spec.kind}-{job.pk}')}", File(out)
            )
        rows = done["rows"] or total
        if not job_finish(EXPORT_JOBS, pk=job_id, worker=worker, file=name, rows_done=rows, rows_total=rows):
            return "lost-claim"
        return JobStatus.DONE
    except Exception as exc:  # a failed export must show as failed, not stay "running" forever
        logger.exception("export job %s failed", job_id)
        job_fail(EXPORT_JOBS, pk=job_id, worker=worker, reason=f"{type(exc).__name__}: {exc}")
        return JobStatus.FAILED


# --------------------------------------------------------------------------------------------------------
# API tokens for scripts
# --------------------------------------------------------------------------------------------------------


@transaction.atomic
def api_token_rotate(*, user):
    """Replace the user's API token with a new one (the old one stops working at once)."""
    from rest_framework.authtoken.models import Token

    if not is_researcher(user):
        raise PermissionError("only researchers and admins get API tokens")
    Token.objects.filter(user=user).delete()
    return Token.objects.create(user=user)
