"""Writes of prompts: one at a time (`prompt_ensure`) or a whole prompt file at once."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from django.db import transaction

from gallery.models import Category, Prompt, Subcategory
from gallery.promptfiles import CategoryKey, UnknownCategory, dedupe_prompts, read_prompt_lines
from gallery.splits import normalize_prompt_text, split_for_text


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
    """Return the prompt with this text in this (sub)category, creating it if new."""
    text = normalize_prompt_text(text)
    if not text:
        raise ValueError("a prompt cannot be empty")
    if subcategory is not None and subcategory.category_id != category.id:
        raise ValueError(f"subcategory {subcategory.slug} does not belong to {category.slug}")
    # Checks raise before the transaction; no savepoint of its own (get_or_create guards its insert), which
    # saves two round trips per row of a gallery import.
    with transaction.atomic(savepoint=False):
        return Prompt.objects.get_or_create(
            text=text,
            category=category,
            subcategory=subcategory,
            defaults={"source": source, "licence": licence, "split": split_for_text(text)},
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
) -> PromptImportResult:
    """Add every distinct prompt of ``texts`` to the (sub)category; existing ones are left as they are."""
    if subcategory is not None and subcategory.category_id != category.id:
        raise ValueError(f"subcategory {subcategory.slug} does not belong to {category.slug}")
    parsed = dedupe_prompts(texts)
    scope = Prompt.objects.filter(category=category, subcategory=subcategory)
    existing = set(scope.filter(text__in=parsed.prompts).values_list("text", flat=True))
    new = [
        Prompt(
            text=text,
            category=category,
            subcategory=subcategory,
            source=source,
            licence=licence,
            split=split_for_text(text),
        )
        for text in parsed.prompts
        if text not in existing
    ]
    # ignore_conflicts: a concurrent import of the same file must not fail the whole batch.
    Prompt.objects.bulk_create(new, ignore_conflicts=True, batch_size=1000)
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
    *, path: Path, key: CategoryKey, source: str = "import", licence: str | None = None
) -> PromptImportResult:
    """Import one prompt file (one prompt per line) into the category ``key``."""
    category, sub = category_get(key)
    return prompts_import_texts(
        texts=read_prompt_lines(path),
        category=category,
        subcategory=sub,
        source=source,
        licence=licence_beside(path) if licence is None else licence,
    )
