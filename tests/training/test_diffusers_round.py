"""The path real users take: a round on a local diffusers folder with BLIP reward models, started in Chromium,
run by the real worker through every stage, its checkpoints loadable by plain diffusers afterwards.

Tiny SD1.x / SDXL pipelines (random weights, saved with ``save_pretrained``) and a tiny BLIP retrieval
model stand in for the real weights, which cannot be downloaded here; the code paths are the real ones.
"""

from __future__ import annotations

import io
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from django.core.files.storage import default_storage
from PIL import Image as PILImage
from PIL import ImageDraw

from annotation.models import ConsensusRanking, PairSource, PreferencePair, RankingTask
from annotation.services.consensus import consensus_recompute
from annotation.services.imports import annotator_ensure, ranking_import
from gallery.models import Category, GeneratorKind, Image, Prompt
from gallery.services.generators import generator_register
from gallery.services.images import NewImage, image_check_bytes, images_register
from gallery.services.prompts import prompt_ensure
from gallery.splits import split_for_text
from training.models import DiffusionCheckpoint, RewardModelCheckpoint, RoundStatus, TrainingRound

pytestmark = [
    pytest.mark.celery,
    pytest.mark.slow,
    pytest.mark.browser,
    pytest.mark.django_db(transaction=True, serialized_rollback=True),
]

TOKENIZER = Path(__file__).resolve().parents[1] / "fixtures" / "tokenizers" / "clip"
PASSWORD = "diffusers-round-123"
SAMPLING_STEPS = 4
GUIDANCE = 2.0
# Gallery models draw at their own sizes (as FLUX at 1024 and SD1.5 at 512 do); the tiny base draws 32².
GALLERY_SIZES = (32, 48, 40, 64)
CANDIDATE_PROMPTS = [
    f"a {colour} {thing} {relation} a {other}"
    for colour in ("red", "blue", "green", "yellow")
    for thing in ("cube", "ball", "cat")
    for relation, other in (("left of", "tree"), ("on top of", "box"))
]


@pytest.fixture(scope="module")
def blip_folder(tmp_path_factory) -> Path:
    """A BLIP image-text-matching folder as `save_pretrained` writes it (tiny widths, random weights)."""
    from tests.ml.blip_folder import save_tiny_blip_itm

    folder = tmp_path_factory.mktemp("blip-itm")
    save_tiny_blip_itm(folder, seed=0)
    return folder


@pytest.fixture(scope="module")
def blip_worker(celery_worker_process, blip_folder):
    """The worker of a deployment whose reward models start from a BLIP folder (REWARD_BLIP_PATH)."""
    with celery_worker_process.restarted_with(REWARD_BLIP_PATH=str(blip_folder)) as worker:
        yield worker


def _base_pipeline(family: str):
    from training.ml.refl.tiny import tiny_sd15_pipeline, tiny_sdxl_pipeline

    return (tiny_sd15_pipeline if family == "sd15" else tiny_sdxl_pipeline)(TOKENIZER, seed=0)


def _pipeline_class(family: str):
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    return StableDiffusionPipeline if family == "sd15" else StableDiffusionXLPipeline


def _drawing(size: int, seed: int) -> bytes:
    rng = random.Random(seed)
    picture = PILImage.new("RGB", (size, size), tuple(rng.randrange(256) for _ in range(3)))
    draw = ImageDraw.Draw(picture)
    for _ in range(3):
        x, y = rng.randrange(size // 2), rng.randrange(size // 2)
        draw.rectangle((x, y, x + size // 3, y + size // 3), fill=tuple(rng.randrange(256) for _ in range(3)))
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return buffer.getvalue()


def _seed_ranked_gallery(category: Category, n_prompts: int = 3) -> list[Prompt]:
    """Train prompts, each with one image per gallery model, ranked by three experts into a consensus."""
    generators = [
        generator_register(name=f"Gallery model {k}", kind=GeneratorKind.GALLERY)[0]
        for k in range(len(GALLERY_SIZES))
    ]
    experts = [annotator_ensure(username=f"expert-{k}") for k in range(3)]
    texts = [t for t in CANDIDATE_PROMPTS if split_for_text(t) == "train"][:n_prompts]
    assert len(texts) == n_prompts
    prompts = []
    for p, text in enumerate(texts):
        prompt, _ = prompt_ensure(text=text, category=category, source="test")
        registered = images_register(
            prompt=prompt,
            items=[
                NewImage(generator=g, image=image_check_bytes(_drawing(size, 100 * p + k)), seed=k)
                for k, (g, size) in enumerate(zip(generators, GALLERY_SIZES, strict=True))
            ],
        )
        images = [r.image for r in registered]
        for e, expert in enumerate(experts):
            # Experts agree on the best image and differ a little further down.
            order = [0, *random.Random(10 * p + e % 2).sample(range(1, len(images)), len(images) - 1)]
            ranking, _ = ranking_import(
                prompt=prompt,
                ordering=[[images[i]] for i in order],
                annotator=expert,
                source="test",
                required_rankings=len(experts),
            )
        assert consensus_recompute(task_id=ranking.task_id) is not None
        prompts.append(prompt)
    assert PreferencePair.objects.filter(source=PairSource.HUMAN, prompt__category=category).exists()
    return prompts


def _start_round_in_browser(page, *, base_folder: Path, category: Category, lora: bool) -> None:
    page.goto("/accounts/login/")
    page.fill("#id_username", "round-admin")
    page.fill("#id_password", PASSWORD)
    page.press("#id_password", "Enter")
    page.wait_for_url(lambda url: "/accounts/login/" not in url)
    page.goto("/training/rounds/new/")
    for box in page.locator("input[name='categories']").all():
        box.set_checked(box.get_attribute("value") == str(category.pk))
    for field, value in {
        "base_model": str(base_folder),
        "iterations": "1",
        "seed": "0",
        "reward_epochs": "1",
        "reward_learning_rate": "1e-4",
        "reward_freeze_fraction": "0.5",
        "feedback_steps": "2",
        "feedback_learning_rate": "0.05",
        "sampling_steps": str(SAMPLING_STEPS),
        "late_steps": "2",
        "guidance_scale": str(GUIDANCE),
        "lora_rank": "2",
        "samples_per_prompt": "1",
        "share_of_prompts": "1",
        "prompts_per_category": "3",
    }.items():
        page.fill(f"#id_{field}", value)
    page.set_checked("#id_lora", lora)
    with page.expect_navigation():
        page.get_by_role("button", name="Queue the round").click()
    assert "/training/rounds/new/" not in page.url, page.inner_text("main")
    assert page.console_errors == []


def _wait_status(wait_for, round_id: int, statuses: set[str], timeout: float) -> TrainingRound:
    def reached():
        r = TrainingRound.objects.get(pk=round_id)
        if r.status == RoundStatus.FAILED:
            raise AssertionError(f"round failed: {r.error}")
        return r if r.status in statuses else None

    return wait_for(reached, timeout=timeout, interval=1.0, message=f"round {round_id} to reach {statuses}")


def _stored_pixels(image: Image) -> np.ndarray:
    with default_storage.open(image.file.name, "rb") as handle:
        return np.asarray(PILImage.open(io.BytesIO(handle.read())).convert("RGB"), dtype=np.int16)


def _pixels(images: torch.Tensor) -> np.ndarray:
    """A pipeline's [1,3,H,W] output quantised as the sampling stage stores it."""
    array = (images[0].clamp(0, 1).permute(1, 2, 0).numpy() * 255).round()
    return array.astype(np.int16)


def _plain_diffusers_pipeline(
    family: str, base_folder: Path, checkpoint_dir: Path | None = None, lora: bool = False
):
    """The base folder loaded by diffusers alone, with the round's checkpoint applied the diffusers way."""
    from diffusers import UNet2DConditionModel

    kwargs = {"safety_checker": None, "requires_safety_checker": False} if family == "sd15" else {}
    if checkpoint_dir is not None and not lora:
        kwargs["unet"] = UNet2DConditionModel.from_pretrained(checkpoint_dir, subfolder="unet")
    pipe = _pipeline_class(family).from_pretrained(base_folder, local_files_only=True, **kwargs)
    if checkpoint_dir is not None and lora:
        pipe.load_lora_weights(checkpoint_dir)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _draw(pipe, prompt: str, seed: int) -> np.ndarray:
    with torch.no_grad():
        out = pipe(
            prompt,
            num_inference_steps=SAMPLING_STEPS,
            guidance_scale=GUIDANCE,
            generator=torch.Generator().manual_seed(seed),
            output_type="pt",
        )
    return _pixels(out.images)


@pytest.mark.parametrize(
    ("family", "lora"), [("sd15", True), ("sdxl", False)], ids=["sd15-lora", "sdxl-full"]
)
def test_a_round_on_a_local_diffusers_folder_runs_every_stage_and_its_checkpoint_loads_in_plain_diffusers(
    family, lora, blip_worker, blip_folder, page, make_user, wait_for, tmp_path, artifacts
):
    base_folder = tmp_path / f"tiny-{family}"
    _base_pipeline(family).save_pretrained(base_folder)
    spatial = Category.objects.get(slug="spatial")
    gallery_prompts = _seed_ranked_gallery(spatial)
    make_user("admin", username="round-admin", password=PASSWORD)

    _start_round_in_browser(page, base_folder=base_folder, category=spatial, lora=lora)
    training_round = TrainingRound.objects.get()
    assert training_round.config["base_model"] == str(base_folder)
    assert training_round.config["feedback"]["lora"] is lora
    training_round = _wait_status(wait_for, training_round.pk, {RoundStatus.AWAITING_RANKING}, timeout=420)
    page.wait_for_selector("#round-progress[data-status='awaiting_ranking']", timeout=15_000)
    page.screenshot(path=str(artifacts / f"diffusers-round-{family}.png"), full_page=True)
    assert page.console_errors == []

    # Reward model: trained from the BLIP folder, registered with its files in storage.
    reward = RewardModelCheckpoint.objects.get(training_round=training_round, category=spatial)
    assert reward.config["pretrained_path"] == str(blip_folder)
    assert default_storage.exists(reward.file.name)
    # Diffusion checkpoint: ReFL on the folder's model, registered with its files in storage.
    checkpoint = DiffusionCheckpoint.objects.get(training_round=training_round, iteration=0)
    assert checkpoint.config["model"]["family"] == family
    assert checkpoint.config["model"]["source"] == str(base_folder.resolve())
    assert checkpoint.config["train_mode"] == ("lora" if lora else "full")
    assert default_storage.exists(checkpoint.file.name)

    # Sampling: one new image per gallery prompt by the fine-tuned generator, at the base model's size.
    samples = list(Image.objects.filter(generator=checkpoint.generator).select_related("prompt"))
    assert {s.prompt_id for s in samples} == {p.pk for p in gallery_prompts}
    assert all(s.params["checkpoint_sha256"] == checkpoint.sha256 for s in samples)
    assert all((s.width, s.height) == (32, 32) and s.iteration == 1 for s in samples)

    # Insertion: model pairs place every sample into its prompt's human consensus; the tasks are pushed back.
    model_pairs = PreferencePair.objects.filter(source=PairSource.MODEL, iteration=1)
    assert {p.prompt_id for p in model_pairs} == {p.pk for p in gallery_prompts}
    pushed = RankingTask.objects.filter(pk__in=training_round.outputs["0"]["pushed_tasks"])
    assert pushed.count() == len(gallery_prompts)
    for task in pushed:
        images = set(task.task_images.values_list("image_id", flat=True))
        consensus = ConsensusRanking.objects.get(task__prompt=task.prompt, task__iteration=0)
        gallery = {i for group in consensus.ordering for i in group}
        assert task.iteration == 1 and gallery < images
        assert images - gallery == {s.pk for s in samples if s.prompt_id == task.prompt_id}

    # Plain diffusers: the base folder plus the stored checkpoint, no project code, redraws every sample;
    # the base model alone draws something else with the same seed, so sampling used the fine-tuned weights.
    from training.artifacts import artifact_fetch_dir

    local = Path(artifact_fetch_dir(checkpoint.file.name, checkpoint.sha256))
    tuned = _plain_diffusers_pipeline(family, base_folder, local, lora=lora)
    base = _plain_diffusers_pipeline(family, base_folder)
    for sample in samples:
        stored = _stored_pixels(sample)
        redrawn = _draw(tuned, sample.prompt.text, sample.seed)
        assert np.abs(redrawn - stored).max() <= 1, f"sample {sample.pk} differs from plain diffusers"
        assert np.abs(_draw(base, sample.prompt.text, sample.seed) - stored).max() > 1
