"""Pairs as a folder that Hugging Face ``datasets`` loads with its ``imagefolder`` builder.

Layout: one directory per split (``train/``, ``val/``, ``test/``; datasets maps ``val`` to ``validation``),
each holding ``metadata.parquet`` (the pair schema plus ``winner_file_name`` and ``loser_file_name``) and
``images/<sha[:2]>/<sha><ext>``, every image stored once per split. ``load_dataset("imagefolder",
data_dir=...)`` turns the two ``*_file_name`` columns into ``winner`` and ``loser`` image columns.
"""

from __future__ import annotations

import os
import shutil
import zipfile
from collections.abc import Callable, Iterable
from pathlib import Path, PurePosixPath
from typing import BinaryIO

import pyarrow.parquet as pq

from annotation.exporters.pairs import PAIR_FIELDS, arrow_schema, record_batch

HF_FIELDS: tuple[str, ...] = (*PAIR_FIELDS, "winner_file_name", "loser_file_name")
_SPLIT = PAIR_FIELDS.index("split")
_WINNER_SHA, _WINNER_PATH = PAIR_FIELDS.index("winner_sha256"), PAIR_FIELDS.index("winner_path")
_LOSER_SHA, _LOSER_PATH = PAIR_FIELDS.index("loser_sha256"), PAIR_FIELDS.index("loser_path")

OpenImage = Callable[[str], BinaryIO]


def _file_name(sha256: str, storage_name: str) -> str:
    suffix = PurePosixPath(storage_name).suffix.lower() or ".png"
    return f"images/{sha256[:2]}/{sha256}{suffix}"


def write_hf_folder(
    rows: Iterable[tuple],
    root: Path,
    open_image: OpenImage,
    *,
    batch: int = 5000,
    progress: Callable[[int], None] | None = None,
) -> int:
    """Write the pair rows and their images under ``root``; returns the number of pairs."""
    schema = arrow_schema(HF_FIELDS)
    writers: dict[str, pq.ParquetWriter] = {}
    pending: dict[str, list[tuple]] = {}
    copied: dict[str, set[str]] = {}
    written = 0

    def flush(split: str) -> None:
        if pending.get(split):
            if split not in writers:
                writers[split] = pq.ParquetWriter(root / split / "metadata.parquet", schema)
            writers[split].write_batch(record_batch(pending[split], schema))
            pending[split] = []

    def copy(split: str, sha: str, storage_name: str) -> str:
        name = _file_name(sha, storage_name)
        if name not in copied.setdefault(split, set()):
            target = root / split / name
            target.parent.mkdir(parents=True, exist_ok=True)
            with open_image(storage_name) as src, open(target, "wb") as dst:
                shutil.copyfileobj(src, dst)
            copied[split].add(name)
        return name

    try:
        for row in rows:
            split = row[_SPLIT] or "train"
            (root / split).mkdir(parents=True, exist_ok=True)
            winner = copy(split, row[_WINNER_SHA], row[_WINNER_PATH])
            loser = copy(split, row[_LOSER_SHA], row[_LOSER_PATH])
            pending.setdefault(split, []).append((*row, winner, loser))
            written += 1
            if len(pending[split]) >= batch:
                flush(split)
            if progress and written % batch == 0:
                progress(written)
        for split in list(pending):
            flush(split)
    finally:
        for writer in writers.values():
            writer.close()
    if progress:
        progress(written)
    return written


def zip_folder(root: Path, fh: BinaryIO) -> None:
    """Zip a folder; images are already compressed, so they are stored, metadata is deflated."""
    with zipfile.ZipFile(fh, "w") as archive:
        for dirpath, _dirnames, filenames in sorted(os.walk(root)):
            for filename in sorted(filenames):
                path = Path(dirpath) / filename
                arcname = path.relative_to(root).as_posix()
                compress = zipfile.ZIP_DEFLATED if filename.endswith(".parquet") else zipfile.ZIP_STORED
                archive.write(path, arcname, compress_type=compress)
