"""Generation jobs on CPU with a tiny SD pipeline saved to disk as "local weights" (random, built from configs)."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
from django.apps import apps as django_apps
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.core.management import CommandError, call_command

from gallery import pipelines
from gallery.models import Category, GenerationJob, Generator, Image
from gallery.services.generation import GenerationRefused, generation_job_create, generation_job_run
from gallery.services.generators import generator_register
from gallery.services.prompts import prompt_ensure
from jobs.models import JobStatus

TOKENIZER = Path(__file__).resolve().parents[1] / "fixtures" / "tokenizers" / "clip"
PARAMS = {"steps": 2, "guidance": 5.0, "seed": 10, "batch_size": 4}


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory) -> Path:
    import torch

    from training.ml.refl.tiny import tiny_sd15_pipeline

    torch.set_num_threads(1)
    folder = tmp_path_factory.mktemp("tiny-sd15")
    tiny_sd15_pipeline(TOKENIZER).save_pretrained(folder)
    return folder


def _setup(weights: str, n_prompts: int = 3) -> tuple[Generator, list]:
    # Transactional tests flush the seeded categories; re-seeding is idempotent.
    importlib.import_module("gallery.migrations.0002_seed_categories").seed(django_apps, None)
    generator, _ = generator_register(
        name="Tiny SD", slug="tiny-sd", pipeline_class="StableDiffusionPipeline", weights_uri=weights
    )
    category = Category.objects.get(slug="spatial")
    prompts = [
        prompt_ensure(text=f"a cube on the left of a ball {i}", category=category)[0]
        for i in range(n_prompts)
    ]
    return generator, prompts


@pytest.mark.django_db
def test_a_job_loads_the_pipeline_once_and_registers_every_image_with_its_parameters(
    tiny_weights, monkeypatch
):
    generator, prompts = _setup(str(tiny_weights))
    loads, batches = [], []
    real_load, real_batch = pipelines.load_pipeline, pipelines.generate_batch
    monkeypatch.setattr(pipelines, "load_pipeline", lambda *a, **k: loads.append(a) or real_load(*a, **k))
    monkeypatch.setattr(
        pipelines, "generate_batch", lambda *a, **k: batches.append(k["seeds"]) or real_batch(*a, **k)
    )

    job = generation_job_create(generator=generator, prompts=prompts, images_per_prompt=2, params=PARAMS)
    assert generation_job_run(job_id=job.pk, worker="test-worker") == JobStatus.DONE

    job.refresh_from_db()
    assert (job.status, job.images_total, job.images_done, job.pipeline_loads) == ("done", 6, 6, 1)
    assert len(loads) == 1  # one load for the whole job …
    assert batches == [[10, 11, 12, 13], [14, 15]]  # … while the 6 images came in two pipeline calls
    images = list(Image.objects.filter(generator=generator).order_by("seed"))
    assert [(im.prompt_id, im.seed) for im in images] == [
        (p.pk, 10 + 2 * i + k) for i, p in enumerate(prompts) for k in range(2)
    ]
    first = images[0]
    assert (first.width, first.height, first.format) == (32, 32, "PNG")
    assert first.params == {
        "job_id": job.pk, "pipeline_class": "StableDiffusionPipeline", "steps": 2, "guidance": 5.0,
        "scheduler": "DDIMScheduler", "dtype": "float32", "device": "cpu", "height": 32, "width": 32,
        "negative_prompt": "", "batch_size": 4,
    }  # fmt: skip
    assert first.display_file.name and default_storage.exists(first.file.name)
    # A duplicated message finds nothing to claim.
    assert generation_job_run(job_id=job.pk, worker="other") == "not-claimed"
    assert len(loads) == 1


@pytest.mark.django_db
def test_a_rerun_after_a_crash_skips_images_already_registered(tiny_weights):
    generator, prompts = _setup(str(tiny_weights), n_prompts=2)
    job = generation_job_create(generator=generator, prompts=prompts, params={**PARAMS, "batch_size": 1})
    generation_job_run(job_id=job.pk, worker="w1")
    Image.objects.filter(generator=generator, seed=11).delete()
    # Simulate the worker dying mid-job: running, heartbeat long ago, one image missing.
    GenerationJob.objects.filter(pk=job.pk).update(
        status="running", heartbeat_at="2000-01-01T00:00:00Z", images_done=1
    )
    assert generation_job_run(job_id=job.pk, worker="w2") == JobStatus.DONE
    job.refresh_from_db()
    assert (job.claimed_by, job.images_done, job.pipeline_loads) == ("w2", 2, 2)
    assert sorted(Image.objects.filter(generator=generator).values_list("seed", flat=True)) == [10, 11]


@pytest.mark.django_db
def test_import_only_models_and_bad_parameters_are_refused_clearly(itercomp_generators, tiny_weights):
    generator, prompts = _setup(str(tiny_weights), n_prompts=1)
    for slug in ("rpg", "instancediffusion"):
        with pytest.raises(GenerationRefused, match="import-only"):
            generation_job_create(generator=itercomp_generators[slug], prompts=prompts)
    with pytest.raises(GenerationRefused, match="has no weights"):
        generation_job_create(generator=itercomp_generators["flux"], prompts=prompts)
    with pytest.raises(GenerationRefused, match="unknown generation parameters \\['sampler'\\]"):
        generation_job_create(generator=generator, prompts=prompts, params={"sampler": "euler"})
    with pytest.raises(GenerationRefused, match="multiple of 8"):
        generation_job_create(generator=generator, prompts=prompts, params={"height": 30})
    with pytest.raises(CommandError, match="RPG is import-only"):
        call_command("generate_gallery", "rpg")
    assert GenerationJob.objects.count() == 0


@pytest.mark.django_db
def test_a_failing_load_marks_the_job_failed_with_the_reason(tmp_path):
    generator, prompts = _setup(str(tmp_path / "gone"), n_prompts=1)
    job = generation_job_create(generator=generator, prompts=prompts, params=PARAMS)
    assert generation_job_run(job_id=job.pk, worker="w") == JobStatus.FAILED
    job.refresh_from_db()
    assert job.status == "failed" and "does not exist on this worker" in job.error


def test_weights_in_storage_are_fetched_once_into_the_worker_cache(tiny_weights, tmp_path, settings):
    settings.WORKER_CACHE_DIR = tmp_path / "cache"
    for path in tiny_weights.rglob("*"):
        if path.is_file():
            default_storage.save(
                f"weights/tiny-sd/{path.relative_to(tiny_weights).as_posix()}", ContentFile(path.read_bytes())
            )
    local = pipelines.resolve_weights("storage:weights/tiny-sd")
    assert local.is_relative_to(settings.WORKER_CACHE_DIR)
    assert (local / "unet" / "diffusion_pytorch_model.safetensors").read_bytes() == (
        tiny_weights / "unet" / "diffusion_pytorch_model.safetensors"
    ).read_bytes()
    stamp = (local / "model_index.json").stat().st_mtime_ns
    default_storage.delete("weights/tiny-sd/model_index.json")  # a second resolve must not read storage
    assert pipelines.resolve_weights("storage:weights/tiny-sd") == local
    assert (local / "model_index.json").stat().st_mtime_ns == stamp


@pytest.mark.celery
@pytest.mark.django_db(transaction=True)
def test_the_gpu_queue_worker_runs_a_generation_job_end_to_end(tiny_weights, celery_worker_process, wait_for):
    generator, prompts = _setup(str(tiny_weights), n_prompts=2)
    job = generation_job_create(generator=generator, prompts=prompts, params=PARAMS)  # enqueued on commit

    def finished():
        job.refresh_from_db()
        return job.status in ("done", "failed")

    wait_for(finished, timeout=90, interval=0.5, message="the generation job")
    assert (job.status, job.error, job.images_done, job.pipeline_loads) == ("done", "", 2, 1)
    assert job.claimed_by and not job.claimed_by.startswith("test")
    assert Image.objects.filter(generator=generator, params__job_id=job.pk).count() == 2
