"""Ranked gallery import: the gallery import of IterComp and ImageReward files (and folders, manifests),
with each record's expert ranks stored as the named annotator's rankings.

The gallery app reads, checks and registers prompts and images; rankings are this app's, so the writer
that stores them lives here and gallery never imports annotation.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from django.contrib.auth.models import AbstractUser

from annotation.services.imports import annotator_ensure, ranking_import
from gallery.models import Image, Prompt
from gallery.services.imports import ImportReport, gallery_import


class AnnotatorRankings:
    """Stores imported ranks for one annotator (created on first use, as an annotator without a password)."""

    def __init__(self, username: str) -> None:
        self.username = username
        self._committed: AbstractUser | None = None
        self._pending: AbstractUser | None = None

    def write(self, *, prompt: Prompt, ordering: list[list[Image]], iteration: int) -> bool:
        # Looked up (or created) inside each row until one commits: a row that fails rolls back the user it
        # created, so only a committed user may be reused by the next rows.
        self._pending = self._committed or annotator_ensure(username=self.username)
        _, created = ranking_import(
            prompt=prompt, ordering=ordering, annotator=self._pending, source="import", iteration=iteration
        )
        return created

    def row_committed(self) -> None:
        self._committed = self._pending


def ranked_gallery_import(
    *,
    path: Path,
    format: str,
    category: str | None = None,
    generator: str | None = None,
    annotator: str | None = None,
    images_root: Path | None = None,
    source: str | None = None,
    iteration: int = 0,
    progress: Callable[[Iterable[Any], int], Iterable[Any]] | None = None,
) -> ImportReport:
    """:func:`gallery.services.imports.gallery_import` with the ranks attributed to ``annotator`` (required
    for itercomp/imagereward; folders and manifests carry no ranks and need none)."""
    return gallery_import(
        path=path,
        format=format,
        category=category,
        generator=generator,
        rankings=AnnotatorRankings(annotator) if annotator else None,
        images_root=images_root,
        source=source,
        iteration=iteration,
        progress=progress,
    )
