"""The round form in real Chromium: the objective choice, and each objective's own settings only with it."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from training.ml.algorithm1.config import DPOStageConfig
from training.models import TrainingRound

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True, serialized_rollback=True)]
PASSWORD = "browser-pass-123"
DPO_FIELDS = ("#id_dpo_beta", "#id_dpo_pair_source", "#id_dpo_ties", "#id_dpo_pair_weights")


def _login_admin(page, make_user) -> None:
    make_user("admin", username="boss", password=PASSWORD)
    page.goto("/accounts/login/")
    page.fill("#id_username", "boss")
    page.fill("#id_password", PASSWORD)
    page.press("#id_password", "Enter")
    page.wait_for_url(lambda url: "/accounts/login/" not in url)


def _choose_dpo_and_fill_its_settings(page, *, beta: str) -> None:
    page.get_by_label("Diffusion-DPO").check()
    for selector in DPO_FIELDS:
        expect(page.locator(selector)).to_be_visible()
    page.fill("#id_dpo_beta", beta)
    page.select_option("#id_dpo_pair_source", "own")
    page.select_option("#id_dpo_ties", "down_weight")
    page.check("#id_dpo_pair_weights")


def _queue(page) -> TrainingRound:
    page.get_by_role("button", name="Queue the round").click()
    page.wait_for_url(re.compile(r"/training/rounds/\d+/$"))
    return TrainingRound.objects.get(pk=int(page.url.rstrip("/").rsplit("/", 1)[1]))


def test_an_admin_starts_a_diffusion_dpo_round_with_its_beta_pair_source_and_ties(page, make_user):
    _login_admin(page, make_user)
    page.goto("/training/rounds/new/")
    _choose_dpo_and_fill_its_settings(page, beta="2500")

    training_round = _queue(page)

    config = training_round.config
    assert config["objective"] == "dpo"
    chosen = {k: config["dpo"][k] for k in ("beta", "pair_source", "ties", "pair_weights")}
    assert chosen == {"beta": 2500.0, "pair_source": "own", "ties": "down_weight", "pair_weights": True}
    expect(page.locator("[data-role=objective]")).to_have_text("Diffusion-DPO")
    assert page.console_errors == []


def test_with_refl_chosen_the_dpo_settings_are_hidden_and_not_applied(page, make_user):
    _login_admin(page, make_user)
    page.goto("/training/rounds/new/")
    # ReFL is the initial choice: DPO's settings are not on show.
    expect(page.get_by_label("ReFL", exact=True)).to_be_checked()
    for selector in DPO_FIELDS:
        expect(page.locator(selector)).to_be_hidden()
    # An admin who looked at DPO, changed its settings (β out of range too), then went back to ReFL.
    _choose_dpo_and_fill_its_settings(page, beta="-1")
    page.get_by_label("ReFL", exact=True).check()
    for selector in DPO_FIELDS:
        expect(page.locator(selector)).to_be_hidden()

    training_round = _queue(page)

    assert training_round.config["objective"] == "refl"
    assert training_round.config["dpo"] == DPOStageConfig().__dict__
    expect(page.locator("[data-role=objective]")).to_have_text("ReFL")
    assert page.console_errors == []


def test_reward_ranked_fine_tuning_shows_only_its_candidates_and_starts_with_them(page, make_user):
    _login_admin(page, make_user)
    page.goto("/training/rounds/new/")
    expect(page.locator("#id_raft_candidates")).to_be_hidden()
    expect(page.locator("#id_raft_caption_dropout")).to_be_hidden()
    expect(page.locator("#id_raft_guidance_scale")).to_be_hidden()
    expect(page.locator("#id_raft_noise_floor")).to_be_hidden()
    page.get_by_label("Reward-ranked fine-tuning").check()
    expect(page.locator("#id_raft_candidates")).to_be_visible()
    expect(page.locator("#id_raft_caption_dropout")).to_be_visible()
    expect(page.locator("#id_raft_guidance_scale")).to_be_visible()
    expect(page.locator("#id_raft_noise_floor")).to_be_visible()
    for selector in DPO_FIELDS:
        expect(page.locator(selector)).to_be_hidden()
    page.fill("#id_raft_candidates", "6")
    page.fill("#id_raft_guidance_scale", "1")
    page.fill("#id_raft_noise_floor", "0.5")

    training_round = _queue(page)

    assert training_round.config["objective"] == "raft"
    assert training_round.config["raft"] == {
        "candidates": 6,
        "caption_dropout": 0.1,
        "guidance_scale": 1.0,
        "noise_floor": 0.5,
    }
    expect(page.locator("[data-role=objective]")).to_have_text(
        "Reward-ranked fine-tuning (best of 6, drawn at guidance 1.0, noise levels from 0.5 up)"
    )
    assert page.console_errors == []
