"""What a research export selects: parsed from query strings, forms, command options or stored job JSON."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

SPLITS = ("train", "val", "test")
SOURCES = ("human", "model")


class FilterError(ValueError):
    """A filter value cannot be understood; the message names the filter."""


def _values(raw: Any) -> list[str]:
    """Accept a list, a comma-separated string, or a QueryDict's repeated values."""
    if raw is None:
        return []
    if isinstance(raw, str):
        items: Iterable[Any] = raw.split(",")
    elif isinstance(raw, Iterable):
        items = [part for value in raw for part in str(value).split(",")]
    else:
        items = [raw]
    values = [str(item).strip() for item in items if str(item).strip()]
    # PostgreSQL text cannot hold NUL: refuse it here (400) instead of failing in the query (500).
    if any("\x00" in v for v in values):
        raise FilterError("filter values may not contain NUL characters")
    return values


def _get(mapping: Mapping[str, Any], key: str) -> Any:
    getlist = getattr(mapping, "getlist", None)
    if getlist is not None:  # a QueryDict: ?category=a&category=b
        values = getlist(key)
        return values if values else None
    return mapping.get(key)


def _date(raw: Any, name: str) -> dt.date | None:
    values = _values(raw)
    if not values:
        return None
    try:
        return dt.date.fromisoformat(values[0])
    except ValueError:
        raise FilterError(f"{name}: {values[0]!r} is not a date (YYYY-MM-DD)") from None


@dataclass(frozen=True)
class ExportFilters:
    categories: tuple[str, ...] = ()
    splits: tuple[str, ...] = ()
    iterations: tuple[int, ...] = ()
    generators: tuple[str, ...] = ()
    date_from: dt.date | None = None
    date_to: dt.date | None = None
    min_agreement: float | None = None
    sources: tuple[str, ...] = ()
    # Not a filter: raw per-annotator rankings (hashed ids) travel with ranking exports.
    raw: bool = field(default=False)

    @classmethod
    def from_mapping(cls, mapping: Mapping[str, Any]) -> ExportFilters:
        """Parse ``category``, ``split``, ``iteration``, ``generator``, ``date_from``, ``date_to``,
        ``min_agreement``, ``source`` and ``raw``; plural keys (as stored by :meth:`to_json`) work too."""

        def pick(*keys: str) -> Any:
            for key in keys:
                value = _get(mapping, key)
                if value not in (None, "", []):
                    return value
            return None

        splits = tuple(_values(pick("split", "splits")))
        bad = [s for s in splits if s not in SPLITS]
        if bad:
            raise FilterError(f"split: {bad} not in {list(SPLITS)}")
        sources = tuple(_values(pick("source", "sources")))
        bad = [s for s in sources if s not in SOURCES]
        if bad:
            raise FilterError(f"source: {bad} not in {list(SOURCES)}")
        try:
            iterations = tuple(int(v) for v in _values(pick("iteration", "iterations")))
        except ValueError:
            raise FilterError("iteration: give whole numbers, e.g. 0,1") from None
        if any(i < 0 for i in iterations):
            raise FilterError("iteration: must be >= 0")
        min_agreement = None
        raw_min = _values(pick("min_agreement"))
        if raw_min:
            try:
                min_agreement = float(raw_min[0])
            except ValueError:
                raise FilterError(f"min_agreement: {raw_min[0]!r} is not a number") from None
            if not -1.0 <= min_agreement <= 1.0:
                raise FilterError("min_agreement: Kendall's W lies in [0, 1]")
        date_from = _date(pick("date_from"), "date_from")
        date_to = _date(pick("date_to"), "date_to")
        if date_from and date_to and date_from > date_to:
            raise FilterError("date_from is after date_to")
        raw_flag = _values(pick("raw"))
        return cls(
            categories=tuple(_values(pick("category", "categories"))),
            splits=splits,
            iterations=iterations,
            generators=tuple(_values(pick("generator", "generators"))),
            date_from=date_from,
            date_to=date_to,
            min_agreement=min_agreement,
            sources=sources,
            raw=bool(raw_flag) and raw_flag[0].lower() in ("1", "true", "yes", "on"),
        )

    def to_json(self) -> dict[str, Any]:
        """JSON-safe and minimal (empty filters left out), so equal selections store equal JSON."""
        data = asdict(self)
        data["date_from"] = self.date_from.isoformat() if self.date_from else None
        data["date_to"] = self.date_to.isoformat() if self.date_to else None
        return {
            key: list(value) if isinstance(value, tuple) else value
            for key, value in data.items()
            if value not in (None, (), False)
        }
