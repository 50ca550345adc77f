"""Research API under /api/: pairs, consensus rankings, exports (inline and as jobs), snapshots, figures.

Researchers and admins only; scripts authenticate with ``Authorization: Token <key>`` (a researcher creates
the key on /research/token/ or with ``manage.py export_token``). Annotators get 403, anonymous callers 401.
"""

from __future__ import annotations

from django.core.files.storage import default_storage
from django.db.models import Count
from django.http import FileResponse, HttpResponse, StreamingHttpResponse
from django.urls import path
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import generics, status
from rest_framework.authentication import SessionAuthentication, TokenAuthentication
from rest_framework.negotiation import BaseContentNegotiation
from rest_framework.permissions import BasePermission
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from annotation import selectors_research as research
from annotation.exporters.filters import ExportFilters, FilterError
from annotation.models import DatasetSnapshot
from annotation.roles import is_researcher
from annotation.serializers import (
    ConsensusRankingSerializer,
    DatasetSnapshotSerializer,
    ExportJobSerializer,
    ExportRequestSerializer,
    PreferencePairSerializer,
)
from annotation.services.export import (
    ExportError,
    ExportSpec,
    export_fits_one_request,
    export_job_create,
    export_stream,
    export_to_tempfile,
)
from annotation.services.snapshots import EmptySnapshotError, snapshot_create
from jobs.models import JobStatus


class IsResearcher(BasePermission):
    message = "Only researchers and admins may read research data."

    def has_permission(self, request: Request, view: APIView) -> bool:
        return is_researcher(request.user)


class ResearchAPIView(APIView):
    # Token first, so an anonymous caller is told how to authenticate (401 + WWW-Authenticate: Token).
    authentication_classes = [TokenAuthentication, SessionAuthentication]
    permission_classes = [IsResearcher]


class _AnyAccept(BaseContentNegotiation):
    """File endpoints answer with their own content type whatever the client's Accept header says."""

    def select_parser(self, request, parsers):
        return parsers[0]

    def select_renderer(self, request, renderers, format_suffix=None):
        return renderers[0], renderers[0].media_type


FILTER_PARAMETERS = [
    OpenApiParameter("category", str, many=True, description="category slug(s)"),
    OpenApiParameter("split", str, many=True, enum=["train", "val", "test"]),
    OpenApiParameter("iteration", int, many=True),
    OpenApiParameter("generator", str, many=True, description="generator slug(s): pairs involving them"),
    OpenApiParameter("date_from", OpenApiTypes.DATE),
    OpenApiParameter("date_to", OpenApiTypes.DATE),
    OpenApiParameter("min_agreement", float, description="minimum Kendall's W of the consensus"),
    OpenApiParameter("source", str, many=True, enum=["human", "model"]),
]


def _filters(request: Request) -> ExportFilters:
    try:
        return ExportFilters.from_mapping(request.query_params)
    except FilterError as exc:
        from rest_framework.exceptions import ValidationError

        raise ValidationError({"filters": str(exc)}) from None


@extend_schema(parameters=FILTER_PARAMETERS)
class PairList(ResearchAPIView, generics.ListAPIView):
    """Image-rank pairs in the export schema, paginated (use /api/export/pairs/... for bulk)."""

    serializer_class = PreferencePairSerializer

    def get_queryset(self):
        return (
            research.pairs_for_export(_filters(self.request))
            .select_related("prompt__subcategory", "category", "winner", "loser")
            .order_by("id")
        )


@extend_schema(parameters=FILTER_PARAMETERS)
class RankingList(ResearchAPIView, generics.ListAPIView):
    """Consensus rankings with their agreement (Kendall's W) and number of pairs, paginated."""

    serializer_class = ConsensusRankingSerializer

    def get_queryset(self):
        return (
            research.consensus_for_export(_filters(self.request))
            .select_related("task__prompt__category")
            .annotate(n_pairs=Count("pairs"))
            .order_by("task_id")
        )


def _too_big(spec: ExportSpec) -> Response:
    return Response(
        {
            "detail": f"{spec.kind}/{spec.format} is too large for one request"
            + (" (it carries the images)" if spec.format == "hf" else "")
            + "; POST {kind, format, filters} to /api/exports/ and download the file when the job is done.",
        },
        status=status.HTTP_413_REQUEST_ENTITY_TOO_LARGE,
    )


class ExportDownload(ResearchAPIView):
    content_negotiation_class = _AnyAccept

    @extend_schema(
        parameters=[
            *FILTER_PARAMETERS,
            OpenApiParameter(
                "raw", bool, description="rankings: add raw per-annotator rankings (hashed ids)"
            ),
        ],
        responses={
            (200, "application/octet-stream"): OpenApiResponse(OpenApiTypes.BINARY),
            413: OpenApiResponse(description="too large for one request: use /api/exports/"),
        },
        description="Export pairs (jsonl, csv, parquet, hf) or rankings (jsonl, csv, parquet, itercomp, "
        "imagereward). JSONL and CSV stream with bounded memory at any size.",
    )
    def get(self, request: Request, kind: str, fmt: str) -> HttpResponse:
        try:
            spec = ExportSpec.parse(kind, fmt, request.query_params)
        except ExportError as exc:
            return Response({"detail": str(exc)}, status=status.HTTP_400_BAD_REQUEST)
        return export_http_response(spec) or _too_big(spec)


def export_http_response(spec: ExportSpec) -> HttpResponse | None:
    """The export as a download, or None when it must run as a job. Shared with the research pages."""
    if spec.streams:
        response = StreamingHttpResponse(export_stream(spec), content_type=spec.content_type)
        response["Content-Disposition"] = f'attachment; filename="{spec.filename()}"'
        return response
    if not export_fits_one_request(spec):
        return None
    return FileResponse(
        export_to_tempfile(spec), as_attachment=True, filename=spec.filename(), content_type=spec.content_type
    )


class ExportJobList(ResearchAPIView):
    @extend_schema(responses=ExportJobSerializer(many=True))
    def get(self, request: Request) -> Response:
        jobs = research.export_jobs_visible_to(request.user)[:100]
        return Response(ExportJobSerializer(jobs, many=True, context={"request": request}).data)

    @extend_schema(request=ExportRequestSerializer, responses={202: ExportJobSerializer})
    def post(self, request: Request) -> Response:
        payload = ExportRequestSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        try:
            spec = ExportSpec.parse(
                payload.validated_data["kind"],
                payload.validated_data["format"],
                payload.validated_data["filters"],
            )
        except ExportError as exc:
            return Response({"detail": str(exc)}, status=status.HTTP_400_BAD_REQUEST)
        job = export_job_create(requested_by=request.user, spec=spec)
        data = ExportJobSerializer(job, context={"request": request}).data
        return Response(data, status=status.HTTP_202_ACCEPTED)


class ExportJobDetail(ResearchAPIView):
    @extend_schema(responses=ExportJobSerializer)
    def get(self, request: Request, pk: int) -> Response:
        job = research.export_job_for(request.user, pk)
        if job is None:
            return Response({"detail": "Not found."}, status=status.HTTP_404_NOT_FOUND)
        return Response(ExportJobSerializer(job, context={"request": request}).data)


def _storage_download(name: str, filename: str) -> FileResponse:
    return FileResponse(default_storage.open(name, "rb"), as_attachment=True, filename=filename)


class ExportJobDownload(ResearchAPIView):
    content_negotiation_class = _AnyAccept

    @extend_schema(responses={(200, "application/octet-stream"): OpenApiResponse(OpenApiTypes.BINARY)})
    def get(self, request: Request, pk: int) -> HttpResponse:
        job = research.export_job_for(request.user, pk)
        if job is None or job.status != JobStatus.DONE or not job.file:
            return Response({"detail": "No finished export with this id."}, status=status.HTTP_404_NOT_FOUND)
        return _storage_download(job.file.name, job.file.name.rsplit("/", 1)[-1])


class SnapshotList(ResearchAPIView):
    @extend_schema(responses=DatasetSnapshotSerializer(many=True))
    def get(self, request: Request) -> Response:
        snapshots = research.snapshots_list()
        return Response(DatasetSnapshotSerializer(snapshots, many=True, context={"request": request}).data)

    @extend_schema(
        request={"application/json": {"type": "object", "description": "export filters"}},
        responses={201: DatasetSnapshotSerializer, 200: DatasetSnapshotSerializer},
        description="Freeze the pairs selected by the filters (JSON body) as a new snapshot version; "
        "identical content returns the existing snapshot with 200.",
    )
    def post(self, request: Request) -> Response:
        try:
            filters = ExportFilters.from_mapping(request.data if hasattr(request.data, "get") else {})
            snapshot, created = snapshot_create(filters=filters, created_by=request.user)
        except (FilterError, EmptySnapshotError) as exc:
            return Response({"detail": str(exc)}, status=status.HTTP_400_BAD_REQUEST)
        data = DatasetSnapshotSerializer(snapshot, context={"request": request}).data
        return Response(data, status=status.HTTP_201_CREATED if created else status.HTTP_200_OK)


class SnapshotDetail(ResearchAPIView):
    @extend_schema(responses=DatasetSnapshotSerializer)
    def get(self, request: Request, pk: int) -> Response:
        snapshot = DatasetSnapshot.objects.filter(pk=pk).first()
        if snapshot is None:
            return Response({"detail": "Not found."}, status=status.HTTP_404_NOT_FOUND)
        return Response(DatasetSnapshotSerializer(snapshot, context={"request": request}).data)


class SnapshotDownload(ResearchAPIView):
    content_negotiation_class = _AnyAccept

    @extend_schema(responses={(200, "application/vnd.apache.parquet"): OpenApiResponse(OpenApiTypes.BINARY)})
    def get(self, request: Request, pk: int) -> HttpResponse:
        snapshot = DatasetSnapshot.objects.filter(pk=pk).first()
        if snapshot is None:
            return Response({"detail": "Not found."}, status=status.HTTP_404_NOT_FOUND)
        return _storage_download(snapshot.file.name, f"dataset-v{snapshot.version}.parquet")


FIGURES = {
    "agreement": research.agreement_by_category,
    "first-places": research.first_place_shares,
    "pairs": research.pair_counts,
}


class FigureData(ResearchAPIView):
    @extend_schema(
        responses={200: OpenApiResponse(OpenApiTypes.OBJECT)},
        description="The numbers behind the research page's charts: agreement, first-places, pairs.",
    )
    def get(self, request: Request, name: str) -> Response:
        if name not in FIGURES:
            return Response({"detail": f"unknown figure; one of {sorted(FIGURES)}"}, status=404)
        return Response({"rows": FIGURES[name]()})


urlpatterns = [
    path("pairs/", PairList.as_view(), name="api-pairs"),
    path("rankings/", RankingList.as_view(), name="api-rankings"),
    path("export/<str:kind>/<str:fmt>/", ExportDownload.as_view(), name="api-export"),
    path("exports/", ExportJobList.as_view(), name="api-export-jobs"),
    path("exports/<int:pk>/", ExportJobDetail.as_view(), name="api-export-job"),
    path("exports/<int:pk>/download/", ExportJobDownload.as_view(), name="api-export-job-download"),
    path("snapshots/", SnapshotList.as_view(), name="api-snapshots"),
    path("snapshots/<int:pk>/", SnapshotDetail.as_view(), name="api-snapshot"),
    path("snapshots/<int:pk>/download/", SnapshotDownload.as_view(), name="api-snapshot-download"),
    path("research/<str:name>/", FigureData.as_view(), name="api-figure"),
]
