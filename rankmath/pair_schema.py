"""The image-rank pair schema shared by the app's exporters and the reward-model trainer.

Torch-free and Django-free on purpose: web processes import it to write exports, the ML core to read them,
so the two can never drift apart.
"""

from __future__ import annotations

PAIR_FIELDS: tuple[str, ...] = (
    "pair_id",
    "prompt_id",
    "prompt",
    "category",
    "subcategory",
    "split",
    "winner_id",
    "winner_sha256",
    "winner_path",
    "loser_id",
    "loser_sha256",
    "loser_path",
    "label",
    "source",
    "iteration",
    "weight",
)
