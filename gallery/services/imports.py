"""Gallery import: folders, manifests, IterComp and ImageReward files → prompts, images (and rankings).

Each row is imported in its own savepoint: a bad row is reported with its line and leaves nothing behind,
while the good rows around it are kept. Everything a row needs is read
and checked before the first write, and every write is idempotent, so importing a file twice adds nothing.

Rankings belong to the ``annotation`` app, which gallery never imports: the ranked formats' expert ranks
are handed to a :class:`RankingWriter` inside the row's savepoint.
``annotation.services.gallery_imports.ranked_gallery_import`` supplies one (the ``import_gallery`` command
calls it).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from django.db import transaction

from gallery.imaging import CheckedImage
from gallery.models import Generator, GeneratorKind, Image, Prompt
from gallery.promptfiles import CategoryKey, UnknownCategory, category_from_file_name, resolve_category
from gallery.services.generators import generators_ensure_itercomp_gallery
from gallery.services.images import (
    NewImage,
    image_read_checked,
    images_register,
    storage_remove_unreferenced,
)
from gallery.services.prompts import category_get, prompt_ensure
from gallery.sources import (
    FORMATS,
    RowProblem,
    SourceError,
    SourceRow,
    read_folder,
    read_imagereward,
    read_itercomp,
    read_manifest,
    safe_join,
)
from gallery.splits import prompt_text_problem

RANKED_FORMATS = ("itercomp", "imagereward")
# Rows per transaction. Each row is a savepoint inside it, so a bad row still leaves nothing behind, while
# the commit (a WAL flush) is paid once per chunk instead of once per row. An interrupted import loses at
# most the open chunk, and re-importing is idempotent.
COMMIT_EVERY = 100
# Image.seed is a PostgreSQL bigint.
SEED_MIN, SEED_MAX = -(2**63), 2**63 - 1


class GalleryImportError(ValueError):
    """The import cannot start (missing file, unknown format, no category or generator to file rows under)."""


class RowFailed(ValueError):
    """One row cannot be imported; the message says why."""


class RankingWriter(Protocol):
    """Stores the expert ranks of a ranked row (IterComp, ImageReward) for the annotator they are imported for."""

    def write(self, *, prompt: Prompt, ordering: list[list[Image]], iteration: int) -> bool:
        """Store one row's ranking, inside the row's savepoint; True when a new ranking was stored."""
        ...

    def row_committed(self) -> None:
        """The row whose ranking was just written is committed: rows it created may be reused from now on."""
        ...


@dataclass
class ImportReport:
    rows: int = 0
    rows_ok: int = 0
    errors: list[tuple[str, str]] = field(default_factory=list)
    prompts_created: int = 0
    images_created: int = 0
    images_existing: int = 0
    images_generator_kept: int = 0  # bytes the prompt already had under another generator (not re-labelled)
    files_stored: int = 0
    rankings_created: int = 0
    rankings_existing: int = 0

    @property
    def rows_failed(self) -> int:
        return len(self.errors)

    def summary(self) -> str:
        return (
            f"{self.rows_ok}/{self.rows} rows imported, {self.rows_failed} failed; "
            f"{self.prompts_created} new prompts; {self.images_created} new images "
            f"({self.images_existing} already present"
            + (
                f", {self.images_generator_kept} of them filed under another generator, kept as they are"
                if self.images_generator_kept
                else ""
            )
            + f", {self.files_stored} new files stored); "
            f"{self.rankings_created} new rankings ({self.rankings_existing} already present)"
        )


@dataclass
class _RowStats:
    prompts_created: int = 0
    images_created: int = 0
    images_existing: int = 0
    images_generator_kept: int = 0
    files_stored: int = 0
    rankings_created: int = 0
    rankings_existing: int = 0


@dataclass
class _Context:
    root: Path
    category: CategoryKey | None  # from --category or the file name; a row's own column comes second
    category_overrides: bool
    generators: dict[str, Generator]
    rankings: RankingWriter | None
    source: str
    iteration: int
    categories: dict[CategoryKey, Any] = field(default_factory=dict)

    def category_for(self, row: SourceRow) -> CategoryKey:
        if self.category is not None and (self.category_overrides or not row.category):
            return self.category
        if row.category:
            return resolve_category(row.category)
        raise RowFailed("no category: the row does not name one and none was given (--category)")

    def rows_of(self, key: CategoryKey):
        if key not in self.categories:
            self.categories[key] = category_get(key)
        return self.categories[key]

    def generator(self, slug: str) -> Generator:
        try:
            return self.generators[slug]
        except KeyError:
            known = ", ".join(sorted(self.generators)) or "none registered"
            raise RowFailed(f"unknown generator {slug!r} (known: {known})") from None


def gallery_import(
    *,
    path: Path,
    format: str,
    category: str | None = None,
    generator: str | None = None,
    rankings: RankingWriter | None = None,
    images_root: Path | None = None,
    source: str | None = None,
    iteration: int = 0,
    progress: Callable[[Iterable[Any], int], Iterable[Any]] | None = None,
) -> ImportReport:
    """Import a gallery file or folder. Not one transaction on purpose: rows commit in chunks, each row in
    its own savepoint.

    ``category`` overrides whatever the file says (a manifest's column, the file name); ``generator`` names
    the model of ImageReward generations (that format does not say); ``rankings`` stores the imported ranks
    (required for itercomp/imagereward: ``ranked_gallery_import`` builds it from the annotator's name);
    ``images_root`` is the folder image paths are relative to (default: the file's folder) and which they
    may not leave.
    """
    if format not in FORMATS:
        raise GalleryImportError(f"unknown format {format!r}; expected one of {', '.join(FORMATS)}")
    if not path.exists():
        raise GalleryImportError(f"{path} does not exist")
    if format == "folder" and not path.is_dir():
        raise GalleryImportError(f"{path} is not a folder (--format folder)")
    if format != "folder" and not path.is_file():
        raise GalleryImportError(f"{path} is not a file")
    if format in RANKED_FORMATS and rankings is None:
        raise GalleryImportError(
            f"{format} files carry expert ranks: name the annotator they are imported for (--annotator)"
        )
    try:
        override = resolve_category(category) if category else None
    except UnknownCategory as exc:
        raise GalleryImportError(str(exc)) from None
    file_category = override
    if file_category is None and format in ("folder", *RANKED_FORMATS):
        # These formats do not name a category per row: take it from the file (or folder) name.
        try:
            file_category = category_from_file_name(path)
        except UnknownCategory as exc:
            raise GalleryImportError(str(exc)) from None
    if format == "itercomp":
        generators_ensure_itercomp_gallery()
    generators = {g.slug: g for g in Generator.objects.all()}
    if format == "imagereward":
        if not generator:
            raise GalleryImportError(
                "ImageReward records do not say which model drew them: name it (--generator)"
            )
        if generator not in generators:
            raise GalleryImportError(
                f"unknown generator {generator!r} (known: {', '.join(sorted(generators))})"
            )
    root = images_root or (path if format == "folder" else path.parent)
    try:
        if format == "manifest":
            rows = read_manifest(path)
        elif format == "itercomp":
            rows = read_itercomp(path)
        elif format == "imagereward":
            rows = read_imagereward(path, generator or "")
        else:
            rows = read_folder(path)
    except (SourceError, OSError, UnicodeDecodeError) as exc:
        raise GalleryImportError(str(exc)) from None
    context = _Context(
        root=root,
        category=file_category,
        category_overrides=override is not None,
        generators=generators,
        rankings=rankings,
        source=source or format,
        iteration=iteration,
    )
    report = ImportReport(rows=len(rows))
    chunk = None  # the open transaction of the current COMMIT_EVERY rows
    try:
        for index, row in enumerate(progress(rows, len(rows)) if progress else rows):
            if index % COMMIT_EVERY == 0:
                if chunk is not None:
                    chunk.__exit__(None, None, None)
                chunk = transaction.atomic()
                chunk.__enter__()
            if isinstance(row, RowProblem):
                report.errors.append((row.where, row.message))
                continue
            try:
                stats = _import_row(row, context)
            except Exception as exc:  # noqa: BLE001 — any failure of one row is reported, the rest go on
                report.errors.append((row.where, _describe(exc)))
                continue
            report.rows_ok += 1
            for name, value in vars(stats).items():
                setattr(report, name, getattr(report, name) + value)
    except BaseException as exc:
        if chunk is not None:
            chunk.__exit__(type(exc), exc, exc.__traceback__)
            chunk = None
        raise
    finally:
        if chunk is not None:
            chunk.__exit__(None, None, None)
    return report


def _describe(exc: Exception) -> str:
    if isinstance(exc, ValueError | OSError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


def _import_row(row: SourceRow, context: _Context) -> _RowStats:
    """Check everything the row needs, then write it in a savepoint; on failure the files the row stored
    are removed again, so a failed row leaves nothing in the database or in storage."""
    problem = prompt_text_problem(row.prompt)
    if problem:
        raise RowFailed(f"prompt: {problem}")
    for image in row.images:
        if image.seed is not None and not SEED_MIN <= image.seed <= SEED_MAX:
            raise RowFailed(f"seed {image.seed} is outside the 64-bit range [{SEED_MIN}, {SEED_MAX}]")
    key = context.category_for(row)
    category, subcategory = context.rows_of(key)
    generators = [
        None
        if image.generator in row.auto_generators and image.generator not in context.generators
        else context.generator(image.generator)
        for image in row.images
    ]
    checked: list[CheckedImage] = []
    for image in row.images:
        try:
            checked.append(image_read_checked(safe_join(context.root, image.path)))
        except ValueError as exc:
            raise RowFailed(f"image {image.path!r}: {exc}") from None
    if row.ordering is not None:
        seen: dict[str, int] = {}
        for index, (image, content) in enumerate(zip(row.images, checked, strict=True)):
            other = seen.setdefault(content.sha256, index)
            if other != index:
                # The same picture twice in one ranking cannot be ranked against itself.
                raise RowFailed(f"images {row.images[other].path!r} and {image.path!r} are identical files")
    written: list[str] = []
    try:
        return _write_row(row, context, category, subcategory, generators, checked, written)
    except BaseException:
        if written:
            storage_remove_unreferenced(written)
        raise


def _write_row(
    row: SourceRow,
    context: _Context,
    category: Any,
    subcategory: Any,
    generators: list[Generator | None],
    checked: list[CheckedImage],
    written: list[str],
) -> _RowStats:
    stats = _RowStats()
    with transaction.atomic():
        # An iterative IterComp record's extra models (sdxl_iteration1, omost) become import-only
        # generators, inside the row's savepoint so a failed row leaves none behind.
        generators = [
            generator
            or Generator.objects.get_or_create(
                slug=image.generator,
                defaults={"name": image.generator, "kind": GeneratorKind.GALLERY},
            )[0]
            for image, generator in zip(row.images, generators, strict=True)
        ]
        prompt, created = prompt_ensure(
            text=row.prompt, category=category, subcategory=subcategory, source=context.source
        )
        stats.prompts_created += created
        results = images_register(
            prompt=prompt,
            items=[
                NewImage(generator=generator, image=content, seed=image.seed, params=image.params)
                for image, generator, content in zip(row.images, generators, checked, strict=True)
            ],
            iteration=context.iteration,
            written=written,
        )
        registered = [result.image for result in results]
        for result in results:
            stats.images_created += result.created
            stats.images_existing += not result.created
            stats.images_generator_kept += result.other_generator
            stats.files_stored += result.stored
        ranked = row.ordering is not None and context.rankings is not None
        if ranked:
            ranking_created = context.rankings.write(
                prompt=prompt,
                ordering=[[registered[i] for i in group] for group in row.ordering],
                iteration=context.iteration,
            )
            stats.rankings_created += ranking_created
            stats.rankings_existing += not ranking_created
    if ranked:
        context.rankings.row_committed()
    return stats
