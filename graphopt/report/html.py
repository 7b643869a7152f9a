"""A self-contained HTML page for one run: what each pass did to latency, size and error.

Built from the JSON report (report.py), so the page and the JSON never disagree. Charts are
inline SVG waterfalls (no script, no external asset, no plotting dependency): each step is a
bar floating from the value before the pass to the value after it, green when it improved,
red when it got worse. Per-layer tables come from each pass's `stats`: every list of dicts
(quantization fallbacks, SVD ranks, pruned channels, ...) becomes a table, scalars a list.
"""

from __future__ import annotations

import html
import math
from typing import Any, Callable

from graphopt.report.table import pass_status
from graphopt.report.svg import waterfall_svg

STYLE = """
body{font-family:system-ui,sans-serif;margin:2em;color:#222;max-width:1200px}
h1{font-size:1.5em}h2{font-size:1.2em;margin-top:1.6em}h3{font-size:1em}
table{border-collapse:collapse;margin:.5em 0;font-size:.85em}
td,th{border:1px solid #ccc;padding:2px 8px;text-align:right}th{background:#f3f3f3}
td:first-child,th:first-child{text-align:left}
.bad{color:#b00}.good{color:#070}.charts{display:flex;flex-wrap:wrap;gap:1.5em}
figure{margin:0}figcaption{font-size:.85em;color:#555}
"""


def render_html(report: dict[str, Any]) -> str:
    """The whole page as one string."""
    model = report["model"]
    title = f"graphopt report: {model.get('input') or 'in-memory model'}"
    parts = [f"<h1>{_e(title)}</h1>", _summary_section(report), _charts_section(report),
             _passes_table(report), _layer_sections(report), _environment_section(report)]
    return ("<!DOCTYPE html><html lang=en><head><meta charset=utf-8>"
            f"<title>{_e(title)}</title><style>{STYLE}</style></head><body>"
            + "".join(parts) + "</body></html>")


def _summary_section(report: dict[str, Any]) -> str:
    summary, model = report["summary"], report["model"]
    before, after = model["before"], model["after"]
    rows = [("nodes", before["nodes"], after["nodes"]), ("parameters", before["params"], after["params"]),
            ("weights MB", _mb(before["bytes"]), _mb(after["bytes"]))]
    for provider, ratio in (summary.get("speedup_enable_all") or {}).items():
        rows.append((f"{provider} speed-up (ENABLE_ALL)", "1.00x", f"{ratio:.2f}x"))
    cos = _final_cosine(report)
    if cos is not None:
        rows.append(("cosine vs input (worst output)", "1", _fmt(cos, 6)))
    body = "".join(f"<tr><td>{_e(n)}</td><td>{_e(a)}</td><td>{_e(b)}</td></tr>" for n, a, b in rows)
    rolled = summary.get("passes_rolled_back") or []
    note = (f"<p class=bad>rolled back: {_e(', '.join(rolled))}</p>" if rolled else "")
    return (f"<h2>Summary</h2><p>output: {_e(model.get('output') or '(not saved)')}</p>"
            f"<table><tr><th></th><th>before</th><th>after</th></tr>{body}</table>{note}")


def _final_cosine(report: dict[str, Any]) -> float | None:
    for rec in reversed(report["passes"]):
        vs_input = (rec.get("verify") or {}).get("vs_input") or {}
        if rec.get("applied") and "cosine" in vs_input:
            return vs_input["cosine"]
    return None


def _charts_section(report: dict[str, Any]) -> str:
    applied = [r for r in report["passes"] if r.get("applied")]
    if not applied:
        return "<h2>Per-pass waterfall</h2><p>No pass changed the model.</p>"
    charts = [waterfall_svg("weights MB", _series(report, applied, lambda r: _mb_f(r["size"]["bytes"]),
                                                  _mb_f(report["model"]["before"]["bytes"])))]
    charts.append(waterfall_svg("error: 1 - cosine vs input", _series(
        report, applied, lambda r: 1 - ((r.get("verify") or {}).get("vs_input") or {}).get("cosine", 1), 0.0)))
    for provider, base in ((report.get("bench") or {}).get("input") or {}).items():
        if "p50_ms" in base:
            charts.append(waterfall_svg(f"{provider} p50 ms (ENABLE_ALL)", _series(
                report, applied, lambda r, p=provider: ((r.get("bench") or {}).get(p) or {}).get("p50_ms"),
                base["p50_ms"])))
    return "<h2>Per-pass waterfall</h2><div class=charts>" + "".join(charts) + "</div>"


def _series(report, applied, value_of: Callable[[dict], Any], start: float) -> list[tuple[str, float]]:
    series, current = [("input", start)], start
    for rec in applied:
        value = value_of(rec)
        if isinstance(value, (int, float)) and math.isfinite(value):
            current = float(value)
        series.append((rec["name"], current))
    return series


def _passes_table(report: dict[str, Any]) -> str:
    providers = list(((report.get("bench") or {}).get("input") or {}))
    head = ["pass", "status", "nodes", "MB", "max_abs", "cosine vs input", "seconds"]
    head += [f"{p} p50 ms" for p in providers]
    rows = []
    for rec in report["passes"]:
        verify = rec.get("verify") or {}
        status = pass_status(rec)
        cells = [rec["name"], status, rec["size"]["nodes"], _mb(rec["size"]["bytes"]),
                 _fmt(verify.get("max_abs")), _fmt((verify.get("vs_input") or {}).get("cosine"), 6),
                 f"{rec['seconds']:.2f}"]
        cells += [_fmt(((rec.get("bench") or {}).get(p) or {}).get("p50_ms")) for p in providers]
        cls = " class=bad" if rec.get("rolled_back") else ""
        rows.append(f"<tr{cls}>" + "".join(f"<td>{_e(c)}</td>" for c in cells) + "</tr>")
        if rec.get("error"):
            rows.append(f"<tr class=bad><td colspan={len(head)}>{_e(rec['error'])}</td></tr>")
    return ("<h2>Passes</h2><table><tr>" + "".join(f"<th>{_e(h)}</th>" for h in head) + "</tr>"
            + "".join(rows) + "</table>")


def _layer_sections(report: dict[str, Any]) -> str:
    out = []
    for rec in report["passes"]:
        stats = rec.get("stats") or {}
        tables = [(k, v) for k, v in stats.items() if _is_table(v)]
        scalars = [(k, v) for k, v in stats.items() if not isinstance(v, (list, dict))]
        if not tables and not scalars:
            continue
        out.append(f"<h3>{_e(rec['name'])}</h3>")
        if scalars:
            out.append("<table>" + "".join(f"<tr><td>{_e(k)}</td><td>{_e(_fmt(v))}</td></tr>"
                                           for k, v in scalars) + "</table>")
        out += [f"<p>{_e(key)}</p>" + dict_table(rows) for key, rows in tables]
    return ("<h2>Per-layer details</h2>" + "".join(out)) if out else ""


def _is_table(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, dict) for v in value)


def dict_table(rows: list[dict[str, Any]], limit: int = 500) -> str:
    """A list of dicts as an HTML table (union of keys, first-seen order)."""
    keys = list(dict.fromkeys(k for row in rows for k in row))
    body = "".join("<tr>" + "".join(f"<td>{_e(_fmt(row.get(k)))}</td>" for k in keys) + "</tr>"
                   for row in rows[:limit])
    more = f"<p>({len(rows) - limit} more rows in the JSON report)</p>" if len(rows) > limit else ""
    return "<table><tr>" + "".join(f"<th>{_e(k)}</th>" for k in keys) + "</tr>" + body + "</table>" + more


def _environment_section(report: dict[str, Any]) -> str:
    env = dict(report.get("environment") or {})
    providers = env.pop("providers", {}) or {}
    rows = [(k, v) for k, v in env.items()]
    rows.append(("benchmarked providers", ", ".join(providers.get("benchmarked") or []) or "(no --bench)"))
    rows += [(f"skipped {name}", why) for name, why in (providers.get("skipped") or {}).items()]
    data = report.get("data") or {}
    rows += [(f"data {k}", v) for k, v in data.items()]
    return ("<h2>Environment</h2><table>" + "".join(
        f"<tr><td>{_e(k)}</td><td>{_e(_fmt(v))}</td></tr>" for k, v in rows) + "</table>")


def _mb(n: int) -> str:
    return f"{n / 1e6:.2f}"


def _mb_f(n: int) -> float:
    return n / 1e6


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return str(value) if not math.isfinite(value) else f"{value:.{digits}g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(_fmt(v, digits) for v in value)
    return str(value)


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)
