"""Readers of gallery files (Django-free): folders, CSV/JSONL manifests, IterComp and ImageReward records.

Each reader turns a file into rows: a prompt, its category name if the file says it, the images (generator
slug + path as written) and, for the ranked formats, an ordering over those images. A row that cannot be
parsed becomes a :class:`RowProblem` naming its line, so one bad row never stops the others.
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

from gallery.promptfiles import prompt_from_sample_file_name
from rankmath.rankformats import (
    ITERCOMP_GALLERY,
    ImageRewardRecord,
    IterCompRecord,
    Ordering,
    OrderingError,
    ordering_to_itercomp_rank,
)

FORMATS = ("folder", "manifest", "itercomp", "imagereward")
MANIFEST_COLUMNS = ("prompt", "category", "generator", "image", "seed", "params")
_REQUIRED_COLUMNS = ("prompt", "generator", "image")
_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp"}
_GENERATOR_SLUG = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,79}")


class SourceError(ValueError):
    """The file as a whole cannot be read (missing, not JSON, wrong columns...)."""


class PathRefused(ValueError):
    """An image path that would leave the folder it must stay in."""


@dataclass(frozen=True)
class SourceImage:
    generator: str
    path: str
    seed: int | None = None
    params: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class SourceRow:
    where: str  # "line 12", "file sd15/a red car_000001.png"
    prompt: str
    category: str | None
    images: tuple[SourceImage, ...]
    # Tie groups of indices into ``images``, best first; None for unranked formats.
    ordering: Ordering | None = None
    # Generators the format may register as import-only models when missing (an iterative IterComp
    # record's extra models: sdxl_iteration1, omost).
    auto_generators: tuple[str, ...] = ()


@dataclass(frozen=True)
class RowProblem:
    where: str
    message: str


Row = SourceRow | RowProblem


def safe_join(root: Path, relative: str) -> Path:
    """``root/relative``, refusing absolute paths and anything that resolves outside ``root``.

    Symlinks are resolved first, so a link inside the folder that points elsewhere is refused too.
    """
    if not relative or not relative.strip():
        raise PathRefused("empty image path")
    if (
        PurePosixPath(relative).is_absolute()
        or PureWindowsPath(relative).is_absolute()
        or relative.startswith("\\")
    ):
        raise PathRefused(f"absolute path refused: image paths must be relative to {root.name}/")
    base = root.resolve()
    candidate = (base / relative).resolve()
    if not candidate.is_relative_to(base):
        raise PathRefused(f"path escapes the folder {root.name}/ (path traversal refused)")
    return candidate


# --------------------------------------------------------------------------------------------------------
# Manifests: CSV with a header, or JSON Lines, one image per row
# --------------------------------------------------------------------------------------------------------


def _manifest_row(where: str, record: dict[str, Any]) -> Row:
    missing = [key for key in _REQUIRED_COLUMNS if not str(record.get(key) or "").strip()]
    if missing:
        return RowProblem(where, f"missing {', '.join(missing)}")
    seed_raw = record.get("seed")
    seed: int | None = None
    if seed_raw not in (None, ""):
        try:
            seed = int(seed_raw)
        except (TypeError, ValueError):
            return RowProblem(where, f"seed must be an integer, got {seed_raw!r}")
    params = record.get("params") or {}
    if isinstance(params, str):
        try:
            params = json.loads(params)
        except json.JSONDecodeError as exc:
            return RowProblem(where, f"params is not valid JSON: {exc.msg}")
    if not isinstance(params, dict):
        return RowProblem(where, "params must be a JSON object")
    category = str(record.get("category") or "").strip() or None
    image = SourceImage(
        generator=str(record["generator"]).strip(), path=str(record["image"]), seed=seed, params=params
    )
    return SourceRow(where=where, prompt=str(record["prompt"]), category=category, images=(image,))


def read_manifest(path: Path) -> list[Row]:
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return _read_csv(path)
    if suffix in (".jsonl", ".ndjson"):
        return [
            record if isinstance(record, RowProblem) else _manifest_row(where, record)
            for where, record in _objects(_jsonl(path))
        ]
    raise SourceError(f"{path.name}: a manifest must be .csv or .jsonl")


def _read_csv(path: Path) -> list[Row]:
    rows: list[Row] = []
    with open(path, encoding="utf-8-sig", newline="") as handle:
        reader = csv.DictReader(handle)
        header = [name.strip() for name in reader.fieldnames or []]
        reader.fieldnames = header
        missing = [name for name in _REQUIRED_COLUMNS if name not in header]
        unknown = [name for name in header if name not in MANIFEST_COLUMNS]
        if missing or unknown:
            raise SourceError(
                f"{path.name}: header must name columns {', '.join(MANIFEST_COLUMNS)} "
                f"(missing: {missing or 'none'}; unknown: {unknown or 'none'})"
            )
        start = reader.line_num + 1
        for record in reader:
            # A quoted field may span lines; report the line the row starts on.
            where = f"line {start}"
            start = reader.line_num + 1
            if None in record:
                rows.append(RowProblem(where, "more fields than columns"))
                continue
            rows.append(_manifest_row(where, record))
    return rows


def _jsonl(path: Path) -> Iterator[tuple[str, Any]]:
    with open(path, encoding="utf-8-sig") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                yield f"line {number}", json.loads(line)
            except json.JSONDecodeError as exc:
                yield f"line {number}", _BadJSON(exc.msg)


@dataclass(frozen=True)
class _BadJSON:
    message: str


def _objects(records: Iterator[tuple[str, Any]]) -> Iterator[tuple[str, dict[str, Any] | RowProblem]]:
    """JSON objects as they are; anything else (bad JSON, a list, a number) as the row's problem."""
    for where, record in records:
        if isinstance(record, _BadJSON):
            yield where, RowProblem(where, f"invalid JSON: {record.message}")
        elif not isinstance(record, dict):
            yield where, RowProblem(where, "not a JSON object")
        else:
            yield where, record


def _json_records(path: Path) -> Iterator[tuple[str, Any]]:
    """Records of a JSON array (with the line each starts on) or of a JSON Lines file."""
    if path.suffix.lower() in (".jsonl", ".ndjson"):
        yield from _jsonl(path)
        return
    text = path.read_text(encoding="utf-8-sig")
    decoder = json.JSONDecoder()
    index = _skip_ws(text, 0)
    if index >= len(text) or text[index] != "[":
        raise SourceError(f"{path.name}: expected a JSON array of records (or use .jsonl)")
    index += 1
    line, counted = 1, 0
    while True:
        index = _skip_ws(text, index)
        if index < len(text) and text[index] == "]":
            return
        line += text.count("\n", counted, index)
        counted = index
        try:
            record, index = decoder.raw_decode(text, index)
        except json.JSONDecodeError as exc:
            raise SourceError(f"{path.name}: invalid JSON at line {exc.lineno}: {exc.msg}") from None
        yield f"line {line}", record
        index = _skip_ws(text, index)
        if index < len(text) and text[index] == ",":
            index += 1
        elif index < len(text) and text[index] == "]":
            return
        else:
            raise SourceError(f"{path.name}: invalid JSON after the record at line {line}")


def _skip_ws(text: str, index: int) -> int:
    while index < len(text) and text[index] in " \t\r\n":
        index += 1
    return index


# --------------------------------------------------------------------------------------------------------
# IterComp and ImageReward records
# --------------------------------------------------------------------------------------------------------


def read_itercomp(path: Path) -> list[Row]:
    """IterComp records in the studio's layout or the public repository's (no ``index``: the record's
    position in the file, from 0; ``rank`` a digit string or a list; iterative records with extra
    ``image_*`` models and ``initial_rank``)."""
    rows: list[Row] = []
    for position, (where, record) in enumerate(_objects(_json_records(path))):
        if isinstance(record, RowProblem):
            rows.append(record)
            continue
        try:
            parsed = IterCompRecord.from_json(record, position=position)
        except (OrderingError, TypeError, ValueError) as exc:
            rows.append(RowProblem(where, f"{exc}"))
            continue
        extra = parsed.gallery[len(ITERCOMP_GALLERY) :]
        bad = [name for name in extra if not _GENERATOR_SLUG.fullmatch(name)]
        if bad:
            rows.append(
                RowProblem(
                    where, f"image key image_{bad[0][:60]} does not name a model (letters, digits, _ -)"
                )
            )
            continue
        images = []
        for k, name in enumerate(parsed.gallery):
            params: dict[str, Any] = {"source_format": "itercomp", "source_id": parsed.index}
            if name in extra:
                # Where the extra model sits in the record, and the record's initial rank, live on the
                # images only an iterative record has, so the export can write the record back.
                params["itercomp_position"] = k
                if parsed.initial_ordering is not None:
                    params["initial_rank"] = ordering_to_itercomp_rank(
                        parsed.initial_ordering,
                        parsed.gallery[: sum(len(g) for g in parsed.initial_ordering)],
                    )
            images.append(SourceImage(generator=name, path=parsed.images[name], params=params))
        position_of = {name: i for i, name in enumerate(parsed.gallery)}
        ordering = [[position_of[name] for name in group] for group in parsed.ordering]
        rows.append(
            SourceRow(
                where=where,
                prompt=parsed.prompt,
                category=None,
                images=tuple(images),
                ordering=ordering,
                auto_generators=extra,
            )
        )
    return rows


def read_imagereward(path: Path, generator: str) -> list[Row]:
    rows: list[Row] = []
    for where, record in _objects(_json_records(path)):
        if isinstance(record, RowProblem):
            rows.append(record)
            continue
        try:
            parsed = ImageRewardRecord.from_json(record)
        except (OrderingError, TypeError, ValueError) as exc:
            rows.append(RowProblem(where, f"{exc}"))
            continue
        if len(parsed.generations) < 2:
            rows.append(RowProblem(where, "a ranked record needs at least two generations"))
            continue
        images = tuple(
            SourceImage(
                generator=generator, path=p, params={"source_format": "imagereward", "source_id": parsed.id}
            )
            for p in parsed.generations
        )
        rows.append(
            SourceRow(
                where=where, prompt=parsed.prompt, category=None, images=images, ordering=parsed.ordering
            )
        )
    return rows


# --------------------------------------------------------------------------------------------------------
# Folders: <root>/<generator>/<prompt>_<index>.png (T2I-CompBench's sample naming)
# --------------------------------------------------------------------------------------------------------


def read_folder(root: Path) -> list[Row]:
    rows: list[Row] = []
    for path in sorted(root.rglob("*")):
        relative = path.relative_to(root)
        if any(part.startswith(".") for part in relative.parts) or path.is_dir():
            continue  # hidden files (.DS_Store) and the folders themselves
        where = f"file {relative.as_posix()}"
        if len(relative.parts) != 2:
            rows.append(RowProblem(where, "images must sit in <folder>/<generator>/<prompt>_<n>.png"))
            continue
        if path.suffix.lower() not in _IMAGE_SUFFIXES:
            rows.append(RowProblem(where, f"not an image file name ({path.suffix or 'no extension'})"))
            continue
        prompt = prompt_from_sample_file_name(path)
        if not prompt:
            rows.append(RowProblem(where, "the file name holds no prompt"))
            continue
        image = SourceImage(generator=relative.parts[0], path=relative.as_posix())
        rows.append(SourceRow(where=where, prompt=prompt, category=None, images=(image,)))
    return rows
