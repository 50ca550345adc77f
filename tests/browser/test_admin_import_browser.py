"""An admin imports T2I-CompBench prompt files in the browser and reads the per-file report."""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

from gallery.models import Prompt
from tests.browser.test_ranking_browser import PASSWORD, _login

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True, serialized_rollback=True)]

COLOR = "a red book and a blue cup\n\na green apple and a yellow bowl\na red book and a blue cup\n"


def test_an_admin_imports_prompt_files_and_reads_the_report(page, make_user, artifacts):
    make_user("admin", username="boss", password=PASSWORD)
    _login(page, "boss")
    page.goto("/people/prompts/import/")
    files = [
        {"name": "color_train.txt", "mimeType": "text/plain", "buffer": ("\ufeff" + COLOR).encode()},
        {"name": "complex_train.txt", "mimeType": "text/plain", "buffer": b"a cat and a dog\n"},
    ]
    page.set_input_files("#p-files", files=files)
    page.get_by_role("button", name="Import").click()
    row = page.locator("tr[data-file='color_train.txt']")
    expect(row).to_be_visible()
    cells = row.locator("td").all_inner_texts()
    # file, category, lines, empty, repeated, unique, new, already present
    assert cells[1:] == ["Attribute binding / Color", "4", "1", "1", "2", "2", "0"]
    expect(page.locator("tr.failed")).to_contain_text("unknown category 'complex'")
    assert set(Prompt.objects.filter(source="t2i-compbench").values_list("text", flat=True)) == {
        "a red book and a blue cup",
        "a green apple and a yellow bowl",
    }
    for width in (1400, 1024):
        page.set_viewport_size({"width": width, "height": 900})
        page.screenshot(path=str(artifacts / f"prompts-import-{width}.png"), full_page=True)

    # The same file again adds nothing.
    page.set_input_files("#p-files", files=files[:1])
    page.get_by_role("button", name="Import").click()
    expect(page.locator("tr[data-file='color_train.txt'] td[data-col=created]")).to_have_text("0")
    assert Prompt.objects.filter(source="t2i-compbench").count() == 2


def test_an_admin_creates_ranking_tasks_with_k_and_an_annotator_can_claim_them(page, make_user, settings):
    from annotation.models import RankingTask
    from tests.consensus import factories as f

    settings.GOLD_TASK_RATE = 0
    for text in ("a red cube left of a ball", "a cup above a plate"):
        p = f.prompt(text, "spatial")
        for slug in f.ITERCOMP_SIX:
            f.image_from_bytes(p, f.generator(slug), f.png_bytes())
    make_user("admin", username="boss", password=PASSWORD)
    _login(page, "boss")
    page.goto("/people/tasks/new/")
    page.fill("#t-k", "2")
    page.select_option("#t-category", "spatial")
    page.get_by_role("button", name="Create tasks").click()
    expect(page.locator("[data-role=task-report]")).to_contain_text("2 new tasks (K = 2)")
    assert sorted(RankingTask.objects.values_list("required_rankings", flat=True)) == [2, 2]
    # Again: nothing new.
    page.get_by_role("button", name="Create tasks").click()
    expect(page.locator("[data-role=task-report]")).to_contain_text("0 new tasks (K = 2), 2 already existed")
    # The admin ranks too: both tasks wait for them in the queue.
    page.goto("/rank/")
    spatial = page.locator("article.queue", has=page.locator("#queue-spatial"))
    assert spatial.locator("dt", has_text="Waiting for you").locator("xpath=../dd").inner_text() == "2"
