"""Export consensus rankings: ``manage.py export_rankings --format itercomp --output attribute.json``."""

from __future__ import annotations

import sys

from django.core.management.base import BaseCommand, CommandError

from annotation.exporters.cli import add_filter_arguments, filters_from_options
from annotation.exporters.filters import FilterError
from annotation.services.export import FORMATS, ExportSpec, export_write


class Command(BaseCommand):
    help = (
        "Export consensus rankings as JSONL, CSV, Parquet, IterComp's per-prompt JSON or ImageReward's JSON; "
        "--raw adds each expert's ranking with an HMAC-hashed annotator id."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument("--format", choices=FORMATS["rankings"], default="jsonl")
        parser.add_argument("--output", "-o", default="-", help="file; '-' = stdout")
        parser.add_argument("--raw", action="store_true", help="add raw per-annotator rankings (hashed ids)")
        add_filter_arguments(parser)

    def handle(self, *args, **options) -> None:
        try:
            spec = ExportSpec(
                kind="rankings",
                format=options["format"],
                filters=filters_from_options(options, raw=options["raw"]),
            )
        except (FilterError, ValueError) as exc:
            raise CommandError(str(exc)) from None
        if options["output"] == "-":
            export_write(spec, sys.stdout.buffer)
            sys.stdout.buffer.flush()
            return
        with open(options["output"], "wb") as fh:
            export_write(spec, fh)
        self.stderr.write(f"rankings written to {options['output']}")
