"""Ranking exports: one record per consensus, as JSONL/CSV/Parquet, IterComp's and ImageReward's files.

Records come from :func:`annotation.selectors_research.ranking_records`. ``ordering`` is the consensus as
tie groups (best first; images the experts left tied share a group). ``rank`` follows HPDv2's test.json:
``rank[k]`` is the consensus rank (1 = best, tied images share the mean rank) of ``image_path[k]``; IterComp
files, which cannot express ties, get the strict consensus order. With ``raw`` every expert's ranking is
added as ``raw_annotations`` = ``[{"user_hash", "rank", "weight", "source"}]`` where ``user_hash`` is an
HMAC-SHA256 of the annotator id keyed with settings.ANNOTATOR_ID_SALT (stable across exports, not
reversible without the key).
"""

from __future__ import annotations

import csv
import hashlib
import hmac
import io
import json
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, BinaryIO

import pyarrow as pa
import pyarrow.parquet as pq

from rankmath.rankformats import (
    ITERCOMP_GALLERY,
    ImageRewardRecord,
    IterCompRecord,
    OrderingError,
    normalize_ordering,
    positions,
)

RANKING_FIELDS: tuple[str, ...] = (
    "task_id",
    "prompt_id",
    "prompt",
    "category",
    "subcategory",
    "split",
    "prompt_source",
    "prompt_licence",
    "iteration",
    "source",
    "method",
    "kendall_w",
    "n_rankings",
    "image_ids",
    "image_sha256",
    "image_path",
    "generators",
    "rank",
    "updated_at",
)

_RAW_TYPE = pa.list_(
    pa.struct(
        [
            ("user_hash", pa.string()),
            ("rank", pa.list_(pa.float64())),
            ("weight", pa.float64()),
            ("source", pa.string()),
        ]
    )
)

RANKING_SCHEMA = pa.schema(
    [
        ("task_id", pa.int64()),
        ("prompt_id", pa.int64()),
        ("prompt", pa.string()),
        ("category", pa.string()),
        ("subcategory", pa.string()),
        ("split", pa.string()),
        ("prompt_source", pa.string()),
        ("prompt_licence", pa.string()),
        ("iteration", pa.int64()),
        ("source", pa.string()),
        ("method", pa.string()),
        ("kendall_w", pa.float64()),
        ("n_rankings", pa.int64()),
        ("image_ids", pa.list_(pa.int64())),
        ("image_sha256", pa.list_(pa.string())),
        ("image_path", pa.list_(pa.string())),
        ("generators", pa.list_(pa.string())),
        ("rank", pa.list_(pa.float64())),
        ("updated_at", pa.string()),
    ]
)

Progress = Callable[[int], None]


def annotator_hash(annotator_id: int, salt: str) -> str:
    """HPDv2-style ``user_hash``: HMAC-SHA256(salt, annotator id), hex."""
    return hmac.new(salt.encode(), f"annotator:{annotator_id}".encode(), hashlib.sha256).hexdigest()


def _ranks(ordering: Any, image_ids: Sequence[int]) -> list[float]:
    rank = positions(normalize_ordering(ordering))
    return [rank[i] for i in image_ids]


def public_record(record: dict[str, Any], *, raw: bool, salt: str) -> dict[str, Any]:
    """The exported form: experts replaced by hashed raw annotations (or dropped)."""
    out = {key: record[key] for key in RANKING_FIELDS if key != "rank"}
    out["rank"] = _ranks(record["tie_groups"], record["image_ids"])
    out["ordering"] = record["tie_groups"]
    if raw:
        out["raw_annotations"] = [
            {
                "user_hash": annotator_hash(annotator_id, salt),
                "rank": _ranks(ordering, record["image_ids"]),
                "weight": float(weight),
                "source": source,
            }
            for annotator_id, ordering, source, weight in record["experts"]
        ]
    return out


def _batched(records: Iterable[dict[str, Any]], size: int = 1000) -> Iterator[list[dict[str, Any]]]:
    batch: list[dict[str, Any]] = []
    for record in records:
        batch.append(record)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def jsonl_chunks(records: Iterable[dict[str, Any]], *, raw: bool, salt: str) -> Iterator[bytes]:
    for batch in _batched(records):
        yield "".join(
            json.dumps(public_record(r, raw=raw, salt=salt), ensure_ascii=False) + "\n" for r in batch
        ).encode()


def csv_chunks(records: Iterable[dict[str, Any]], *, raw: bool, salt: str) -> Iterator[bytes]:
    """CSV with list columns as JSON strings (a CSV cell cannot hold a list)."""
    columns = [*RANKING_FIELDS, "ordering", *(("raw_annotations",) if raw else ())]
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(columns)
    for batch in _batched(records):
        for record in batch:
            out = public_record(record, raw=raw, salt=salt)
            writer.writerow(
                json.dumps(out[c]) if isinstance(out[c], list | dict) else ("" if out[c] is None else out[c])
                for c in columns
            )
        yield buffer.getvalue().encode()
        buffer.seek(0)
        buffer.truncate()
    if buffer.getvalue():
        yield buffer.getvalue().encode()


def write_parquet(
    records: Iterable[dict[str, Any]], fh: BinaryIO, *, raw: bool, salt: str, progress: Progress | None = None
) -> int:
    schema = RANKING_SCHEMA.append(pa.field("ordering", pa.list_(pa.list_(pa.int64()))))
    if raw:
        schema = schema.append(pa.field("raw_annotations", _RAW_TYPE))
    written = 0
    with pq.ParquetWriter(fh, schema) as writer:
        for batch in _batched(records):
            rows = [public_record(r, raw=raw, salt=salt) for r in batch]
            writer.write_table(pa.Table.from_pylist(rows, schema=schema))
            written += len(rows)
            if progress:
                progress(written)
        if written == 0:
            writer.write_table(schema.empty_table())
    return written


# --------------------------------------------------------------------------------------------------------
# IterComp and ImageReward files (JSON arrays, as the projects publish them)
# --------------------------------------------------------------------------------------------------------

# Generator slugs as a studio might name them -> IterComp's gallery keys (after dropping non-alphanumerics).
_ITERCOMP_ALIASES = {
    "stablediffusion15": "sd15",
    "stablediffusionv15": "sd15",
    "sdv15": "sd15",
    "stablediffusionxl": "sdxl",
    "sdxlbase": "sdxl",
    "sdxlbase10": "sdxl",
    "stablediffusion3": "sd3",
    "sd3medium": "sd3",
    "fluxdev": "flux",
    "flux1dev": "flux",
    "instancediff": "instancediffusion",
}


def itercomp_model_name(generator_slug: str, mapped: Mapping[str, str] | None = None) -> str:
    """The IterComp gallery key of a generator: the researcher's mapping first (``{slug: name}``), else its
    slug read through the usual aliases. A name the mapping gives to another generator is not taken twice:
    the unmapped one gets an ``_unmapped`` key (an extra model, never one of the six)."""
    if mapped and generator_slug in mapped:
        return mapped[generator_slug]
    key = re.sub(r"[^a-z0-9]", "", generator_slug.lower())
    name = _ITERCOMP_ALIASES.get(key, key)
    if mapped and name in mapped.values():
        return f"{name}_unmapped"
    return name


def itercomp_record(record: dict[str, Any], mapped: Mapping[str, str] | None = None) -> dict[str, Any] | None:
    """IterComp's per-prompt record, or None when the task lacks one of the six gallery models.

    Models beyond the six (later iterations' samples) follow them in the gallery, in task order, exactly
    as IterComp's expanded records append ``image_sdxl_iteration1`` and ``image_omost``.
    """
    names = [itercomp_model_name(slug, mapped) for slug in record["generators"]]
    if len(set(names)) != len(names) or not set(ITERCOMP_GALLERY) <= set(names):
        return None
    extra = tuple(name for name in names if name not in ITERCOMP_GALLERY)
    name_of = dict(zip(record["image_ids"], names, strict=True))
    ordering = [[name_of[item] for item in group] for group in normalize_ordering(record["ordering"])]
    try:
        parsed = IterCompRecord(
            index=int(record["prompt_id"]),
            prompt=record["prompt"],
            images=dict(zip(names, record["image_path"], strict=True)),
            ordering=ordering,
            gallery=(*ITERCOMP_GALLERY, *extra),
        )
    except OrderingError:
        return None
    out = parsed.to_json()
    # Key order of the published files: index, prompt, image_*, rank.
    return {"index": out.pop("index"), **out}


def imagereward_record(record: dict[str, Any]) -> dict[str, Any]:
    """ImageReward's record; the experts' unresolved ties stay ties (equal ranks), as the format allows."""
    position = {image_id: k for k, image_id in enumerate(record["image_ids"])}
    ordering = [[position[item] for item in group] for group in record["tie_groups"]]
    return ImageRewardRecord(
        id=f"{record['prompt_id']:06d}-{record['task_id']:04d}",
        prompt=record["prompt"],
        generations=tuple(record["image_path"]),
        ordering=ordering,
    ).to_json()


def json_array_chunks(
    records: Iterable[dict[str, Any]], convert: Callable[[dict[str, Any]], dict[str, Any] | None]
) -> Iterator[bytes]:
    """A JSON array written record by record (indent 4, like the published files), never all in memory."""
    yield b"["
    first = True
    for batch in _batched(records):
        parts = []
        for record in batch:
            converted = convert(record)
            if converted is None:
                continue
            body = json.dumps(converted, ensure_ascii=False, indent=4)
            parts.append(("\n" if first else ",\n") + "    " + body.replace("\n", "\n    "))
            first = False
        if parts:
            yield "".join(parts).encode()
    yield b"\n]\n"
