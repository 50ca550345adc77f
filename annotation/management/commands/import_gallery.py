"""Import gallery images (and expert ranks) from a folder, a manifest, IterComp or ImageReward files."""

from __future__ import annotations

import sys
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError, CommandParser
from tqdm import tqdm

from annotation.services.gallery_imports import ranked_gallery_import
from gallery.services.imports import GalleryImportError
from gallery.sources import FORMATS


class Command(BaseCommand):
    help = (
        "Import images into the gallery. Formats: folder (<dir>/<generator>/<prompt>_<n>.png), manifest "
        "(CSV/JSONL: prompt, category, generator, image, seed, params), itercomp (records with image_sd15 … "
        "image_instancediffusion and rank), imagereward ({id, prompt, generations, ranking}). Each bad row "
        "is reported with its line and skipped; re-importing adds nothing."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("path", type=Path)
        parser.add_argument("--format", required=True, choices=FORMATS)
        parser.add_argument(
            "--category", help="category for every row, overriding the file (color, spatial…)"
        )
        parser.add_argument(
            "--annotator", help="username the imported ranks are stored for (created if missing)"
        )
        parser.add_argument("--generator", help="generator slug of ImageReward generations")
        parser.add_argument("--images-root", type=Path, help="folder image paths are relative to")
        parser.add_argument("--source", help="source tag stored on new prompts (default: the format)")
        parser.add_argument(
            "--iteration", type=int, default=0, help="IterComp iteration the images belong to"
        )
        parser.add_argument("--no-progress", action="store_true", help="no progress bar")

    def handle(self, *args, **options) -> None:
        def progress(rows, total):
            # tqdm on stderr; switched off when stderr is not a terminal (logs, CI) or on request.
            return tqdm(
                rows,
                total=total,
                unit="row",
                desc=f"import {options['format']}",
                file=sys.stderr,
                disable=True if options["no_progress"] else None,
            )

        try:
            report = ranked_gallery_import(
                path=options["path"],
                format=options["format"],
                category=options["category"],
                generator=options["generator"],
                annotator=options["annotator"],
                images_root=options["images_root"],
                source=options["source"],
                iteration=options["iteration"],
                progress=progress,
            )
        except GalleryImportError as exc:
            raise CommandError(str(exc)) from None
        for where, message in report.errors:
            self.stderr.write(f"{options['path'].name} {where}: {message}")
        self.stdout.write(report.summary())
        if report.errors:
            raise CommandError(
                f"{report.rows_failed} of {report.rows} rows failed (listed above); the rest were imported"
            )
