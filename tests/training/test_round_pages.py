from __future__ import annotations

import pytest

from gallery.models import Category
from training.models import RoundStatus, TrainingRound
from training.services import StageTicket, round_claim_stage, round_create, round_heartbeat

pytestmark = pytest.mark.django_db

FORM = {
    "categories": [],
    "base_model": "synthetic-world",
    "iterations": 1,
    "seed": 0,
    "reward_epochs": 1,
    "reward_learning_rate": 1e-5,
    "reward_freeze_fraction": 0.7,
    "feedback_steps": 10,
    "feedback_learning_rate": 1e-5,
    "sampling_steps": 20,
    "late_steps": 5,
    "guidance_scale": 3,
    "reward_scale": 1e-3,
    "pretrain_loss_weight": 1.0,
    "guard_every": 10,
    "lora": "on",
    "lora_rank": 4,
    "samples_per_prompt": 1,
    "share_of_prompts": 0.5,
    "prompts_per_category": 8,
}


def _form(**overrides):
    data = {**FORM, "categories": [c.pk for c in Category.objects.filter(slug="spatial")]}
    data.update(overrides)
    return data


@pytest.mark.parametrize("role", ["annotator", "researcher"])
def test_only_admins_can_start_or_cancel_rounds(client, make_user, role):
    admin = make_user("admin")
    r = round_create(
        created_by=admin,
        categories=list(Category.objects.all()[:1]),
        base_generator=None,
        iterations=1,
        config={},
    )
    client.force_login(make_user(role))
    assert client.get("/training/rounds/new/").status_code == 403
    assert client.post("/training/rounds/new/", _form()).status_code == 403
    assert client.post(f"/training/rounds/{r.pk}/cancel/").status_code == 403
    assert client.post(f"/training/rounds/{r.pk}/resume/").status_code == 403
    assert TrainingRound.objects.get(pk=r.pk).status == RoundStatus.QUEUED


def test_annotators_cannot_see_rounds_and_researchers_can(client, make_user):
    client.force_login(make_user("annotator"))
    assert client.get("/training/rounds/").status_code == 403
    client.force_login(make_user("researcher"))
    assert client.get("/training/rounds/").status_code == 200


def test_an_admin_starts_a_round_from_the_form_with_the_chosen_settings(client, make_user):
    client.force_login(make_user("admin"))
    response = client.post("/training/rounds/new/", _form(feedback_steps=25, lora=""))
    r = TrainingRound.objects.get()
    assert response.status_code == 302 and response["Location"] == f"/training/rounds/{r.pk}/"
    assert r.config["feedback"]["steps"] == 25 and r.config["feedback"]["lora"] is False
    assert list(r.categories.values_list("slug", flat=True)) == ["spatial"]
    page = client.get(response["Location"])
    assert b"Queued" in page.content or b"queued" in page.content


def test_invalid_settings_are_shown_in_the_form_and_nothing_is_created(client, make_user):
    client.force_login(make_user("admin"))
    response = client.post("/training/rounds/new/", _form(late_steps=50, sampling_steps=20))
    assert response.status_code == 400
    assert b"late steps must be between 1 and the sampling steps" in response.content
    assert not TrainingRound.objects.exists()


def test_an_admin_chooses_the_matching_head_for_the_reward_models_and_a_scratch_backbone_refuses_it(
    client, make_user
):
    client.force_login(make_user("admin"))
    page = client.get("/training/rounds/new/")
    assert b'name="reward_head"' in page.content and b"matching head" in page.content
    refused = client.post("/training/rounds/new/", _form(reward_head="itm", reward_backbone="scratch"))
    assert refused.status_code == 400 and b"needs the pretrained backbone" in refused.content
    assert not TrainingRound.objects.exists()
    client.post("/training/rounds/new/", _form(reward_head="itm"))
    assert TrainingRound.objects.get().config["reward"]["head"] == "itm"


def test_progress_partial_shows_stage_progress_and_stops_polling_when_the_round_ends(client, make_user):
    admin = make_user("admin")
    client.force_login(admin)
    r = round_create(
        created_by=admin,
        categories=list(Category.objects.filter(slug="spatial")),
        base_generator=None,
        iterations=1,
        config={"base_model": "synthetic-world"},
    )
    round_claim_stage(ticket=StageTicket(r.pk, "training_rewards", 0), worker="w")
    round_heartbeat(
        round_id=r.pk,
        worker="w",
        progress={"label": "reward spatial", "step": 5, "total": 20, "metrics": {"loss": 0.5}},
    )
    live = client.get(f"/training/rounds/{r.pk}/progress/", HTTP_HX_REQUEST="true")
    assert live.status_code == 200
    assert b"step 5 / 20" in live.content and b'aria-valuenow="25"' in live.content
    assert b'hx-trigger="every 1s"' in live.content
    client.post(f"/training/rounds/{r.pk}/cancel/")
    from training.services import round_stop_cancelled

    round_stop_cancelled(round_id=r.pk, worker="w")
    ended = client.get(f"/training/rounds/{r.pk}/progress/", HTTP_HX_REQUEST="true")
    assert ended.status_code == 286
    assert b"hx-trigger" not in ended.content


def _round_with_results(admin):
    import hashlib

    from django.core.files.base import ContentFile
    from django.core.files.storage import default_storage

    from training.models import RewardModelCheckpoint
    from training.services import round_record_metric

    r = round_create(
        created_by=admin,
        categories=list(Category.objects.filter(slug="spatial")),
        base_generator=None,
        iterations=1,
        config={"base_model": "synthetic-world"},
    )
    data = b"checkpoint tar bytes"
    sha = hashlib.sha256(data).hexdigest()
    name = default_storage.save(f"checkpoints/reward/{sha}.tar", ContentFile(data))
    RewardModelCheckpoint.objects.create(
        training_round=r,
        category=Category.objects.get(slug="spatial"),
        iteration=0,
        file=name,
        sha256=sha,
        metrics={
            "val_accuracy": 0.81,
            "test_accuracy": 0.79,
            "own_accuracy": 0.55,
            "own_accuracy_ci_low": 0.47,
            "own_accuracy_ci_high": 0.63,
            "own_pairs": 96,
        },
    )
    for step, (reward, heldout) in enumerate([(0.1, 0.30), (0.5, 0.34), (0.9, 0.28)]):
        round_record_metric(
            round_id=r.pk,
            stage="guard",
            iteration=0,
            step=step * 10,
            data={"step": step * 10, "reward": reward, "heldout": heldout},
        )
    return r, data


def test_round_page_draws_the_dashboards_and_offers_their_numbers(client, make_user):
    admin = make_user("admin")
    r, _ = _round_with_results(admin)
    client.force_login(make_user("researcher"))
    page = client.get(f"/training/rounds/{r.pk}/")
    assert page.status_code == 200
    assert b"Reward hacking signal" in page.content and b"<polyline" in page.content
    data = client.get(f"/training/rounds/{r.pk}/figures/hacking-signal.json").json()
    assert [row["heldout"] for row in data["rows"]] == [0.30, 0.34, 0.28]
    csv_text = client.get(f"/training/rounds/{r.pk}/figures/reward-accuracy.csv").content.decode()
    assert csv_text.splitlines()[0].startswith("iteration,category,val_accuracy")
    assert "spatial,0.81" in csv_text


def test_checkpoints_download_for_researchers_only(client, make_user):
    from training.models import RewardModelCheckpoint

    r, data = _round_with_results(make_user("admin"))
    checkpoint = RewardModelCheckpoint.objects.get(training_round=r)
    url = f"/training/checkpoints/reward/{checkpoint.pk}/download/"
    client.force_login(make_user("annotator"))
    assert client.get(url).status_code == 403
    client.force_login(make_user("researcher"))
    response = client.get(url)
    assert response.status_code == 200 and b"".join(response.streaming_content) == data


def test_round_page_shows_the_gate_own_sample_accuracy_of_each_reward_model(client, make_user):
    admin = make_user("admin")
    r, _ = _round_with_results(admin)
    client.force_login(admin)
    page = client.get(f"/training/rounds/{r.pk}/").content.decode()
    assert "own samples" in page and "0.550 [0.470, 0.630] · 96 pairs" in page
    assert "not above chance" in page


def test_an_admin_chooses_diffusion_dpo_and_its_settings_in_the_form(client, make_user):
    client.force_login(make_user("admin"))
    page = client.get("/training/rounds/new/").content.decode()
    assert "Diffusion-DPO" in page and 'name="objective"' in page and 'name="dpo_pair_source"' in page
    response = client.post(
        "/training/rounds/new/",
        _form(
            objective="dpo",
            dpo_beta="2500",
            dpo_pair_source="own",
            dpo_ties="down_weight",
            dpo_pair_weights="on",
        ),
    )
    assert response.status_code == 302
    config = TrainingRound.objects.get().config
    assert config["objective"] == "dpo"
    chosen = {k: config["dpo"][k] for k in ("beta", "pair_source", "ties", "pair_weights")}
    assert chosen == {"beta": 2500.0, "pair_source": "own", "ties": "down_weight", "pair_weights": True}
    assert "Diffusion-DPO" in client.get(response["Location"]).content.decode()


def test_a_form_without_the_objective_starts_a_refl_round_and_a_bad_dpo_setting_is_refused(client, make_user):
    client.force_login(make_user("admin"))
    assert client.post("/training/rounds/new/", _form()).status_code == 302
    assert TrainingRound.objects.get().config["objective"] == "refl"
    TrainingRound.objects.all().delete()
    response = client.post("/training/rounds/new/", _form(objective="dpo", dpo_beta="-1"))
    assert response.status_code == 400 and b"DPO beta must be positive" in response.content
    response = client.post("/training/rounds/new/", _form(objective="ppo"))
    assert response.status_code == 400 and not TrainingRound.objects.exists()


def test_a_refl_round_ignores_the_dpo_settings_posted_with_it_even_an_invalid_beta(client, make_user):
    from training.ml.algorithm1.config import DPOStageConfig

    client.force_login(make_user("admin"))
    dpo = {"dpo_pair_source": "own", "dpo_ties": "down_weight", "dpo_pair_weights": "on"}
    response = client.post("/training/rounds/new/", _form(objective="refl", dpo_beta="-1", **dpo))
    assert response.status_code == 302
    config = TrainingRound.objects.get().config
    assert config["objective"] == "refl"
    assert config["dpo"] == DPOStageConfig().__dict__


def test_an_admin_chooses_reward_ranked_fine_tuning_and_its_candidates_and_other_objectives_ignore_them(
    client, make_user
):
    client.force_login(make_user("admin"))
    page = client.get("/training/rounds/new/").content.decode()
    assert "Reward-ranked fine-tuning" in page and 'name="raft_candidates"' in page
    assert 'data-objective="raft"' in page
    response = client.post(
        "/training/rounds/new/",
        _form(
            objective="raft",
            raft_candidates="8",
            raft_caption_dropout="0.2",
            raft_guidance_scale="1",
            raft_noise_floor="0.5",
        ),
    )
    assert response.status_code == 302
    config = TrainingRound.objects.get().config
    assert (config["objective"], config["raft"]) == (
        "raft",
        {"candidates": 8, "caption_dropout": 0.2, "guidance_scale": 1.0, "noise_floor": 0.5},
    )
    assert (
        "Reward-ranked fine-tuning (best of 8, drawn at guidance 1.0, noise levels from 0.5 up)"
        in client.get(response["Location"]).content.decode()
    )
    TrainingRound.objects.all().delete()
    # Left empty: the candidates are drawn at the round's guidance, and the page says nothing extra.
    response = client.post("/training/rounds/new/", _form(objective="raft", raft_candidates="8"))
    assert TrainingRound.objects.get().config["raft"]["guidance_scale"] is None
    assert TrainingRound.objects.get().config["raft"]["noise_floor"] == 0.0
    assert "Reward-ranked fine-tuning (best of 8)" in client.get(response["Location"]).content.decode()
    TrainingRound.objects.all().delete()
    response = client.post("/training/rounds/new/", _form(objective="raft", raft_candidates="1"))
    assert response.status_code == 400 and not TrainingRound.objects.exists()
    # A ReFL round never reads the candidates: what the hidden field posted is not stored.
    refl = _form(
        objective="refl",
        raft_candidates="8",
        raft_caption_dropout="0.5",
        raft_guidance_scale="2",
        raft_noise_floor="0.5",
    )
    assert client.post("/training/rounds/new/", refl).status_code == 302
    assert TrainingRound.objects.get().config["raft"] == {
        "candidates": 4,
        "caption_dropout": 0.1,
        "guidance_scale": None,
        "noise_floor": 0.0,
    }


def test_an_admin_sets_the_fine_tunings_ema_and_warm_up_and_a_dpo_round_refuses_an_ema(client, make_user):
    client.force_login(make_user("admin"))
    assert 'name="feedback_ema_decay"' in client.get("/training/rounds/new/").content.decode()
    form = _form(objective="raft", feedback_ema_decay="0.99", feedback_warmup_steps="20")
    response = client.post("/training/rounds/new/", form)
    assert response.status_code == 302
    stored = TrainingRound.objects.get().config["feedback"]
    assert (stored["ema_decay"], stored["warmup_steps"]) == (0.99, 20)
    TrainingRound.objects.all().delete()
    assert client.post("/training/rounds/new/", _form(objective="refl")).status_code == 302
    assert TrainingRound.objects.get().config["feedback"]["ema_decay"] is None
    assert TrainingRound.objects.get().config["feedback"]["warmup_steps"] == 0
    TrainingRound.objects.all().delete()
    response = client.post("/training/rounds/new/", _form(objective="dpo", feedback_ema_decay="0.99"))
    assert response.status_code == 400 and not TrainingRound.objects.exists()
    assert "Diffusion-DPO keeps no weight average" in response.content.decode()


def test_a_raft_rounds_page_says_how_many_samples_trained_and_what_their_choice_bought(client, make_user):
    from training.services import round_record_metric

    r = _round_with_checkpoint(
        make_user("admin"),
        {"base_model": "synthetic-world", "objective": "raft", "raft": {"candidates": 4}},
        {
            "objective": "raft",
            "steps": 200,
            "stop_reason": None,
            "best_step": 150,
            "candidates": 4,
            "candidate_guidance": 1.0,
            "ranked_samples": 300,
            "chosen_reward": 0.8123,
            "candidate_reward": 0.2456,
        },
    )
    for step, heldout in ((0, 0.61), (150, 0.66)):
        guard = {"step": step, "reward": 0.3, "heldout": heldout}
        round_record_metric(round_id=r.pk, stage="guard", iteration=0, step=step, data=guard)
    client.force_login(make_user("researcher"))
    page = client.get(f"/training/rounds/{r.pk}/").content.decode()
    assert 'data-objective="raft"' in page and "200 steps on 300 samples" in page
    assert "best of 4 drawn at guidance 1.0" in page
    assert "kept step 150" in page and "0.812 vs 0.246" in page
    assert "fine-tuning step" in page


def _round_with_checkpoint(admin, config: dict, metrics: dict) -> TrainingRound:
    """A one-iteration spatial round whose iteration 0 produced a diffusion checkpoint with these metrics."""
    import hashlib

    from django.core.files.base import ContentFile
    from django.core.files.storage import default_storage

    from training.models import DiffusionCheckpoint

    r = round_create(
        created_by=admin,
        categories=list(Category.objects.filter(slug="spatial")),
        base_generator=None,
        iterations=1,
        config=config,
    )
    data = f"{config['objective']} checkpoint tar bytes".encode()
    sha = hashlib.sha256(data).hexdigest()
    DiffusionCheckpoint.objects.create(
        training_round=r,
        iteration=0,
        file=default_storage.save(f"checkpoints/diffusion/{sha}.tar", ContentFile(data)),
        sha256=sha,
        metrics=metrics,
    )
    return r


def _dpo_round_with_results(admin) -> TrainingRound:
    from training.services import round_record_metric

    r = _round_with_checkpoint(
        admin,
        {"base_model": "synthetic-world", "objective": "dpo"},
        {
            "objective": "dpo",
            "steps": 20,
            "stop_reason": None,
            "pairs": 120,
            "heldout_pairs": 30,
            "heldout_implicit_acc": 0.6333,
        },
    )
    curve = [
        {"step": 0, "val/implicit_acc": 0.5, "val/loss": 0.6931},
        {"step": 10, "loss": 0.69, "implicit_acc": 0.5, "val/implicit_acc": 0.6, "val/loss": 0.68},
        {"step": 20, "loss": 0.61, "implicit_acc": 0.75, "val/implicit_acc": 0.6333, "val/loss": 0.66},
    ]
    for entry in curve:
        round_record_metric(round_id=r.pk, stage="dpo", iteration=0, step=entry["step"], data=entry)
    return r


def test_a_dpo_rounds_page_draws_its_loss_and_held_out_implicit_accuracy_instead_of_the_refl_guard(
    client, make_user
):
    r = _dpo_round_with_results(make_user("admin"))
    client.force_login(make_user("researcher"))
    page = client.get(f"/training/rounds/{r.pk}/").content.decode()
    assert "Diffusion-DPO loss" in page and "implicit reward accuracy on held-out expert pairs" in page
    assert "Reward hacking signal" not in page
    assert 'data-objective="dpo"' in page and "120 expert pairs" in page and "0.633 · 30 pairs" in page
    rows = client.get(f"/training/rounds/{r.pk}/figures/dpo-implicit-accuracy.json").json()["rows"]
    assert [(row["step"], row["heldout_implicit_acc"]) for row in rows] == [(0, 0.5), (10, 0.6), (20, 0.6333)]
    assert [row["loss"] for row in rows] == [None, 0.69, 0.61]
    csv_text = client.get(f"/training/rounds/{r.pk}/figures/dpo-loss.csv").content.decode()
    assert csv_text.splitlines()[0] == "iteration,step,loss,implicit_acc,heldout_loss,heldout_implicit_acc"
    # A ReFL round keeps its own figures and draws none of DPO's (one live round per category: the
    # DPO round is cancelled first).
    from training.services import round_cancel

    round_cancel(round_id=r.pk)
    refl, _ = _round_with_results(make_user("admin"))
    page = client.get(f"/training/rounds/{refl.pk}/").content.decode()
    assert "Reward hacking signal" in page and "Diffusion-DPO loss" not in page
