"""Training rounds of the IterComp loop and the checkpoints they produce."""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models import Q

from jobs.models import JobLifecycle


class RoundStatus(models.TextChoices):
    QUEUED = "queued", "queued"
    TRAINING_REWARDS = "training_rewards", "training reward models"
    FEEDBACK_LEARNING = "feedback_learning", "feedback learning"
    SAMPLING = "sampling", "sampling"
    INSERTING = "inserting", "inserting"
    AWAITING_RANKING = "awaiting_ranking", "awaiting human ranking"
    DONE = "done", "done"
    FAILED = "failed", "failed"
    CANCELLED = "cancelled", "cancelled"


TERMINAL_STATUSES = (RoundStatus.DONE, RoundStatus.FAILED, RoundStatus.CANCELLED)


class TrainingRound(JobLifecycle):
    """One run of Algorithm 1. Its status changes only through training.services.

    Its stages are claimed like any background job (``jobs.services``): ``claimed_by``/``heartbeat_at``
    name the worker holding the current stage, ``attempts`` counts claims of that stage, ``error`` is the
    reason a round failed.
    """

    status = models.CharField(max_length=20, choices=RoundStatus.choices, default=RoundStatus.QUEUED)
    categories = models.ManyToManyField("gallery.Category", related_name="training_rounds")
    base_generator = models.ForeignKey(
        "gallery.Generator", on_delete=models.PROTECT, related_name="+", null=True, blank=True
    )
    config = models.JSONField(default=dict)
    iterations = models.PositiveSmallIntegerField(default=1)
    current_iteration = models.PositiveSmallIntegerField(default=0)
    dataset_snapshot = models.ForeignKey(
        "annotation.DatasetSnapshot",
        on_delete=models.PROTECT,
        related_name="training_rounds",
        null=True,
        blank=True,
    )
    progress = models.JSONField(default=dict, blank=True)
    # What each iteration produced, keyed by iteration: checkpoints, generator, pushed ranking tasks.
    outputs = models.JSONField(default=dict, blank=True)
    cancel_requested = models.BooleanField(default=False)
    # Set by the reconciler when a claimed stage stopped reporting and is not re-sent on its own
    # (ROUND_AUTO_RESUME_ATTEMPTS): the round waits for an admin to resume or cancel it.
    is_stale = models.BooleanField(default=False)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")

    class Meta:
        ordering = ["-id"]
        constraints = [
            models.CheckConstraint(condition=Q(status__in=RoundStatus.values), name="round_status_valid"),
            models.CheckConstraint(
                condition=Q(iterations__gte=1) & Q(iterations__lte=10), name="round_iterations_range"
            ),
        ]

    def __str__(self) -> str:
        return f"Round {self.pk} ({self.status})"


class RewardModelCheckpoint(models.Model):
    training_round = models.ForeignKey(
        TrainingRound, on_delete=models.PROTECT, related_name="reward_checkpoints", null=True, blank=True
    )
    category = models.ForeignKey(
        "gallery.Category", on_delete=models.PROTECT, related_name="reward_checkpoints"
    )
    iteration = models.PositiveSmallIntegerField()
    file = models.FileField(max_length=255)
    sha256 = models.CharField(max_length=64)
    config = models.JSONField(default=dict)
    metrics = models.JSONField(default=dict)
    dataset_hash = models.CharField(max_length=64, blank=True)
    code_version = models.CharField(max_length=64, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-id"]
        constraints = [
            models.UniqueConstraint(
                fields=["training_round", "category", "iteration"],
                name="reward_ckpt_unique_per_round_iteration",
            ),
            models.CheckConstraint(
                condition=Q(sha256__regex=r"^[0-9a-f]{64}$"), name="reward_ckpt_sha256_hex"
            ),
        ]

    def __str__(self) -> str:
        return f"Reward model {self.category} it{self.iteration}"


class DiffusionCheckpoint(models.Model):
    training_round = models.ForeignKey(
        TrainingRound, on_delete=models.PROTECT, related_name="diffusion_checkpoints", null=True, blank=True
    )
    iteration = models.PositiveSmallIntegerField()
    file = models.FileField(max_length=255)
    sha256 = models.CharField(max_length=64)
    config = models.JSONField(default=dict)
    metrics = models.JSONField(default=dict)
    dataset_hash = models.CharField(max_length=64, blank=True)
    code_version = models.CharField(max_length=64, blank=True)
    generator = models.ForeignKey(
        "gallery.Generator", on_delete=models.PROTECT, related_name="checkpoints", null=True, blank=True
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-id"]
        constraints = [
            models.UniqueConstraint(
                fields=["training_round", "iteration"], name="diffusion_ckpt_unique_per_round_iteration"
            ),
            models.CheckConstraint(
                condition=Q(sha256__regex=r"^[0-9a-f]{64}$"), name="diffusion_ckpt_sha256_hex"
            ),
        ]

    def __str__(self) -> str:
        return f"Diffusion checkpoint it{self.iteration}"


class EventKind(models.TextChoices):
    LOG = "log", "log line"
    METRIC = "metric", "metric"


class RoundEvent(models.Model):
    """Log lines and per-step metrics of a round, written by the training callbacks."""

    training_round = models.ForeignKey(TrainingRound, on_delete=models.CASCADE, related_name="events")
    kind = models.CharField(max_length=6, choices=EventKind.choices)
    stage = models.CharField(max_length=20)
    iteration = models.PositiveSmallIntegerField(default=0)
    step = models.PositiveIntegerField(null=True, blank=True)
    message = models.TextField(blank=True)
    data = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]
        indexes = [models.Index(fields=["training_round", "kind", "id"])]

    def __str__(self) -> str:
        return f"{self.kind} {self.stage} it{self.iteration}: {self.message[:40]}"
