"""Six gallery generators named after IterComp's model gallery, each with its own error profile.

A generator plans the prompt's scene, then makes its characteristic mistakes with fixed probabilities
(ignoring an attribute, leaking one object's attribute to the other, dropping or adding objects, misplacing
or reversing the relation) and draws the result with its own image quality. Everything is seeded by
(generator name, prompt, seed), so the same call always returns the same image.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np
from PIL import Image

from .degrade import DegradeConfig, degrade_array
from .errors import apply_error, planned_scene
from .grammar import PromptSpec, parse_prompt
from .layout import ObjectPlan, prompt_rng, resolve_plans
from .scene import Scene, render_scene_array, to_pil
from .vocab import COLORS, REFERENCE_CANVAS, SIZE_PX, SIZES, SPATIAL_RELATIONS, TEXTURES


@dataclass(frozen=True)
class GeneratorProfile:
    """Per-prompt probabilities of each kind of mistake, and how clean the images look."""

    color_ignore: float = 0.0  # colours drawn at random, whatever the prompt says
    color_swap: float = 0.0  # attribute leakage: the two objects trade colours
    texture_ignore: float = 0.0
    texture_swap: float = 0.0
    size_ignore: float = 0.0
    size_swap: float = 0.0
    wrong_shape: float = 0.0  # one object drawn as another shape
    drop: float = 0.0  # one object missing
    extra: float = 0.0  # an object nobody asked for
    spatial_ignore: float = 0.0  # left/right/above/below ignored: objects placed at random
    spatial_reverse: float = 0.0
    non_spatial_ignore: float = 0.0  # inside/touching not realised: objects drawn apart
    non_spatial_reverse: float = 0.0
    quality: DegradeConfig = DegradeConfig()

    def __post_init__(self) -> None:
        for item in fields(self):
            if item.name != "quality" and not 0.0 <= getattr(self, item.name) <= 1.0:
                raise ValueError(f"{item.name} must be a probability")


def _clean(blur: tuple[float, float], noise: tuple[float, float]) -> DegradeConfig:
    return DegradeConfig(cast=(0.93, 1.03), blur_sigma=blur, blotch_amplitude=(0.0, 0.03), noise_sigma=noise)


# Strengths and weaknesses loosely follow the IterComp paper's gallery analysis: FLUX binds attributes
# best, RPG's planned regions place objects exactly but lose textures, InstanceDiffusion realises
# instance layouts (containment, contact) but binds colours poorly and adds instances, SD1.5 drops objects.
PROFILES: dict[str, GeneratorProfile] = {
    "flux": GeneratorProfile(
        color_ignore=0.02,
        color_swap=0.03,
        texture_ignore=0.04,
        texture_swap=0.03,
        size_ignore=0.04,
        size_swap=0.03,
        wrong_shape=0.02,
        drop=0.02,
        extra=0.02,
        spatial_ignore=0.6,
        spatial_reverse=0.15,
        non_spatial_ignore=0.6,
        non_spatial_reverse=0.15,
        quality=_clean((0.2, 0.4), (0.005, 0.02)),
    ),
    "sd3": GeneratorProfile(
        color_ignore=0.03,
        color_swap=0.15,
        texture_ignore=0.4,
        texture_swap=0.1,
        size_ignore=0.3,
        size_swap=0.1,
        wrong_shape=0.05,
        drop=0.05,
        extra=0.04,
        spatial_ignore=0.5,
        spatial_reverse=0.1,
        non_spatial_ignore=0.5,
        non_spatial_reverse=0.1,
        quality=_clean((0.2, 0.5), (0.005, 0.02)),
    ),
    "sdxl": GeneratorProfile(
        color_ignore=0.1,
        color_swap=0.3,
        texture_ignore=0.4,
        texture_swap=0.15,
        size_ignore=0.3,
        size_swap=0.15,
        wrong_shape=0.08,
        drop=0.08,
        extra=0.06,
        spatial_ignore=0.6,
        spatial_reverse=0.15,
        non_spatial_ignore=0.6,
        non_spatial_reverse=0.15,
        quality=DegradeConfig(blur_sigma=(0.3, 0.6), noise_sigma=(0.01, 0.03)),
    ),
    "sd15": GeneratorProfile(
        color_ignore=0.25,
        color_swap=0.3,
        texture_ignore=0.5,
        texture_swap=0.2,
        size_ignore=0.4,
        size_swap=0.2,
        wrong_shape=0.15,
        drop=0.35,
        extra=0.08,
        spatial_ignore=0.7,
        spatial_reverse=0.15,
        non_spatial_ignore=0.7,
        non_spatial_reverse=0.15,
        quality=DegradeConfig(blur_sigma=(0.5, 0.8), noise_sigma=(0.03, 0.05)),
    ),
    "rpg": GeneratorProfile(
        color_ignore=0.05,
        color_swap=0.2,
        texture_ignore=1.0,
        size_ignore=0.3,
        size_swap=0.1,
        wrong_shape=0.05,
        drop=0.03,
        extra=0.02,
        spatial_ignore=0.02,
        spatial_reverse=0.01,
        non_spatial_ignore=0.5,
        non_spatial_reverse=0.1,
        quality=_clean((0.3, 0.5), (0.01, 0.03)),
    ),
    "instancediffusion": GeneratorProfile(
        color_ignore=0.8,
        color_swap=0.1,
        texture_ignore=0.3,
        texture_swap=0.1,
        size_ignore=0.05,
        size_swap=0.05,
        wrong_shape=0.05,
        drop=0.02,
        extra=0.1,
        spatial_ignore=0.35,
        spatial_reverse=0.05,
        non_spatial_ignore=0.02,
        non_spatial_reverse=0.01,
        quality=DegradeConfig(blur_sigma=(0.3, 0.6), noise_sigma=(0.01, 0.03)),
    ),
}


def _ignore(plans: list[ObjectPlan], field: str, rng: np.random.Generator) -> list[ObjectPlan]:
    """Redraw one attribute of every object at random (colours stay distinct within the scene)."""
    if field == "color":
        colors = rng.permutation(list(COLORS))[: len(plans)]
        return [ObjectPlan(p.shape, str(c), p.texture, p.extent) for p, c in zip(plans, colors, strict=True)]
    if field == "texture":
        return [ObjectPlan(p.shape, p.color, str(rng.choice(TEXTURES)), p.extent) for p in plans]
    return [ObjectPlan(p.shape, p.color, p.texture, SIZE_PX[str(rng.choice(SIZES))]) for p in plans]


@dataclass(frozen=True)
class GalleryGenerator:
    name: str
    profile: GeneratorProfile

    def mistakes(self, spec: PromptSpec, rng: np.random.Generator) -> list[str]:
        """Draw which of this generator's mistakes it makes on this prompt (in application order)."""
        profile = self.profile
        chosen = []
        for error, probability in (
            ("ignore_color", profile.color_ignore),
            ("swap_color", profile.color_swap),
            ("ignore_texture", profile.texture_ignore),
            ("swap_texture", profile.texture_swap),
            ("ignore_size", profile.size_ignore),
            ("swap_size", profile.size_swap),
            ("wrong_shape", profile.wrong_shape),
            ("drop", profile.drop),
        ):
            if rng.random() < probability:
                chosen.append(error)
        if spec.relation is not None:
            spatial = spec.relation in SPATIAL_RELATIONS
            ignore = profile.spatial_ignore if spatial else profile.non_spatial_ignore
            reverse = profile.spatial_reverse if spatial else profile.non_spatial_reverse
            draw = rng.random()
            if draw < ignore:
                chosen.append("random_layout")
            elif draw < ignore + reverse:
                chosen.append("reverse")
        if rng.random() < profile.extra:
            chosen.append("extra")
        return chosen

    def generate_scene(self, prompt: str, seed: int) -> Scene:
        """The (possibly wrong) scene this generator draws; `scene.notes` lists the mistakes made."""
        spec = parse_prompt(prompt)
        rng = prompt_rng(prompt, seed, self.name)
        plans = resolve_plans(spec, rng)
        relation = (0, spec.relation, 1) if spec.relation is not None else None
        mistakes = self.mistakes(spec, rng)
        # Attribute mistakes edit the plans; object and layout mistakes go through planned_scene.
        layout_errors = []
        for error in mistakes:
            if error.startswith("ignore_"):
                plans = _ignore(plans, error.removeprefix("ignore_"), rng)
            elif error.startswith("swap_"):
                plans, relation = apply_error(plans, relation, error, rng)
            else:
                layout_errors.append(error)
        scene = planned_scene(spec, rng, layout_errors, plans=plans)
        return Scene(scene.objects, notes=tuple(e for e in mistakes if e not in layout_errors) + scene.notes)

    def generate_array(self, prompt: str, seed: int, size: int = REFERENCE_CANVAS) -> np.ndarray:
        scene = self.generate_scene(prompt, seed)
        img, _ = render_scene_array(scene, size)
        return degrade_array(img, prompt_rng(prompt, seed, self.name + "/quality"), self.profile.quality)

    def generate(self, prompt: str, seed: int, size: int = REFERENCE_CANVAS) -> Image.Image:
        return to_pil(self.generate_array(prompt, seed, size))


GALLERY_GENERATORS: dict[str, GalleryGenerator] = {
    name: GalleryGenerator(name, profile) for name, profile in PROFILES.items()
}
