"""Moving checkpoints and files between workers through Django's storage API.

A checkpoint directory travels as one deterministic tar named by its sha256, so a name never points to a
partial file (the storage write finishes before any row names it) and identical checkpoints are stored once.
Workers keep verified copies under WORKER_CACHE_DIR, so a GPU worker on another machine downloads each
artifact once.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import tarfile
import tempfile
from pathlib import Path

from django.conf import settings
from django.core.files import File
from django.core.files.storage import Storage, default_storage

CHUNK = 1 << 20


class ArtifactError(Exception):
    pass


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _tar_directory(directory: Path, target: Path) -> None:
    """Same files → same bytes: sorted entries, zeroed times and owners."""

    def _normalise(info: tarfile.TarInfo) -> tarfile.TarInfo:
        info.mtime = 0
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        return info

    with tarfile.open(target, "w", format=tarfile.PAX_FORMAT) as tar:
        for path in sorted(directory.rglob("*")):
            tar.add(path, arcname=str(path.relative_to(directory)), recursive=False, filter=_normalise)


def artifact_store_dir(
    directory: str | os.PathLike[str], *, prefix: str, storage: Storage | None = None
) -> tuple[str, str]:
    """Upload a checkpoint directory; return (storage name, sha256). Safe to call twice."""
    storage = storage or default_storage
    directory = Path(directory)
    if not directory.is_dir():
        raise ArtifactError(f"{directory} is not a directory")
    with tempfile.TemporaryDirectory() as scratch:
        tar_path = Path(scratch) / "artifact.tar"
        _tar_directory(directory, tar_path)
        sha = _sha256_file(tar_path)
        name = f"{prefix.strip('/')}/{sha[:2]}/{sha}.tar"
        if not storage.exists(name):
            with open(tar_path, "rb") as handle:
                saved = storage.save(name, File(handle, name=Path(name).name))
            if saved != name:  # a concurrent writer won the race with identical bytes
                storage.delete(saved)
    return name, sha


def _cache_root() -> Path:
    root = Path(settings.WORKER_CACHE_DIR)
    root.mkdir(parents=True, exist_ok=True)
    return root


def _download_verified(name: str, sha256: str, storage: Storage, target: Path) -> None:
    digest = hashlib.sha256()
    with storage.open(name, "rb") as source, open(target, "wb") as sink:
        for chunk in iter(lambda: source.read(CHUNK), b""):
            digest.update(chunk)
            sink.write(chunk)
    if digest.hexdigest() != sha256:
        raise ArtifactError(
            f"{name}: content hash {digest.hexdigest()[:12]}… does not match the recorded {sha256[:12]}…"
        )


def artifact_fetch_dir(name: str, sha256: str, *, storage: Storage | None = None) -> Path:
    """A local, verified copy of a stored checkpoint directory (downloaded once per worker)."""
    storage = storage or default_storage
    final = _cache_root() / "artifacts" / sha256
    if final.is_dir():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{sha256[:12]}."))
    try:
        tar_path = scratch / "artifact.tar"
        _download_verified(name, sha256, storage, tar_path)
        unpacked = scratch / "unpacked"
        with tarfile.open(tar_path) as tar:
            tar.extractall(unpacked, filter="data")
        try:
            unpacked.rename(final)
        except OSError:
            if not final.is_dir():  # not a concurrent fetch that finished first
                raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return final


def file_fetch(name: str, sha256: str, *, storage: Storage | None = None) -> Path:
    """A local, verified copy of one stored file (an image), cached by content hash."""
    storage = storage or default_storage
    suffix = Path(name).suffix
    final = _cache_root() / "files" / sha256[:2] / f"{sha256}{suffix}"
    if final.is_file():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    handle, temp_name = tempfile.mkstemp(dir=final.parent, prefix=".part.")
    os.close(handle)
    try:
        _download_verified(name, sha256, storage, Path(temp_name))
        os.replace(temp_name, final)
    finally:
        if os.path.exists(temp_name):
            os.unlink(temp_name)
    return final


def bytes_store(data: bytes, *, name: str, storage: Storage | None = None) -> str:
    """Store small generated files (plots, reports) under an exact name, replacing an older copy."""
    storage = storage or default_storage
    if storage.exists(name):
        storage.delete(name)
    return storage.save(name, File(io.BytesIO(data), name=Path(name).name))
