"""Export image-rank pairs: ``manage.py export_pairs --format jsonl --output pairs.jsonl --category spatial``."""

from __future__ import annotations

import sys
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from annotation.exporters.cli import add_filter_arguments, filters_from_options
from annotation.exporters.filters import FilterError
from annotation.services.export import FORMATS, ExportSpec, export_write, export_write_hf


class Command(BaseCommand):
    help = "Export image-rank pairs as JSONL, CSV, Parquet or a Hugging Face imagefolder (a directory)."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--format", choices=FORMATS["pairs"], default="jsonl")
        parser.add_argument(
            "--output", "-o", default="-", help="file (or directory for --format hf); '-' = stdout"
        )
        add_filter_arguments(parser)

    def handle(self, *args, **options) -> None:
        try:
            spec = ExportSpec(kind="pairs", format=options["format"], filters=filters_from_options(options))
        except (FilterError, ValueError) as exc:
            raise CommandError(str(exc)) from None
        output = options["output"]
        if spec.format == "hf":
            if output == "-":
                raise CommandError("--format hf writes a directory; give --output DIR")
            root = Path(output)
            root.mkdir(parents=True, exist_ok=True)
            n = export_write_hf(spec, root)
            self.stderr.write(f"{n} pairs written to {root}/")
            return
        if output == "-":
            export_write(spec, sys.stdout.buffer)
            sys.stdout.buffer.flush()
            return
        with open(output, "wb") as fh:
            export_write(spec, fh)
        self.stderr.write(f"pairs written to {output}")
