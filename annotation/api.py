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
from rest_framework.parsers import JSONParser
from rest_framework.permissions import BasePermission
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from annotation import selectors_research as research
from annotation.exporters.filters import ITERATION_MAX, SOURCES, SPLITS, ExportFilters, FilterError
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
    CONTENT_TYPES,
    FORMATS,
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


_TEXT = {"type": "string", "pattern": "^[^\\x00]*$"}  # PostgreSQL text holds no NUL
FILTER_PARAMETERS = [
    OpenApiParameter("category", {"type": "array", "items": _TEXT}, description="category slug(s)"),
    OpenApiParameter("split", str, many=True, enum=list(SPLITS)),
    OpenApiParameter(
        "iteration", {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": ITERATION_MAX}}
    ),
    OpenApiParameter(
        "generator", {"type": "array", "items": _TEXT}, description="generator slug(s): pairs involving them"
    ),
    OpenApiParameter("date_from", OpenApiTypes.DATE),
    OpenApiParameter("date_to", OpenApiTypes.DATE, description="inclusive; before date_from selects nothing"),
    OpenApiParameter(
        "min_agreement",
        {"type": "number", "minimum": -1, "maximum": 1},
        description="minimum Kendall's W of the consensus",
    ),
    OpenApiParameter("source", str, many=True, enum=list(SOURCES)),
]
ERROR = OpenApiResponse(
    {"type": "object", "properties": {"detail": {"type": "string"}}, "additionalProperties": {}},
    description="refused, with the reason",
)


def _filters(request: Request) -> ExportFilters:
    try:
        return ExportFilters.from_mapping(request.query_params, strict=True)
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


_EXPORT_MEDIA_TYPES = {
    "jsonl": CONTENT_TYPES["jsonl"],
    "csv": "text/csv",
    "parquet": CONTENT_TYPES["parquet"],
    "hf": CONTENT_TYPES["zip"],
    "itercomp": CONTENT_TYPES["json"],
    "imagereward": CONTENT_TYPES["json"],
}


# IterComp / ImageReward exports: a JSON array of records.
_RECORDS = {"type": "array", "items": {"type": "object", "additionalProperties": {}}}


def _export_schema(kind: str):
    # hf (the images) never fits one request: it is offered by /api/exports/ only (asking here gets 413).
    formats = tuple(f for f in FORMATS[kind] if f != "hf")
    return extend_schema(
        operation_id=f"export_{kind}",
        parameters=[
            OpenApiParameter("fmt", str, OpenApiParameter.PATH, enum=list(formats)),
            *FILTER_PARAMETERS,
            *(
                [OpenApiParameter("raw", bool, description="add raw per-annotator rankings (hashed ids)")]
                if kind == "rankings"
                else []
            ),
        ],
        responses={
            **{
                (200, media): OpenApiResponse(OpenApiTypes.BINARY)
                for media in dict.fromkeys(_EXPORT_MEDIA_TYPES[f] for f in formats)
                if media != CONTENT_TYPES["json"]
            },
            **(
                {(200, CONTENT_TYPES["json"]): OpenApiResponse(_RECORDS)}
                if CONTENT_TYPES["json"] in {_EXPORT_MEDIA_TYPES[f] for f in formats}
                else {}
            ),
            400: ERROR,
            413: OpenApiResponse(ERROR.response, description="too large for one request: use /api/exports/"),
        },
        description=f"Export {kind} ({', '.join(formats)}). JSONL and CSV stream with bounded memory at "
        "any size; Parquet"
        + (", the Hugging Face imagefolder (zip)" if kind == "pairs" else ", IterComp and ImageReward JSON")
        + " answer 413 above EXPORT_INLINE_MAX_ROWS (run them as a job).",
    )


class ExportDownload(ResearchAPIView):
    content_negotiation_class = _AnyAccept

    @extend_schema(exclude=True)  # unknown kinds only (400); the known ones are the two views below
    def get(self, request: Request, kind: str, fmt: str) -> HttpResponse:
        try:
            spec = ExportSpec.parse(kind, fmt, request.query_params, strict=True)
        except ExportError as exc:
            return Response({"detail": str(exc)}, status=status.HTTP_400_BAD_REQUEST)
        return export_http_response(spec) or _too_big(spec)


class PairsExportDownload(ExportDownload):
    @_export_schema("pairs")
    def get(self, request: Request, fmt: str, kind: str = "pairs") -> HttpResponse:
        return super().get(request, "pairs", fmt)


class RankingsExportDownload(ExportDownload):
    @_export_schema("rankings")
    def get(self, request: Request, fmt: str, kind: str = "rankings") -> HttpResponse:
        return super().get(request, "rankings", fmt)


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


def _export_request_schema() -> dict:
    """One alternative per kind, so the schema says which formats go with which kind."""
    return {
        "oneOf": [
            {
                "type": "object",
                "properties": {
                    "kind": {"type": "string", "enum": [kind]},
                    "format": {"type": "string", "enum": list(formats)},
                    "filters": ExportFilters.json_schema(),
                },
                "required": ["kind", "format"],
                "additionalProperties": False,
            }
            for kind, formats in FORMATS.items()
        ]
    }


class ExportJobList(ResearchAPIView):
    # JSON only: the filters are a nested object, which a form cannot carry.
    parser_classes = [JSONParser]

    @extend_schema(responses=ExportJobSerializer(many=True))
    def get(self, request: Request) -> Response:
        jobs = research.export_jobs_visible_to(request.user)[:100]
        return Response(ExportJobSerializer(jobs, many=True, context={"request": request}).data)

    @extend_schema(
        request={"application/json": _export_request_schema()},
        responses={202: ExportJobSerializer, 400: ERROR},
    )
    def post(self, request: Request) -> Response:
        body = request.data
        if not isinstance(body, dict):
            return Response({"detail": "the body must be a JSON object"}, status=status.HTTP_400_BAD_REQUEST)
        unknown = sorted(str(key)[:40] for key in body if key not in ("kind", "format", "filters"))
        if unknown:
            return Response({"detail": f"unknown field(s) {unknown}"}, status=status.HTTP_400_BAD_REQUEST)
        payload = ExportRequestSerializer(data=body)
        payload.is_valid(raise_exception=True)
        try:
            filters = ExportFilters.from_json_body(body.get("filters", {}))
            spec = ExportSpec.parse(
                payload.validated_data["kind"], payload.validated_data["format"], filters.to_json()
            )
        except (ExportError, FilterError) as exc:
            return Response({"detail": str(exc)}, status=status.HTTP_400_BAD_REQUEST)
        job = export_job_create(requested_by=request.user, spec=spec)
        data = ExportJobSerializer(job, context={"request": request}).data
        return Response(data, status=status.HTTP_202_ACCEPTED)


class ExportJobDetail(ResearchAPIView):
    @extend_schema(responses={200: ExportJobSerializer, 404: ERROR})
    def get(self, request: Request, pk: int) -> Response:
        job = research.export_job_for(request.user, pk)
        if job is None:
            return Response({"detail": "Not found."}, status=status.HTTP_404_NOT_FOUND)
        return Response(ExportJobSerializer(job, context={"request": request}).data)


def _storage_download(name: str, filename: str) -> FileResponse:
    # The content type by extension, as the schema documents it (mimetypes knows neither .jsonl nor .parquet).
    extension = filename.rsplit(".", 1)[-1]
    return FileResponse(
        default_storage.open(name, "rb"),
        as_attachment=True,
        filename=filename,
        content_type=CONTENT_TYPES.get(extension, "application/octet-stream"),
    )


class ExportJobDownload(ResearchAPIView):
    content_negotiation_class = _AnyAccept

    @extend_schema(
        responses={
            **{
                (200, media): OpenApiResponse(OpenApiTypes.BINARY)
                for media in dict.fromkeys(CONTENT_TYPES.values())
                if media != CONTENT_TYPES["json"]
            },
            (200, CONTENT_TYPES["json"]): OpenApiResponse(_RECORDS),
            404: ERROR,
        }
    )
    def get(self, request: Request, pk: int) -> HttpResponse:
        job = research.export_job_for(request.user, pk)
        if job is None or job.status != JobStatus.DONE or not job.file:
            return Response({"detail": "No finished export with this id."}, status=status.HTTP_404_NOT_FOUND)
        return _storage_download(job.file.name, job.file.name.rsplit("/", 1)[-1])


class SnapshotList(ResearchAPIView):
    parser_classes = [JSONParser]

    @extend_schema(responses=DatasetSnapshotSerializer(many=True))
    def get(self, request: Request) -> Response:
        snapshots = research.snapshots_list()
        return Response(DatasetSnapshotSerializer(snapshots, many=True, context={"request": request}).data)

    @extend_schema(
        request={"application/json": ExportFilters.json_schema()},
        responses={
            201: DatasetSnapshotSerializer,
            200: DatasetSnapshotSerializer,
            400: ERROR,
            409: OpenApiResponse(ERROR.response, description="no pairs match the filters: nothing to freeze"),
        },
        description="Freeze the pairs selected by the filters (a JSON object) as a new snapshot version; "
        "identical content returns the existing snapshot with 200.",
    )
    def post(self, request: Request) -> Response:
        if not int(request.META.get("CONTENT_LENGTH") or 0):
            return Response(
                {"detail": "send the filters as a JSON object ({} selects every pair)"},
                status=status.HTTP_400_BAD_REQUEST,
            )
        try:
            filters = ExportFilters.from_json_body(request.data)
        except FilterError as exc:
            return Response({"detail": str(exc)}, status=status.HTTP_400_BAD_REQUEST)
        try:
            snapshot, created = snapshot_create(filters=filters, created_by=request.user)
        except EmptySnapshotError as exc:
            # Valid filters that select nothing today: a conflict with the data, not a malformed request.
            return Response({"detail": str(exc)}, status=status.HTTP_409_CONFLICT)
        data = DatasetSnapshotSerializer(snapshot, context={"request": request}).data
        return Response(data, status=status.HTTP_201_CREATED if created else status.HTTP_200_OK)


class SnapshotDetail(ResearchAPIView):
    @extend_schema(responses={200: DatasetSnapshotSerializer, 404: ERROR})
    def get(self, request: Request, pk: int) -> Response:
        snapshot = DatasetSnapshot.objects.filter(pk=pk).first()
        if snapshot is None:
            return Response({"detail": "Not found."}, status=status.HTTP_404_NOT_FOUND)
        return Response(DatasetSnapshotSerializer(snapshot, context={"request": request}).data)


class SnapshotDownload(ResearchAPIView):
    content_negotiation_class = _AnyAccept

    @extend_schema(
        responses={(200, CONTENT_TYPES["parquet"]): OpenApiResponse(OpenApiTypes.BINARY), 404: ERROR}
    )
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
        parameters=[OpenApiParameter("name", str, OpenApiParameter.PATH, enum=list(FIGURES))],
        responses={200: OpenApiResponse(OpenApiTypes.OBJECT), 404: ERROR},
        description="The numbers behind the research page's charts: agreement, first-places, pairs.",
    )
    def get(self, request: Request, name: str) -> Response:
        if name not in FIGURES:
            return Response({"detail": f"unknown figure; one of {sorted(FIGURES)}"}, status=404)
        return Response({"rows": FIGURES[name]()})


urlpatterns = [
    path("pairs/", PairList.as_view(), name="api-pairs"),
    path("rankings/", RankingList.as_view(), name="api-rankings"),
    path("export/pairs/<str:fmt>/", PairsExportDownload.as_view(), name="api-export-pairs"),
    path("export/rankings/<str:fmt>/", RankingsExportDownload.as_view(), name="api-export-rankings"),
    path("export/<str:kind>/<str:fmt>/", ExportDownload.as_view(), name="api-export"),
    path("exports/", ExportJobList.as_view(), name="api-export-jobs"),
    path("exports/<int:pk>/", ExportJobDetail.as_view(), name="api-export-job"),
    path("exports/<int:pk>/download/", ExportJobDownload.as_view(), name="api-export-job-download"),
    path("snapshots/", SnapshotList.as_view(), name="api-snapshots"),
    path("snapshots/<int:pk>/", SnapshotDetail.as_view(), name="api-snapshot"),
    path("snapshots/<int:pk>/download/", SnapshotDownload.as_view(), name="api-snapshot-download"),
    path("research/<str:name>/", FigureData.as_view(), name="api-figure"),
]
