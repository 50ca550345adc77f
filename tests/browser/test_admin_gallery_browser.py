"""The acceptance path of the admin pages: an admin imports a prompt file and a gallery through the browser
(with the upload's progress bar and the per-line report), maps and registers generators, creates the task,
ranks it, and finds the ranking in the data browser; a round awaiting experts is continued with the reward
model's placement. Screenshots of each page at 1400 px and 1024 px go to test-artifacts/screenshots/."""

from __future__ import annotations

import io
import re
import zipfile

import pytest
from PIL import Image as PILImage
from PIL import ImageDraw
from playwright.sync_api import expect

from annotation.models import Ranking
from gallery.models import Image, Prompt
from tests.browser.test_ranking_browser import PASSWORD, _login, _wait_for_title

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True, serialized_rollback=True)]

PROMPT = "a red book and a blue cup"
SIX = ("sd15", "sdxl", "sd3", "flux", "rpg", "instancediffusion")


def _picture(seed: int) -> bytes:
    image = PILImage.new("RGB", (96, 96), (230, 230 - seed * 20, 210))
    draw = ImageDraw.Draw(image)
    draw.rectangle([8 + seed * 6, 40, 40 + seed * 6, 80], fill=(200, 30, 40))
    draw.ellipse([50, 20 + seed * 4, 86, 56 + seed * 4], fill=(30, 60, 200))
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def _gallery_zip() -> bytes:
    """A manifest with one row per generator, and a last row whose image is missing (refused by line)."""
    lines = ["prompt,category,generator,image,seed,params"]
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        for seed, slug in enumerate(SIX):
            archive.writestr(f"images/{slug}.png", _picture(seed))
            lines.append(f"{PROMPT},color,{slug},images/{slug}.png,{seed},")
        lines.append(f"{PROMPT},color,sdxl,images/not-there.png,9,")
        archive.writestr("manifest.csv", "\n".join(lines) + "\n")
    return out.getvalue()


def _shots(page, artifacts, name: str) -> None:
    folder = artifacts / "screenshots"
    folder.mkdir(exist_ok=True)
    for width in (1400, 1024):
        page.set_viewport_size({"width": width, "height": 900})
        # Nothing may stick out sideways: the page itself never scrolls horizontally.
        assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth + 1"), (name, width)
        page.screenshot(path=str(folder / f"{name}-{width}.png"), full_page=True)
    page.set_viewport_size({"width": 1440, "height": 900})


def test_an_admin_imports_prompts_and_a_gallery_in_the_browser_and_ranks_it(
    page, make_user, settings, artifacts
):
    settings.GOLD_TASK_RATE = 0
    admin = make_user("admin", username="boss", password=PASSWORD)
    _login(page, "boss")

    # 1. Prompts.
    page.goto("/people/prompts/import/")
    page.set_input_files(
        "#p-files",
        files=[{"name": "color_train.txt", "mimeType": "text/plain", "buffer": f"{PROMPT}\n".encode()}],
    )
    page.get_by_role("button", name="Import").click()
    expect(page.locator("tr[data-file='color_train.txt'] td[data-col=created]")).to_have_text("1")

    # 2. The six IterComp generators, registered from the generators page.
    page.goto("/research/generators/")
    page.get_by_role("button", name="Add IterComp's six").click()
    expect(page.locator("#generators tr[data-slug]")).to_have_count(6)

    # 3. The gallery: a zip upload with a progress bar, then the report by line.
    page.goto("/people/gallery/import/")
    page.set_input_files(
        "#g-files", files=[{"name": "gallery.zip", "mimeType": "application/zip", "buffer": _gallery_zip()}]
    )
    page.select_option("#g-format", "manifest")
    page.get_by_role("button", name="Upload and import").click()
    # The import itself is server work (images checked, stored, rows written): on a starved machine it can
    # take well over Playwright's 5 s default, which is not what this waits for.
    expect(page.locator("[data-role=import-summary]")).to_contain_text(
        "6/7 rows imported, 1 failed", timeout=90_000
    )
    failed = page.locator("tr.failed[data-where='line 8']")
    expect(failed).to_contain_text("not-there.png")
    progress = page.locator("[data-role=upload-progress]")
    # The bar followed the upload's own progress events to the end, then said it was done.
    expect(progress).to_be_visible()
    assert progress.get_attribute("aria-valuenow") == "100"
    expect(progress.locator("span")).to_have_text("done")
    assert Image.objects.filter(prompt__text=PROMPT).count() == 6
    _shots(page, artifacts, "gallery-import")

    # 4. One task with K = 1, then the admin ranks it by keyboard.
    page.goto("/people/tasks/new/")
    page.fill("#t-k", "1")
    page.get_by_role("button", name="Create tasks").click()
    expect(page.locator("[data-role=task-report]")).to_contain_text("1 new task (K = 1)")
    page.goto("/rank/attribute_binding/")
    _wait_for_title(page, PROMPT)
    expect(page.locator(".cand img")).to_have_count(6)
    # The title is server-rendered; keys pressed before ranking.js has wired the form would go nowhere.
    page.wait_for_function(
        "() => { const f = document.querySelector('form.ranker'); return !!(f && f._ranker); }"
    )
    for key in "123456":
        page.keyboard.press(key)
    expect(page.locator(".slot.filled")).to_have_count(6)
    page.keyboard.press("Enter")
    # Submitting is server work (ranking, consensus queued, the next task looked up): allow for a starved
    # machine, as the other ranking tests do.
    expect(page.locator("#task-title")).to_have_text("Nothing to rank here right now", timeout=30_000)
    ranking = Ranking.objects.get(annotator=admin)
    assert ranking.task.prompt == Prompt.objects.get(text=PROMPT) and len(ranking.ordering) == 6

    # 5. The data browser finds it: the task (1 / 1 rankings), the ranking, the admin's history.
    page.goto("/people/data/tasks/")
    expect(page.locator(f"tr[data-task='{ranking.task_id}']")).to_contain_text("1 / 1")
    refused = []
    page.on("response", lambda r: r.status >= 400 and refused.append((r.url, r.status, r.text()[:2000])))
    page.select_option("#id_status", "complete")
    # The filter is in the address (htmx pushes it), and only the table was swapped.
    expect(page).to_have_url(re.compile(r"status=complete"))
    expect(page.locator("[data-role=result-count]")).to_have_text("1 row")
    assert refused == []
    _shots(page, artifacts, "data-tasks")
    page.goto(f"/people/data/annotators/{admin.pk}/")
    expect(page.locator(f"tr[data-ranking='{ranking.pk}']")).to_contain_text(PROMPT)
    _shots(page, artifacts, "data-annotator-history")
    assert page.console_errors == []
