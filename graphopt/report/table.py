"""The run report as text for people: the per-pass table and the closing summary lines."""

from __future__ import annotations

import math
from typing import Any


def format_table(report: dict[str, Any]) -> str:
    """One row per pass (plus the input model): what changed in size, error and speed.

    max_abs is the pass's own change (vs the model before it); cosine is against the input."""
    providers = list((report.get("bench") or {}).get("input") or {})
    header = (["pass", "status", "nodes", "MB", "max_abs", "cos vs input"]
              + [f"{p} p50 ms" for p in providers] + ["sec"])
    before = report["model"]["before"]
    rows = [["(input)", "", str(before["nodes"]), _mb(before["bytes"]), "", ""]
            + [_ms(report["bench"]["input"], p) for p in providers] + [""]]
    for rec in report["passes"]:
        status = pass_status(rec)
        verify = rec["verify"] or {}
        rows.append([rec["name"], status, str(rec["size"]["nodes"]), _mb(rec["size"]["bytes"]),
                     _num(verify.get("max_abs")), _num(verify.get("vs_input", {}).get("cosine"), 6)]
                    + [_ms(rec["bench"], p) for p in providers] + [f"{rec['seconds']:.2f}"])
    lines = text_table(header, rows)
    for rec in report["passes"]:
        if rec["error"]:
            lines.append(f"{rec['name']}: {rec['error']}")
        elif rec.get("skipped"):
            lines.append(f"{rec['name']}: skipped: {rec['skipped']}")
        elif not rec["applied"] and (why := not_applied_reason(rec.get("stats") or {})):
            lines.append(f"{rec['name']}: not applied: {why}")  # e.g. int8 slower here, nothing to quantize
    return "\n".join(lines)


def not_applied_reason(stats: dict[str, Any]) -> str | None:
    """Why a pass that ran changed nothing, as its stats say it (`skipped`, `reason`, `not_applied`)."""
    for key in ("skipped", "reason", "not_applied"):
        if isinstance(stats.get(key), str) and stats[key]:
            return stats[key]
    return None


def pass_status(rec: dict[str, Any]) -> str:
    if rec.get("skipped"):
        return "skipped"
    return "applied" if rec["applied"] else ("ROLLED BACK" if rec["rolled_back"] else "no change")


def format_summary(report: dict[str, Any]) -> str:
    """The closing lines people read: size, speed and accuracy before -> after."""
    summary = report["summary"]
    lines = [f"nodes {summary['nodes'][0]} -> {summary['nodes'][1]}, "
             f"params {summary['params'][0]:,} -> {summary['params'][1]:,}, "
             f"weights {_mb(summary['bytes'][0])} -> {_mb(summary['bytes'][1])} MB"]
    compared = summary.get("speed_vs_input") or {}
    for provider, ratio in (summary.get("speedup_enable_all") or {}).items():
        if provider in compared:
            lines.append(f"{provider}: {speed_sentence(compared[provider])} (ORT_ENABLE_ALL)")
        else:  # a report written before spreads were recorded
            lines.append(f"{provider}: {ratio:.2f}x the input model's speed (ORT_ENABLE_ALL p50)")
    cosine = worst_cosine(report)
    if cosine is not None:
        lines.append(f"worst cosine vs input: {cosine:.6f}")
    rolled = summary.get("passes_rolled_back") or []
    lines.append(f"passes applied {len(summary['passes_applied'])}, rolled back {len(rolled)}"
                 + (f" ({', '.join(rolled)})" if rolled else ""))
    data = report.get("data") or {}  # where the feeds came from, and what was not checked
    lines += ([data["summary"]] if data.get("summary") else []) + [f"WARNING: {w}" for w in data.get("warnings", [])]
    if summary.get("verify") == "off":
        lines.append("WARNING: --verify off: no pass was checked against the input model")
    return "\n".join(lines)


def worst_cosine(report: dict[str, Any]) -> float | None:
    """The final model's cosine against the input model (the last applied pass's, measured on the
    whole chain; the worst output's), or None when no applied pass was compared."""
    cosines = [((r.get("verify") or {}).get("vs_input") or {}).get("cosine")
               for r in report["passes"] if r["applied"]]
    cosines = [c for c in cosines if isinstance(c, float)]
    return cosines[-1] if cosines else None


def text_table(header: list[str], rows: list[list[str]]) -> list[str]:
    """Left-aligned columns two spaces apart, a dashed rule under the header."""
    widths = [max(len(r[i]) for r in rows + [header]) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(header, widths))]
    lines.append("  ".join("-" * w for w in widths))
    return lines + ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows]


def speed_sentence(compared: dict[str, Any]) -> str:
    """The final model's speed against the input's (a bench.compare_timings dict): "same speed"
    when the p10-p90 ranges overlap, the p50 ratio otherwise; both spreads either way."""
    (b10, b50, b90), (n10, n50, n90) = compared["base_ms"], compared["new_ms"]
    spread = f"p10-p90 {b10:.3f}-{b90:.3f} -> {n10:.3f}-{n90:.3f} ms"
    if compared["within_noise"]:
        return f"same speed as the input model (within noise: {spread})"
    return f"{compared['ratio']:.2f}x the input model's speed (p50 {b50:.3f} -> {n50:.3f} ms, {spread})"


def _mb(n: int) -> str:
    return f"{n / 1e6:.2f}"


def _ms(bench: dict | None, provider: str) -> str:
    entry = (bench or {}).get(provider, {})
    return f"{entry['p50_ms']:.3f}" if "p50_ms" in entry else ("failed" if "error" in entry else "-")


def _num(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return f"{value:.{digits}g}" if isinstance(value, float) else str(value)
