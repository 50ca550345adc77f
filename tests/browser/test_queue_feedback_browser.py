"""Queues that count what an annotator can claim, confirmations of skip and flag, undo of a skip, styled
error pages and a favicon — in real Chromium."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.utils import timezone
from playwright.sync_api import expect

from annotation.models import ClaimStatus, Ranking, RankingTask, TaskClaim, TaskFlag
from annotation.services.claims import task_claim_next
from annotation.services.review import SKIP_UNDO_SECONDS
from gallery.models import Category
from tests.browser.test_ranking_browser import (
    PASSWORD,
    PROMPTS,
    _current_claim,
    _login,
    _task,
    _wait_for_title,
)

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True, serialized_rollback=True)]


@pytest.fixture
def tasks(settings):
    settings.GOLD_TASK_RATE = 0
    return [_task(text, i) for i, text in enumerate(PROMPTS)]


@pytest.fixture
def expert(make_user):
    return make_user("annotator", username="expert", password=PASSWORD)


def _fill(task: RankingTask, annotators: list, *, ranked: bool) -> None:
    """Take slots of a task for other annotators: rankings, or live claims (held, not yet submitted)."""
    for other in annotators:
        claim = TaskClaim.objects.create(
            task=task,
            annotator=other,
            shown_order=list(task.images.values_list("id", flat=True)),
            expires_at=timezone.now() + timedelta(minutes=30),
        )
        if ranked:
            Ranking.objects.create(
                task=task,
                annotator=other,
                ordering=[[i] for i in claim.shown_order],
                shown_order=claim.shown_order,
            )
            TaskClaim.objects.filter(pk=claim.pk).update(status=ClaimStatus.SUBMITTED)


def test_the_queue_count_is_the_number_of_tasks_the_annotator_can_claim(
    page, tasks, expert, make_user, artifacts
):
    others = [make_user("annotator") for _ in range(3)]
    _fill(tasks[0], others, ranked=True)  # complete: nothing left to claim
    _fill(tasks[1], others, ranked=False)  # every slot held by others right now
    _fill(tasks[2], others[:1], ranked=True)  # two slots still free
    _login(page)
    for width in (1400, 1024):
        page.set_viewport_size({"width": width, "height": 900})
        page.goto("/rank/")
        page.screenshot(path=str(artifacts / f"queues-{width}.png"), full_page=True)
    spatial = page.locator("article.queue", has=page.locator("#queue-spatial"))
    shown = int(spatial.locator("dt", has_text="Waiting for you").locator("xpath=../dd").inner_text())

    # Claim until the claimer says there is nothing left: that many it could claim.
    category = Category.objects.get(slug="spatial")
    claimed = []
    while (claim := task_claim_next(annotator=expert, category=category)) is not None:
        claimed.append(claim.task_id)
    assert shown == len(claimed) == 2
    assert sorted(claimed) == [tasks[2].pk, tasks[3].pk]

    # The ranking page counts the same: the two tasks now held.
    page.goto("/rank/spatial/")
    assert page.locator('[data-stat="remaining"]').inner_text() == "2"
    assert page.console_errors == []


def test_a_skip_is_confirmed_and_can_be_undone_by_keyboard(page, tasks, expert, artifacts):
    _login(page)
    page.goto("/rank/spatial/")
    skipped = _current_claim(expert)
    page.keyboard.press("s")
    _wait_for_title(page, PROMPTS[1])
    notice = page.locator("[data-role=skip-notice]")
    expect(notice).to_contain_text("Task skipped")
    # The window is the server's: 10 s from the flag's creation. The countdown shows what is left of it
    # when the notice arrives, which on a loaded machine is already less than 10 s (it once read 7 s).
    flag = TaskFlag.objects.get(kind="skip")
    deadline = flag.created_at + timedelta(seconds=SKIP_UNDO_SECONDS)
    assert int(notice.locator("form.undo-skip").get_attribute("data-until")) == int(
        deadline.timestamp() * 1000
    )
    expect(notice.locator(".undo-left")).to_have_text(re.compile(r"^([1-9]|10) s$"))
    assert page.locator("[data-role=correct-notice]").count() == 0
    page.screenshot(path=str(artifacts / "skip-undo-1400.png"))
    page.keyboard.press("u")
    _wait_for_title(page, PROMPTS[0])
    assert TaskFlag.objects.count() == 0
    skipped.refresh_from_db()
    assert skipped.status == ClaimStatus.ACTIVE and skipped.expires_at > timezone.now()
    # The task is ranked like any other, in the order first shown.
    for key in "123456":
        page.keyboard.press(key)
    page.keyboard.press("Enter")
    _wait_for_title(page, PROMPTS[1])
    assert Ranking.objects.get(annotator=expert).task_id == skipped.task_id
    assert page.console_errors == []


def test_an_undo_after_the_window_is_refused_and_the_button_goes_away(page, tasks, expert):
    _login(page)
    page.goto("/rank/spatial/")
    page.keyboard.press("s")
    _wait_for_title(page, PROMPTS[1])
    TaskFlag.objects.update(created_at=timezone.now() - timedelta(seconds=60))
    page.locator("form.undo-skip button").click()
    expect(page.locator("[role=alert]")).to_contain_text("undone for 10 seconds only")
    assert TaskFlag.objects.count() == 1
    # A fresh page no longer offers it.
    page.goto(f"/rank/spatial/?skipped={TaskFlag.objects.get().pk}")
    assert page.locator("form.undo-skip").count() == 0


def test_a_flag_is_confirmed(page, tasks, expert):
    _login(page)
    page.goto("/rank/spatial/")
    page.keyboard.press("f")
    page.keyboard.type("image 3 is blank")
    page.keyboard.press("Tab")
    page.keyboard.press("Enter")
    _wait_for_title(page, PROMPTS[1])
    expect(page.locator("[data-role=flag-notice]")).to_contain_text("admins' review queue")
    assert page.locator("form.undo-skip").count() == 0
    assert page.console_errors == []


def test_error_pages_are_styled_and_the_favicon_exists(page, tasks, expert, artifacts):
    _login(page)
    response = page.goto("/research/")
    assert response.status == 403
    expect(page.locator("h1")).to_have_text("This page is not for your role")
    assert "Only researchers and admins" in page.locator("main").inner_text()
    assert page.locator("header.topbar").is_visible()  # the studio's own layout, not a bare line
    page.screenshot(path=str(artifacts / "error-403-1400.png"))
    response = page.goto("/rank/no-such-category/")
    assert response.status == 404
    expect(page.locator("h1")).to_have_text("Nothing here")
    page.set_viewport_size({"width": 1024, "height": 768})
    page.screenshot(path=str(artifacts / "error-404-1024.png"))
    icon = page.request.get("/favicon.ico")
    assert icon.ok and icon.headers["content-type"].startswith("image/svg")
    # The 404 above is logged by Chromium itself; nothing else went wrong (the favicon included).
    assert [e for e in page.console_errors if "404" not in e and "403" not in e] == []
