"""DRF serializers of the research API (pairs, consensus rankings, export jobs, snapshots).

The paginated list endpoints use these; bulk exports do not (see annotation.exporters.pairs).
"""

from __future__ import annotations

from django.urls import reverse
from rest_framework import serializers

from annotation.models import ConsensusRanking, DatasetSnapshot, ExportJob, PreferencePair
from rankmath.pair_schema import PAIR_FIELDS


class PreferencePairSerializer(serializers.ModelSerializer):
    """One pair in the export schema (same keys as the JSONL lines)."""

    pair_id = serializers.IntegerField(source="id")
    prompt = serializers.CharField(source="prompt.text")
    category = serializers.CharField(source="category.slug")
    subcategory = serializers.SerializerMethodField()
    split = serializers.CharField(source="prompt.split")
    winner_sha256 = serializers.CharField(source="winner.sha256")
    winner_path = serializers.CharField(source="winner.file.name")
    loser_sha256 = serializers.CharField(source="loser.sha256")
    loser_path = serializers.CharField(source="loser.file.name")

    class Meta:
        model = PreferencePair
        fields = list(PAIR_FIELDS)

    def get_subcategory(self, obj: PreferencePair) -> str | None:
        sub = obj.prompt.subcategory
        return None if sub is None else sub.slug


class ConsensusRankingSerializer(serializers.ModelSerializer):
    prompt_id = serializers.IntegerField(source="task.prompt_id")
    prompt = serializers.CharField(source="task.prompt.text")
    category = serializers.CharField(source="task.prompt.category.slug")
    split = serializers.CharField(source="task.prompt.split")
    iteration = serializers.IntegerField(source="task.iteration")
    pairs = serializers.IntegerField(source="n_pairs", read_only=True)

    class Meta:
        model = ConsensusRanking
        fields = [
            "task_id",
            "prompt_id",
            "prompt",
            "category",
            "split",
            "iteration",
            "method",
            "ordering",
            "scores",
            "n_rankings",
            "kendall_w",
            "pairs",
            "updated_at",
        ]


class ExportRequestSerializer(serializers.Serializer):
    kind = serializers.ChoiceField(choices=["pairs", "rankings"])
    format = serializers.ChoiceField(choices=["jsonl", "csv", "parquet", "hf", "itercomp", "imagereward"])
    filters = serializers.DictField(required=False, default=dict)


class ExportJobSerializer(serializers.ModelSerializer):
    requested_by = serializers.CharField(source="requested_by.username", read_only=True)
    download_url = serializers.SerializerMethodField()
    progress = serializers.SerializerMethodField()

    class Meta:
        model = ExportJob
        fields = [
            "id",
            "kind",
            "format",
            "filters",
            "status",
            "rows_total",
            "rows_done",
            "progress",
            "error",
            "requested_by",
            "created_at",
            "started_at",
            "finished_at",
            "download_url",
        ]

    def get_progress(self, job: ExportJob) -> float | None:
        if job.status == "done":
            return 1.0
        if not job.rows_total:
            return None
        return min(1.0, job.rows_done / job.rows_total)

    def get_download_url(self, job: ExportJob) -> str | None:
        if job.status != "done" or not job.file:
            return None
        url = reverse("api-export-job-download", args=[job.pk])
        request = self.context.get("request")
        return request.build_absolute_uri(url) if request else url


class DatasetSnapshotSerializer(serializers.ModelSerializer):
    created_by = serializers.CharField(source="created_by.username", read_only=True, default=None)
    download_url = serializers.SerializerMethodField()

    class Meta:
        model = DatasetSnapshot
        fields = [
            "id",
            "version",
            "content_hash",
            "filters",
            "counts",
            "created_by",
            "created_at",
            "download_url",
        ]

    def get_download_url(self, snapshot: DatasetSnapshot) -> str:
        url = reverse("api-snapshot-download", args=[snapshot.pk])
        request = self.context.get("request")
        return request.build_absolute_uri(url) if request else url
