"""Research pages: first-place shares per generator (IterComp Fig. 3), agreement and pair figures as
server-side SVG with their numbers as CSV/JSON; the export form; roles."""

from __future__ import annotations

import csv
import io
import json
import re
from xml.etree import ElementTree

import pytest

from annotation.selectors_research import first_place_shares

pytestmark = pytest.mark.django_db


def test_first_place_shares_count_the_generator_heading_each_consensus(dataset):
    rows = {(r["category"], r["generator"]): r for r in first_place_shares()}
    # Every task's consensus starts with its first image (sd15) except the model-ranked one (reversed).
    spatial_sd15 = rows[("spatial", "SD15")]
    assert (spatial_sd15["first_places"], spatial_sd15["tasks"]) == (2, 3)
    assert spatial_sd15["share"] == pytest.approx(2 / 3)
    assert rows[("spatial", "INSTANCEDIFFUSION")]["first_places"] == 1
    # Generators that never came first are listed with zero so the chart shows them.
    assert rows[("spatial", "FLUX")]["first_places"] == 0
    assert rows[("non_spatial", "SD15")]["share"] == 1.0


def test_research_page_draws_svg_charts_without_scripts(researcher_client, dataset):
    response = researcher_client.get("/research/")
    assert response.status_code == 200
    html = response.content.decode()
    assert html.count("<svg") == 5  # three categories of first places, agreement, pairs
    for svg in re.findall(r"<svg.*?</svg>", html, flags=re.S):
        ElementTree.fromstring(svg)  # each chart is well-formed XML (labels escaped)
    assert "First places · Spatial relationships" in html
    assert "<script" not in html.split("<main", 1)[1]
    assert re.search(r"67% \(2\)", html)
    assert 'data-category="spatial"' in html


def test_figure_numbers_download_as_csv_and_json(researcher_client, dataset):
    response = researcher_client.get("/research/data/first-places.csv")
    assert response["Content-Disposition"] == 'attachment; filename="first-places.csv"'
    rows = list(csv.DictReader(io.StringIO(response.content.decode())))
    assert {"category", "generator", "first_places", "tasks", "share"} == set(rows[0])
    agreement = json.loads(researcher_client.get("/research/data/agreement.json").content)["rows"]
    spatial = next(r for r in agreement if r["category"] == "spatial")
    assert spatial["pairs"] == 45 and spatial["kendall_w"] == pytest.approx(0.9746, abs=1e-4)
    pairs = json.loads(researcher_client.get("/research/data/pairs.json").content)["rows"]
    assert sum(r["pairs"] for r in pairs) == 75
    assert researcher_client.get("/research/data/unknown.csv").status_code == 404
    api = researcher_client.get("/api/research/first-places/").json()["rows"]
    assert len(api) == len(rows)


@pytest.mark.parametrize(
    "url",
    [
        "/research/",
        "/research/export/",
        "/research/export/check/?kind=pairs&format=jsonl",
        "/research/data/agreement.csv",
        "/research/snapshots/",
        "/research/token/",
    ],
)
def test_research_pages_are_for_researchers_and_admins(client, make_user, url):
    assert client.get(url).status_code == 302  # to the login page
    client.force_login(make_user("annotator"))
    assert client.get(url).status_code == 403
    client.force_login(make_user("admin"))
    assert client.get(url).status_code == 200


def test_a_download_with_no_rows_is_refused_with_the_reason(researcher_client):
    # No rankings at all: the page explains instead of sending an empty file.
    response = researcher_client.get("/research/export/download/?kind=pairs&format=jsonl")
    assert response.status_code == 409
    assert "No image-rank pairs match these filters" in response.content.decode()


def test_export_form_downloads_directly_or_redirects_to_a_job_when_too_big(
    researcher_client, dataset, settings
):
    page = researcher_client.get("/research/export/").content.decode()
    assert 'hx-post="/research/export/jobs/"' in page and 'name="min_agreement"' in page
    response = researcher_client.get(
        "/research/export/download/?kind=rankings&format=imagereward&category=spatial"
    )
    assert response.status_code == 200
    records = json.loads(b"".join(response.streaming_content) if response.streaming else response.content)
    assert len(records) == 3
    settings.EXPORT_INLINE_MAX_ROWS = 1
    too_big = researcher_client.get("/research/export/download/?kind=pairs&format=parquet")
    assert too_big.status_code == 302 and too_big["Location"].startswith("/research/export/?")
