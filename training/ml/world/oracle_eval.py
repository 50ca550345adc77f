"""Measure the oracle against scene truth, fact by fact, on correct and deliberately wrong renders."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np

from .degrade import degrade_array
from .errors import ERRORS_FOR, planned_scene
from .facts import truth_facts, truth_score
from .grammar import all_prompt_specs
from .oracle import OracleConfig, oracle_report
from .scene import render_scene_array


@dataclass
class OracleAccuracy:
    subcategory: str
    degraded: bool
    n_images: int = 0
    agree: int = 0
    total: int = 0
    by_fact: dict[str, list[int]] = field(default_factory=lambda: defaultdict(lambda: [0, 0]))
    score_correct: list[float] = field(default_factory=list)
    score_wrong: list[float] = field(default_factory=list)
    score_error: list[float] = field(default_factory=list)  # |oracle score - truth score|
    failures: list[tuple[str, str, tuple[str, ...]]] = field(default_factory=list)

    @property
    def accuracy(self) -> float:
        return self.agree / max(self.total, 1)

    def fact_accuracy(self) -> dict[str, float]:
        return {kind: agree / total for kind, (agree, total) in sorted(self.by_fact.items())}


def measure_oracle(
    subcategory: str,
    n_images: int,
    seed: int,
    degraded: bool,
    wrong_share: float = 0.5,
    size: int = 32,
    config: OracleConfig | None = None,
) -> OracleAccuracy:
    """Render `n_images` scenes (a `wrong_share` of them with 1-2 deliberate errors) and compare facts."""
    rng = np.random.default_rng([seed, 7 if degraded else 3])
    specs = all_prompt_specs(subcategory)
    result = OracleAccuracy(subcategory, degraded)
    errors_pool = ERRORS_FOR[subcategory]
    for _ in range(n_images):
        spec = specs[int(rng.integers(len(specs)))]
        wrong = rng.random() < wrong_share
        errors: tuple[str, ...] = ()
        if wrong:
            count = 1 + int(rng.random() < 0.3)
            errors = tuple(str(e) for e in rng.choice(errors_pool, size=count, replace=False))
        scene = planned_scene(spec, rng, errors)
        img, _ = render_scene_array(scene, size)
        if degraded:
            img = degrade_array(img, rng)
        truth = truth_facts(spec, scene)
        report = oracle_report(spec, img) if config is None else oracle_report(spec, img, config)
        seen = report["facts"]
        result.n_images += 1
        for key, value in truth.items():
            kind = key.split(":")[0]
            hit = int(seen[key] == value)
            result.agree += hit
            result.total += 1
            result.by_fact[kind][0] += hit
            result.by_fact[kind][1] += 1
            if not hit:
                result.failures.append((spec.text, key, errors))
        (result.score_correct if not wrong else result.score_wrong).append(report["score"])
        result.score_error.append(abs(report["score"] - truth_score(spec, scene)))
    return result
