"""What a research export selects: parsed from query strings, forms, command options or stored job JSON."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

SPLITS = ("train", "val", "test")
SOURCES = ("human", "model")
# RankingTask.iteration is a PostgreSQL integer: a larger number would fail in the query (500), not match.
ITERATION_MAX = 2**31 - 1
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")
_STRICT_KEYS = (
    *("split", "splits", "source", "sources", "iteration", "iterations"),
    *("date_from", "date_to", "min_agreement", "raw"),
)
# The keys a JSON body of filters may hold (singular as in query strings, plural as stored by to_json), and
# the JSON type of their values (a list of them also does, except for the scalars).
_JSON_KEYS: dict[str, tuple[str, type | tuple[type, ...]]] = {
    "category": ("categories", str),
    "split": ("splits", str),
    "iteration": ("iterations", int),
    "generator": ("generators", str),
    "source": ("sources", str),
    "date_from": ("", str),
    "date_to": ("", str),
    "min_agreement": ("", (int, float)),
    "raw": ("", bool),
}


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
    def from_mapping(cls, mapping: Mapping[str, Any], strict: bool = False) -> ExportFilters:
        """Parse ``category``, ``split``, ``iteration``, ``generator``, ``date_from``, ``date_to``,
        ``min_agreement``, ``source`` and ``raw``; plural keys (as stored by :meth:`to_json`) work too.

        ``strict`` (the API): a typed filter given empty (``?date_to=``) or as a comma list (``split=a,b``;
        repeat the parameter instead) is refused, as the OpenAPI schema says; forms leave fields empty.
        """
        if strict:
            for key in _STRICT_KEYS:
                given = _get(mapping, key)
                if given is None:
                    continue
                for item in given if isinstance(given, list | tuple) else [given]:
                    if isinstance(item, str) and (not item.strip() or "," in item):
                        raise FilterError(f"{key}: {item[:40]!r} is not one value (empty or a comma list)")

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
        if any(not 0 <= i <= ITERATION_MAX for i in iterations):
            raise FilterError(f"iteration: must be between 0 and {ITERATION_MAX}")
        min_agreement = None
        raw_min = _values(pick("min_agreement"))
        if raw_min:
            try:
                min_agreement = float(raw_min[0])
            except ValueError:
                raise FilterError(f"min_agreement: {raw_min[0]!r} is not a number") from None
            if not -1.0 <= min_agreement <= 1.0:
                raise FilterError("min_agreement: Kendall's W lies in [0, 1]")
        # date_from after date_to is not an error: the range is empty and selects nothing.
        date_from = _date(pick("date_from"), "date_from")
        date_to = _date(pick("date_to"), "date_to")
        raw_flag = _values(pick("raw"))
        if raw_flag and raw_flag[0].lower() not in (*_TRUE, *_FALSE):
            raise FilterError(f"raw: {raw_flag[0][:20]!r} is not a boolean (true/false)")
        return cls(
            categories=tuple(_values(pick("category", "categories"))),
            splits=splits,
            iterations=iterations,
            generators=tuple(_values(pick("generator", "generators"))),
            date_from=date_from,
            date_to=date_to,
            min_agreement=min_agreement,
            sources=sources,
            raw=bool(raw_flag) and raw_flag[0].lower() in _TRUE,
        )

    @classmethod
    def from_json_body(cls, body: Any) -> ExportFilters:
        """Filters sent as a JSON object (POST /api/snapshots/, the filters of POST /api/exports/): typed
        as the OpenAPI schema says (`json_schema`), unknown keys refused, so what the schema calls invalid
        is refused and what it calls valid is accepted."""
        if not isinstance(body, dict):
            raise FilterError(f"the filters must be a JSON object, not {type(body).__name__}")
        names = {alias: key for key, (plural, _) in _JSON_KEYS.items() for alias in (key, plural) if alias}
        unknown = sorted(str(k)[:40] for k in body if k not in names)
        if unknown:
            raise FilterError(f"unknown filter(s) {unknown}; known: {sorted(_JSON_KEYS)}")
        for key, value in body.items():
            expected = _JSON_KEYS[names[key]][1]
            many = names[key] in ("category", "split", "iteration", "generator", "source")
            items = value if many and isinstance(value, list) else [value]
            if value is None:
                raise FilterError(f"{key}: null is not a filter value (leave the key out)")
            for item in items:
                if isinstance(item, bool) and expected is not bool or not isinstance(item, expected):
                    raise FilterError(f"{key}: {item!r} has the wrong type")
                if names[key] in ("split", "source"):
                    allowed = SPLITS if names[key] == "split" else SOURCES
                    if item not in allowed:
                        raise FilterError(f"{key}: {item!r} not in {list(allowed)}")
        return cls.from_mapping(
            {k: ("true" if v else "false") if isinstance(v, bool) else v for k, v in body.items()},
            strict=True,
        )

    @staticmethod
    def json_schema() -> dict[str, Any]:
        """The OpenAPI schema of a JSON object of filters (what `from_json_body` accepts)."""
        text = {"type": "string", "pattern": "^[^\\x00]*$"}

        def one_or_many(item: dict[str, Any]) -> dict[str, Any]:
            return {"oneOf": [item, {"type": "array", "items": item}]}

        return {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "category": one_or_many(text),
                "split": one_or_many({"type": "string", "enum": list(SPLITS)}),
                "iteration": one_or_many({"type": "integer", "minimum": 0, "maximum": ITERATION_MAX}),
                "generator": one_or_many(text),
                "source": one_or_many({"type": "string", "enum": list(SOURCES)}),
                "date_from": {"type": "string", "format": "date"},
                "date_to": {"type": "string", "format": "date"},
                "min_agreement": {"type": "number", "minimum": -1, "maximum": 1},
                "raw": {"type": "boolean"},
            },
        }

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
