"""Pair export → prompt groups → listwise batches.

The app's exporter writes one preference pair per JSONL line (CSV and Parquet with the same columns are
read too). Training regroups pairs by prompt so that each image is encoded once per prompt group and
all of that prompt's pairs are scored from those few encodings.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from rankmath.pair_schema import PAIR_FIELDS
from training.ml.common import sha256_file
from training.ml.preprocess import PreprocessConfig, resize_images
from training.ml.reward.augment import augment_image
from training.ml.reward.config import CATEGORIES, SPLITS, AugmentConfig

ImageLoader = Callable[[str, str], torch.Tensor]
"""``(path, sha256) -> Tensor[3,H,W]`` float in [0,1]."""


@dataclasses.dataclass(frozen=True)
class PairRecord:
    """One expert (or model) preference: ``winner`` preferred to ``loser`` for ``prompt`` (label 1.0),
    or judged equal (label 0.5)."""

    pair_id: int
    prompt_id: int
    prompt: str
    category: str
    subcategory: str | None
    split: str | None
    winner_id: int
    winner_sha256: str
    winner_path: str
    loser_id: int
    loser_sha256: str
    loser_path: str
    label: float = 1.0
    source: str = "human"
    iteration: int = 0
    weight: float = 1.0

    def __post_init__(self) -> None:
        if self.category not in CATEGORIES:
            raise ValueError(f"pair {self.pair_id}: category {self.category!r} not in {CATEGORIES}")
        if self.split not in (*SPLITS, None):
            raise ValueError(f"pair {self.pair_id}: split {self.split!r} not in {SPLITS}")
        if self.label not in (1.0, 0.5):
            raise ValueError(f"pair {self.pair_id}: label must be 1.0 or 0.5, got {self.label!r}")
        if self.winner_id == self.loser_id:
            raise ValueError(f"pair {self.pair_id}: winner and loser are the same image")
        if not self.weight >= 0:
            raise ValueError(f"pair {self.pair_id}: weight must be >= 0, got {self.weight!r}")
        if self.source not in ("human", "model"):
            raise ValueError(f"pair {self.pair_id}: source must be 'human' or 'model', got {self.source!r}")

    @classmethod
    def from_mapping(cls, row: Mapping[str, Any]) -> PairRecord:
        missing = [f for f in PAIR_FIELDS if f not in row and f not in ("subcategory", "split")]
        missing = [f for f in missing if f not in ("label", "source", "iteration", "weight")]
        if missing:
            raise ValueError(f"pair row lacks field(s) {missing}")

        def opt_str(key: str) -> str | None:
            value = row.get(key)
            if value is None or (isinstance(value, float) and np.isnan(value)) or value == "":
                return None
            return str(value)

        return cls(
            pair_id=int(row["pair_id"]),
            prompt_id=int(row["prompt_id"]),
            prompt=str(row["prompt"]),
            category=str(row["category"]),
            subcategory=opt_str("subcategory"),
            split=opt_str("split"),
            winner_id=int(row["winner_id"]),
            winner_sha256=str(row["winner_sha256"]),
            winner_path=str(row["winner_path"]),
            loser_id=int(row["loser_id"]),
            loser_sha256=str(row["loser_sha256"]),
            loser_path=str(row["loser_path"]),
            label=float(row.get("label", 1.0)),
            source=str(row.get("source", "human")),
            iteration=int(row.get("iteration", 0)),
            weight=float(row.get("weight", 1.0)),
        )

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def read_pairs(path: str | os.PathLike[str]) -> list[PairRecord]:
    """Read a pair export: ``.jsonl`` (the app's format), ``.csv`` or ``.parquet`` with the same columns."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json", ".ndjson"):
        records = []
        with path.open(encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, start=1):
                if not line.strip():
                    continue
                try:
                    records.append(PairRecord.from_mapping(json.loads(line)))
                except (ValueError, KeyError, TypeError) as exc:
                    raise ValueError(f"{path}:{lineno}: {exc}") from exc
        return records
    if suffix == ".csv":
        with path.open(encoding="utf-8", newline="") as fh:
            return [PairRecord.from_mapping(row) for row in csv.DictReader(fh)]
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        return [PairRecord.from_mapping(row) for row in pq.read_table(path).to_pylist()]
    raise ValueError(f"{path}: unsupported pair file type {suffix!r} (use .jsonl, .csv or .parquet)")


def write_pairs_jsonl(records: Iterable[PairRecord], path: str | os.PathLike[str]) -> Path:
    path = Path(path)
    with path.open("w", encoding="utf-8") as fh:
        for r in records:
            fh.write(json.dumps(r.to_json(), sort_keys=True) + "\n")
    return path


# ------------------------------------------------------------------------------------ splits
def _prompt_key(prompt: str) -> str:
    return " ".join(prompt.lower().split())


def hash_split(prompt: str, fractions: Sequence[float] = (0.8, 0.1, 0.1), salt: str = "itercomp") -> str:
    """Deterministic prompt-level split: the same prompt text always lands in the same split."""
    digest = hashlib.sha256(f"{salt}\x00{_prompt_key(prompt)}".encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2**64
    edge = 0.0
    for name, frac in zip(SPLITS, fractions, strict=True):
        edge += frac
        if u < edge:
            return name
    return SPLITS[-1]


def assign_splits(
    records: Sequence[PairRecord],
    fractions: Sequence[float] = (0.8, 0.1, 0.1),
    salt: str = "itercomp",
    override: bool = False,
) -> list[PairRecord]:
    """Keep the export's ``split`` per prompt; hash-split prompts without one (or all, with override)."""
    out = []
    for r in records:
        if r.split is None or override:
            r = dataclasses.replace(r, split=hash_split(r.prompt, fractions, salt))
        out.append(r)
    check_no_prompt_leak(out)
    return out


def check_no_prompt_leak(records: Sequence[PairRecord]) -> None:
    """Raise if one prompt (by id or by normalised text) appears in more than one split."""
    by_id: dict[int, set[str | None]] = {}
    by_text: dict[str, set[str | None]] = {}
    for r in records:
        by_id.setdefault(r.prompt_id, set()).add(r.split)
        by_text.setdefault(_prompt_key(r.prompt), set()).add(r.split)
    leaks = [f"prompt_id {k}: {sorted(map(str, v))}" for k, v in by_id.items() if len(v) > 1]
    leaks += [f"prompt {k!r}: {sorted(map(str, v))}" for k, v in by_text.items() if len(v) > 1]
    if leaks:
        raise ValueError(f"prompts appear in several splits ({len(leaks)}): {leaks[:5]}")


# ------------------------------------------------------------------------------------ fingerprint
def dataset_fingerprint(records: Sequence[PairRecord]) -> dict[str, Any]:
    """Hash of the exact pairs (content, order-independent) plus counts, stored in checkpoints."""
    digest = hashlib.sha256()
    for line in sorted(json.dumps(r.to_json(), sort_keys=True) for r in records):
        digest.update(line.encode())
        digest.update(b"\n")
    counts: dict[str, Any] = {"pairs": len(records), "prompts": len({r.prompt_id for r in records})}
    images = {r.winner_id for r in records} | {r.loser_id for r in records}
    counts["images"] = len(images)
    counts["ties"] = sum(r.label == 0.5 for r in records)
    for split in SPLITS:
        sel = [r for r in records if r.split == split]
        counts[f"{split}_pairs"] = len(sel)
        counts[f"{split}_prompts"] = len({r.prompt_id for r in sel})
    return {"sha256": digest.hexdigest(), "counts": counts}


# ------------------------------------------------------------------------------------ groups
@dataclasses.dataclass(frozen=True)
class ImageRef:
    """An image of a prompt group: a file (path + sha256) or an in-memory tensor ``[3,H,W]`` in [0,1]
    (e.g. a diffusion model's mid-trajectory x0 prediction)."""

    key: str
    path: str | None = None
    sha256: str | None = None
    tensor: torch.Tensor | None = dataclasses.field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if (self.path is None) == (self.tensor is None):
            raise ValueError(f"image {self.key}: give exactly one of path or tensor")


@dataclasses.dataclass(frozen=True)
class GroupPair:
    winner: int
    loser: int
    label: float = 1.0
    weight: float = 1.0


@dataclasses.dataclass(frozen=True)
class PromptGroup:
    """All images of one prompt and the preference pairs among them (indices into ``images``)."""

    prompt_id: int
    prompt: str
    category: str
    subcategory: str | None
    split: str | None
    images: tuple[ImageRef, ...]
    pairs: tuple[GroupPair, ...]

    def __post_init__(self) -> None:
        n = len(self.images)
        for p in self.pairs:
            if not (0 <= p.winner < n and 0 <= p.loser < n) or p.winner == p.loser:
                raise ValueError(f"prompt {self.prompt_id}: bad pair indices {p} for {n} images")

    def with_images(self, images: Sequence[ImageRef], pairs: Sequence[GroupPair]) -> PromptGroup:
        """Add extra image sources; ``pairs`` index the combined list (old images first)."""
        return dataclasses.replace(self, images=self.images + tuple(images), pairs=self.pairs + tuple(pairs))


def build_groups(records: Sequence[PairRecord], category: str | None = None) -> list[PromptGroup]:
    """Group pairs by prompt; each distinct image id becomes one entry of the group."""
    buckets: dict[int, list[PairRecord]] = {}
    for r in records:
        if category is None or r.category == category:
            buckets.setdefault(r.prompt_id, []).append(r)
    groups = []
    for prompt_id, rows in buckets.items():
        first = rows[0]
        index: dict[int, int] = {}
        images: list[ImageRef] = []
        pairs: list[GroupPair] = []
        for r in rows:
            if r.split != first.split:
                raise ValueError(f"prompt {prompt_id} has pairs in splits {first.split!r} and {r.split!r}")
            for image_id, path, sha in (
                (r.winner_id, r.winner_path, r.winner_sha256),
                (r.loser_id, r.loser_path, r.loser_sha256),
            ):
                if image_id not in index:
                    index[image_id] = len(images)
                    images.append(ImageRef(key=str(image_id), path=path, sha256=sha))
            pairs.append(GroupPair(index[r.winner_id], index[r.loser_id], r.label, r.weight))
        groups.append(
            PromptGroup(
                prompt_id,
                first.prompt,
                first.category,
                first.subcategory,
                first.split,
                tuple(images),
                tuple(pairs),
            )
        )
    groups.sort(key=lambda g: g.prompt_id)
    return groups


def split_groups(groups: Sequence[PromptGroup]) -> dict[str, list[PromptGroup]]:
    out: dict[str, list[PromptGroup]] = {s: [] for s in SPLITS}
    for g in groups:
        if g.split is None:
            raise ValueError(f"prompt {g.prompt_id} has no split; call assign_splits first")
        out[g.split].append(g)
    return out


# ------------------------------------------------------------------------------------ images
class FolderImageLoader:
    """Default loader: reads ``root/path`` with Pillow as RGB in [0,1]; optionally checks sha256 once."""

    def __init__(self, root: str | os.PathLike[str], verify_sha256: bool = False) -> None:
        self.root = Path(root)
        self.verify_sha256 = verify_sha256
        self._verified: set[str] = set()

    def __call__(self, path: str, sha256: str) -> torch.Tensor:
        full = Path(path) if os.path.isabs(path) else self.root / path
        if self.verify_sha256 and str(full) not in self._verified:
            actual = sha256_file(full)
            if actual != sha256:
                raise ValueError(f"{full}: sha256 {actual} does not match the export's {sha256}")
            self._verified.add(str(full))
        with Image.open(full) as img:
            return pil_to_tensor(img)


def pil_to_tensor(img: Image.Image) -> torch.Tensor:
    array = np.asarray(img.convert("RGB"), dtype=np.uint8)
    return torch.from_numpy(array.copy()).permute(2, 0, 1).float().div_(255.0)


# ------------------------------------------------------------------------------------ batches
@dataclasses.dataclass
class GroupBatch:
    """Flat batch: ``images[m]`` belongs to prompt ``prompt_index[m]``; pairs index ``images``."""

    images: torch.Tensor
    prompt_index: torch.Tensor
    prompts: list[str]
    winners: torch.Tensor
    losers: torch.Tensor
    labels: torch.Tensor
    weights: torch.Tensor
    pair_subcategory: list[str | None]

    def to(self, device: torch.device | str) -> GroupBatch:
        return dataclasses.replace(
            self,
            images=self.images.to(device),
            prompt_index=self.prompt_index.to(device),
            winners=self.winners.to(device),
            losers=self.losers.to(device),
            labels=self.labels.to(device),
            weights=self.weights.to(device),
        )


class GroupCollator:
    """Loads, resizes (with the shared preprocessing) and optionally augments the images of a batch.

    ``batching="listwise"``: every image once per group. ``"pairwise"``: IterComp's original layout,
    each pair brings its own two images (for comparison benchmarks).
    """

    def __init__(
        self,
        loader: ImageLoader,
        preprocess: PreprocessConfig,
        batching: str = "listwise",
        augment: AugmentConfig | None = None,
        cache: bool = True,
        seed: int = 0,
    ) -> None:
        if batching not in ("listwise", "pairwise"):
            raise ValueError(f"unknown batching {batching!r}")
        self.loader = loader
        self.preprocess = preprocess
        self.batching = batching
        self.augment = augment if augment is not None and augment.active else None
        self.cache: dict[str, torch.Tensor] | None = {} if cache else None
        self.generator = torch.Generator().manual_seed(seed)

    def load(self, ref: ImageRef) -> torch.Tensor:
        if ref.tensor is not None:
            return resize_images(ref.tensor.unsqueeze(0).float(), self.preprocess)[0]
        assert ref.path is not None
        cache_key = f"{ref.path}\x00{ref.sha256}"
        if self.cache is not None and cache_key in self.cache:
            return self.cache[cache_key].float()
        image = self.loader(ref.path, ref.sha256 or "")
        if image.ndim != 3 or image.shape[0] != 3:
            raise ValueError(f"image loader returned shape {tuple(image.shape)} for {ref.path}, want [3,H,W]")
        image = resize_images(image.unsqueeze(0).float(), self.preprocess)[0]
        if self.cache is not None:
            # Half precision halves the memory of a large cache; 8-bit sources lose nothing that matters.
            self.cache[cache_key] = image.half()
        return image

    def _prepared(self, ref: ImageRef) -> torch.Tensor:
        image = self.load(ref)
        if self.augment is not None:
            image = augment_image(image, self.augment, self.generator)
        return image

    def __call__(self, groups: Sequence[PromptGroup], seeds: Sequence[int] | None = None) -> GroupBatch:
        """``seeds``: one per group, reseeding the augmentation generator before that group's images."""
        images: list[torch.Tensor] = []
        prompt_index: list[int] = []
        winners: list[int] = []
        losers: list[int] = []
        labels: list[float] = []
        weights: list[float] = []
        subcats: list[str | None] = []
        for g_idx, group in enumerate(groups):
            if seeds is not None:
                self.generator.manual_seed(seeds[g_idx])
            if self.batching == "listwise":
                offset = len(images)
                images.extend(self._prepared(ref) for ref in group.images)
                prompt_index.extend([g_idx] * len(group.images))
                for p in group.pairs:
                    winners.append(offset + p.winner)
                    losers.append(offset + p.loser)
            else:
                for p in group.pairs:
                    winners.append(len(images))
                    images.append(self._prepared(group.images[p.winner]))
                    losers.append(len(images))
                    images.append(self._prepared(group.images[p.loser]))
                    prompt_index.extend([g_idx, g_idx])
            labels.extend(p.label for p in group.pairs)
            weights.extend(p.weight for p in group.pairs)
            subcats.extend([group.subcategory] * len(group.pairs))
        return GroupBatch(
            images=torch.stack(images) if images else torch.zeros(0, 3, 1, 1),
            prompt_index=torch.tensor(prompt_index, dtype=torch.long),
            prompts=[g.prompt for g in groups],
            winners=torch.tensor(winners, dtype=torch.long),
            losers=torch.tensor(losers, dtype=torch.long),
            labels=torch.tensor(labels, dtype=torch.float32),
            weights=torch.tensor(weights, dtype=torch.float32),
            pair_subcategory=subcats,
        )
