"""Writes of generators: the gallery models and how a worker loads them."""

from __future__ import annotations

from dataclasses import dataclass

from django.db import transaction
from django.utils.text import slugify

from gallery.models import Generator, GeneratorKind
from rankmath.rankformats import ITERCOMP_GALLERY

# diffusers pipeline classes a generation job can load from local weights. RPG and InstanceDiffusion are not
# diffusers pipelines: their images are imported, never generated here.
SUPPORTED_PIPELINES: tuple[str, ...] = (
    "StableDiffusionPipeline",
    "StableDiffusionXLPipeline",
    "StableDiffusion3Pipeline",
    "FluxPipeline",
)


@dataclass(frozen=True)
class GalleryModel:
    slug: str
    name: str
    pipeline_class: str
    description: str


# The six models of IterComp's gallery, in the order of its 1-based rank indices (1 = sd15 … 6 = instancediffusion).
ITERCOMP_MODELS: tuple[GalleryModel, ...] = (
    GalleryModel("sd15", "Stable Diffusion 1.5", "StableDiffusionPipeline", "UNet, CLIP ViT-L text encoder"),
    GalleryModel("sdxl", "Stable Diffusion XL", "StableDiffusionXLPipeline", "UNet, two CLIP text encoders"),
    GalleryModel("sd3", "Stable Diffusion 3", "StableDiffusion3Pipeline", "MMDiT, CLIP ×2 + T5"),
    GalleryModel("flux", "FLUX.1", "FluxPipeline", "rectified-flow transformer"),
    GalleryModel("rpg", "RPG", "", "LLM-planned regional diffusion; import-only"),
    GalleryModel("instancediffusion", "InstanceDiffusion", "", "instance-conditioned diffusion; import-only"),
)
assert tuple(m.slug for m in ITERCOMP_MODELS) == ITERCOMP_GALLERY


class GeneratorError(ValueError):
    pass


@transaction.atomic
def generator_register(
    *,
    name: str,
    slug: str = "",
    pipeline_class: str = "",
    weights_uri: str = "",
    kind: str = GeneratorKind.GALLERY,
    base_iteration: int | None = None,
    joined_iteration: int = 0,
    default_params: dict | None = None,
    description: str = "",
) -> tuple[Generator, bool]:
    """Create the generator, or update how it is loaded (pipeline class, weights) if the slug exists."""
    slug = slug or slugify(name)
    if pipeline_class and pipeline_class not in SUPPORTED_PIPELINES:
        raise GeneratorError(
            f"pipeline class {pipeline_class!r} is not supported (supported: {', '.join(SUPPORTED_PIPELINES)}; "
            "leave it empty for an import-only model)"
        )
    if weights_uri and not pipeline_class:
        raise GeneratorError("weights need a pipeline class that loads them")
    return Generator.objects.update_or_create(
        slug=slug,
        defaults={
            "name": name,
            "pipeline_class": pipeline_class,
            "weights_uri": weights_uri,
            "kind": kind,
            "base_iteration": base_iteration,
            "joined_iteration": joined_iteration,
            "default_params": default_params or {},
            "description": description,
        },
    )


@transaction.atomic
def generators_ensure_itercomp_gallery() -> list[Generator]:
    """The six IterComp gallery generators; existing rows (and their weights) are left untouched."""
    result = []
    for model in ITERCOMP_MODELS:
        generator, _ = Generator.objects.get_or_create(
            slug=model.slug,
            defaults={
                "name": model.name,
                "pipeline_class": model.pipeline_class,
                "kind": GeneratorKind.GALLERY,
                "description": model.description,
            },
        )
        result.append(generator)
    return result


@transaction.atomic
def generators_map_itercomp(*, mapping: dict[int, str]) -> list[Generator]:
    """Set which generator stands for which of IterComp's six gallery models (``{generator id: name}``, an
    empty name clears it). The whole mapping is checked first: two generators cannot share a name."""
    allowed = set(ITERCOMP_GALLERY)
    wanted: dict[str, int] = {}
    for generator_id, name in mapping.items():
        if name and name not in allowed:
            raise GeneratorError(f"{name!r} is not one of IterComp's six ({', '.join(ITERCOMP_GALLERY)})")
        if name and name in wanted:
            raise GeneratorError(f"two generators are mapped to {name}; each of the six stands for one")
        if name:
            wanted[name] = generator_id
    generators = list(Generator.objects.select_for_update().filter(pk__in=mapping))
    if len(generators) != len(mapping):
        raise GeneratorError("a generator in the mapping no longer exists")
    # Names held by generators outside this mapping stay theirs.
    taken = dict(
        Generator.objects.exclude(pk__in=mapping)
        .exclude(itercomp_name="")
        .filter(itercomp_name__in=wanted)
        .values_list("itercomp_name", "slug")
    )
    if taken:
        name, slug = next(iter(taken.items()))
        raise GeneratorError(f"{name} is already mapped to {slug}")
    # Cleared first so that swapping two names does not trip the unique constraint half-way.
    Generator.objects.filter(pk__in=mapping).update(itercomp_name="")
    for generator in generators:
        generator.itercomp_name = mapping[generator.pk]
        generator.save(update_fields=["itercomp_name"])
    return generators
