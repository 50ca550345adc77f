"""Prompt text rules and deterministic prompt-level splits (Django-free).

Every prompt that enters the database passes :func:`prompt_text_checked`:

* Unicode NFC: "café" typed composed or decomposed is one prompt.
* Invisible format characters (zero-width space/joiners, word joiner, soft hyphen, byte-order mark and the
  other Unicode "Cf" characters that are not direction controls) are **stripped**: they change nothing a
  reader sees, so keeping them would only make look-alike duplicates.
* Direction controls (LRE/RLE/PDF/LRO/RLO, LRI/RLI/FSI/PDI, LRM/RLM/ALM) and control characters (NUL and
  the other C0/C1 codes; tab and line breaks count as whitespace) are **refused**: they make the text
  display differently from what is stored, or cannot be stored at all.
* Whitespace runs become one space, ends trimmed; at most :data:`PROMPT_MAX_CHARS` characters remain.

A prompt's split is a hash of its text unless an import pinned it (``--split``, see
``gallery.services.prompts``).
"""

from __future__ import annotations

import hashlib
import unicodedata

# Fractions of prompts in train / val; the rest is test.
TRAIN_FRACTION = 0.8
VAL_FRACTION = 0.1
SPLITS = ("train", "val", "test")

# T2I-CompBench's longest prompt is ~200 characters and CLIP reads 77 tokens; 1,000 leaves room for long
# compositional prompts while keeping a 10 MB "line" out of the database.
PROMPT_MAX_CHARS = 1000

_BIDI_CONTROLS = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
_WHITESPACE_CONTROLS = frozenset("\t\n\r\x0b\x0c\x1c\x1d\x1e\x1f\x85")


class PromptRejected(ValueError):
    """A prompt text that breaks the rules above; the message names the character or the limit."""


def _is_invisible(char: str) -> bool:
    return unicodedata.category(char) == "Cf" and char not in _BIDI_CONTROLS


def normalize_prompt_text(text: str) -> str:
    """NFC, invisible format characters dropped, whitespace collapsed (never raises; see the checked form)."""
    text = unicodedata.normalize("NFC", text)
    if any(_is_invisible(char) for char in text):
        text = "".join(char for char in text if not _is_invisible(char))
    return " ".join(text.split())


def prompt_text_problem(text: str) -> str | None:
    """Why ``text`` cannot be a prompt (refused character, too long), or None."""
    if len(text) > 20 * PROMPT_MAX_CHARS:  # no whitespace collapse brings this back under the limit
        return f"prompt is {len(text):,} characters, more than the limit of {PROMPT_MAX_CHARS:,}"
    for position, char in enumerate(text, start=1):
        if char in _BIDI_CONTROLS:
            return (
                f"text direction control U+{ord(char):04X} at character {position} refused "
                "(it makes the prompt display differently from what is stored)"
            )
        if unicodedata.category(char) == "Cc" and char not in _WHITESPACE_CONTROLS:
            name = "NUL byte" if char == "\x00" else "control character"
            return f"{name} U+{ord(char):04X} at character {position} refused"
    normalized = normalize_prompt_text(text)
    if len(normalized) > PROMPT_MAX_CHARS:
        return f"prompt is {len(normalized):,} characters, more than the limit of {PROMPT_MAX_CHARS:,}"
    return None


def prompt_text_checked(text: str) -> str:
    """The stored form of ``text`` (see the module doc); raises :class:`PromptRejected`."""
    problem = prompt_text_problem(text)
    if problem:
        raise PromptRejected(problem)
    return normalize_prompt_text(text)


def split_for_text(text: str) -> str:
    """Same text → same split, whichever category or import brought it in."""
    digest = hashlib.sha256(normalize_prompt_text(text).lower().encode("utf-8")).digest()
    bucket = int.from_bytes(digest[:8], "big") / 2**64
    if bucket < TRAIN_FRACTION:
        return "train"
    if bucket < TRAIN_FRACTION + VAL_FRACTION:
        return "val"
    return "test"
