"""Server-side SVG bar charts for the research page.

Plain SVG strings: no JavaScript (the CSP allows only our own scripts), no matplotlib in the web process,
and presentation attributes rather than inline styles. Every label is escaped.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from django.utils.html import escape

PALETTE = ("#2458d3", "#e07a1f", "#2f9e61", "#b23a48", "#7b4fc9", "#6b7a8f", "#c9a227", "#1f8a9e")


@dataclass(frozen=True)
class Bar:
    label: str
    value: float
    text: str  # what is printed at the end of the bar


def horizontal_bars(
    title: str, bars: Sequence[Bar], *, max_value: float | None = None, width: int = 460
) -> str:
    """A titled horizontal bar chart, one row per bar, scaled to ``max_value`` (default: the largest)."""
    row_h, top, pad = 22, 28, 8
    # The label column fits the longest label (12 px text, ~6.6 px a character) up to a cap; a longer label
    # is shortened with an ellipsis (the bar's tooltip keeps it whole), so nothing is cut at the edge.
    char_w, max_label_w = 6.6, 240
    longest = max((len(b.label) for b in bars), default=0)
    label_w = int(min(max(90, longest * char_w + 12), max_label_w))
    fits = int((label_w - 12) / char_w)
    width = max(width, label_w + 270)
    plot_w = width - label_w - 70
    height = top + row_h * max(len(bars), 1) + pad
    scale = max_value if max_value else max((b.value for b in bars), default=0.0) or 1.0
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" role="img" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" aria-label="{escape(title)}">',
        f"<title>{escape(title)}</title>",
        f'<text x="0" y="16" font-size="14" font-weight="600" fill="#1d232b">{escape(title)}</text>',
    ]
    if not bars:
        parts.append(f'<text x="0" y="{top + 14}" font-size="12" fill="#5b6674">no data yet</text>')
    for i, bar in enumerate(bars):
        y = top + i * row_h
        length = max(0.0, min(1.0, bar.value / scale)) * plot_w
        colour = PALETTE[i % len(PALETTE)]
        parts.append(
            f'<text x="{label_w - 6}" y="{y + 14}" font-size="12" text-anchor="end" fill="#1d232b">'
            f"{escape(_shorten(bar.label, fits))}</text>"
            f'<rect x="{label_w}" y="{y + 3}" width="{length:.1f}" height="{row_h - 8}" fill="{colour}">'
            f"<title>{escape(bar.label)}: {escape(bar.text)}</title></rect>"
            f'<text x="{label_w + length + 4:.1f}" y="{y + 14}" font-size="12" fill="#1d232b">'
            f"{escape(bar.text)}</text>"
        )
    parts.append("</svg>")
    return "".join(parts)


def _shorten(label: str, chars: int) -> str:
    return label if len(label) <= chars else label[: max(1, chars - 1)] + "…"
