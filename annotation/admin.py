from __future__ import annotations

from django.contrib import admin

from annotation.models import (
    AnnotatorProfile,
    ConsensusRanking,
    DatasetSnapshot,
    ExportJob,
    PreferencePair,
    Ranking,
    RankingTask,
    TaskClaim,
    TaskFlag,
    TaskImage,
)


@admin.register(AnnotatorProfile)
class AnnotatorProfileAdmin(admin.ModelAdmin):
    list_display = ["user", "role", "weight", "created_at"]
    list_filter = ["role"]
    search_fields = ["user__username"]


class TaskImageInline(admin.TabularInline):
    model = TaskImage
    extra = 0
    raw_id_fields = ["image"]


@admin.register(RankingTask)
class RankingTaskAdmin(admin.ModelAdmin):
    list_display = ["id", "prompt", "status", "required_rankings", "is_gold", "iteration", "created_at"]
    list_filter = ["status", "is_gold", "iteration", "prompt__category"]
    raw_id_fields = ["prompt"]
    inlines = [TaskImageInline]


@admin.register(Ranking)
class RankingAdmin(admin.ModelAdmin):
    list_display = ["id", "task", "annotator", "time_spent_ms", "source", "created_at"]
    list_filter = ["source"]
    raw_id_fields = ["task", "annotator"]


@admin.register(ConsensusRanking)
class ConsensusRankingAdmin(admin.ModelAdmin):
    list_display = ["task", "method", "n_rankings", "kendall_w", "updated_at"]
    list_filter = ["method"]
    raw_id_fields = ["task"]


@admin.register(PreferencePair)
class PreferencePairAdmin(admin.ModelAdmin):
    list_display = ["id", "prompt", "category", "winner", "loser", "source", "iteration", "label", "weight"]
    list_filter = ["category", "source", "iteration"]
    raw_id_fields = ["prompt", "winner", "loser", "consensus"]


@admin.register(DatasetSnapshot)
class DatasetSnapshotAdmin(admin.ModelAdmin):
    list_display = ["version", "content_hash", "created_by", "created_at"]
    readonly_fields = ["version", "content_hash", "filters", "counts", "file", "created_by", "created_at"]


@admin.register(TaskClaim)
class TaskClaimAdmin(admin.ModelAdmin):
    list_display = ["id", "task", "annotator", "status", "claimed_at", "expires_at"]
    list_filter = ["status"]
    raw_id_fields = ["task", "annotator"]


@admin.register(TaskFlag)
class TaskFlagAdmin(admin.ModelAdmin):
    list_display = ["id", "task", "annotator", "kind", "reason", "created_at", "resolved_at"]
    list_filter = ["kind"]
    raw_id_fields = ["task", "annotator", "resolved_by"]


@admin.register(ExportJob)
class ExportJobAdmin(admin.ModelAdmin):
    list_display = ["id", "kind", "format", "status", "rows_done", "rows_total", "requested_by", "created_at"]
    list_filter = ["status", "format"]
