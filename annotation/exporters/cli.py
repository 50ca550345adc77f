"""Shared options of the ``export_*`` management commands."""

from __future__ import annotations

import argparse
from typing import Any

from annotation.exporters.filters import ExportFilters


def add_filter_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--category", action="append", default=[], help="category slug (repeatable)")
    parser.add_argument("--split", action="append", default=[], choices=["train", "val", "test"])
    parser.add_argument("--iteration", action="append", default=[], type=int)
    parser.add_argument("--generator", action="append", default=[], help="generator slug (repeatable)")
    parser.add_argument("--date-from", help="YYYY-MM-DD")
    parser.add_argument("--date-to", help="YYYY-MM-DD")
    parser.add_argument("--min-agreement", type=float, help="minimum Kendall's W of the consensus")
    parser.add_argument("--source", action="append", default=[], choices=["human", "model"])


def filters_from_options(options: dict[str, Any], *, raw: bool = False) -> ExportFilters:
    return ExportFilters.from_mapping(
        {
            "category": options["category"],
            "split": options["split"],
            "iteration": [str(i) for i in options["iteration"]],
            "generator": options["generator"],
            "date_from": options.get("date_from"),
            "date_to": options.get("date_to"),
            "min_agreement": None if options.get("min_agreement") is None else str(options["min_agreement"]),
            "source": options["source"],
            "raw": "1" if raw else None,
        }
    )
