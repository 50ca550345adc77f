"""/api/docs/ works offline: Swagger UI comes from the app's own static files, under the studio's CSP."""

from __future__ import annotations

from urllib.parse import urlsplit

import pytest
from playwright.sync_api import expect

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True, serialized_rollback=True)]


def test_api_docs_render_their_operations_with_other_hosts_unreachable(page, live_server, artifacts):
    own = urlsplit(live_server.url).netloc
    elsewhere: list[str] = []

    def only_the_studio(route):
        # Anything not served by the studio itself fails, as it would in a deployment without internet.
        if urlsplit(route.request.url).netloc != own:
            elsewhere.append(route.request.url)
            route.abort()
        else:
            route.continue_()

    page.route("**/*", only_the_studio)
    page.goto("/api/docs/")
    operations = page.locator(".opblock")
    expect(operations.first).to_be_visible(timeout=20_000)
    assert operations.count() >= 5
    assert page.locator(".opblock-summary-path", has_text="/api/").count() >= 5
    assert elsewhere == []
    # A CSP refusal shows up as a console error; there is none.
    assert page.console_errors == []
    for width in (1400, 1024):
        page.set_viewport_size({"width": width, "height": 900})
        page.screenshot(path=str(artifacts / f"api-docs-{width}.png"))
