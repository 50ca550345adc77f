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
