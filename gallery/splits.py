"""Deterministic prompt-level splits: a prompt's text alone decides its split."""

from __future__ import annotations

import hashlib

# Fractions of prompts in train / val; the rest is test.
TRAIN_FRACTION = 0.8
VAL_FRACTION = 0.1


def normalize_prompt_text(text: str) -> str:
    return " ".join(text.strip().split())


def split_for_text(text: str) -> str:
    """Same text → same split, whichever category or import brought it in."""
    digest = hashlib.sha256(normalize_prompt_text(text).lower().encode("utf-8")).digest()
    bucket = int.from_bytes(digest[:8], "big") / 2**64
    if bucket < TRAIN_FRACTION:
        return "train"
    if bucket < TRAIN_FRACTION + VAL_FRACTION:
        return "val"
    return "test"
