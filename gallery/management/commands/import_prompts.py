"""Import T2I-CompBench-style prompt files, or generate prompts from the category templates."""

from __future__ import annotations

from pathlib import Path

from django.core.management.base import BaseCommand, CommandError, CommandParser

from gallery.promptfiles import UnknownCategory, category_from_file_name, resolve_category
from gallery.promptgen import KINDS, generate_prompts
from gallery.services.prompts import category_get, prompts_import_file, prompts_import_texts


class Command(BaseCommand):
    help = (
        "Import prompt files (one prompt per line; category from the file name, e.g. color_train.txt), "
        "or --generate prompts from templates. Duplicate lines and prompts already present are skipped."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("files", nargs="*", type=Path, help="prompt files (.txt, one prompt per line)")
        parser.add_argument(
            "--category",
            help="category for every file, overriding the file name: color, shape, texture, spatial, "
            "non_spatial (or attribute_binding/color…)",
        )
        parser.add_argument("--source", default="", help="source tag stored on new prompts")
        parser.add_argument(
            "--licence", default=None, help="licence of the prompts (default: LICENSE beside)"
        )
        parser.add_argument("--generate", choices=KINDS, help="generate prompts of this kind instead")
        parser.add_argument("--count", type=int, default=100, help="how many prompts to generate")
        parser.add_argument("--seed", type=int, default=0, help="seed of the generator")

    def handle(self, *args, **options) -> None:
        files: list[Path] = options["files"]
        if options["generate"]:
            if files:
                raise CommandError("give either prompt files or --generate, not both")
            self._generate(options)
            return
        if not files:
            raise CommandError("name at least one prompt file (or use --generate)")
        # Resolve every file's category before importing anything, so a bad name stops the run up front.
        plan = []
        for path in files:
            if not path.is_file():
                raise CommandError(f"{path}: no such file")
            try:
                key = (
                    resolve_category(options["category"])
                    if options["category"]
                    else category_from_file_name(path)
                )
            except UnknownCategory as exc:
                raise CommandError(str(exc)) from None
            plan.append((path, key))
        for path, key in plan:
            try:
                result = prompts_import_file(
                    path=path,
                    key=key,
                    source=options["source"] or "import",
                    licence=options["licence"],
                )
            except (UnicodeDecodeError, OSError, UnknownCategory) as exc:
                raise CommandError(f"{path}: {exc}") from None
            self.stdout.write(
                f"{path.name} → {result.label}: {result.unique} unique prompts "
                f"({result.duplicates} duplicate and {result.empty} empty lines skipped); "
                f"{result.created} new, {result.existing} already present"
            )

    def _generate(self, options) -> None:
        kind = options["generate"]
        try:
            texts = generate_prompts(kind, options["count"], seed=options["seed"])
            category, sub = category_get(resolve_category(options["category"] or kind))
        except (ValueError, UnknownCategory) as exc:
            raise CommandError(str(exc)) from None
        result = prompts_import_texts(
            texts=texts, category=category, subcategory=sub, source=options["source"] or "generated"
        )
        self.stdout.write(
            f"generated {kind} → {result.label}: {result.unique} prompts; "
            f"{result.created} new, {result.existing} already present"
        )
