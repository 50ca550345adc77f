"""Word-level tokenizer over the world's grammar (the vocabulary is a committed JSON file)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

from .vocab import grammar_words

SPECIAL_TOKENS: tuple[str, ...] = ("[PAD]", "[BOS]", "[EOS]", "[UNK]")
ASSETS = Path(__file__).resolve().parent / "assets"
VOCAB_PATH = ASSETS / "vocab.json"


def build_vocab() -> list[str]:
    return list(SPECIAL_TOKENS) + grammar_words()


@dataclass(frozen=True)
class WordTokenizer:
    """Lower-cases, splits on whitespace, wraps in [BOS] ... [EOS] and pads to `max_length`."""

    vocab: tuple[str, ...]
    max_length: int = 12

    def __post_init__(self) -> None:
        if tuple(self.vocab[: len(SPECIAL_TOKENS)]) != SPECIAL_TOKENS:
            raise ValueError(f"vocab must start with {SPECIAL_TOKENS}")
        if len(set(self.vocab)) != len(self.vocab):
            raise ValueError("vocab entries must be unique")
        if self.max_length < 3:
            raise ValueError("max_length must leave room for [BOS], a word and [EOS]")

    @property
    def index(self) -> dict[str, int]:
        return {word: i for i, word in enumerate(self.vocab)}

    @property
    def pad_id(self) -> int:
        return 0

    def __len__(self) -> int:
        return len(self.vocab)

    def encode(self, text: str) -> list[int]:
        index = self.index
        unk = index["[UNK]"]
        words = text.lower().replace(",", " ").replace(".", " ").split()
        ids = [index["[BOS]"]] + [index.get(word, unk) for word in words] + [index["[EOS]"]]
        if len(ids) > self.max_length:
            raise ValueError(f"prompt has {len(words)} words; at most {self.max_length - 2} fit: {text!r}")
        return ids + [self.pad_id] * (self.max_length - len(ids))

    def __call__(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids [B, L] and a padding mask [B, L] (True where padded)."""
        import torch  # deferred: the oracle side of the package must stay importable without torch

        ids = torch.tensor([self.encode(text) for text in texts], dtype=torch.long)
        return ids, ids == self.pad_id

    def decode(self, ids: list[int]) -> str:
        words = [self.vocab[i] for i in ids if self.vocab[i] not in ("[PAD]", "[BOS]", "[EOS]")]
        return " ".join(words)

    def to_json(self) -> str:
        return json.dumps({"vocab": list(self.vocab), "max_length": self.max_length}, indent=1) + "\n"

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_json())

    @classmethod
    def load(cls, path: str | Path = VOCAB_PATH) -> WordTokenizer:
        data = json.loads(Path(path).read_text())
        return cls(tuple(data["vocab"]), int(data["max_length"]))

    @classmethod
    def from_grammar(cls, max_length: int = 12) -> WordTokenizer:
        return cls(tuple(build_vocab()), max_length)
