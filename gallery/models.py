"""Categories, prompts, the generators of the gallery and the images they made."""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models import F, Q
from django.db.models.functions import MD5, Length
from django.db.models.lookups import LessThanOrEqual

from gallery.splits import PROMPT_MAX_CHARS
from jobs.models import Job, JobStatus


class Category(models.Model):
    """A compositional category; each owns one reward model."""

    slug = models.SlugField(max_length=40, unique=True)
    name = models.CharField(max_length=80)
    what_to_judge = models.TextField(blank=True)
    guidelines = models.TextField(blank=True)
    allows_ties = models.BooleanField(default=False)
    position = models.PositiveSmallIntegerField(default=0)

    class Meta:
        ordering = ["position", "slug"]
        verbose_name_plural = "categories"

    def __str__(self) -> str:
        return self.name


class Subcategory(models.Model):
    category = models.ForeignKey(Category, on_delete=models.PROTECT, related_name="subcategories")
    slug = models.SlugField(max_length=40, unique=True)
    name = models.CharField(max_length=80)

    class Meta:
        ordering = ["category__position", "slug"]
        verbose_name_plural = "subcategories"

    def __str__(self) -> str:
        return f"{self.category.name} / {self.name}"


class Split(models.TextChoices):
    TRAIN = "train", "train"
    VAL = "val", "validation"
    TEST = "test", "test"


class Prompt(models.Model):
    text = models.TextField()
    category = models.ForeignKey(Category, on_delete=models.PROTECT, related_name="prompts")
    subcategory = models.ForeignKey(
        Subcategory, on_delete=models.PROTECT, related_name="prompts", null=True, blank=True
    )
    source = models.SlugField(max_length=40, default="custom")
    licence = models.CharField(max_length=80, blank=True)
    # Assigned once per prompt text (see gallery.splits) so no prompt leaks across splits, unless an import
    # pinned it (--split: a benchmark's held-out file); a pinned split is never changed by a later import.
    split = models.CharField(max_length=5, choices=Split.choices)
    split_pinned = models.BooleanField(default=False)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]
        constraints = [
            # On a hash of the text: a btree entry holds at most ~2.7 kB, less than a long prompt in UTF-8.
            models.UniqueConstraint(
                F("category"),
                F("subcategory"),
                MD5("text"),
                nulls_distinct=False,
                name="prompt_unique_text_hash_per_category",
            ),
            models.CheckConstraint(
                condition=LessThanOrEqual(Length("text"), PROMPT_MAX_CHARS), name="prompt_text_max_length"
            ),
            models.CheckConstraint(condition=~Q(text=""), name="prompt_text_not_empty"),
            models.CheckConstraint(condition=Q(split__in=Split.values), name="prompt_split_valid"),
        ]
        indexes = [models.Index(fields=["category", "split"])]

    def __str__(self) -> str:
        return self.text


# IterComp's six gallery keys and how the paper names them.
ITERCOMP_NAME_CHOICES = [
    ("flux", "FLUX"),
    ("sd3", "SD3"),
    ("sdxl", "SDXL"),
    ("sd15", "SD1.5"),
    ("rpg", "RPG"),
    ("instancediffusion", "InstanceDiffusion"),
]


class GeneratorKind(models.TextChoices):
    GALLERY = "gallery", "gallery model"
    BASE = "base", "base model at iteration k"


class Generator(models.Model):
    name = models.CharField(max_length=80, unique=True)
    slug = models.SlugField(max_length=80, unique=True)
    kind = models.CharField(max_length=10, choices=GeneratorKind.choices, default=GeneratorKind.GALLERY)
    # A local path (or storage key) of the weights; empty for import-only models (RPG, InstanceDiffusion).
    weights_uri = models.CharField(max_length=500, blank=True)
    # The diffusers pipeline class that loads the weights, e.g. StableDiffusionXLPipeline.
    pipeline_class = models.CharField(max_length=120, blank=True)
    joined_iteration = models.PositiveIntegerField(default=0)
    base_iteration = models.PositiveIntegerField(null=True, blank=True)
    default_params = models.JSONField(default=dict, blank=True)
    description = models.TextField(blank=True)
    # Which of IterComp's six gallery models this generator stands for in the IterComp export format (whose
    # records key images by those six names); empty: its slug decides, as before.
    itercomp_name = models.CharField(max_length=20, blank=True, choices=ITERCOMP_NAME_CHOICES, default="")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["joined_iteration", "name"]
        constraints = [
            models.UniqueConstraint(
                fields=["itercomp_name"],
                condition=~Q(itercomp_name=""),
                name="generator_itercomp_name_unique",
            ),
            models.CheckConstraint(
                condition=Q(kind=GeneratorKind.GALLERY) | Q(base_iteration__isnull=False),
                name="generator_base_has_iteration",
            ),
            models.CheckConstraint(condition=Q(kind__in=GeneratorKind.values), name="generator_kind_valid"),
        ]

    def __str__(self) -> str:
        return self.name


class Image(models.Model):
    """One generated image. Files are content-addressed, so identical bytes are stored once."""

    prompt = models.ForeignKey(Prompt, on_delete=models.PROTECT, related_name="images")
    generator = models.ForeignKey(Generator, on_delete=models.PROTECT, related_name="images")
    file = models.FileField(max_length=255)
    sha256 = models.CharField(max_length=64, db_index=True)
    format = models.CharField(max_length=8)
    width = models.PositiveIntegerField()
    height = models.PositiveIntegerField()
    seed = models.BigIntegerField(null=True, blank=True)
    params = models.JSONField(default=dict, blank=True)
    iteration = models.PositiveIntegerField(default=0)
    display_file = models.FileField(max_length=255, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]
        constraints = [
            models.UniqueConstraint(
                fields=["prompt", "generator", "sha256"], name="image_unique_per_prompt_generator"
            ),
            models.CheckConstraint(condition=Q(width__gt=0) & Q(height__gt=0), name="image_positive_size"),
            models.CheckConstraint(condition=Q(sha256__regex=r"^[0-9a-f]{64}$"), name="image_sha256_hex"),
        ]
        indexes = [models.Index(fields=["prompt", "generator"])]

    def __str__(self) -> str:
        return f"{self.generator} · {self.prompt}"


class GenerationJob(Job):
    """A batch of images one generator draws for some prompts on a `gpu` worker (pipeline loaded once)."""

    generator = models.ForeignKey(Generator, on_delete=models.PROTECT, related_name="generation_jobs")
    prompts = models.ManyToManyField(Prompt, related_name="+")
    images_per_prompt = models.PositiveSmallIntegerField(default=1)
    # steps, guidance, height, width, seed (the first; image k of prompt p gets seed + p·n + k), dtype,
    # batch_size, negative_prompt. What was actually used is recorded per image in Image.params.
    params = models.JSONField(default=dict, blank=True)
    iteration = models.PositiveIntegerField(default=0)
    images_total = models.PositiveIntegerField(default=0)
    images_done = models.PositiveIntegerField(default=0)
    # How many times a worker loaded the pipeline for this job: 1 per attempt, never one per image.
    pipeline_loads = models.PositiveIntegerField(default=0)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+", null=True, blank=True
    )

    class Meta:
        ordering = ["-id"]
        constraints = [
            models.CheckConstraint(condition=Q(status__in=JobStatus.values), name="genjob_status_valid"),
            models.CheckConstraint(condition=Q(images_per_prompt__gte=1), name="genjob_images_positive"),
            models.CheckConstraint(
                condition=Q(images_done__lte=F("images_total")), name="genjob_done_le_total"
            ),
        ]

    def __str__(self) -> str:
        return f"Generation job {self.pk} ({self.generator}, {self.status})"
