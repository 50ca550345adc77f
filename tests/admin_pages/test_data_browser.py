"""The admins' data browser: tasks, rankings and annotators filtered by category, status, agreement,
annotator and source, paginated; an annotator's history lists their own rankings only."""

from __future__ import annotations

import re

import pytest

from annotation.models import ConsensusRanking
from tests.consensus import factories as f

pytestmark = pytest.mark.django_db


@pytest.fixture
def data(make_user):
    ann, other = make_user("annotator", username="alice"), make_user("annotator", username="bob")
    # Two images a task: enough to rank, and cheap (31 tasks).
    two = ("sdxl", "flux")
    spatial = [f.task(f.prompt(f"a cube left of ball {i}", "spatial"), two)[0] for i in range(30)]
    color, color_ids = f.task(
        f.prompt("a red book and a blue cup", "attribute_binding", source="imported-set"), two
    )
    for t in spatial[:3]:
        ids = list(t.task_images.order_by("position").values_list("image_id", flat=True))
        f.rank(t, ann, [[i] for i in ids])
    f.rank(color, other, [[i] for i in color_ids], source="import")
    ConsensusRanking.objects.create(task=spatial[0], ordering=[], n_rankings=1, kendall_w=0.9)
    ConsensusRanking.objects.create(task=spatial[1], ordering=[], n_rankings=1, kendall_w=0.2)
    return {"spatial": spatial, "color": color, "alice": ann, "bob": other}


@pytest.fixture
def admin_client(client, make_user):
    client.force_login(make_user("admin"))
    return client


def _task_ids(html: str) -> list[int]:
    return [int(x) for x in re.findall(r'data-task="(\d+)"', html)]


def test_tasks_are_paginated_25_a_page(admin_client, data):
    response = admin_client.get("/people/data/tasks/")
    assert response.status_code == 200
    first = response.content.decode()
    assert len(_task_ids(first)) == 25 and "31 rows" in first and "page 1 of 2" in first
    second = admin_client.get("/people/data/tasks/", {"page": 2}).content.decode()
    assert len(_task_ids(second)) == 6
    assert not set(_task_ids(first)) & set(_task_ids(second))


def test_tasks_filter_by_category_source_agreement_and_annotator(admin_client, data):
    get = lambda **q: _task_ids(admin_client.get("/people/data/tasks/", q).content.decode())  # noqa: E731
    assert get(category="attribute_binding") == [data["color"].pk]
    assert get(source="imported-set") == [data["color"].pk]
    assert get(min_agreement="0.5") == [data["spatial"][0].pk]
    assert get(max_agreement="0.5") == [data["spatial"][1].pk]
    assert sorted(get(annotator="alice")) == sorted(t.pk for t in data["spatial"][:3])
    assert len(get(status="open", category="spatial")) == 25  # the first page of 30


def test_rankings_filter_by_annotator_and_source_and_link_to_the_history(admin_client, data):
    page = admin_client.get("/people/data/rankings/", {"source": "import"}).content.decode()
    assert page.count("data-ranking=") == 1 and "bob" in page
    assert f'href="/people/data/annotators/{data["bob"].pk}/"' in page
    alice = admin_client.get("/people/data/rankings/", {"annotator": "alice", "category": "spatial"})
    assert alice.content.decode().count("data-ranking=") == 3


def test_an_annotators_history_holds_only_their_rankings(admin_client, data):
    page = admin_client.get(f"/people/data/annotators/{data['alice'].pk}/").content.decode()
    assert page.count("data-ranking=") == 3 and "red book" not in page
    assert 'data-count="rankings">3<' in page
    assert admin_client.get("/people/data/annotators/999999/").status_code == 404


def test_annotators_list_counts_rankings_and_filters_by_role(admin_client, data):
    assert admin_client.get("/people/data/annotators/").status_code == 200
    page = admin_client.get("/people/data/annotators/", {"role": "annotator"}).content.decode()
    assert 'data-annotator="alice"' in page and 'data-annotator="bob"' in page
    row = re.search(r'data-annotator="bob".*?</tr>', page, re.S).group(0)
    assert re.findall(r"<td[^>]*>\s*(\d+)\s*</td>", row) == ["1", "1"]  # one ranking, imported


def test_an_htmx_filter_request_gets_the_results_alone(admin_client, data):
    response = admin_client.get(
        "/people/data/tasks/", {"category": "attribute_binding"}, headers={"HX-Request": "true"}
    )
    body = response.content.decode()
    assert body.lstrip().startswith('<section id="results"') and _task_ids(body) == [data["color"].pk]


def test_a_bad_filter_value_is_a_400_with_the_reason(admin_client, data):
    response = admin_client.get("/people/data/tasks/", {"min_agreement": "high"})
    assert response.status_code == 400 and "Enter a number" in response.content.decode()


def test_annotators_and_researchers_cannot_browse_the_data(client, make_user, data):
    for role in ("annotator", "researcher"):
        client.force_login(make_user(role))
        for url in (
            "/people/data/tasks/",
            "/people/data/rankings/",
            f"/people/data/annotators/{data['bob'].pk}/",
        ):
            assert client.get(url).status_code == 403
