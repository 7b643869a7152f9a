"""Small inline-SVG charts (no plotting dependency): waterfalls for the run report, bars for
benchmark pages. Every label is escaped; the output is a standalone <figure>."""

from __future__ import annotations

import html
import math
from typing import Any


def waterfall_svg(title: str, series: list[tuple[str, float]], width: int = 520) -> str:
    """Floating bars from each step's previous value to its new one (lower is better)."""
    values = [v for _, v in series]
    top = max(values + [1e-12]) * 1.1
    row, left, plot = 18, 170, width - 170 - 70
    height = row * len(series) + 24
    x = lambda v: left + plot * max(v, 0.0) / top  # noqa: E731
    items = [f"<text x=4 y=14 font-size=12 font-weight=bold>{esc(title)}</text>"]
    previous = None
    for i, (label, value) in enumerate(series):
        y = 22 + i * row
        lo, hi = (0.0, value) if previous is None else sorted((previous, value))
        color = "#888" if previous is None else ("#2a2" if value < previous else
                                                 "#c33" if value > previous else "#bbb")
        w = max(x(hi) - x(lo), 1.0)
        items.append(f"<text x=4 y={y + 12} font-size=11>{esc(label[:24])}</text>"
                     f"<rect x={x(lo):.1f} y={y + 2} width={w:.1f} height={row - 5} fill='{color}'>"
                     f"<title>{esc(label)}: {fmt(value)}</title></rect>"
                     f"<text x={x(hi) + 4:.1f} y={y + 12} font-size=10>{esc(fmt(value))}</text>")
        previous = value
    return (f"<figure><svg xmlns='http://www.w3.org/2000/svg' width={width} height={height} "
            f"role=img aria-label='{esc(title)}'>" + "".join(items) + "</svg></figure>")



def bars_svg(title: str, rows: list[tuple[str, float, str]], width: int = 560, ref: float | None = None) -> str:
    """Horizontal bars `(label, value, note)`; an optional dashed reference line at `ref`."""
    finite = [v for _, v, _ in rows if math.isfinite(v)]
    top = max(finite + [ref or 0.0, 1e-12]) * 1.15
    row, left, plot = 18, 190, width - 190 - 150
    height = row * len(rows) + 26
    x = lambda v: left + plot * max(v, 0.0) / top  # noqa: E731
    items = [f"<text x=4 y=14 font-size=12 font-weight=bold>{esc(title)}</text>"]
    for i, (label, value, note) in enumerate(rows):
        y = 22 + i * row
        text = f"{fmt(value, 3)} {note}".strip() if math.isfinite(value) else note or "failed"
        width_px = max(x(value) - left, 1.0) if math.isfinite(value) else 0
        items.append(f"<text x=4 y={y + 12} font-size=11>{esc(label[:28])}</text>"
                     f"<rect x={left} y={y + 2} width={width_px:.1f} height={row - 5} fill='#47a'/>"
                     f"<text x={left + width_px + 4:.1f} y={y + 12} font-size=10>{esc(text)}</text>")
    if ref is not None:
        items.append(f"<line x1={x(ref):.1f} x2={x(ref):.1f} y1=18 y2={height} stroke='#c33' "
                     "stroke-dasharray='4 3'/>")
    return (f"<svg xmlns='http://www.w3.org/2000/svg' width={width} height={height} role=img "
            f"aria-label='{esc(title)}'>" + "".join(items) + "</svg>")


def fmt(value: Any, digits: int = 4) -> str:
    if isinstance(value, float):
        return str(value) if not math.isfinite(value) else f"{value:.{digits}g}"
    return str(value)


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)
