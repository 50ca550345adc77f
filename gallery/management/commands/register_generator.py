"""Register a gallery generator (or the six IterComp ones) and how a worker loads it."""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError, CommandParser

from gallery.services.generators import GeneratorError, generator_register, generators_ensure_itercomp_gallery


class Command(BaseCommand):
    help = "Create or update a generator; --itercomp-gallery ensures sd15, sdxl, sd3, flux, rpg, instancediffusion."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("slug", nargs="?")
        parser.add_argument("--name")
        parser.add_argument(
            "--pipeline-class", default="", help="e.g. StableDiffusionXLPipeline; empty: import-only"
        )
        parser.add_argument(
            "--weights", default="", help="local folder of diffusers weights, or storage:<prefix>"
        )
        parser.add_argument("--itercomp-gallery", action="store_true")

    def handle(self, *args, **options) -> None:
        if options["itercomp_gallery"]:
            names = ", ".join(g.slug for g in generators_ensure_itercomp_gallery())
            self.stdout.write(f"gallery generators present: {names}")
            if not options["slug"]:
                return
        if not options["slug"]:
            raise CommandError("name the generator's slug (or --itercomp-gallery)")
        try:
            generator, created = generator_register(
                slug=options["slug"],
                name=options["name"] or options["slug"],
                pipeline_class=options["pipeline_class"],
                weights_uri=options["weights"],
            )
        except GeneratorError as exc:
            raise CommandError(str(exc)) from None
        self.stdout.write(f"{'created' if created else 'updated'} generator {generator.slug}")
