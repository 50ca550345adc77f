from __future__ import annotations

import pytest

pytestmark = pytest.mark.django_db


def test_login_page_answers_and_protected_pages_redirect_anonymous_users(client):
    assert client.get("/accounts/login/").status_code == 200
    response = client.get("/")
    assert response.status_code == 302 and response["Location"].startswith("/accounts/login/")


def test_a_user_logs_in_with_the_password_and_sees_the_categories(client, make_user):
    make_user("annotator", username="ann", password="correct-horse-9")
    response = client.post("/accounts/login/", {"username": "ann", "password": "correct-horse-9"})
    assert response.status_code == 302
    page = client.get("/")
    assert page.status_code == 200
    for name in (b"Attribute binding", b"Spatial relationships", b"Non-spatial relationships"):
        assert name in page.content


@pytest.mark.parametrize(("role", "status"), [("annotator", 403), ("researcher", 403), ("admin", 200)])
def test_only_admins_see_workers_and_queues(client, make_user, role, status):
    client.force_login(make_user(role))
    assert client.get("/ops/health/").status_code == status
    assert client.post("/ops/ping/").status_code == status


def test_healthz_reports_the_database(client):
    response = client.get("/healthz")
    assert response.status_code == 200 and response.json() == {"database": "ok"}


def test_pages_carry_security_headers(client):
    response = client.get("/accounts/login/")
    assert "default-src 'self'" in response["Content-Security-Policy"]
    assert response["X-Frame-Options"] == "DENY"
    assert response["X-Content-Type-Options"] == "nosniff"


def test_htmx_requests_send_the_csrf_token_from_the_body(client, make_user):
    client.force_login(make_user("admin"))
    page = client.get("/ops/health/").content.decode()
    assert 'hx-headers=\'{"X-CSRFToken": "' in page
