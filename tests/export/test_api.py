"""The research API: roles, token authentication, streaming, size limits, OpenAPI schema."""

from __future__ import annotations

import io
import json

import pyarrow.parquet as pq
import pytest
from django.core.management import call_command
from django.http import StreamingHttpResponse
from rest_framework.authtoken.models import Token

from annotation.models import DatasetSnapshot, ExportJob

pytestmark = pytest.mark.django_db

ENDPOINTS = [
    ("get", "/api/pairs/"),
    ("get", "/api/rankings/"),
    ("get", "/api/export/pairs/jsonl/"),
    ("get", "/api/export/pairs/csv/"),
    ("get", "/api/export/pairs/parquet/"),
    ("get", "/api/export/pairs/hf/"),
    ("get", "/api/export/rankings/jsonl/"),
    ("get", "/api/export/rankings/itercomp/"),
    ("get", "/api/export/rankings/imagereward/"),
    ("get", "/api/exports/"),
    ("post", "/api/exports/"),
    ("get", "/api/exports/1/"),
    ("get", "/api/exports/1/download/"),
    ("get", "/api/snapshots/"),
    ("post", "/api/snapshots/"),
    ("get", "/api/snapshots/1/"),
    ("get", "/api/snapshots/1/download/"),
    ("get", "/api/research/agreement/"),
]


def _body(response) -> bytes:
    if isinstance(response, StreamingHttpResponse):
        return b"".join(response.streaming_content)
    return b"".join(response) if hasattr(response, "streaming_content") else response.content


@pytest.mark.parametrize(("method", "url"), ENDPOINTS)
def test_annotators_get_403_and_anonymous_callers_401_on_every_research_endpoint(
    client, make_user, method, url
):
    anonymous = getattr(client, method)(url, content_type="application/json")
    assert anonymous.status_code == 401
    assert anonymous["WWW-Authenticate"] == "Token"
    client.force_login(make_user("annotator"))
    assert getattr(client, method)(url, content_type="application/json").status_code == 403
    assert not ExportJob.objects.exists() and not DatasetSnapshot.objects.exists()


def test_a_researcher_script_exports_pairs_with_a_token_from_the_token_page(client, make_user, dataset):
    researcher = make_user("researcher")
    client.force_login(researcher)
    page = client.post("/research/token/")
    key = Token.objects.get(user=researcher).key
    assert key in page.content.decode()
    client.logout()
    response = client.get(
        "/api/export/pairs/jsonl/?category=spatial&split=train",
        HTTP_AUTHORIZATION=f"Token {key}",
        HTTP_ACCEPT="application/x-ndjson",
    )
    assert response.status_code == 200 and response.streaming
    assert response["Content-Type"] == "application/x-ndjson"
    assert 'filename="pairs.jsonl"' in response["Content-Disposition"]
    lines = [json.loads(x) for x in _body(response).decode().splitlines()]
    assert len(lines) == 30 and {x["category"] for x in lines} == {"spatial"}
    assert client.get("/api/export/pairs/jsonl/", HTTP_AUTHORIZATION="Token wrong").status_code == 401


def test_export_token_command_creates_then_rotates_only_for_researchers(make_user, capsys):
    researcher, annotator = make_user("researcher"), make_user("annotator")
    call_command("export_token", researcher.username)
    first = capsys.readouterr().out.strip()
    call_command("export_token", researcher.username)
    assert capsys.readouterr().out.strip() == first
    call_command("export_token", researcher.username, "--rotate")
    second = capsys.readouterr().out.strip()
    assert second != first and Token.objects.get(user=researcher).key == second
    from django.core.management.base import CommandError

    with pytest.raises(CommandError, match="not a researcher"):
        call_command("export_token", annotator.username)


def test_paginated_pair_and_ranking_lists_follow_the_export_schema(researcher_client, dataset):
    page = researcher_client.get("/api/pairs/?limit=10&source=model").json()
    assert page["count"] == 15 and len(page["results"]) == 10
    assert set(page["results"][0]) >= {"pair_id", "winner_sha256", "loser_path", "label", "weight"}
    rankings = researcher_client.get("/api/rankings/?category=spatial").json()
    assert rankings["count"] == 3 and {r["pairs"] for r in rankings["results"]} == {15}


def test_parquet_downloads_inline_below_the_limit_and_asks_for_a_job_above_it(
    researcher_client, dataset, settings
):
    response = researcher_client.get("/api/export/pairs/parquet/?iteration=1")
    assert response.status_code == 200
    table = pq.read_table(io.BytesIO(_body(response)))
    assert table.num_rows == 30
    settings.EXPORT_INLINE_MAX_ROWS = 10
    too_big = researcher_client.get("/api/export/pairs/parquet/")
    assert too_big.status_code == 413 and "/api/exports/" in too_big.json()["detail"]
    # JSONL streams whatever the size; the Hugging Face folder (with images) is always a job.
    assert researcher_client.get("/api/export/pairs/jsonl/").status_code == 200
    settings.EXPORT_INLINE_MAX_ROWS = 1_000_000
    assert researcher_client.get("/api/export/pairs/hf/").status_code == 413


def test_unknown_formats_and_bad_filters_are_400(researcher_client):
    assert researcher_client.get("/api/export/pairs/itercomp/").status_code == 400
    assert researcher_client.get("/api/export/pairs/xml/").status_code == 400
    bad = researcher_client.get("/api/export/pairs/jsonl/?split=holdout")
    assert bad.status_code == 400 and "split" in bad.json()["detail"]
    assert researcher_client.get("/api/export/pairs/jsonl/?min_agreement=high").status_code == 400


def test_openapi_schema_documents_the_research_endpoints(researcher_client):
    schema = researcher_client.get("/api/schema/?format=json").json()
    for path in (
        "/api/pairs/",
        "/api/rankings/",
        "/api/export/pairs/{fmt}/",
        "/api/export/rankings/{fmt}/",
        "/api/exports/",
        "/api/exports/{id}/download/",
        "/api/snapshots/",
    ):
        assert path in schema["paths"], path
    parameters = {p["name"]: p for p in schema["paths"]["/api/export/rankings/{fmt}/"]["get"]["parameters"]}
    assert {"category", "split", "min_agreement", "source", "raw"} <= set(parameters)
    assert sorted(parameters["fmt"]["schema"]["enum"]) == [
        "csv",
        "imagereward",
        "itercomp",
        "jsonl",
        "parquet",
    ]
    pairs = schema["paths"]["/api/export/pairs/{fmt}/"]["get"]
    assert {"text/csv", "application/vnd.apache.parquet"} <= set(pairs["responses"]["200"]["content"])
    assert {"400", "401", "403", "404", "413"} <= set(pairs["responses"])
    assert "tokenAuth" in schema["components"]["securitySchemes"]
