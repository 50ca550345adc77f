"""Annotators, ranking tasks, rankings, their consensus and the image-rank pairs derived from it."""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models import F, Q

from jobs.models import Job, JobStatus


class Role(models.TextChoices):
    ANNOTATOR = "annotator", "annotator"
    ADMIN = "admin", "admin"
    RESEARCHER = "researcher", "researcher"


class AnnotatorProfile(models.Model):
    user = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="profile")
    role = models.CharField(max_length=12, choices=Role.choices, default=Role.ANNOTATOR)
    # Weight of this expert's rankings in the consensus (derived from agreement or set by an admin).
    weight = models.FloatField(default=1.0)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.CheckConstraint(
                condition=Q(weight__gt=0) & Q(weight__lte=10), name="profile_weight_range"
            ),
            models.CheckConstraint(condition=Q(role__in=Role.values), name="profile_role_valid"),
        ]

    def __str__(self) -> str:
        return f"{self.user} ({self.role})"


class TaskStatus(models.TextChoices):
    OPEN = "open", "open"
    COMPLETE = "complete", "complete"
    RETIRED = "retired", "retired"


class RankingTask(models.Model):
    prompt = models.ForeignKey("gallery.Prompt", on_delete=models.PROTECT, related_name="ranking_tasks")
    images = models.ManyToManyField("gallery.Image", through="TaskImage", related_name="ranking_tasks")
    required_rankings = models.PositiveSmallIntegerField(default=3)
    status = models.CharField(max_length=10, choices=TaskStatus.choices, default=TaskStatus.OPEN)
    is_gold = models.BooleanField(default=False)
    # Reference ordering of image ids (list of tie groups, best first) for gold tasks.
    gold_ordering = models.JSONField(null=True, blank=True)
    iteration = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)
    # Active selection (rankmath/selection.py). The draw is fixed at creation from the prompt and image set:
    # it decides membership in a mix's random share and the random priorities. The scores are written by
    # the worker after each reward-training stage; the priority is derived from draw, scores and the
    # category's policy whenever one of them changes, so claiming only sorts by an indexed column.
    selection_draw = models.FloatField(default=0.0)
    priority = models.FloatField(default=0.0)
    uncertainty = models.FloatField(null=True, blank=True)
    disagreement = models.FloatField(null=True, blank=True)
    scored_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["id"]
        constraints = [
            models.CheckConstraint(condition=Q(required_rankings__gte=1), name="task_requires_a_ranking"),
            models.CheckConstraint(
                condition=Q(selection_draw__gte=0) & Q(selection_draw__lt=1), name="task_draw_unit_interval"
            ),
            models.CheckConstraint(
                condition=Q(is_gold=False) | Q(gold_ordering__isnull=False), name="task_gold_has_reference"
            ),
            models.CheckConstraint(condition=Q(status__in=TaskStatus.values), name="task_status_valid"),
        ]
        indexes = [
            models.Index(fields=["status", "is_gold"]),
            # The claim's walk: open tasks of one pool, highest priority first, oldest first on ties. Partial
            # (open only) so PostgreSQL never steps over the complete tasks in front of the first open one
            # (O(gallery) before; BENCHMARKS.md, "Claim path at scale").
            models.Index(
                fields=["is_gold", "-priority", "id"], condition=Q(status="open"), name="task_open_queue"
            ),
            # The same walk on a gold turn: gold first, then the ordinary pool, in one statement.
            models.Index(
                fields=["-is_gold", "-priority", "id"],
                condition=Q(status="open"),
                name="task_open_queue_gold_first",
            ),
        ]

    def __str__(self) -> str:
        return f"Task {self.pk}: {self.prompt}"


class SelectionPolicy(models.TextChoices):
    RANDOM = "random", "random"
    UNCERTAINTY = "uncertainty", "uncertainty (reward-model margins)"
    DISAGREEMENT = "disagreement", "disagreement with experts"
    MIX = "mix", "mix (uncertainty + a random share)"


class CategorySelection(models.Model):
    """The task-priority policy an admin chose for one category's queue (none: random)."""

    category = models.OneToOneField("gallery.Category", on_delete=models.CASCADE, related_name="selection")
    policy = models.CharField(max_length=12, choices=SelectionPolicy.choices, default=SelectionPolicy.RANDOM)
    # Under ``mix``: the share of tasks (chosen by their selection draw) that keep a random priority, so
    # an unbiased evaluation sample is always being ranked.
    random_share = models.FloatField(default=0.2)
    updated_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, related_name="+", null=True, blank=True
    )
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.CheckConstraint(
                condition=Q(policy__in=SelectionPolicy.values), name="selection_policy_valid"
            ),
            models.CheckConstraint(
                condition=Q(random_share__gt=0) & Q(random_share__lt=1), name="selection_share_range"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.category_id}: {self.policy}"


class TaskImage(models.Model):
    task = models.ForeignKey(RankingTask, on_delete=models.CASCADE, related_name="task_images")
    image = models.ForeignKey("gallery.Image", on_delete=models.PROTECT, related_name="task_images")
    position = models.PositiveSmallIntegerField()

    class Meta:
        ordering = ["task", "position"]
        constraints = [
            models.UniqueConstraint(fields=["task", "image"], name="taskimage_unique_image"),
            models.UniqueConstraint(fields=["task", "position"], name="taskimage_unique_position"),
        ]

    def __str__(self) -> str:
        return f"Task {self.task_id} image {self.image_id} at {self.position}"


class Ranking(models.Model):
    task = models.ForeignKey(RankingTask, on_delete=models.PROTECT, related_name="rankings")
    annotator = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="rankings")
    # Image ids as a list of tie groups, best first: [[12], [9, 14], [3], ...].
    ordering = models.JSONField()
    # The image ids in the order this annotator was shown them (shuffled per annotator).
    shown_order = models.JSONField(default=list)
    time_spent_ms = models.PositiveIntegerField(default=0)
    idempotency_key = models.UUIDField(null=True, blank=True, unique=True)
    source = models.SlugField(max_length=40, default="browser")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["id"]
        constraints = [
            models.UniqueConstraint(fields=["task", "annotator"], name="ranking_one_per_annotator_per_task"),
        ]

    def __str__(self) -> str:
        return f"Ranking {self.pk} of task {self.task_id} by {self.annotator_id}"


class AggregationMethod(models.TextChoices):
    BORDA = "borda", "weighted Borda"
    KEMENY = "kemeny", "weighted Kemeny"
    PLACKETT_LUCE = "plackett_luce", "Plackett–Luce"


class ConsensusRanking(models.Model):
    task = models.OneToOneField(RankingTask, on_delete=models.CASCADE, related_name="consensus")
    ordering = models.JSONField()
    method = models.CharField(
        max_length=20, choices=AggregationMethod.choices, default=AggregationMethod.BORDA
    )
    scores = models.JSONField(default=dict)
    n_rankings = models.PositiveSmallIntegerField()
    kendall_w = models.FloatField(null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"Consensus of task {self.task_id}"


class PairSource(models.TextChoices):
    HUMAN = "human", "human"
    MODEL = "model", "model"


class PreferencePair(models.Model):
    prompt = models.ForeignKey("gallery.Prompt", on_delete=models.PROTECT, related_name="pairs")
    category = models.ForeignKey("gallery.Category", on_delete=models.PROTECT, related_name="pairs")
    winner = models.ForeignKey("gallery.Image", on_delete=models.PROTECT, related_name="+")
    loser = models.ForeignKey("gallery.Image", on_delete=models.PROTECT, related_name="+")
    consensus = models.ForeignKey(
        ConsensusRanking, on_delete=models.CASCADE, related_name="pairs", null=True, blank=True
    )
    source = models.CharField(max_length=8, choices=PairSource.choices, default=PairSource.HUMAN)
    iteration = models.PositiveIntegerField(default=0)
    weight = models.FloatField(default=1.0)
    # 1.0: winner preferred; 0.5: a tie kept for training with a symmetric label.
    label = models.FloatField(default=1.0)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]
        constraints = [
            models.CheckConstraint(condition=~Q(winner=F("loser")), name="pair_distinct_images"),
            models.CheckConstraint(condition=Q(weight__gte=0), name="pair_weight_nonnegative"),
            models.CheckConstraint(condition=Q(label__in=[0.5, 1.0]), name="pair_label_valid"),
            models.CheckConstraint(condition=Q(source__in=PairSource.values), name="pair_source_valid"),
        ]
        indexes = [models.Index(fields=["category", "iteration", "source"])]

    def __str__(self) -> str:
        return f"{self.winner_id} > {self.loser_id} ({self.source}, it{self.iteration})"


class DatasetSnapshot(models.Model):
    """An immutable, versioned export of pairs that training rounds can name as their data."""

    version = models.PositiveIntegerField(unique=True)
    content_hash = models.CharField(max_length=64, unique=True)
    filters = models.JSONField(default=dict)
    counts = models.JSONField(default=dict)
    file = models.FileField(max_length=255)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+", null=True, blank=True
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-version"]

    def __str__(self) -> str:
        return f"Dataset v{self.version} ({self.content_hash[:12]})"


class ClaimStatus(models.TextChoices):
    ACTIVE = "active", "active"
    SUBMITTED = "submitted", "submitted"
    RELEASED = "released", "released"
    EXPIRED = "expired", "expired"


class TaskClaim(models.Model):
    """An annotator's lease on one of a task's ranking slots; it expires back into the queue."""

    task = models.ForeignKey(RankingTask, on_delete=models.CASCADE, related_name="claims")
    annotator = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="claims")
    status = models.CharField(max_length=10, choices=ClaimStatus.choices, default=ClaimStatus.ACTIVE)
    # The image ids in the shuffled order shown to this annotator.
    shown_order = models.JSONField(default=list)
    claimed_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField()

    class Meta:
        ordering = ["id"]
        constraints = [
            # An annotator never gets the same task twice.
            models.UniqueConstraint(fields=["task", "annotator"], name="claim_one_per_annotator_per_task"),
            models.CheckConstraint(condition=Q(status__in=ClaimStatus.values), name="claim_status_valid"),
        ]
        indexes = [models.Index(fields=["task", "status"]), models.Index(fields=["annotator", "status"])]

    def __str__(self) -> str:
        return f"Claim of task {self.task_id} by {self.annotator_id} ({self.status})"


class FlagKind(models.TextChoices):
    SKIP = "skip", "skipped"
    FLAG = "flag", "flagged"


class TaskFlag(models.Model):
    """A skipped or flagged task, waiting in the admins' review queue."""

    task = models.ForeignKey(RankingTask, on_delete=models.CASCADE, related_name="flags")
    annotator = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="flags")
    kind = models.CharField(max_length=4, choices=FlagKind.choices)
    reason = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    resolved_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, related_name="+", null=True, blank=True
    )
    resolved_at = models.DateTimeField(null=True, blank=True)
    resolution = models.TextField(blank=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [models.CheckConstraint(condition=Q(kind__in=FlagKind.values), name="flag_kind_valid")]

    def __str__(self) -> str:
        return f"{self.kind} of task {self.task_id} by {self.annotator_id}"


class ExportJob(Job):
    """An export too large for one request, written by a Celery worker to storage."""

    requested_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    kind = models.CharField(max_length=20)  # pairs / rankings
    format = models.CharField(max_length=20)
    filters = models.JSONField(default=dict)
    rows_total = models.PositiveIntegerField(null=True, blank=True)
    rows_done = models.PositiveIntegerField(default=0)
    file = models.FileField(max_length=255, blank=True)

    class Meta:
        ordering = ["-id"]
        constraints = [
            models.CheckConstraint(condition=Q(status__in=JobStatus.values), name="export_status_valid")
        ]

    def __str__(self) -> str:
        return f"Export {self.pk} {self.kind}/{self.format} ({self.status})"
