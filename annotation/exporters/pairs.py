"""Image-rank pair exports: JSONL (the reward-model trainer's fixed schema), CSV, Parquet.

Rows are the tuples of :data:`PAIR_LOOKUPS` read straight from PostgreSQL (``values_list`` through a
server-side cursor): no model instances and no serializer, which is what keeps large exports fast and
their memory bounded by one chunk.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any, BinaryIO

from rankmath.pair_schema import PAIR_FIELDS  # the trainer reads exactly these keys

if TYPE_CHECKING:
    import pyarrow as pa


# PreferencePair lookups producing PAIR_FIELDS, in the same order.
PAIR_LOOKUPS: tuple[str, ...] = (
    "id",
    "prompt_id",
    "prompt__text",
    "category__slug",
    "prompt__subcategory__slug",
    "prompt__split",
    "winner_id",
    "winner__sha256",
    "winner__file",
    "loser_id",
    "loser__sha256",
    "loser__file",
    "label",
    "source",
    "iteration",
    "weight",
)

# Snapshots also carry where each prompt came from and under which licence.
PROVENANCE_FIELDS: tuple[str, ...] = ("prompt_source", "prompt_licence")
PROVENANCE_LOOKUPS: tuple[str, ...] = ("prompt__source", "prompt__licence")

# Column types other than string. pyarrow is imported only by the functions that write Arrow/Parquet,
# so a process that streams JSONL or CSV never loads it (about 30 MB of resident memory).
_TYPES = {
    "pair_id": "int64",
    "prompt_id": "int64",
    "winner_id": "int64",
    "loser_id": "int64",
    "label": "float64",
    "iteration": "int64",
    "weight": "float64",
}

Progress = Callable[[int], None]


def arrow_schema(fields: tuple[str, ...] = PAIR_FIELDS, metadata: dict[str, str] | None = None) -> pa.Schema:
    import pyarrow as pa

    return pa.schema(
        [(name, pa.type_for_alias(_TYPES.get(name, "string"))) for name in fields], metadata=metadata
    )


def _batched(rows: Iterable[tuple], size: int) -> Iterator[list[tuple]]:
    batch: list[tuple] = []
    for row in rows:
        batch.append(row)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def jsonl_chunks(
    rows: Iterable[tuple], *, fields: tuple[str, ...] = PAIR_FIELDS, batch: int = 2000
) -> Iterator[bytes]:
    """One JSON object per line, keys in schema order; yielded a few hundred kilobytes at a time."""
    dumps = json.JSONEncoder(ensure_ascii=False).encode
    for chunk in _batched(rows, batch):
        yield "".join([dumps(dict(zip(fields, row, strict=True))) + "\n" for row in chunk]).encode()


def csv_chunks(
    rows: Iterable[tuple], *, fields: tuple[str, ...] = PAIR_FIELDS, batch: int = 2000
) -> Iterator[bytes]:
    """CSV with a header; ``None`` (no subcategory) becomes an empty cell, which the trainer reads as None."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(fields)
    for chunk in _batched(rows, batch):
        writer.writerows(chunk)
        yield buffer.getvalue().encode()
        buffer.seek(0)
        buffer.truncate()
    if buffer.getvalue():
        yield buffer.getvalue().encode()


def write_chunks(chunks: Iterable[bytes], fh: BinaryIO) -> None:
    for chunk in chunks:
        fh.write(chunk)


def record_batch(rows: list[tuple], schema: pa.Schema) -> pa.RecordBatch:
    import pyarrow as pa

    columns = list(zip(*rows, strict=True)) if rows else [() for _ in schema]
    return pa.RecordBatch.from_arrays(
        [pa.array(column, type=field.type) for column, field in zip(columns, schema, strict=True)],
        schema=schema,
    )


def write_parquet(
    rows: Iterable[tuple],
    fh: BinaryIO | str,
    *,
    fields: tuple[str, ...] = PAIR_FIELDS,
    metadata: dict[str, str] | None = None,
    batch: int = 5_000,
    progress: Progress | None = None,
) -> int:
    """Write row groups of ``batch`` rows as they arrive; returns the number of rows."""
    import pyarrow.parquet as pq

    schema = arrow_schema(fields, metadata)
    written = 0
    with pq.ParquetWriter(fh, schema, compression="zstd") as writer:
        for chunk in _batched(rows, batch):
            writer.write_batch(record_batch(chunk, schema))
            written += len(chunk)
            if progress:
                progress(written)
        if written == 0:
            writer.write_table(schema.empty_table())
    return written


def as_dicts(rows: Iterable[tuple], fields: tuple[str, ...] = PAIR_FIELDS) -> Iterator[dict[str, Any]]:
    for row in rows:
        yield dict(zip(fields, row, strict=True))
