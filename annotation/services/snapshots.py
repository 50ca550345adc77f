"""Dataset snapshots: an export of pairs frozen as an immutable, versioned file that training rounds cite.

A snapshot is a Parquet file of the pair schema plus each prompt's source and licence, in a canonical
order (prompt, winner, loser). Its content hash covers every column except ``pair_id`` (pair ids change
when a consensus is recomputed to the same result), so freezing the same data twice returns the existing
snapshot instead of a new version. Rows are never updated: a database trigger (migration 0003) refuses it.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from collections import Counter
from collections.abc import Iterator

from django.conf import settings
from django.core.files import File
from django.core.files.storage import default_storage
from django.db import connection, transaction
from django.db.models import Max

from annotation.exporters import pairs
from annotation.exporters.filters import ExportFilters
from annotation.models import DatasetSnapshot

SNAPSHOT_FIELDS: tuple[str, ...] = (*pairs.PAIR_FIELDS, *pairs.PROVENANCE_FIELDS)
_LOOKUPS: tuple[str, ...] = (*pairs.PAIR_LOOKUPS, *pairs.PROVENANCE_LOOKUPS)
# Any constant works; it only has to be the same in every process that creates snapshots.
_ADVISORY_LOCK_KEY = 0x1C0_5AA9


class EmptySnapshotError(ValueError):
    """No pair matches the filters; an empty dataset is not worth a version."""


def _hashing(rows: Iterator[tuple], digest, counts: dict[str, Counter]) -> Iterator[tuple]:
    index = {name: i for i, name in enumerate(SNAPSHOT_FIELDS)}
    prompts: set[int] = set()
    for row in rows:
        digest.update(json.dumps(row[1:], ensure_ascii=False, separators=(",", ":")).encode())
        digest.update(b"\n")
        counts["by_category"][row[index["category"]]] += 1
        counts["by_source"][row[index["source"]]] += 1
        counts["by_split"][row[index["split"]]] += 1
        counts["by_iteration"][str(row[index["iteration"]])] += 1
        counts["labels"][str(row[index["label"]])] += 1
        prompts.add(row[index["prompt_id"]])
        yield row
    counts["prompts"][""] = len(prompts)


@transaction.atomic
def snapshot_create(*, filters: ExportFilters, created_by=None) -> tuple[DatasetSnapshot, bool]:
    """Freeze the pairs selected by ``filters``; returns ``(snapshot, created)``.

    Serialised by a transaction-scoped advisory lock so two snapshots never take the same version. The
    rows are read by one query, so the file is a consistent view of the pairs at that moment.
    """
    from annotation.selectors_research import pairs_for_export

    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_xact_lock(%s)", [_ADVISORY_LOCK_KEY])
    version = (DatasetSnapshot.objects.aggregate(v=Max("version"))["v"] or 0) + 1
    filters_json = filters.to_json()
    rows = (
        pairs_for_export(filters)
        .order_by("prompt_id", "winner_id", "loser_id", "id")
        .values_list(*_LOOKUPS)
        .iterator(chunk_size=settings.EXPORT_CHUNK_SIZE)
    )
    digest = hashlib.sha256()
    counts: dict[str, Counter] = {
        k: Counter() for k in ("by_category", "by_source", "by_split", "by_iteration", "labels", "prompts")
    }
    metadata = {
        "itercomp.snapshot.version": str(version),
        "itercomp.snapshot.filters": json.dumps(filters_json),
    }
    with tempfile.TemporaryFile() as out:
        n = pairs.write_parquet(
            _hashing(rows, digest, counts), out, fields=SNAPSHOT_FIELDS, metadata=metadata
        )
        if n == 0:
            raise EmptySnapshotError("no pairs match these filters")
        content_hash = digest.hexdigest()
        existing = DatasetSnapshot.objects.filter(content_hash=content_hash).first()
        if existing is not None:
            return existing, False
        out.seek(0)
        name = default_storage.save(f"snapshots/v{version:04d}-{content_hash[:16]}.parquet", File(out))
    summary = {
        "pairs": n,
        "prompts": counts["prompts"][""],
        "ties": counts["labels"].get("0.5", 0),
        **{
            key: dict(sorted(counts[key].items()))
            for key in ("by_category", "by_source", "by_split", "by_iteration")
        },
    }
    snapshot = DatasetSnapshot.objects.create(
        version=version,
        content_hash=content_hash,
        filters=filters_json,
        counts=summary,
        file=name,
        created_by=created_by,
    )
    return snapshot, True


def snapshot_read_table(snapshot: DatasetSnapshot):
    """The snapshot's rows as a pyarrow Table (through storage, so it works on any worker)."""
    import pyarrow.parquet as pq

    with default_storage.open(snapshot.file.name, "rb") as fh:
        return pq.read_table(fh)
