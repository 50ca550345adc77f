"""Gallery import from the browser: the uploaded files (a zip of a manifest or ranked file and its images, a
zip of a ``<generator>/<prompt>_<n>.png`` folder, or the loose files themselves) are staged in a private
temporary folder and handed to :func:`annotation.services.gallery_imports.ranked_gallery_import`, the
writer behind ``manage import_gallery``. Nothing here decides what a row is: this module only turns an
upload into the path that command would be given, and refuses uploads that could not be one (path
traversal, links, zip bombs) before anything is written.

The staging folder is scratch space for reading, like the CLI's own input folder; every stored image goes
through the storage API inside the import.
"""

from __future__ import annotations

import stat
import tempfile
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from django.core.files.uploadedfile import UploadedFile

from annotation.services.gallery_imports import ranked_gallery_import
from gallery.services.imports import GalleryImportError, ImportReport
from gallery.sources import FORMATS

# Limits of one browser upload; larger galleries go through `manage import_gallery` on the server.
MAX_UPLOAD_BYTES = 512 * 1024 * 1024
MAX_UNPACKED_BYTES = 2 * 1024 * 1024 * 1024
MAX_MEMBERS = 50_000
DATA_SUFFIXES = {
    "manifest": (".csv", ".jsonl", ".ndjson"),
    "itercomp": (".json", ".jsonl", ".ndjson"),
    "imagereward": (".json", ".jsonl", ".ndjson"),
}


class UploadRefused(ValueError):
    """The upload cannot be staged as an import (the message says why); nothing was written."""


@dataclass(frozen=True)
class UploadReport:
    data_file: str
    report: ImportReport


def _member_path(name: str) -> PurePosixPath:
    path = PurePosixPath(name.replace("\\", "/"))
    if path.is_absolute() or ".." in path.parts or (path.parts and ":" in path.parts[0]):
        raise UploadRefused(f"zip member {name!r}: paths must stay inside the archive")
    # macOS archivers add resource forks next to every file: never data, never images.
    if path.parts and path.parts[0] == "__MACOSX":
        return PurePosixPath()
    return path


def _unzip(upload: UploadedFile, dest: Path) -> None:
    try:
        archive = zipfile.ZipFile(upload)
    except zipfile.BadZipFile:
        raise UploadRefused(f"{upload.name}: not a readable zip file") from None
    with archive:
        members = archive.infolist()
        if len(members) > MAX_MEMBERS:
            raise UploadRefused(f"{upload.name}: more than {MAX_MEMBERS} files; import it with the CLI")
        declared = sum(m.file_size for m in members)
        if declared > MAX_UNPACKED_BYTES:
            raise UploadRefused(
                f"{upload.name}: {declared / 2**30:.1f} GiB unpacked is over the "
                f"{MAX_UNPACKED_BYTES // 2**30} GiB a browser upload may hold; import it with the CLI"
            )
        written = 0
        for member in members:
            relative = _member_path(member.filename)
            if not relative.parts or member.is_dir():
                continue
            if stat.S_ISLNK(member.external_attr >> 16):
                raise UploadRefused(f"zip member {member.filename!r}: links are refused")
            target = dest.joinpath(*relative.parts)
            target.parent.mkdir(parents=True, exist_ok=True)
            with archive.open(member) as source, open(target, "wb") as out:
                # Counted while copying: a member's declared size can lie.
                while chunk := source.read(1024 * 1024):
                    written += len(chunk)
                    if written > MAX_UNPACKED_BYTES:
                        raise UploadRefused(f"{upload.name}: unpacks to more than it declares; refused")
                    out.write(chunk)


def _stage(uploads: Iterable[UploadedFile], dest: Path) -> None:
    total = 0
    for upload in uploads:
        total += upload.size or 0
        if total > MAX_UPLOAD_BYTES:
            raise UploadRefused(
                f"the upload is over {MAX_UPLOAD_BYTES // 2**20} MiB; import it with manage import_gallery"
            )
        if upload.name.lower().endswith(".zip"):
            _unzip(upload, dest)
            continue
        name = PurePosixPath(upload.name.replace("\\", "/")).name
        if not name or name in (".", ".."):
            raise UploadRefused(f"{upload.name!r} is not a file name")
        with open(dest / name, "wb") as out:
            for chunk in upload.chunks():
                out.write(chunk)


def _data_file(root: Path, format: str) -> Path:
    """The one manifest or ranked file among the staged files (at any depth)."""
    suffixes = DATA_SUFFIXES[format]
    found = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in suffixes)
    if len(found) != 1:
        names = ", ".join(str(p.relative_to(root)) for p in found) or "none"
        raise UploadRefused(
            f"a {format} upload holds exactly one {'/'.join(suffixes)} file next to its images (found: {names})"
        )
    return found[0]


def _folder_root(root: Path, category: str | None) -> Path:
    """A zipped folder usually has one top folder named after its category (``color_train/sdxl/…``); the
    folder import takes its category from that name, so hand the import that folder."""
    entries = [p for p in root.iterdir() if p.name != "__MACOSX"]
    if len(entries) == 1 and entries[0].is_dir() and not category:
        return entries[0]
    return root


def gallery_upload_import(
    *,
    uploads: list[UploadedFile],
    format: str,
    category: str | None = None,
    generator: str | None = None,
    annotator: str | None = None,
    source: str | None = None,
    iteration: int = 0,
) -> UploadReport:
    """Stage the uploaded files and run the gallery import on them, as ``manage import_gallery`` would.

    Not atomic on purpose, like the import itself: rows commit in chunks and a bad row is reported by its
    line while the others are kept. Raises :class:`UploadRefused` or ``GalleryImportError`` when the import
    cannot start (nothing written).
    """
    if format not in FORMATS:
        raise UploadRefused(f"format must be one of {', '.join(FORMATS)}")
    if not uploads:
        raise UploadRefused("choose a zip file (or the manifest and its images)")
    with tempfile.TemporaryDirectory(prefix="gallery-upload-") as scratch:
        root = Path(scratch) / "upload"
        root.mkdir()
        _stage(uploads, root)
        if format == "folder":
            path = _folder_root(root, category)
            shown = path.name if path != root else "(the upload's top level)"
        else:
            path = _data_file(root, format)
            shown = str(path.relative_to(root))
        report = ranked_gallery_import(
            path=path,
            format=format,
            category=category or None,
            generator=generator or None,
            annotator=annotator or None,
            # Image paths are relative to the data file's folder, as for the CLI; they may not leave it.
            source=source or None,
            iteration=iteration,
        )
    return UploadReport(data_file=shown, report=report)


__all__ = ["GalleryImportError", "UploadRefused", "UploadReport", "gallery_upload_import"]
