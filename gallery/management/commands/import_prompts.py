"""Import T2I-CompBench-style prompt files, or generate prompts from the category templates."""

from __future__ import annotations

from pathlib import Path

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import transaction

from gallery.promptfiles import UnknownCategory, category_from_file_name, resolve_category
from gallery.promptgen import KINDS, generate_prompts
from gallery.services.prompts import (
    PromptFileRefused,
    category_get,
    prompt_licence_checked,
    prompt_source_checked,
    prompts_import_file,
    prompts_import_texts,
)
from gallery.splits import PROMPT_MAX_CHARS, SPLITS


class Command(BaseCommand):
    help = (
        "Import prompt files (one prompt per line; category from the file name, e.g. color_train.txt), "
        "or --generate prompts from templates. Duplicate lines and prompts already present are skipped. "
        f"Prompts are NFC-normalised, invisible characters stripped; a line with a direction control or "
        f"control character, or over {PROMPT_MAX_CHARS} characters, refuses the whole run (nothing is "
        "imported; every such line is named)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("files", nargs="*", type=Path, help="prompt files (.txt, one prompt per line)")
        parser.add_argument(
            "--category",
            help="category for every file, overriding the file name: color, shape, texture, spatial, "
            "non_spatial (or attribute_binding/color…)",
        )
        parser.add_argument("--source", default="", help="source tag stored on new prompts (a slug, ≤ 40)")
        parser.add_argument(
            "--split",
            choices=SPLITS,
            help="pin the prompts to this split (e.g. a benchmark's held-out file to test); pinned splits "
            "survive re-import and reward training/evaluation use them; default: a hash of the text",
        )
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
        try:
            prompt_source_checked(options["source"] or "import")
            if options["licence"] is not None:
                prompt_licence_checked(options["licence"])
        except PromptFileRefused as exc:
            raise CommandError(str(exc)) from None
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
        # One transaction for every file: a refused line in the last file leaves the first ones unimported
        # too, so a re-run after fixing it starts from the same state.
        lines = []
        try:
            with transaction.atomic():
                for path, key in plan:
                    result = prompts_import_file(
                        path=path,
                        key=key,
                        source=options["source"] or "import",
                        licence=options["licence"],
                        split=options["split"],
                    )
                    lines.append(
                        f"{path.name} → {result.label}: {result.unique} unique prompts "
                        f"({result.duplicates} duplicate and {result.empty} empty lines skipped); "
                        f"{result.created} new, {result.existing} already present"
                        + (f"; {result.pinned} pinned to {options['split']}" if options["split"] else "")
                    )
        except (PromptFileRefused, OSError, UnknownCategory) as exc:
            raise CommandError(str(exc) if isinstance(exc, PromptFileRefused) else f"{path}: {exc}") from None
        for line in lines:
            self.stdout.write(line)

    def _generate(self, options) -> None:
        kind = options["generate"]
        try:
            texts = generate_prompts(kind, options["count"], seed=options["seed"])
            category, sub = category_get(resolve_category(options["category"] or kind))
        except (ValueError, UnknownCategory) as exc:
            raise CommandError(str(exc)) from None
        try:
            result = prompts_import_texts(
                texts=texts,
                category=category,
                subcategory=sub,
                source=options["source"] or "generated",
                split=options["split"],
            )
        except PromptFileRefused as exc:
            raise CommandError(str(exc)) from None
        self.stdout.write(
            f"generated {kind} → {result.label}: {result.unique} prompts; "
            f"{result.created} new, {result.existing} already present"
        )
