"""Generation jobs: a generator draws images for prompts on a `gpu` worker, pipeline loaded once per job.

The web side creates a job and enqueues it after commit; the worker claims it through ``jobs.services``
(a conditional update that must touch exactly one row, so a duplicated or redelivered message finds nothing
to claim), loads the pipeline once, draws the images in batches, heart-beating after each, and registers
each image through ``image_register`` — the same validation and content-addressed storage as imported
images. A job that is run again after a crash skips the images it already registered (same job, prompt and
seed). The beat reconciler (``jobs.reconcile``) re-sends a job whose message Redis lost or whose worker
went silent, and fails it with the reason after its third lost worker.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Sequence
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import F

from gallery.models import GenerationJob, Generator, Prompt
from gallery.services.generators import SUPPORTED_PIPELINES
from gallery.services.images import image_register
from jobs.models import JobStatus
from jobs.registry import JobKind
from jobs.services import job_claim, job_enqueue, job_fail, job_finish, job_heartbeat

log = logging.getLogger(__name__)

DEFAULT_PARAMS: dict[str, Any] = {
    "steps": 30,
    "guidance": 7.5,
    "seed": 0,
    "batch_size": 4,
    "dtype": "auto",
    "height": None,
    "width": None,
    "negative_prompt": "",
}


class GenerationRefused(ValueError):
    """This generator cannot draw images here, or the job's parameters are invalid."""


def generator_check_generatable(generator: Generator) -> None:
    if not generator.pipeline_class:
        raise GenerationRefused(
            f"{generator.name} is import-only: it has no diffusers pipeline (RPG and InstanceDiffusion are "
            "not diffusers models); import its images with `import_gallery` instead"
        )
    if generator.pipeline_class not in SUPPORTED_PIPELINES:
        raise GenerationRefused(
            f"{generator.name}: pipeline class {generator.pipeline_class!r} is not supported "
            f"(supported: {', '.join(SUPPORTED_PIPELINES)})"
        )
    if not generator.weights_uri:
        raise GenerationRefused(
            f"{generator.name} has no weights: set its weights to a local folder of diffusers weights "
            "or to storage:<prefix>"
        )


def _checked_params(params: dict[str, Any] | None, generator: Generator) -> dict[str, Any]:
    merged = {**DEFAULT_PARAMS, **generator.default_params, **(params or {})}
    unknown = sorted(set(merged) - set(DEFAULT_PARAMS))
    if unknown:
        raise GenerationRefused(f"unknown generation parameters {unknown}; known: {sorted(DEFAULT_PARAMS)}")
    for name, low in (("steps", 1), ("batch_size", 1), ("seed", 0)):
        if isinstance(merged[name], bool) or not isinstance(merged[name], int) or merged[name] < low:
            raise GenerationRefused(f"{name} must be an integer ≥ {low}, got {merged[name]!r}")
    if not isinstance(merged["guidance"], int | float) or merged["guidance"] < 0:
        raise GenerationRefused(f"guidance must be a non-negative number, got {merged['guidance']!r}")
    for name in ("height", "width"):
        value = merged[name]
        if value is not None and (not isinstance(value, int) or value < 8 or value % 8):
            raise GenerationRefused(f"{name} must be a multiple of 8 (or empty for the model's default)")
    if merged["dtype"] not in ("auto", "float32", "float16", "bfloat16"):
        raise GenerationRefused(f"dtype must be auto, float32, float16 or bfloat16, got {merged['dtype']!r}")
    return merged


@transaction.atomic
def generation_job_create(
    *,
    generator: Generator,
    prompts: Sequence[Prompt],
    images_per_prompt: int = 1,
    params: dict[str, Any] | None = None,
    iteration: int = 0,
    created_by=None,
) -> GenerationJob:
    """Queue a job (enqueued on commit); import-only models and bad parameters are refused here."""
    generator_check_generatable(generator)
    if not prompts:
        raise GenerationRefused("a generation job needs at least one prompt")
    if images_per_prompt < 1:
        raise GenerationRefused("images_per_prompt must be at least 1")
    job = GenerationJob.objects.create(
        generator=generator,
        images_per_prompt=images_per_prompt,
        params=_checked_params(params, generator),
        iteration=iteration,
        images_total=len({p.pk for p in prompts}) * images_per_prompt,
        created_by=created_by,
    )
    job.prompts.set(prompts)
    job_enqueue(GENERATION_JOBS, job=job)
    return job


def _generation_stale_after_s() -> int:
    # Redis hands an unacknowledged message to another worker after this long; by then the holder's
    # heartbeat (one per batch) is either fresh or its worker is gone.
    return settings.CELERY_VISIBILITY_TIMEOUT_S


GENERATION_JOBS = JobKind(
    name="generation",
    model=GenerationJob,
    task="gallery.generate_images",
    stale_after_s=_generation_stale_after_s,
)


def seed_for(job: GenerationJob, prompt_index: int, k: int) -> int:
    """Image k of the job's prompt_index-th prompt (by prompt id): distinct, reproducible seeds."""
    return int(job.params["seed"]) + prompt_index * job.images_per_prompt + k


def generation_job_run(*, job_id: int, worker: str) -> str:
    """Claim and run the job on this worker. Returns its final status (or "not-claimed")."""
    if not job_claim(GENERATION_JOBS, pk=job_id, worker=worker):
        return "not-claimed"
    job = GenerationJob.objects.select_related("generator").get(pk=job_id)
    try:
        done = _run(job, worker)
    except Exception as exc:
        log.exception("generation job %s failed", job.pk)
        job_fail(GENERATION_JOBS, pk=job.pk, worker=worker, reason=f"{type(exc).__name__}: {exc}")
        return JobStatus.FAILED
    if job_finish(GENERATION_JOBS, pk=job.pk, worker=worker, images_done=done):
        return JobStatus.DONE
    return "lost-claim"


def _run(job: GenerationJob, worker: str) -> int:
    from gallery.pipelines import generate_batch, load_pipeline, resolve_weights

    generator = job.generator
    generator_check_generatable(generator)
    params = job.params
    prompts = list(job.prompts.order_by("id"))
    plan = [
        (prompt, seed_for(job, index, k))
        for index, prompt in enumerate(prompts)
        for k in range(job.images_per_prompt)
    ]
    done_before = set(generator.images.filter(params__job_id=job.pk).values_list("prompt_id", "seed"))
    todo = [(prompt, seed) for prompt, seed in plan if (prompt.pk, seed) not in done_before]
    done = len(plan) - len(todo)
    if not todo:
        return done
    GenerationJob.objects.filter(pk=job.pk).update(pipeline_loads=F("pipeline_loads") + 1)
    loaded = load_pipeline(generator.pipeline_class, resolve_weights(generator.weights_uri), params["dtype"])
    batch_size = int(params["batch_size"])
    for start in range(0, len(todo), batch_size):
        batch = todo[start : start + batch_size]
        pictures = generate_batch(
            loaded,
            prompts=[prompt.text for prompt, _ in batch],
            seeds=[seed for _, seed in batch],
            steps=int(params["steps"]),
            guidance=float(params["guidance"]),
            height=params["height"],
            width=params["width"],
            negative_prompt=params["negative_prompt"],
        )
        for (prompt, seed), picture in zip(batch, pictures, strict=True):
            buffer = io.BytesIO()
            picture.save(buffer, format="PNG")
            image_register(
                prompt=prompt,
                generator=generator,
                image=buffer.getvalue(),
                seed=seed,
                params={
                    "job_id": job.pk,
                    "pipeline_class": loaded.pipeline_class,
                    "steps": int(params["steps"]),
                    "guidance": float(params["guidance"]),
                    "scheduler": loaded.scheduler,
                    "dtype": loaded.dtype,
                    "device": loaded.device,
                    "height": picture.height,
                    "width": picture.width,
                    "negative_prompt": params["negative_prompt"],
                    "batch_size": batch_size,
                },
                iteration=job.iteration,
            )
        done += len(batch)
        if not job_heartbeat(GENERATION_JOBS, pk=job.pk, worker=worker, images_done=done):
            raise RuntimeError("the job was taken over by another worker")
    return done
