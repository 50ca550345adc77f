"""T2I-CompBench-style prompt files and category names (Django-free).

A prompt file holds one prompt per line; its category comes from the file name's stem
(``color_train.txt`` → attribute binding / color, see ``gallery.categories.FILE_STEMS``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from gallery.categories import CATEGORIES, FILE_STEMS
from gallery.splits import normalize_prompt_text, prompt_text_problem

CategoryKey = tuple[str, str | None]


class UnknownCategory(ValueError):
    """A category name, or a file whose name does not say its category."""


def known_category_names() -> list[str]:
    """Every spelling `resolve_category` accepts, shortest first (for error messages)."""
    names = set(FILE_STEMS)
    for definition in CATEGORIES:
        names.add(definition.slug)
        names.update(f"{definition.slug}/{sub}" for sub, _ in definition.subcategories)
    return sorted(names, key=lambda n: (len(n), n))


def resolve_category(name: str) -> CategoryKey:
    """``color`` / ``attribute_binding/color`` / ``spatial`` → (category slug, subcategory slug or None)."""
    spec = name.strip().lower().replace("-", "_").replace(" ", "_")
    if spec in FILE_STEMS:
        return FILE_STEMS[spec]
    category, _, sub = spec.partition("/")
    for definition in CATEGORIES:
        if definition.slug != category:
            continue
        subs = {slug for slug, _ in definition.subcategories}
        if not sub:
            if subs:
                # A prompt of "attribute binding" without its attribute cannot be judged consistently.
                raise UnknownCategory(
                    f"category {name!r} needs a subcategory: one of "
                    + ", ".join(f"{category}/{s}" for s in sorted(subs))
                )
            return (category, None)
        if sub in subs:
            return (category, sub)
    raise UnknownCategory(f"unknown category {name!r} (known: {', '.join(known_category_names())})")


def category_name_of(key: CategoryKey) -> str:
    """The shortest name `resolve_category` maps back to ``key`` (``color``, ``spatial``...)."""
    for stem, value in FILE_STEMS.items():
        if value == key:
            return stem
    category, sub = key
    return f"{category}/{sub}" if sub else category


def category_from_file_name(path: str | Path) -> CategoryKey:
    """Category of a prompt or record file from its stem: the longest known stem followed by ``_`` or the end.

    ``non_spatial_train.txt`` → non_spatial (not spatial); ``complex_train.txt`` → UnknownCategory.
    """
    stem = Path(path).name.split(".", 1)[0].lower()
    for known in sorted(FILE_STEMS, key=len, reverse=True):
        if stem == known or stem.startswith(known + "_"):
            return FILE_STEMS[known]
    head = stem.split("_", 1)[0] if stem else stem
    raise UnknownCategory(
        f"{Path(path).name}: unknown category {head!r} — the file name must start with one of "
        f"{', '.join(sorted(FILE_STEMS))}; or name the category explicitly (--category)"
    )


@dataclass(frozen=True)
class PromptLines:
    """What a prompt file holds: its unique prompts in file order, what was dropped, and what is refused."""

    prompts: list[str]
    lines: int
    empty: int
    duplicates: int
    # (1-based line number, why): lines that break the prompt rules (gallery.splits) or are not UTF-8.
    problems: list[tuple[int, str]] = field(default_factory=list)


class UndecodableLine(str):
    """A line that was not valid UTF-8 (its text is the reason), kept in place so line numbers stay right."""


def dedupe_prompts(lines: Iterable[str]) -> PromptLines:
    """Apply the prompt rules, drop empty lines and exact repeats (the files hold duplicate lines)."""
    seen: dict[str, None] = {}
    problems: list[tuple[int, str]] = []
    total = empty = duplicates = 0
    for raw in lines:
        total += 1
        problem = str(raw) if isinstance(raw, UndecodableLine) else prompt_text_problem(raw)
        if problem:
            problems.append((total, problem))
            continue
        text = normalize_prompt_text(raw)
        if not text:
            empty += 1
        elif text in seen:
            duplicates += 1
        else:
            seen[text] = None
    return PromptLines(prompts=list(seen), lines=total, empty=empty, duplicates=duplicates, problems=problems)


def read_prompt_lines(path: str | Path) -> list[str]:
    """The file's lines, each decoded on its own: an invalid UTF-8 line becomes an :class:`UndecodableLine`
    naming the byte, so the error can say which line."""
    data = Path(path).read_bytes()
    # A BOM (files saved on Windows) would otherwise stick to the first prompt.
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    lines: list[str] = []
    for raw in data.split(b"\n"):
        raw = raw.removesuffix(b"\r")
        try:
            lines.append(raw.decode("utf-8"))
        except UnicodeDecodeError as exc:
            lines.append(
                UndecodableLine(f"not valid UTF-8 (byte 0x{raw[exc.start]:02x} at byte {exc.start + 1})")
            )
    if lines and lines[-1] == "":
        lines.pop()  # the newline that ends the last line starts no new one
    return lines


def read_prompt_file(path: str | Path) -> PromptLines:
    return dedupe_prompts(read_prompt_lines(path))


_T2I_SAMPLE_SUFFIX = re.compile(r"_\d+$")


def prompt_from_sample_file_name(path: str | Path) -> str:
    """T2I-CompBench names samples ``<prompt>_<index>.png``; the prompt is the stem without the index."""
    stem = Path(path).stem
    return normalize_prompt_text(_T2I_SAMPLE_SUFFIX.sub("", stem))
