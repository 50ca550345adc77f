"""Writes of prompts: one at a time (`prompt_ensure`) or a whole prompt file at once."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from django.core.exceptions import ValidationError
from django.core.validators import validate_slug
from django.db import transaction

from gallery.models import Category, Prompt, Subcategory
from gallery.promptfiles import CategoryKey, UnknownCategory, dedupe_prompts, read_prompt_lines
from gallery.splits import SPLITS, prompt_text_checked, split_for_text

SOURCE_MAX_CHARS = Prompt._meta.get_field("source").max_length
LICENCE_MAX_CHARS = Prompt._meta.get_field("licence").max_length
# A file with more refused lines than this is reported by its first ones (and the count).
PROBLEMS_SHOWN = 20


class PromptFileRefused(ValueError):
    """A prompt file (or option) that breaks a rule; nothing of it was imported. The message names every
    refused line (up to PROBLEMS_SHOWN) and the limit it broke."""


def prompt_source_checked(source: str) -> str:
    if len(source) > SOURCE_MAX_CHARS:
        raise PromptFileRefused(
            f"source is {len(source)} characters, more than the limit of {SOURCE_MAX_CHARS}"
        )
    try:
        validate_slug(source)
    except ValidationError:
        raise PromptFileRefused(f"source {source!r} must be a slug (letters, digits, '-' and '_')") from None
    return source


def prompt_licence_checked(licence: str) -> str:
    if len(licence) > LICENCE_MAX_CHARS:
        raise PromptFileRefused(
            f"licence is {len(licence)} characters, more than the limit of {LICENCE_MAX_CHARS}"
        )
    if "\x00" in licence:
        raise PromptFileRefused("licence contains a NUL byte")
    return licence


def _pinned_splits(texts: Iterable[str]) -> dict[str, str]:
    """Texts whose split an import pinned (in any category): the same text keeps that split everywhere."""
    return dict(
        Prompt.objects.filter(text__in=list(texts), split_pinned=True).values_list("text", "split").distinct()
    )


def category_get(key: CategoryKey) -> tuple[Category, Subcategory | None]:
    """The rows for a resolved (category slug, subcategory slug) pair; the seed migration created them."""
    category_slug, sub_slug = key
    try:
        category = Category.objects.get(slug=category_slug)
        sub = Subcategory.objects.get(slug=sub_slug, category=category) if sub_slug else None
    except (Category.DoesNotExist, Subcategory.DoesNotExist):
        raise UnknownCategory(f"category {category_slug}/{sub_slug or '-'} is not in the database") from None
    return category, sub


def prompt_ensure(
    *,
    text: str,
    category: Category,
    subcategory: Subcategory | None = None,
    source: str = "custom",
    licence: str = "",
) -> tuple[Prompt, bool]:
    """Return the prompt with this text in this (sub)category, creating it if new.

    The text goes through the prompt rules first (`gallery.splits.prompt_text_checked`: NFC, invisible
    characters stripped, direction/control characters and over-long texts refused with PromptRejected).
    """
    text = prompt_text_checked(text)
    if not text:
        raise ValueError("a prompt cannot be empty")
    source = prompt_source_checked(source)
    licence = prompt_licence_checked(licence)
    if subcategory is not None and subcategory.category_id != category.id:
        raise ValueError(f"subcategory {subcategory.slug} does not belong to {category.slug}")
    # Checks raise before the transaction; no savepoint of its own (get_or_create guards its insert), which
    # saves two round trips per row of a gallery import.
    with transaction.atomic(savepoint=False):
        return Prompt.objects.get_or_create(
            text=text,
            category=category,
            subcategory=subcategory,
            defaults={
                "source": source,
                "licence": licence,
                "split": _pinned_splits([text]).get(text) or split_for_text(text),
                "split_pinned": False,
            },
        )


@dataclass(frozen=True)
class PromptImportResult:
    category: Category
    subcategory: Subcategory | None
    lines: int
    empty: int
    duplicates: int  # repeated lines inside the input
    unique: int
    created: int
    existing: int  # already in the database (a re-import adds nothing)
    pinned: int = 0  # prompts (new or existing, any category) whose split this import pinned

    @property
    def label(self) -> str:
        return f"{self.category.name} / {self.subcategory.name}" if self.subcategory else self.category.name


@transaction.atomic
def prompts_import_texts(
    *,
    texts: Iterable[str],
    category: Category,
    subcategory: Subcategory | None = None,
    source: str = "import",
    licence: str = "",
    split: str | None = None,
    where: str = "line",
) -> PromptImportResult:
    """Add every distinct prompt of ``texts`` to the (sub)category; existing ones are left as they are.

    All or nothing: a line that breaks the prompt rules refuses the whole input (PromptFileRefused naming
    each such line) before anything is written. ``split`` pins the prompts to train/val/test — new ones and
    the existing ones with the same text in every category (one text, one split); a prompt an earlier import
    pinned to another split is refused rather than moved across splits. Without ``split`` a new prompt
    takes its text's pinned split if there is one, else the hash split.
    """
    if subcategory is not None and subcategory.category_id != category.id:
        raise ValueError(f"subcategory {subcategory.slug} does not belong to {category.slug}")
    if split is not None and split not in SPLITS:
        raise PromptFileRefused(f"split {split!r} is not one of {', '.join(SPLITS)}")
    source = prompt_source_checked(source)
    licence = prompt_licence_checked(licence)
    parsed = dedupe_prompts(texts)
    if parsed.problems:
        shown = "; ".join(f"{where} {number}: {why}" for number, why in parsed.problems[:PROBLEMS_SHOWN])
        more = len(parsed.problems) - PROBLEMS_SHOWN
        raise PromptFileRefused(
            f"{len(parsed.problems)} line(s) refused, nothing imported — {shown}"
            + (f"; and {more} more" if more > 0 else "")
        )
    pinned = _pinned_splits(parsed.prompts)
    if split is not None:
        conflicts = sorted(text for text, already in pinned.items() if already != split)
        if conflicts:
            raise PromptFileRefused(
                f"{len(conflicts)} prompt(s) are already pinned to another split, nothing imported "
                f"(first: {conflicts[0][:80]!r} is pinned to {pinned[conflicts[0]]}, not {split})"
            )
    scope = Prompt.objects.filter(category=category, subcategory=subcategory)
    existing = set(scope.filter(text__in=parsed.prompts).values_list("text", flat=True))
    new = [
        Prompt(
            text=text,
            category=category,
            subcategory=subcategory,
            source=source,
            licence=licence,
            split=split or pinned.get(text) or split_for_text(text),
            split_pinned=split is not None,
        )
        for text in parsed.prompts
        if text not in existing
    ]
    # ignore_conflicts: a concurrent import of the same file must not fail the whole batch.
    Prompt.objects.bulk_create(new, ignore_conflicts=True, batch_size=1000)
    moved = 0
    if split is not None:
        moved = (
            Prompt.objects.filter(text__in=parsed.prompts)
            .exclude(split=split, split_pinned=True)
            .update(split=split, split_pinned=True)
        )
    now_present = scope.filter(text__in=parsed.prompts).count()
    return PromptImportResult(
        category=category,
        subcategory=subcategory,
        lines=parsed.lines,
        empty=parsed.empty,
        duplicates=parsed.duplicates,
        unique=len(parsed.prompts),
        created=now_present - len(existing),
        existing=len(existing),
        pinned=moved + (len(new) if split is not None else 0),
    )


def licence_beside(path: Path) -> str:
    """First line of a LICENSE file next to the prompt file ("MIT License"), or ""."""
    for name in ("LICENSE", "LICENSE.txt", "LICENCE"):
        candidate = path.parent / name
        if candidate.is_file():
            first = candidate.read_text(encoding="utf-8", errors="replace").strip().splitlines()
            return first[0].strip()[:80] if first else ""
    return ""


@transaction.atomic
def prompts_import_file(
    *,
    path: Path,
    key: CategoryKey,
    source: str = "import",
    licence: str | None = None,
    split: str | None = None,
) -> PromptImportResult:
    """Import one prompt file (one prompt per line) into the category ``key`` (all or nothing)."""
    category, sub = category_get(key)
    try:
        return prompts_import_texts(
            texts=read_prompt_lines(path),
            category=category,
            subcategory=sub,
            source=source,
            licence=licence_beside(path) if licence is None else licence,
            split=split,
        )
    except PromptFileRefused as exc:
        raise PromptFileRefused(f"{path.name}: {exc}") from None
