"""The page's per-pass charts: size waterfall, error on a log axis, latency with its spread.

The series come from the JSON report. Error is `1 - cosine` against the input model; a row is
red only when the pass broke its tolerance (its verification failed or it was rolled back), amber
for a lossy pass's expected loss, grey for a re-association's rounding, and a sliver marked
"exact" at or under float precision. Latency rows are p50 with p10-p90 whiskers, coloured by
the change from the row before only where that change is beyond noise (bench.within_noise).
"""

from __future__ import annotations

import math
from typing import Any, Callable

from graphopt.bench import spread_ms, within_noise
from graphopt.registry import registered_passes
from graphopt.report.svg import error_svg, latency_svg, waterfall_svg

# 1 - cosine at or under this is float rounding: outputs a float32 ulp or two apart (2^-23
# relative) give 1 - cosine near 1e-14; a re-association's rounding lands above it.
ERROR_FLOOR = 1e-12


def charts_section(report: dict[str, Any]) -> str:
    applied = [r for r in report["passes"] if r.get("applied")]
    if not applied:
        return "<h2>Per-pass charts</h2><p>No pass changed the model.</p>"
    charts = [waterfall_svg("weights MB", _series(applied, lambda r: r["size"]["bytes"] / 1e6,
                                                  report["model"]["before"]["bytes"] / 1e6))]
    charts.append(error_svg("error: 1 - cosine vs input (log scale)", error_rows(report), ERROR_FLOOR))
    for provider, base in ((report.get("bench") or {}).get("input") or {}).items():
        if "p50_ms" in base:
            charts.append(latency_svg(f"{provider} ms (ENABLE_ALL): p50, whiskers p10-p90",
                                      latency_rows(report, provider)))
    return "<h2>Per-pass charts</h2><div class=charts>" + "".join(charts) + "</div>"


def _series(applied, value_of: Callable[[dict], Any], start: float) -> list[tuple[str, float]]:
    series, current = [("input", start)], start
    for rec in applied:
        value = value_of(rec)
        if isinstance(value, (int, float)) and math.isfinite(value):
            current = float(value)
        series.append((rec["name"], current))
    return series


def error_rows(report: dict[str, Any]) -> list[tuple[str, float, str, str]]:
    """(pass, 1 - cosine vs input, kind, note) for the input and each applied or rolled-back pass
    that was measured (none are under --verify end/off); a rolled-back pass's row is its rejected
    candidate's error."""
    rows = [("input", 0.0, "base", "reference")]
    for rec in report["passes"]:
        cosine = (((rec.get("verify") or {}).get("vs_input")) or {}).get("cosine")
        if (rec.get("applied") or rec.get("rolled_back")) and isinstance(cosine, (int, float)):
            rows.append((rec["name"], 1.0 - cosine, *_error_kind(rec, 1.0 - cosine)))
    return rows


def _error_kind(rec: dict[str, Any], value: float) -> tuple[str, str]:
    verify = rec.get("verify") or {}
    if rec.get("rolled_back") or verify.get("ok") is False:
        return "bad", "over tolerance: rolled back" if rec.get("rolled_back") else "over tolerance"
    if math.isfinite(value) and value <= ERROR_FLOOR:
        return "exact", ""
    kind = tolerance_kind(rec)
    if kind == "lossy":
        return "lossy", "lossy, within budget"
    return "ok", f"within {kind} tolerance" if kind else "verified"


def tolerance_kind(rec: dict[str, Any]) -> str | None:
    """exact / reassoc / lossy: from the record when it says, else from the registered pass."""
    given = rec.get("tolerance")
    if isinstance(given, dict):
        given = given.get("kind")
    if isinstance(given, str):
        return given
    cls = registered_passes().get(rec.get("name", ""))
    return getattr(getattr(cls, "tolerance", None), "kind", None)


def latency_rows(report: dict[str, Any], provider: str) -> list[tuple[str, tuple, str, str]]:
    """(label, (p10, p50, p90), verdict, note) for the input and each applied pass that was timed;
    verdict against the row before: faster / slower beyond noise, or noise."""
    previous = report["bench"]["input"][provider]
    rows = [("input", spread_ms(previous), "base", "")]
    for rec in report["passes"]:
        timing = ((rec.get("bench") or {}).get(provider) or {}) if rec.get("applied") else {}
        if "p50_ms" not in timing:
            continue
        ratio = previous["p50_ms"] / timing["p50_ms"]
        if within_noise(previous, timing):
            verdict, note = "noise", "≈ within noise"
        else:
            verdict = "faster" if ratio > 1 else "slower"
            note = f"{ratio:.2f}x the speed before"
        rows.append((rec["name"], spread_ms(timing), verdict, note))
        previous = timing
    return rows
