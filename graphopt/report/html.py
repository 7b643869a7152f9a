"""A self-contained HTML page for one run: what each pass did to latency, size and error, and
what decided it.

Built from the JSON report (document.py), so the page and the JSON never disagree. No script,
no external asset, no plotting dependency: charts are inline SVG (charts.py), the per-pass
decisions (skips, kept-float nodes, speed checks, budget fallbacks, calibration) a section of
tables (decisions.py). Latency is shown with its p10-p90 spread, and a difference inside that
spread is called noise, not a speed-up or a slow-down.
"""

from __future__ import annotations

from typing import Any

from graphopt.bench import spread_ms
from graphopt.report.charts import charts_section
from graphopt.report.decisions import decisions_section
from graphopt.report.markup import dict_table, e, fmt, td
from graphopt.report.svg import waterfall_svg
from graphopt.report.table import pass_status, speed_sentence

__all__ = ["dict_table", "render_html", "waterfall_svg"]

STYLE = """
body{font-family:system-ui,sans-serif;margin:2em;color:#222;max-width:1200px}
h1{font-size:1.5em}h2{font-size:1.2em;margin-top:1.6em}h3{font-size:1em;margin:1.2em 0 .3em}
h4{font-size:.9em;margin:.6em 0 .2em}
table{border-collapse:collapse;margin:.4em 0;font-size:.85em}
td,th{border:1px solid #ccc;padding:2px 8px;text-align:left;vertical-align:top}th{background:#f3f3f3}
td.num{text-align:right}table.kv td.num{text-align:left}
dl{margin:.3em 0;font-size:.85em}dt{font-weight:bold}dd{margin:0 0 .4em 1.5em}
.bad{color:#b00}.good{color:#070}.noise,.quiet,.more,.none{color:#777}
.skipped{color:#865}.decision{margin:.3em 0}.status{font-weight:normal;color:#555}
.pass{border-left:3px solid #ddd;padding-left:.8em}
.charts{display:flex;flex-wrap:wrap;gap:1.5em}figure{margin:0}figcaption{font-size:.85em;color:#555}
"""


def render_html(report: dict[str, Any]) -> str:
    """The whole page as one string."""
    model = report["model"]
    title = f"graphopt report: {model.get('input') or 'in-memory model'}"
    parts = [f"<h1>{e(title)}</h1>", _summary_section(report), charts_section(report),
             _passes_table(report), decisions_section(report), _environment_section(report)]
    return ("<!DOCTYPE html><html lang=en><head><meta charset=utf-8>"
            f"<title>{e(title)}</title><style>{STYLE}</style></head><body>"
            + "".join(parts) + "</body></html>")


def _summary_section(report: dict[str, Any]) -> str:
    summary, model = report["summary"], report["model"]
    before, after = model["before"], model["after"]
    rows = [("nodes", before["nodes"], after["nodes"]), ("parameters", before["params"], after["params"]),
            ("weights MB", _mb(before["bytes"]), _mb(after["bytes"]))]
    compared = summary.get("speed_vs_input") or {}
    for provider, ratio in (summary.get("speedup_enable_all") or {}).items():
        if provider in compared:
            base, new = compared[provider]["base_ms"], compared[provider]["new_ms"]
            rows.append((f"{provider} ms p50 (p10-p90), ENABLE_ALL", _spread(base), _spread(new)))
        else:
            rows.append((f"{provider} speed-up (ENABLE_ALL)", "1.00x", f"{ratio:.2f}x"))
    cos = _final_cosine(report)
    if cos is not None:
        rows.append(("cosine vs input (worst output)", "1", fmt(cos, 6)))
    body = "".join(f"<tr><td>{e(n)}</td>{td(str(a))}{td(str(b))}</tr>" for n, a, b in rows)
    speed = "".join(
        f"<p class={'noise' if c['within_noise'] else 'good' if c['ratio'] > 1 else 'bad'}>"
        f"{e(p)}: {e(speed_sentence(c))}</p>" for p, c in compared.items())
    rolled = summary.get("passes_rolled_back") or []
    note = (f"<p class=bad>rolled back: {e(', '.join(rolled))}</p>" if rolled else "")
    return (f"<h2>Summary</h2><p>output: {e(model.get('output') or '(not saved)')}</p>"
            f"<table><tr><th></th><th>before</th><th>after</th></tr>{body}</table>{speed}{note}")


def _final_cosine(report: dict[str, Any]) -> float | None:
    for rec in reversed(report["passes"]):
        vs_input = (rec.get("verify") or {}).get("vs_input") or {}
        if rec.get("applied") and "cosine" in vs_input:
            return vs_input["cosine"]
    return None


def _passes_table(report: dict[str, Any]) -> str:
    providers = list(((report.get("bench") or {}).get("input") or {}))
    head = ["pass", "status", "nodes", "MB", "max_abs", "cosine vs input", "seconds"]
    head += [f"{p} p50 ms (p10-p90)" for p in providers]
    rows = []
    for rec in report["passes"]:
        verify = rec.get("verify") or {}
        cells = [rec["name"], pass_status(rec), rec["size"]["nodes"], _mb(rec["size"]["bytes"]),
                 fmt(verify.get("max_abs")), fmt((verify.get("vs_input") or {}).get("cosine"), 6),
                 f"{rec['seconds']:.2f}"]
        cells += [_timing(((rec.get("bench") or {}).get(p) or {})) for p in providers]
        cls = " class=bad" if rec.get("rolled_back") else ""
        rows.append(f"<tr{cls}>" + "".join(td(str(c)) for c in cells) + "</tr>")
        if rec.get("error"):
            rows.append(f"<tr class=bad><td colspan={len(head)}>{e(rec['error'])}</td></tr>")
    return ("<h2>Passes</h2><table><tr>" + "".join(f"<th>{e(h)}</th>" for h in head) + "</tr>"
            + "".join(rows) + "</table>")


def _timing(entry: dict[str, Any]) -> str:
    if "p50_ms" not in entry:
        return "failed" if "error" in entry else "-"
    return _spread(spread_ms(entry))


def _spread(ms) -> str:
    return f"{ms[1]:.3f} ({ms[0]:.3f}-{ms[2]:.3f})"


def _environment_section(report: dict[str, Any]) -> str:
    env = dict(report.get("environment") or {})
    providers = env.pop("providers", {}) or {}
    rows = [(k, v) for k, v in env.items()]
    rows.append(("benchmarked providers", ", ".join(providers.get("benchmarked") or []) or "(no --bench)"))
    rows += [(f"skipped {name}", why) for name, why in (providers.get("skipped") or {}).items()]
    data = report.get("data") or {}
    rows += [(f"data {k}", v) for k, v in data.items()]
    return ("<h2>Environment</h2><table class=kv>" + "".join(
        f"<tr><td>{e(k)}</td>{td(fmt(v))}</tr>" for k, v in rows) + "</table>")


def _mb(n: int) -> str:
    return f"{n / 1e6:.2f}"
