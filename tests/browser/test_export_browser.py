"""The export page says why an export would be empty before anything downloads, and keeps the choices."""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

from annotation.services.consensus import consensus_recompute
from tests.browser.test_ranking_browser import PASSWORD, _login
from tests.consensus import factories as f

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True, serialized_rollback=True)]

# The demo's generators: real rankings, but not the six IterComp gallery models.
WORLD = ("world-a", "world-b", "world-c", "world-d", "world-e", "world-f")


@pytest.fixture
def ranked(make_user, settings):
    settings.CONSENSUS_MAX_RANKINGS = 3
    experts = [make_user("annotator") for _ in range(3)]
    p = f.prompt("a red cube left of a blue ball", "spatial")
    t, ids = f.task(p, generators=WORLD)
    for expert in experts:
        f.rank(t, expert, [[i] for i in ids])
    consensus_recompute(task_id=t.pk)
    make_user("researcher", username="reader", password=PASSWORD)
    return t


def test_an_export_that_would_be_empty_says_why_before_download(page, ranked, artifacts):
    _login(page, "reader")
    page.goto("/research/export/")
    page.select_option("#f-kind", "rankings")
    page.select_option("#f-format", "itercomp")
    problem = page.locator("[data-role=export-problem]")
    expect(problem).to_contain_text("all six IterComp gallery models")
    expect(problem).to_contain_text("ImageReward")
    for width in (1400, 1024):
        page.set_viewport_size({"width": width, "height": 900})
        page.screenshot(path=str(artifacts / f"export-problem-{width}.png"), full_page=True)

    # Download now is refused with the same reason: nothing downloads.
    downloads: list[object] = []
    page.on("download", lambda d: downloads.append(d))
    with page.expect_navigation():
        page.get_by_role("button", name="Download now").click()
    expect(page.locator("[data-role=export-problem]")).to_contain_text("all six IterComp gallery models")
    assert downloads == []
    assert page.locator("#f-format").input_value() == "itercomp"

    # A format that takes any generators has the row.
    page.select_option("#f-format", "imagereward")
    expect(page.locator("[data-role=export-rows]")).to_have_text("1 ranking match.")
    with page.expect_download() as download:
        page.get_by_role("button", name="Download now").click()
    assert download.value.suggested_filename.endswith(".json")


def test_download_now_for_hugging_face_explains_the_job_and_keeps_the_format(page, ranked):
    _login(page, "reader")
    page.goto("/research/export/")
    page.select_option("#f-format", "hf")
    expect(page.locator("[data-role=export-rows]")).to_have_text("15 pairs match.")
    page.get_by_role("button", name="Download now").click()
    expect(page.locator(".messages")).to_contain_text("always runs as a background job")
    assert "too large" not in page.inner_text("main")
    assert page.locator("#f-format").input_value() == "hf"
    assert page.console_errors == []
