"""Server-side SVG line charts for the training dashboards (no JavaScript: the CSP allows only ours)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from django.utils.html import escape

from annotation.exporters.charts import PALETTE


def line_chart(
    title: str,
    series: Mapping[str, Sequence[tuple[float, float]]],
    *,
    x_label: str,
    y_label: str,
    markers: Sequence[tuple[float, str]] = (),
    width: int = 560,
    height: int = 260,
) -> str:
    """Lines through (x, y) points, one per series, with a legend and optional vertical markers."""
    left, right, top, bottom = 56, 16, 30, 44
    points = [p for values in series.values() for p in values]
    # The legend goes under the axes, wrapped into rows that fit the width (11 px text, ~6.2 px a
    # character): inside the plot it covered the lines and the markers' labels, and ran past the edge.
    legend: list[tuple[float, int, str, str]] = []  # x, row, colour, name
    x, row = float(left), 0
    for index, name in enumerate(series):
        item_w = 14 + len(name) * 6.2 + 16
        if x + item_w > width - right and x > left:
            x, row = float(left), row + 1
        legend.append((x, row, PALETTE[index % len(PALETTE)], name))
        x += item_w
    legend_h = 16 * (row + 1) if legend else 0
    height += legend_h
    if not points:
        return (
            f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="60" role="img" '
            f'aria-label="{escape(title)}"><title>{escape(title)}</title>'
            f'<text x="8" y="20" font-size="14" font-weight="600">{escape(title)}</text>'
            f'<text x="8" y="44" font-size="12" fill="#5b6674">No data yet.</text></svg>'
        )
    xs = [p[0] for p in points] + [m[0] for m in markers]
    ys = [p[1] for p in points]
    x0, x1 = min(xs), max(xs)
    y0, y1 = min(ys), max(ys)
    if x1 == x0:
        x0, x1 = x0 - 1, x1 + 1
    if y1 == y0:
        y0, y1 = y0 - 0.5, y1 + 0.5
    margin = (y1 - y0) * 0.08
    y0, y1 = y0 - margin, y1 + margin
    plot_w, plot_h = width - left - right, height - top - bottom - legend_h

    def sx(x: float) -> float:
        return left + (x - x0) / (x1 - x0) * plot_w

    def sy(y: float) -> float:
        return top + plot_h - (y - y0) / (y1 - y0) * plot_h

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
        f'aria-label="{escape(title)}"><title>{escape(title)}</title>',
        f'<text x="8" y="18" font-size="14" font-weight="600">{escape(title)}</text>',
        f'<line x1="{left}" y1="{top + plot_h}" x2="{left + plot_w}" y2="{top + plot_h}" stroke="#9aa5b4"/>',
        f'<line x1="{left}" y1="{top}" x2="{left}" y2="{top + plot_h}" stroke="#9aa5b4"/>',
    ]
    for value in (y0 + margin, (y0 + y1) / 2, y1 - margin):
        parts.append(
            f'<text x="{left - 6}" y="{sy(value) + 4:.1f}" font-size="10" text-anchor="end">{value:.3g}</text>'
        )
    for value in (x0, (x0 + x1) / 2, x1):
        parts.append(
            f'<text x="{sx(value):.1f}" y="{top + plot_h + 14}" font-size="10" text-anchor="middle">{value:.4g}</text>'
        )
    parts.append(
        f'<text x="{left + plot_w / 2}" y="{top + plot_h + 32}" font-size="11" text-anchor="middle">'
        f"{escape(x_label)}</text>"
    )
    parts.append(
        f'<text x="12" y="{top + plot_h / 2}" font-size="11" transform="rotate(-90 12 {top + plot_h / 2})" '
        f'text-anchor="middle">{escape(y_label)}</text>'
    )
    for x, label in markers:
        parts.append(
            f'<line x1="{sx(x):.1f}" y1="{top}" x2="{sx(x):.1f}" y2="{top + plot_h}" stroke="#a4161a" '
            f'stroke-dasharray="4 3"/><text x="{sx(x) + 3:.1f}" y="{top + 10}" font-size="10" '
            f'fill="#a4161a">{escape(label)}</text>'
        )
    for index, values in enumerate(series.values()):
        color = PALETTE[index % len(PALETTE)]
        ordered = sorted(values)
        path = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in ordered)
        parts.append(f'<polyline fill="none" stroke="{color}" stroke-width="2" points="{path}"/>')
        for x, y in ordered:
            parts.append(f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="2.5" fill="{color}"/>')
    legend_top = top + plot_h + bottom - 4
    for lx, lrow, color, name in legend:
        y = legend_top + lrow * 16
        parts.append(
            f'<rect x="{lx:.1f}" y="{y}" width="10" height="10" fill="{color}"/>'
            f'<text x="{lx + 14:.1f}" y="{y + 9}" font-size="11">{escape(name)}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)
