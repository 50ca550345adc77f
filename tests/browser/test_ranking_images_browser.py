"""Images an expert can judge: every image fills its card, zoom and side-by-side compare by keyboard only."""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

from annotation.models import Ranking, RankingTask, TaskImage
from gallery.models import Category, Generator
from gallery.services import prompt_ensure
from gallery.services.images import image_register
from tests.browser.test_ranking_browser import PASSWORD, _login, _scene, _wait_for_title

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True, serialized_rollback=True)]

PROMPT = "a red cube on the left of a blue ball"
# Three world-sized images (32 px, the synthetic world's size) and three photo-sized ones (1024 px).
SIZES = (32, 32, 32, 1024, 1024, 1024)

# The displayed picture's width, not its box's: with object-fit: contain a box can be wider than its picture.
SHOWN = """els => els.map(img => {
  const box = img.getBoundingClientRect();
  const aspect = img.naturalWidth / img.naturalHeight;
  return {natural: parseInt(img.dataset.fullWidth, 10), src: img.currentSrc || img.src,
          shown: Math.min(box.width, box.height * aspect), rendering: getComputedStyle(img).imageRendering,
          x: box.x, label: img.closest('[data-label]').dataset.label};
})"""


@pytest.fixture
def mixed_task(settings):
    settings.GOLD_TASK_RATE = 0
    prompt, _ = prompt_ensure(text=PROMPT, category=Category.objects.get(slug="spatial"))
    task = RankingTask.objects.create(prompt=prompt, required_rankings=3)
    for position, size in enumerate(SIZES):
        generator, _ = Generator.objects.get_or_create(
            slug=f"model-{position}", defaults={"name": f"M{position}"}
        )
        image = image_register(prompt=prompt, generator=generator, image=_scene(position, size=size)).image
        TaskImage.objects.create(task=task, image=image, position=position)
    return task


@pytest.fixture
def expert(make_user):
    return make_user("annotator", username="expert", password=PASSWORD)


def _open_task(page) -> None:
    _login(page)
    page.goto("/rank/spatial/")
    _wait_for_title(page, PROMPT)
    page.wait_for_function(
        "[...document.querySelectorAll('.cand img')].every(i => i.complete && i.naturalWidth)"
    )


@pytest.mark.parametrize("width", [1400, 1024])
def test_images_fill_their_cards_whatever_their_natural_size(page, mixed_task, expert, artifacts, width):
    page.set_viewport_size({"width": width, "height": 900})
    _open_task(page)
    shown = page.locator(".cand img").evaluate_all(SHOWN)
    assert sorted(s["natural"] for s in shown) == sorted(SIZES)
    for s in shown:
        assert s["shown"] >= 200, s
        # Enlarged far beyond its pixels: hard edges, not a blur. Shrunk: smooth.
        assert s["rendering"] == ("pixelated" if s["natural"] == 32 else "auto"), s
    page.screenshot(path=str(artifacts / f"ranking-images-{width}.png"))
    assert page.console_errors == []


def test_zoom_and_compare_by_keyboard_only(page, mixed_task, expert, artifacts):
    page.set_viewport_size({"width": 1400, "height": 900})
    _open_task(page)
    cards = {s["label"]: s for s in page.locator(".cand img").evaluate_all(SHOWN)}
    full = dict(
        page.locator(".cand img").evaluate_all(
            "els => els.map(i => [i.closest('[data-label]').dataset.label, i.dataset.full])"
        )
    )
    viewer = page.locator("dialog.viewer")

    # Z zooms image 1 (nothing focused yet): the original file, far larger than its card.
    page.keyboard.press("z")
    expect(viewer).to_be_visible()
    expect(viewer.locator("#viewer-title")).to_have_text("Image 1 of 6")
    zoomed = viewer.locator(".viewer-frame img")
    zoomed.evaluate("img => img.decode()")
    (z,) = viewer.locator(".viewer-frame img").evaluate_all(SHOWN)
    assert z["src"].endswith(full["1"])
    assert z["shown"] > 1.8 * cards["1"]["shown"]
    page.screenshot(path=str(artifacts / "ranking-zoom-1400.png"))

    # Arrows step through the images, + magnifies (twice the size), Escape closes back onto the card.
    page.keyboard.press("ArrowRight")
    expect(viewer.locator("#viewer-title")).to_have_text("Image 2 of 6")
    # The next image is sized once it has loaded: measure after decode and the page's own sizing frame.
    loaded_width = (
        "async img => { await img.decode(); await new Promise(r => requestAnimationFrame(r));"
        " return img.getBoundingClientRect().width; }"
    )
    page.wait_for_function(
        "() => document.querySelector('.viewer-frame img').getBoundingClientRect().width > 0"
    )
    before = viewer.locator(".viewer-frame img").evaluate(loaded_width)
    page.keyboard.press("+")
    expect(viewer.locator("#viewer-title")).to_have_text("Image 2 of 6 · ×2")
    after = viewer.locator(".viewer-frame img").evaluate(loaded_width)
    assert after == pytest.approx(2 * before, abs=2)
    page.keyboard.press("Escape")
    expect(viewer).to_be_hidden()
    expect(page.locator(".cand[data-label='2'] .cand-pick")).to_be_focused()
    # The focused card is the one Z zooms.
    page.keyboard.press("z")
    expect(viewer.locator("#viewer-title")).to_have_text("Image 2 of 6")
    page.keyboard.press("z")
    expect(viewer).to_be_hidden()

    # C then two numbers: those two side by side, each at least as large as in its card.
    page.keyboard.press("c")
    page.keyboard.press("3")
    page.keyboard.press("5")
    expect(viewer.locator("#viewer-title")).to_have_text("Image 3 and image 5")
    panes = viewer.locator(".viewer-frame img")
    expect(panes).to_have_count(2)
    panes.evaluate_all("els => Promise.all(els.map(i => i.decode()))")
    left, right = panes.evaluate_all(SHOWN)
    assert (left["src"].endswith(full["3"]), right["src"].endswith(full["5"])) == (True, True)
    assert left["x"] < right["x"]
    assert min(left["shown"], right["shown"]) >= max(cards["3"]["shown"], cards["5"]["shown"])
    page.screenshot(path=str(artifacts / "ranking-compare-1400.png"))
    # Two more numbers choose another pair.
    page.keyboard.press("1")
    page.keyboard.press("6")
    expect(viewer.locator("#viewer-title")).to_have_text("Image 1 and image 6")
    page.set_viewport_size({"width": 1024, "height": 768})
    page.screenshot(path=str(artifacts / "ranking-compare-1024.png"))
    page.keyboard.press("Escape")
    expect(viewer).to_be_hidden()

    # None of those keys placed an image; ranking goes on as before.
    assert page.locator(".slot.filled").count() == 0
    for key in "123456":
        page.keyboard.press(key)
    page.keyboard.press("Enter")
    page.wait_for_function("() => !document.querySelector('form.ranker')")
    assert Ranking.objects.filter(task=mixed_task).count() == 1
    assert page.console_errors == []


def test_the_zoom_button_opens_the_viewer_on_click(page, mixed_task, expert):
    _open_task(page)
    page.locator(".cand[data-label='4'] .cand-zoom").click()
    expect(page.locator("dialog.viewer #viewer-title")).to_have_text("Image 4 of 6")
    page.locator("dialog.viewer .viewer-close").click()
    expect(page.locator("dialog.viewer")).to_be_hidden()
    assert page.locator(".slot.filled").count() == 0
