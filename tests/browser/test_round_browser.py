"""The round page in real Chromium: the progress bar follows the worker and polling stops at the end."""

from __future__ import annotations

import pytest

from gallery.models import Category
from training.services import (
    StageTicket,
    round_claim_stage,
    round_complete_stage,
    round_create,
    round_finish_ranking,
    round_heartbeat,
)

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True, serialized_rollback=True)]
PASSWORD = "browser-pass-123"


def _bar(page) -> int:
    return int(page.locator("[aria-label='Current stage']").get_attribute("aria-valuenow"))


def test_round_progress_bar_advances_and_polling_stops_when_the_round_ends(page, make_user, artifacts):
    admin = make_user("admin", username="boss", password=PASSWORD)
    r = round_create(
        created_by=admin,
        categories=list(Category.objects.filter(slug="spatial")),
        base_generator=None,
        iterations=1,
        config={"base_model": "synthetic-world"},
    )
    ticket = StageTicket(r.pk, "training_rewards", 0)
    round_claim_stage(ticket=ticket, worker="gpu-1")
    round_heartbeat(
        round_id=r.pk,
        worker="gpu-1",
        progress={"label": "reward model · Spatial", "step": 2, "total": 10, "metrics": {"loss": 0.69}},
    )

    page.goto("/accounts/login/")
    page.fill("#id_username", "boss")
    page.fill("#id_password", PASSWORD)
    page.press("#id_password", "Enter")
    page.wait_for_url(lambda url: "/accounts/login/" not in url)
    page.goto(f"/training/rounds/{r.pk}/")
    assert _bar(page) == 20

    round_heartbeat(
        round_id=r.pk,
        worker="gpu-1",
        progress={"label": "reward model · Spatial", "step": 7, "total": 10, "metrics": {"loss": 0.41}},
    )
    page.wait_for_selector("[aria-label='Current stage'][aria-valuenow='70']", timeout=10_000)
    assert "step 7 / 10" in page.inner_text("#round-progress")
    page.screenshot(path=str(artifacts / "round-progress.png"), full_page=True)
    print(f"\nscreenshot: {artifacts / 'round-progress.png'}")

    round_complete_stage(ticket=ticket, worker="gpu-1")
    for stage in ("feedback_learning", "sampling", "inserting"):
        t = StageTicket(r.pk, stage, 0)
        round_claim_stage(ticket=t, worker="gpu-1")
        round_complete_stage(ticket=t, worker="gpu-1")
    round_finish_ranking(round_id=r.pk)
    page.wait_for_selector("#round-progress[data-status='done']", timeout=10_000)
    assert page.get_attribute("#round-progress", "hx-trigger") is None

    # No more polling: count the requests for the progress partial over two intervals.
    requests: list[str] = []
    page.on("request", lambda req: requests.append(req.url) if "/progress/" in req.url else None)
    page.wait_for_timeout(2500)
    assert requests == []
    assert "100 %" in page.inner_text("#round-progress")
    page.screenshot(path=str(artifacts / "round-done.png"), full_page=True)


def _login_admin(page, make_user) -> object:
    admin = make_user("admin", username="boss", password=PASSWORD)
    page.goto("/accounts/login/")
    page.fill("#id_username", "boss")
    page.fill("#id_password", PASSWORD)
    page.press("#id_password", "Enter")
    page.wait_for_url(lambda url: "/accounts/login/" not in url)
    return admin


def _round(admin):
    return round_create(
        created_by=admin,
        categories=list(Category.objects.filter(slug="spatial")),
        base_generator=None,
        iterations=2,
        config={"base_model": "synthetic-world"},
    )


def test_the_round_page_shows_a_checkpoint_row_without_reload_once_the_stage_records_it(
    page, make_user, artifacts
):
    import hashlib

    from django.core.files.base import ContentFile
    from django.core.files.storage import default_storage

    from training.models import RewardModelCheckpoint

    admin = _login_admin(page, make_user)
    r = _round(admin)
    ticket = StageTicket(r.pk, "training_rewards", 0)
    round_claim_stage(ticket=ticket, worker="gpu-1")
    page.goto(f"/training/rounds/{r.pk}/")
    page.evaluate("window.__sameDocument = true")
    assert "No checkpoints yet" in page.inner_text("#round-results")

    # What the reward stage writes when a category's model is trained (training/stages.py).
    data = b"reward checkpoint bytes"
    sha = hashlib.sha256(data).hexdigest()
    RewardModelCheckpoint.objects.create(
        training_round=r,
        category=Category.objects.get(slug="spatial"),
        iteration=0,
        file=default_storage.save(f"checkpoints/reward/{sha}.tar", ContentFile(data)),
        sha256=sha,
        metrics={"val_accuracy": 0.8125, "test_accuracy": None},
    )
    row = page.locator("#round-results tr[data-checkpoint=reward]")
    row.wait_for(timeout=10_000)
    assert "val acc 0.813 · test acc —" in row.inner_text()
    assert "No checkpoints yet" not in page.inner_text("#round-results")
    # The accuracy chart was redrawn with the new point, in the same document (no reload).
    accuracy_chart = page.locator("#round-results figure", has_text="Reward models: held-out pair accuracy")
    assert "spatial" in accuracy_chart.inner_text()
    assert page.evaluate("window.__sameDocument") is True
    assert "None" not in page.inner_text("main")
    for width in (1400, 1024):
        page.set_viewport_size({"width": width, "height": 900})
        page.screenshot(path=str(artifacts / f"round-checkpoint-{width}.png"), full_page=True)
    assert page.console_errors == []


def test_a_cancelled_round_shows_the_stage_where_it_stopped(page, make_user, artifacts):
    from training.services import round_cancel, round_stop_cancelled

    admin = _login_admin(page, make_user)
    r = _round(admin)
    first = StageTicket(r.pk, "training_rewards", 0)
    round_claim_stage(ticket=first, worker="gpu-1")
    round_complete_stage(ticket=first, worker="gpu-1")
    round_claim_stage(ticket=StageTicket(r.pk, "feedback_learning", 0), worker="gpu-1")
    page.goto(f"/training/rounds/{r.pk}/")
    round_cancel(round_id=r.pk)
    round_stop_cancelled(round_id=r.pk, worker="gpu-1")
    page.wait_for_selector("#round-progress[data-status='cancelled']", timeout=10_000)
    assert page.inner_text(".stages .stage-done") == "training reward models"
    assert page.inner_text(".stages .stage-stopped") == "feedback learning"
    assert "Cancelled during feedback learning" in page.inner_text("[data-role=stopped]")
    assert _bar_whole(page) > 0
    page.screenshot(path=str(artifacts / "round-cancelled-1400.png"), full_page=True)


def _bar_whole(page) -> int:
    return int(page.locator("[aria-label='Whole round']").get_attribute("aria-valuenow"))


def test_a_round_awaiting_ranking_says_what_it_still_needs_with_a_link(page, make_user, artifacts):
    from annotation.models import RankingTask
    from gallery.services import prompt_ensure
    from training.services import round_record_outputs

    admin = _login_admin(page, make_user)
    r = _round(admin)
    spatial = Category.objects.get(slug="spatial")
    pushed = [
        RankingTask.objects.create(prompt=prompt_ensure(text=t, category=spatial)[0], required_rankings=3).pk
        for t in ("a cat left of a dog", "a cup above a plate")
    ]
    for stage in ("training_rewards", "feedback_learning", "sampling", "inserting"):
        t = StageTicket(r.pk, stage, 0)
        round_claim_stage(ticket=t, worker="gpu-1")
        if stage == "inserting":
            round_record_outputs(round_id=r.pk, iteration=0, pushed_tasks=pushed)
        round_complete_stage(ticket=t, worker="gpu-1")
    page.goto(f"/training/rounds/{r.pk}/")
    awaiting = page.locator("[data-role=awaiting]")
    assert "2 tasks still need 6 rankings in all" in awaiting.inner_text()
    assert awaiting.locator("a").get_attribute("href") == "/rank/spatial/"
    page.screenshot(path=str(artifacts / "round-awaiting-1400.png"), full_page=True)
