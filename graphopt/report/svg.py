"""Small inline-SVG charts (no plotting dependency): waterfalls for the run report, bars for
benchmark pages. Every label is escaped; the output is a standalone <figure>.

Two charts exist so that a reader is not misled by scale: `latency_svg` draws each median with
its p10-p90 whisker and greys out a change that stays within that spread (timing noise), and
`error_svg` puts error on a log axis with a floor, so an error at float precision (1e-15) is a
sliver marked "exact" instead of a full-width bar; only a row its caller marks "bad" is red."""

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
    return f"<figure>{_svg(title, width, height, items)}</figure>"


LATENCY_COLORS = {"base": "#888", "faster": "#2a2", "slower": "#c33", "noise": "#bbb"}


def latency_svg(title: str, rows: list[tuple[str, tuple[float, float, float], str, str]],
                width: int = 560) -> str:
    """Bars to each p50 with a p10-p90 whisker: rows `(label, (p10, p50, p90), verdict, note)`,
    verdict one of LATENCY_COLORS ("noise": the change is within the spread)."""
    top = max([hi for _, (_, _, hi), _, _ in rows] + [1e-12]) * 1.1
    row, left, plot = 18, 170, width - 170 - 170
    height = row * len(rows) + 24
    x = lambda v: left + plot * max(v, 0.0) / top  # noqa: E731
    items = [f"<text x=4 y=14 font-size=12 font-weight=bold>{esc(title)}</text>"]
    for i, (label, (lo, mid, hi), verdict, note) in enumerate(rows):
        y, color = 22 + i * row, LATENCY_COLORS.get(verdict, "#888")
        cy, text = y + 2 + (row - 5) / 2, f"{fmt(mid, 3)} ms {note}".strip()
        items.append(
            f"<text x=4 y={y + 12} font-size=11>{esc(label[:24])}</text>"
            f"<rect class='{esc(verdict)}' x={left} y={y + 2} width={max(x(mid) - left, 1.0):.1f} "
            f"height={row - 5} fill='{color}'><title>{esc(label)}: p50 {fmt(mid, 3)} ms, "
            f"p10-p90 {fmt(lo, 3)}-{fmt(hi, 3)} ms</title></rect>"
            f"<path d='M{x(lo):.1f} {cy:.1f}H{x(hi):.1f}M{x(lo):.1f} {cy - 4:.1f}v8M{x(hi):.1f} "
            f"{cy - 4:.1f}v8' stroke='#333' fill='none'/>"
            f"<text x={max(x(hi), x(mid)) + 4:.1f} y={y + 12} font-size=10>{esc(text)}</text>")
    return f"<figure>{_svg(title, width, height, items)}</figure>"


ERROR_COLORS = {"base": "#888", "exact": "#ccc", "ok": "#999", "lossy": "#d90", "bad": "#c33"}


def error_svg(title: str, rows: list[tuple[str, float, str, str]], floor: float = 1e-12,
              width: int = 560) -> str:
    """Errors on a log axis from `floor` up: rows `(label, value, kind, note)`, kind one of
    ERROR_COLORS. A value at or under the floor is drawn as a sliver, "exact within float
    precision"; the caller decides which rows are "bad" (over the pass's tolerance)."""
    decades = range(round(math.log10(floor)), 1 + max(0, math.ceil(math.log10(max(
        [v for _, v, _, _ in rows if math.isfinite(v)] + [floor])))))
    lo, hi = decades[0], decades[-1]
    row, left, plot = 18, 170, width - 170 - 190
    height = row * len(rows) + 40
    x = lambda v: left + plot * (math.log10(max(v, floor)) - lo) / (hi - lo)  # noqa: E731
    items = [f"<text x=4 y=14 font-size=12 font-weight=bold>{esc(title)}</text>"]
    for d in decades[::2]:
        items.append(f"<line x1={x(10.0 ** d):.1f} x2={x(10.0 ** d):.1f} y1=20 y2={height - 14} "
                     f"stroke='#eee'/><text x={x(10.0 ** d) - 8:.1f} y={height - 3} font-size=9>1e{d}</text>")
    for i, (label, value, kind, note) in enumerate(rows):
        y, exact = 22 + i * row, math.isfinite(value) and value <= floor
        shown = "" if kind == "base" else "exact within float precision" if exact else fmt(value, 2)
        text = f"{shown} {note}".strip()
        end = x(value) if math.isfinite(value) else left + plot
        items.append(f"<text x=4 y={y + 12} font-size=11>{esc(label[:24])}</text>"
                     f"<rect class='{esc(kind)}' x={left} y={y + 2} width={max(end - left, 1.0):.1f} "
                     f"height={row - 5} fill='{ERROR_COLORS.get(kind, '#999')}'>"
                     f"<title>{esc(label)}: {fmt(value, 3)}</title></rect>"
                     f"<text x={max(end, left) + 4:.1f} y={y + 12} font-size=10>{esc(text)}</text>")
    return f"<figure>{_svg(title, width, height, items)}</figure>"


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
    return _svg(title, width, height, items)


def _svg(title: str, width: int, height: float, items: list[str]) -> str:
    return (f"<svg xmlns='http://www.w3.org/2000/svg' width={width} height={height} role=img "
            f"aria-label='{esc(title)}'>" + "".join(items) + "</svg>")


def fmt(value: Any, digits: int = 4) -> str:
    if isinstance(value, float):
        return str(value) if not math.isfinite(value) else f"{value:.{digits}g}"
    return str(value)


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)
