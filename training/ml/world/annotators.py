"""Simulated expert annotators: rank a task's images by oracle score plus personal noise."""

from __future__ import annotations

import hashlib
import itertools
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import numpy as np

from .oracle import as_float_image, oracle_score

_SCORE_CACHE: OrderedDict[tuple[str, str], float] = OrderedDict()
_CACHE_SIZE = 20000


def image_digest(image: Any) -> str:
    """Content hash of an image (as 8-bit RGB), so identical pictures share scores and rankings."""
    arr = np.clip(np.rint(as_float_image(image) * 255.0), 0, 255).astype(np.uint8)
    return hashlib.blake2b(arr.tobytes() + str(arr.shape).encode(), digest_size=16).hexdigest()


def cached_oracle_score(prompt: str, image: Any) -> float:
    """oracle_score memoised on (prompt, image content): a panel scores every image once."""
    key = (prompt, image_digest(image))
    if key in _SCORE_CACHE:
        _SCORE_CACHE.move_to_end(key)
        return _SCORE_CACHE[key]
    score = oracle_score(prompt, image)
    _SCORE_CACHE[key] = score
    if len(_SCORE_CACHE) > _CACHE_SIZE:
        _SCORE_CACHE.popitem(last=False)
    return score


class SimulatedAnnotator:
    """An expert who ranks images by compositional quality as judged by the oracle, plus noise.

    `noise` is the standard deviation of the Gaussian noise added to each oracle score (scores lie in
    [0, 1], so 0.05 is a careful expert and 0.3 a sloppy one). A careless annotator ranks most tasks
    (`careless_rate`) at random and the rest like an ordinary one. Rankings are deterministic in
    (seed, prompt, image contents): asking twice gives the same answer.

    `tie_threshold` (0: never ties) models an expert in a project that allows ties (the ranking page's
    ``=`` key): in :meth:`rank_groups`, neighbours whose *perceived* scores differ by less than it are
    marked tied, so two pictures the expert cannot tell apart are not ordered by a coin flip. It reads
    only what the expert perceives (score plus noise), so a noisy expert ties less of what is truly equal.
    """

    def __init__(
        self,
        name: str,
        noise: float,
        careless: bool = False,
        seed: int = 0,
        careless_rate: float = 0.75,
        tie_threshold: float = 0.0,
    ) -> None:
        if noise < 0:
            raise ValueError("noise must be non-negative")
        if not 0.0 <= careless_rate <= 1.0:
            raise ValueError("careless_rate must be a probability")
        if not 0.0 <= tie_threshold < 1.0:
            raise ValueError(f"tie_threshold must be in [0, 1), got {tie_threshold}")
        self.name = name
        self.noise = float(noise)
        self.careless = careless
        self.seed = int(seed)
        self.careless_rate = careless_rate
        self.tie_threshold = float(tie_threshold)

    def __repr__(self) -> str:
        return f"SimulatedAnnotator({self.name!r}, noise={self.noise}, careless={self.careless}, seed={self.seed})"

    def _rng(self, prompt: str, digests: Sequence[str]) -> np.random.Generator:
        material = "|".join([self.name, str(self.seed), prompt, *digests]).encode()
        entropy = int.from_bytes(hashlib.blake2b(material, digest_size=8).digest(), "little")
        return np.random.default_rng(entropy)

    def noisy_scores(self, prompt: str, images: Sequence[Any]) -> np.ndarray:
        """The scores this annotator perceives (oracle score + personal noise)."""
        digests = [image_digest(image) for image in images]
        rng = self._rng(prompt, digests)
        scores = np.array([cached_oracle_score(prompt, image) for image in images], dtype=float)
        if self.careless and rng.random() < self.careless_rate:
            return rng.random(len(images))
        return scores + rng.normal(0.0, self.noise, size=len(images)) if self.noise > 0 else scores

    def rank(self, prompt: str, images: Sequence[Any]) -> list[int]:
        """Indices of `images`, best first."""
        return [i for group in self.rank_groups(prompt, images) for i in group]

    def rank_groups(self, prompt: str, images: Sequence[Any]) -> list[list[int]]:
        """Indices of `images` as tie groups, best first by perceived score, each image joining the previous
        group when its perceived score is within ``tie_threshold`` of the previous image's (a chain, as an
        expert ties neighbours one at a time). With no threshold: :meth:`rank`'s order as singletons."""
        if len(images) == 0:
            return []
        scores = self.noisy_scores(prompt, images)
        # Stable sort on the negated scores: exact ties keep the order the images were shown in.
        order = [int(i) for i in np.argsort(-scores, kind="stable")]
        groups = [[order[0]]]
        for previous, current in itertools.pairwise(order):
            if scores[previous] - scores[current] < self.tie_threshold:
                groups[-1].append(current)
            else:
                groups.append([current])
        return groups


def default_panel(seed: int = 0, tie_threshold: float = 0.0) -> list[SimulatedAnnotator]:
    """Four experts of decreasing reliability and one careless annotator; ``tie_threshold``: each may mark
    ties (:meth:`SimulatedAnnotator.rank_groups`)."""
    return [
        SimulatedAnnotator("expert_1", 0.03, seed=seed, tie_threshold=tie_threshold),
        SimulatedAnnotator("expert_2", 0.06, seed=seed + 1, tie_threshold=tie_threshold),
        SimulatedAnnotator("expert_3", 0.1, seed=seed + 2, tie_threshold=tie_threshold),
        SimulatedAnnotator("expert_4", 0.15, seed=seed + 3, tie_threshold=tie_threshold),
        SimulatedAnnotator("careless_5", 0.1, careless=True, seed=seed + 4, tie_threshold=tie_threshold),
    ]
