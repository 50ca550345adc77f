"""Create ranking tasks for every prompt whose gallery is complete (safe to re-run)."""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError, CommandParser

from annotation.services.tasks import ranking_tasks_create_for_complete_galleries
from gallery.promptfiles import UnknownCategory, resolve_category
from gallery.selectors import GALLERY_SIZE
from gallery.services.prompts import category_get


class Command(BaseCommand):
    help = "A ranking task per prompt with images from every gallery generator (no duplicates on re-run)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--rankings", type=int, default=None, help="rankings required (default: settings)"
        )
        parser.add_argument("--category", help="only this category (color, spatial…)")
        parser.add_argument("--min-generators", type=int, default=GALLERY_SIZE)

    def handle(self, *args, **options) -> None:
        category = None
        if options["category"]:
            try:
                category, _ = category_get(resolve_category(options["category"]))
            except UnknownCategory as exc:
                raise CommandError(str(exc)) from None
        report = ranking_tasks_create_for_complete_galleries(
            required_rankings=options["rankings"], category=category, min_generators=options["min_generators"]
        )
        self.stdout.write(
            f"{report.complete_galleries} complete galleries: {report.created} new tasks, {report.existing} existing"
        )
