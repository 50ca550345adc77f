from __future__ import annotations

from django.contrib import admin

from training.models import DiffusionCheckpoint, RewardModelCheckpoint, RoundEvent, TrainingRound


@admin.register(TrainingRound)
class TrainingRoundAdmin(admin.ModelAdmin):
    list_display = [
        "id",
        "status",
        "iterations",
        "current_iteration",
        "created_by",
        "created_at",
        "heartbeat_at",
    ]
    list_filter = ["status"]
    # Status changes belong to training.services; the admin only reads it.
    readonly_fields = [
        "status",
        "progress",
        "error",
        "claimed_by",
        "heartbeat_at",
        "started_at",
        "finished_at",
    ]


@admin.register(RewardModelCheckpoint)
class RewardModelCheckpointAdmin(admin.ModelAdmin):
    list_display = ["id", "category", "iteration", "training_round", "sha256", "created_at"]
    list_filter = ["category", "iteration"]


@admin.register(DiffusionCheckpoint)
class DiffusionCheckpointAdmin(admin.ModelAdmin):
    list_display = ["id", "iteration", "training_round", "generator", "sha256", "created_at"]


@admin.register(RoundEvent)
class RoundEventAdmin(admin.ModelAdmin):
    list_display = ["id", "training_round", "kind", "stage", "iteration", "step", "message", "created_at"]
    list_filter = ["kind", "stage"]
