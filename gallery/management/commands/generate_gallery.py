"""Queue a generation job: one generator draws images for a category's prompts on a gpu worker."""

from __future__ import annotations

import json

from django.core.management.base import BaseCommand, CommandError, CommandParser

from gallery.models import Generator, Prompt
from gallery.promptfiles import UnknownCategory, resolve_category
from gallery.services.generation import GenerationRefused, generation_job_create
from gallery.services.prompts import category_get


class Command(BaseCommand):
    help = "Queue images of a generator for prompts (gpu queue). RPG and InstanceDiffusion are import-only."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("generator", help="generator slug")
        parser.add_argument("--category", help="only prompts of this category")
        parser.add_argument("--limit", type=int, default=None, help="at most this many prompts")
        parser.add_argument("--missing-only", action="store_true", help="only prompts without its image")
        parser.add_argument("--images-per-prompt", type=int, default=1)
        parser.add_argument("--params", default="{}", help='JSON, e.g. {"steps": 30, "guidance": 5.0}')

    def handle(self, *args, **options) -> None:
        generator = Generator.objects.filter(slug=options["generator"]).first()
        if generator is None:
            raise CommandError(f"unknown generator {options['generator']!r}")
        prompts = Prompt.objects.order_by("id")
        try:
            if options["category"]:
                category, sub = category_get(resolve_category(options["category"]))
                prompts = prompts.filter(category=category, subcategory=sub)
            params = json.loads(options["params"])
        except (UnknownCategory, json.JSONDecodeError) as exc:
            raise CommandError(str(exc)) from None
        if options["missing_only"]:
            prompts = prompts.exclude(images__generator=generator)
        selected = list(prompts[: options["limit"]] if options["limit"] else prompts)
        try:
            job = generation_job_create(
                generator=generator,
                prompts=selected,
                images_per_prompt=options["images_per_prompt"],
                params=params,
            )
        except GenerationRefused as exc:
            raise CommandError(str(exc)) from None
        self.stdout.write(f"queued generation job {job.pk}: {job.images_total} images by {generator.slug}")
