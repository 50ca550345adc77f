"""Every page of the studio at 1400 px and 1024 px: nothing sticks out sideways, and a screenshot of each is
written to test-artifacts/screenshots/ (committed, looked at); plus a round awaiting experts continued
with the reward model's placement from its page."""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

from annotation.models import RankingTask
from annotation.services.consensus import consensus_recompute
from gallery.models import Category
from gallery.services import prompt_ensure
from tests.browser.test_ranking_browser import PASSWORD, _login, _task
from tests.consensus import factories as f
from training.services import (
    StageTicket,
    round_claim_stage,
    round_complete_stage,
    round_create,
    round_record_outputs,
)

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True, serialized_rollback=True)]


def _awaiting_round(admin):
    spatial = Category.objects.get(slug="spatial")
    r = round_create(
        created_by=admin,
        categories=[spatial],
        base_generator=None,
        iterations=2,
        config={"base_model": "synthetic-world"},
    )
    pushed = [
        RankingTask.objects.create(prompt=prompt_ensure(text=t, category=spatial)[0], required_rankings=3).pk
        for t in ("a cat left of a dog", "a cup above a plate")
    ]
    for stage in ("training_rewards", "feedback_learning", "sampling", "inserting"):
        ticket = StageTicket(r.pk, stage, 0)
        round_claim_stage(ticket=ticket, worker="gpu-1")
        if stage == "inserting":
            round_record_outputs(round_id=r.pk, iteration=0, pushed_tasks=pushed)
        round_complete_stage(ticket=ticket, worker="gpu-1")
    return r


@pytest.fixture
def studio(make_user, settings):
    """A small studio with something on every page: tasks, rankings with a consensus, a round awaiting."""
    settings.GOLD_TASK_RATE = 0
    settings.CONSENSUS_MAX_RANKINGS = 3
    admin = make_user("admin", username="boss", password=PASSWORD)
    make_user("annotator", username="expert", password=PASSWORD)
    tasks = [
        _task(text, i)
        for i, text in enumerate(("a red cube on the left of a blue ball", "a green bottle above a book"))
    ]
    experts = [make_user("annotator") for _ in range(3)]
    ids = list(tasks[1].task_images.order_by("position").values_list("image_id", flat=True))
    for n, expert in enumerate(experts):
        f.rank(tasks[1], expert, [[i] for i in (ids[n:] + ids[:n])])
    consensus_recompute(task_id=tasks[1].pk)
    return {"admin": admin, "round": _awaiting_round(admin), "expert": experts[0]}


def _check_and_shoot(page, artifacts, name: str) -> list[str]:
    folder = artifacts / "screenshots"
    folder.mkdir(exist_ok=True)
    problems = []
    for width in (1400, 1024):
        page.set_viewport_size({"width": width, "height": 900})
        page.wait_for_timeout(150)  # layout settles after the resize
        overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
        if overflow > 1:
            problems.append(f"{name} at {width}px: the page is {overflow}px wider than the window")
        # The top bar's links stay inside the bar (no link pushed out of view).
        outside = page.evaluate(
            """() => { const bar = document.querySelector('.topbar'); if (!bar) return [];
                 const b = bar.getBoundingClientRect();
                 return [...bar.querySelectorAll('a, button')].filter(a => { const r = a.getBoundingClientRect();
                   return r.right > b.right + 1 || r.bottom > b.bottom + 1; }).map(a => a.textContent.trim()); }"""
        )
        if outside:
            problems.append(f"{name} at {width}px: top bar items outside the bar: {outside}")
        page.screenshot(path=str(folder / f"{name}-{width}.png"), full_page=True)
    page.set_viewport_size({"width": 1440, "height": 900})
    return problems


ADMIN_PAGES = {
    "home": "/",
    "queues": "/rank/",
    "rank": "/rank/spatial/",
    "review": "/review/",
    "quality": "/quality/",
    "gold-new": "/quality/gold/new/",
    "people": "/people/",
    "prompts-import": "/people/prompts/import/",
    "gallery-upload": "/people/gallery/import/",
    "tasks-create": "/people/tasks/new/",
    "data-tasks": "/people/data/tasks/",
    "data-rankings": "/people/data/rankings/",
    "data-annotators": "/people/data/annotators/",
    "research": "/research/",
    "research-export": "/research/export/",
    "research-snapshots": "/research/snapshots/",
    "research-token": "/research/token/",
    "research-gold": "/research/gold/",
    "generators": "/research/generators/",
    "rounds": "/training/rounds/",
    "round-new": "/training/rounds/new/",
    "workers": "/ops/health/",
    "api-docs": "/api/docs/",
    "not-found": "/no-such-page/",
}


def test_every_page_fits_at_1400_and_1024_px_and_is_screenshotted(page, studio, artifacts):
    problems: list[str] = []
    page.goto("/accounts/login/")
    problems += _check_and_shoot(page, artifacts, "login")
    _login(page, "boss")
    pages = {
        **ADMIN_PAGES,
        "round-awaiting": f"/training/rounds/{studio['round'].pk}/",
        "data-annotator-history": f"/people/data/annotators/{studio['expert'].pk}/",
    }
    for name, url in pages.items():
        response = page.goto(url)
        assert response.status == (404 if name == "not-found" else 200), (name, response.status)
        if name == "api-docs":
            expect(page.locator(".opblock").first).to_be_visible(timeout=30_000)
        problems += _check_and_shoot(page, artifacts, name)
    # An annotator's view: their queue, and the styled refusal of an admin page.
    page.context.clear_cookies()
    _login(page, "expert")
    page.goto("/rank/")
    problems += _check_and_shoot(page, artifacts, "annotator-queues")
    assert page.goto("/people/").status == 403
    problems += _check_and_shoot(page, artifacts, "forbidden")
    assert problems == []


def test_an_admin_continues_a_round_without_experts_and_the_lineage_records_it(
    page, make_user, studio, artifacts
):
    _login(page, "boss")
    page.goto(f"/training/rounds/{studio['round'].pk}/")
    expect(page.locator("[data-role=awaiting]")).to_contain_text("2 tasks still need 6 rankings in all")
    page.get_by_role("button", name="Continue with the reward model's placement").click()
    row = page.locator("tr[data-lineage=ranking][data-by=reward_model]")
    expect(row).to_contain_text("reward-model placement")
    expect(row).to_contain_text("continued by boss with 2 of 2 pushed tasks unranked (6 rankings missing)")
    expect(page.locator("#round-progress")).to_have_attribute("data-status", "training_rewards")
    expect(page.locator(".log")).to_contain_text("reward model's placement (experts not available)")
    _check_and_shoot(page, artifacts, "round-continued")
