from __future__ import annotations

from django.urls import path

from annotation import views, views_admin, views_data, views_generators

# Annotation pages: the ranking experience for annotators, and the admins' review, quality and accounts.
urlpatterns = [
    path("rank/", views.queues, name="rank-queues"),
    path("rank/claims/<int:claim_id>/submit/", views.submit, name="rank-submit"),
    path("rank/claims/<int:claim_id>/skip/", views.skip, name="rank-skip"),
    path("rank/claims/<int:claim_id>/flag/", views.flag, name="rank-flag"),
    path("rank/skips/<int:flag_id>/undo/", views.skip_undo, name="rank-skip-undo"),
    path("rank/rankings/<int:ranking_id>/correct/", views.correct, name="rank-correct"),
    path("rank/<slug:category>/", views.rank, name="rank"),
    path("review/", views.review, name="review"),
    path("review/<int:flag_id>/resolve/", views.review_resolve, name="review-resolve"),
    path("quality/", views.quality, name="quality"),
    path("quality/gold/new/", views.gold_new, name="gold-new"),
    path("quality/selection/", views.quality_selection, name="quality-selection"),
    path("people/", views.people, name="people"),
    path("people/prompts/import/", views_admin.prompts_import, name="prompts-import"),
    path("people/gallery/import/", views_admin.gallery_upload, name="gallery-upload"),
    path("people/generators/new/", views_generators.generator_new, name="generator-new"),
    path("people/tasks/new/", views_admin.tasks_create, name="tasks-create"),
    path("people/data/tasks/", views_data.data_tasks, name="data-tasks"),
    path("people/data/rankings/", views_data.data_rankings, name="data-rankings"),
    path("people/data/annotators/", views_data.data_annotators, name="data-annotators"),
    path("people/data/annotators/<int:user_id>/", views_data.data_annotator, name="data-annotator"),
    path("people/<int:user_id>/password/", views.people_password, name="people-password"),
]

# Research pages: figures, exports with job progress, snapshots, API tokens, admins' gold agreement.
from annotation import views_research as research  # noqa: E402 - appended so each capability owns its block

research_urlpatterns = [
    path("research/", research.research_home, name="research-home"),
    path("research/data/<str:name>.<str:ext>", research.research_data, name="research-data"),
    path("research/export/", research.research_export, name="research-export"),
    path("research/export/download/", research.research_export_download, name="research-export-download"),
    path("research/export/check/", research.research_export_check, name="research-export-check"),
    path("research/export/jobs/", research.research_export_start, name="research-export-start"),
    path("research/export/jobs/<int:job_id>/", research.research_export_job, name="research-export-job"),
    path(
        "research/export/jobs/<int:job_id>/download/",
        research.research_export_job_download,
        name="research-export-job-download",
    ),
    path("research/snapshots/", research.research_snapshots, name="research-snapshots"),
    path(
        "research/snapshots/<int:snapshot_id>/download/",
        research.research_snapshot_download,
        name="research-snapshot-download",
    ),
    path("research/generators/", views_generators.generators, name="generators"),
    path("research/token/", research.research_token, name="research-token"),
    path("research/gold/", research.research_gold, name="research-gold"),
    path("research/gold/weights/", research.research_derive_weights, name="research-derive-weights"),
    path("research/gold/recompute/", research.research_recompute_all, name="research-recompute-all"),
]
urlpatterns += research_urlpatterns
