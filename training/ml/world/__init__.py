"""A synthetic compositional world in which the whole IterComp loop can learn on a CPU.

Scenes of simple shapes with colours, textures and sizes, related spatially (left of, right of, above,
below) or non-spatially (inside, touching); a prompt grammar for IterComp's five subcategories; a
renderer; an exact oracle that scores an image against a prompt; six gallery generators with distinct
error profiles; simulated expert annotators; and a tiny pixel-space diffusion model as the base model.
No Django in here: the web app and the training code import it.
"""

from __future__ import annotations

import importlib
from typing import Any

from .annotators import SimulatedAnnotator, default_panel
from .degrade import DegradeConfig, degrade
from .facts import truth_facts, truth_score
from .gallery import GALLERY_GENERATORS, GalleryGenerator, GeneratorProfile
from .grammar import (
    ObjectSpec,
    PromptSpec,
    all_prompts,
    generate_prompts,
    is_held_out,
    parse_prompt,
)
from .layout import correct_scene, render_prompt
from .oracle import detect_objects, oracle_facts, oracle_report, oracle_score
from .scene import Scene, SceneObject, render_scene
from .tokenizer import WordTokenizer
from .vocab import REWARD_CATEGORIES, REWARD_CATEGORY, SUBCATEGORIES

_LAZY = {"WorldDiffusionModel": "model", "WorldModelConfig": "model", "PretrainConfig": "pretrain"}


def __getattr__(name: str) -> Any:
    # The diffusion model pulls in torch and diffusers; importing them only on first use keeps the
    # oracle, the gallery and the annotators cheap to import (web workers only need those).
    if name in _LAZY:
        module = importlib.import_module(f".{_LAZY[name]}", __name__)
        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "GALLERY_GENERATORS",
    "REWARD_CATEGORIES",
    "REWARD_CATEGORY",
    "SUBCATEGORIES",
    "DegradeConfig",
    "GalleryGenerator",
    "GeneratorProfile",
    "ObjectSpec",
    "PretrainConfig",
    "PromptSpec",
    "Scene",
    "SceneObject",
    "SimulatedAnnotator",
    "WordTokenizer",
    "WorldDiffusionModel",
    "WorldModelConfig",
    "all_prompts",
    "correct_scene",
    "default_panel",
    "degrade",
    "detect_objects",
    "generate_prompts",
    "is_held_out",
    "oracle_facts",
    "oracle_report",
    "oracle_score",
    "parse_prompt",
    "render_prompt",
    "render_scene",
    "truth_facts",
    "truth_score",
]
