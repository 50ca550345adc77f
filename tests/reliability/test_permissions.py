"""Every URL and API endpoint × {anonymous, annotator, researcher, admin}.

The URL list comes from the resolver, so a new URL is covered automatically; path parameters are filled
with real ids of rows the fixture creates. Expected: anonymous callers are sent to the login page or get
401/403 (public: login, health probe); annotators never reach research, exports, training, admin or
account pages; researchers never reach admin-only pages; nobody gets a 5xx. Annotators' pages never show
generator names or other annotators' rankings.
"""

from __future__ import annotations

import re

import pytest
from django.urls import URLPattern, URLResolver, get_resolver

from annotation.models import ExportJob
from jobs.models import JobStatus
from tests.consensus import factories as f

ROLES = ("anonymous", "annotator", "researcher", "admin")
# The OpenAPI schema and its viewer describe the endpoints, never data: public on purpose (clients and
# schemathesis read it without a token).
# The favicon is a redirect to a static icon.
PUBLIC = {"accounts/login/", "healthz", "accounts/logout/", "api/schema/", "api/docs/", "favicon.ico"}
# Prefixes (of the route with parameters filled) and who may reach them.
RESEARCH = ("research/", "api/")
ADMIN_ONLY = (
    "admin/",
    "people/",
    "review/",
    "quality/",
    "research/gold/",
    "ops/",
    "training/rounds/new/",
)
TRAINING = ("training/",)
RANKING = ("rank/",)
# Rows that belong to one annotator (the fixture's "other"): even a role that may rank is refused them.
OWNED_ROWS = ("rank/rankings/", "rank/claims/")


def _walk(patterns, prefix: str = ""):
    for p in patterns:
        if isinstance(p, URLResolver):
            yield from _walk(p.url_patterns, prefix + str(p.pattern))
        elif isinstance(p, URLPattern):
            yield prefix + str(p.pattern)


def _routes() -> list[str]:
    routes = sorted(set(_walk(get_resolver().url_patterns)))
    # Django admin's own hundreds of model pages are one permission (staff): test its index only.
    return [r for r in routes if not r.startswith("admin/") or r == "admin/"]


def _fill(route: str, ids: dict[str, str]) -> str:
    route = route.lstrip("^").rstrip("$").replace("\\Z", "")
    route = re.sub(r"\(\?P<(\w+)>[^)]*\)", lambda m: ids.get(m.group(1), "1"), route)
    return "/" + re.sub(r"<(?:\w+:)?(\w+)>", lambda m: ids.get(m.group(1), "1"), route)


@pytest.fixture
def world(make_user, client):
    users = {role: make_user(role) for role in ROLES[1:]}
    other = make_user("annotator")
    p = f.prompt("a red cube left of a blue ball", "spatial")
    t, ids = f.task(p)
    ranking = f.rank(t, other, [[i] for i in ids])
    from annotation.models import TaskClaim

    claim = TaskClaim.objects.create(
        task=t, annotator=other, shown_order=ids, expires_at="2099-01-01T00:00:00Z"
    )
    job = ExportJob.objects.create(
        requested_by=users["researcher"], kind="pairs", format="parquet", status=JobStatus.QUEUED
    )
    return {
        "users": users,
        "ids": {
            "claim_id": str(claim.pk),
            "ranking_id": str(ranking.pk),
            "job_id": str(job.pk),
            "pk": str(job.pk),
            "user_id": str(other.pk),
            "category": "spatial",
            "name": "agreement",
            "ext": "csv",
            "fmt": "jsonl",
            "kind": "pairs",
            "key": "images/none.png",
            "path": "x.png",
            "task_id": "0" * 32,
            "slug": "spatial",
        },
        "generators": list(t.images.values_list("generator__name", flat=True)),
    }


def _allowed(role: str, url: str) -> bool:
    """Whether ``role`` may open ``url`` at all (a 200, a redirect inside the app, or a 404 for no row)."""
    path = url.lstrip("/")
    if path in PUBLIC or path.startswith("static/"):
        return True
    if role == "anonymous":
        return False
    if role == "admin":
        return True
    if path.startswith(ADMIN_ONLY):
        return False
    if path.startswith(RESEARCH):
        return role == "researcher"
    if path.startswith(TRAINING):
        return role in ("researcher",)  # researchers read rounds; annotators do not
    if path.startswith(RANKING):
        return role == "annotator"
    return True  # home, gallery files (row-checked), schema/docs for signed-in users


DENIED = {301, 302, 303, 401, 403, 404, 405}


@pytest.mark.parametrize("role", ROLES)
def test_every_url_answers_each_role_as_its_permissions_say(world, client, role):
    if role != "anonymous":
        client.force_login(world["users"][role])
    failures = []
    for route in _routes():
        url = _fill(route, world["ids"])
        response = client.get(url)
        status = response.status_code
        if status >= 500:
            failures.append(f"{url}: {status}")
            continue
        if not _allowed(role, url):
            location = response.get("Location", "")
            to_login = "/accounts/login/" in location or "/admin/login/" in location
            # Denied means 401/403/404/405, or a redirect to a login page (the admin site sends signed-in
            # users without staff rights to its own login form).
            ok = status in DENIED and (status not in (301, 302, 303) or to_login)
            if status in (301, 302, 303) and role != "anonymous" and "/admin/login/" not in location:
                ok = False
            if not ok:
                failures.append(f"{url}: {status} but {role} may not open it")
        elif (status in (401, 403) and not url.lstrip("/").startswith(OWNED_ROWS)) or (
            "/accounts/login/" in response.get("Location", "")
        ):
            failures.append(f"{url}: {status} but {role} may open it")
    assert not failures, "\n".join(failures)


def _table_counts() -> dict[str, int]:
    from django.apps import apps

    return {
        model._meta.label: model.objects.count()
        for model in apps.get_models()
        if model._meta.app_label in ("gallery", "annotation", "training", "auth", "authtoken")
    }


@pytest.mark.parametrize("role", ROLES)
def test_every_url_refuses_a_post_from_a_role_that_may_not_open_it_and_writes_nothing(world, client, role):
    """The same matrix for writes: a form or API POST by the wrong role is refused before it acts."""
    if role != "anonymous":
        client.force_login(world["users"][role])
    before = _table_counts()
    failures = []
    for route in _routes():
        url = _fill(route, world["ids"])
        if _allowed(role, url):
            continue
        response = client.post(url, {"categories": ["spatial"], "resolution": "x", "password1": "p" * 12})
        status = response.status_code
        location = response.get("Location", "")
        to_login = "/accounts/login/" in location or "/admin/login/" in location
        if status >= 500 or not (status in DENIED and (status not in (301, 302, 303) or to_login)):
            failures.append(f"POST {url}: {status} {location} but {role} may not open it")
    assert not failures, "\n".join(failures)
    assert _table_counts() == before


def test_annotators_never_see_generator_names_or_other_annotators_rankings(world, client):
    annotator = world["users"]["annotator"]
    client.force_login(annotator)
    for route in _routes():
        url = _fill(route, world["ids"])
        response = client.get(url)
        if response.status_code != 200 or response.get("Content-Type", "").startswith("image/"):
            continue
        body = b"".join(response) if response.streaming else response.content
        for name in world["generators"]:
            assert name.encode() not in body, f"{url} shows generator {name!r} to an annotator"
    # Another annotator's ranking cannot be opened for correction.
    response = client.get(f"/rank/rankings/{world['ids']['ranking_id']}/correct/")
    assert response.status_code in (403, 404)
    for url in ("/api/pairs/", "/api/exports/", f"/api/exports/{world['ids']['job_id']}/download/"):
        assert client.get(url).status_code == 403
