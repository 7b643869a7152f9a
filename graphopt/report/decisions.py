"""The page's "Decisions" section: per pass, what it decided and what decided it.

A pass's `stats` hold its decisions: what it skipped and why, what it kept float and why, which
variant its speed check timed fastest, which nodes the accuracy budget put back and what each one
measured, how it calibrated. The section renders every stat of every pass (markup.render_value,
by shape), with the decision-bearing keys first and a sentence for the ones whose shape is known
(`speed`, `budget`, `kept_float`, `calibration`); a skipped pass shows its reason, a rolled-back
pass its error. Passes that changed nothing and have nothing to say share one line at the end.
"""

from __future__ import annotations

from typing import Any, Callable

from graphopt.report.markup import LIMIT, dict_table, e, fmt, is_empty, is_scalar, pairs_table, render_value
from graphopt.report.table import pass_status

FIRST = ("skipped", "reason", "speed", "budget", "kept_float", "refused", "calibration")


def decisions_section(report: dict[str, Any]) -> str:
    blocks, quiet = [], []
    for rec in report["passes"]:
        block = pass_decisions(rec)
        if block:
            blocks.append(block)
        else:
            quiet.append(rec["name"])
    note = (f"<p class=quiet>No change and nothing to report: {e(', '.join(quiet))}</p>" if quiet else "")
    return ("<section id=decisions><h2>Decisions</h2><p>What each pass decided and why; the JSON "
            "report holds every row.</p>" + "".join(blocks) + note + "</section>")


def pass_decisions(rec: dict[str, Any]) -> str:
    """One pass's block, or "" when it changed nothing and reported nothing."""
    stats = dict(rec.get("stats") or {})
    status, lines = pass_status(rec), []
    if rec.get("skipped"):
        lines.append(f"<p class=skipped>skipped: {e(rec['skipped'])}</p>")
        if stats.get("skipped") == rec["skipped"]:
            stats.pop("skipped")
    if rec.get("rolled_back") or rec.get("error"):
        lines.append(f"<p class=bad>{'rolled back' if rec.get('rolled_back') else 'error'}: "
                     f"{e(rec.get('error') or 'verification failed')}</p>")
    if not lines and not rec.get("applied") and all(is_empty(v) for v in stats.values()):
        return ""
    shown = {k: v for k, v in stats.items() if not is_empty(v) or (k in SPECIAL and v is not None)}
    return (f"<div class=pass><h3>{e(rec['name'])} <span class=status>{e(status)}</span></h3>"
            + "".join(lines) + stats_html(shown) + "</div>")


def stats_html(stats: dict[str, Any]) -> str:
    """A pass's own reasons first, then its scalars in one table, then the decision keys (each
    with its sentence where the shape is known), then every other value by shape."""
    keys = [k for k in FIRST if k in stats] + [k for k in stats if k not in FIRST]
    reasons, out, scalars = [], [], []
    for key in keys:
        value = stats[key]
        special = SPECIAL.get(key)
        rendered = special(value) if special else None
        if rendered is not None:
            out.append(f"<div class=stat data-key='{e(key)}'>{rendered}</div>")
        elif key in ("skipped", "reason") and isinstance(value, str):
            reasons.append(f"<p class=skipped>{e(key)}: {e(value)}</p>")
        elif is_scalar(value):
            scalars.append((key, value))
        else:
            out.append(f"<div class=stat data-key='{e(key)}'><h4>{e(key)}</h4>{render_value(value)}</div>")
    return "".join(reasons) + (pairs_table(scalars) if scalars else "") + "".join(out)


def _speed(value: Any) -> str | None:
    """quantize's float-vs-int8 speed check (quantize/speed.py's report)."""
    if not isinstance(value, dict):
        return None
    if "latency_ms" not in value:
        why = value.get("reason") or value.get("skipped")
        return "<h4>speed</h4><p class=decision>No speed check" + (f": {e(why)}" if why else ".") + "</p>"
    latency, chosen = value["latency_ms"], value.get("chosen", "?")
    base = latency.get("float")
    margin = value.get("margin")
    rows = [{"variant": name, "p50 ms": ms, "vs float": _ratio(base, ms), "chosen": "yes" if name == chosen else ""}
            for name, ms in sorted(latency.items(), key=lambda kv: (kv[1] is None, kv[1] or 0.0))]
    rule = (f"; a variant had to beat float by {margin:.0%}" if isinstance(margin, (int, float)) else "")
    return (f"<h4>speed</h4><p class=decision>Speed check on {e(value.get('provider', '?'))}: "
            f"<b>{e(chosen)}</b> chosen (p50 of {e(value.get('runs', '?'))} interleaved runs, threads "
            f"{e(value.get('threads', '?'))}{e(rule)}).</p>" + dict_table(rows, LIMIT))


def _ratio(base: Any, ms: Any) -> str:
    if isinstance(base, (int, float)) and isinstance(ms, (int, float)) and ms > 0:
        return f"{base / ms:.2f}x"
    return "-"


def _budget(value: Any) -> str | None:
    """The accuracy-budget search: what it measured with everything quantized, which nodes it put
    back in float and what each one measured."""
    if not isinstance(value, dict):
        return None
    if not value.get("measured"):
        why = value.get("reason") or "not searched (no held-out data, or fallback off)"
        return f"<h4>budget</h4><p class=decision>Accuracy budget: {e(why)}.</p>"
    limits = value.get("limits") or {}
    sentence = ", ".join(f"{k} {'≤' if k == 'max_abs' else '≥'} {fmt(v)}" for k, v in limits.items())
    parts = [f"<h4>budget</h4><p class=decision>Accuracy budget {e(sentence)}: "
             f"<b>{'fits' if value.get('fits') else 'missed'}</b>.</p>", _measured_table(value)]
    fallbacks = value.get("fallbacks") or []
    if fallbacks:
        to = value.get("fallback_to") or "float"
        done, where = ("put back in float", "back in float") if to == "float" else \
            (f"widened to {to} activations", f"in {to}")
        parts.append(f"<p>{len(fallbacks)} node(s) {e(done)}, largest measured effect first "
                     f"(the metric with the node quantized, and with it {e(where)}):</p>")
        parts.append(dict_table([_effect(f) for f in fallbacks], LIMIT))
    rest = {k: v for k, v in value.items()
            if k not in ("measured", "limits", "fits", "fallbacks", "all_quantized", "final", "fallback_to")}
    return "".join(parts) + (render_value(rest) if rest else "")


def _measured_table(value: dict[str, Any]) -> str:
    """metric | all quantized | final, for what the budget search measured."""
    measured = [value.get("all_quantized") or {}, value.get("final") or {}]
    metrics = list(dict.fromkeys(k for m in measured for k in m))
    rows = [{"metric": k, "all quantized": measured[0].get(k), "final": measured[1].get(k)} for k in metrics]
    return dict_table(rows, LIMIT) if rows else ""


def _effect(fallback: dict[str, Any]) -> dict[str, Any]:
    q, f = fallback.get("quantized"), fallback.get("float")
    effect = f - q if isinstance(q, (int, float)) and isinstance(f, (int, float)) else None
    return {**fallback, "effect": f"{effect:+.4g}" if effect is not None else "-"}


def _kept_float(value: Any) -> str | None:
    if not isinstance(value, dict) or not all(is_scalar(v) for v in value.values()):
        return None
    return (f"<h4>kept float</h4><p>{len(value)} node(s) kept in float, with the reason:</p>"
            + pairs_table(list(value.items()), head=("node", "reason")))


def _calibration(value: Any) -> str | None:
    if not isinstance(value, dict):
        return None
    method, source = value.get("method", "?"), value.get("source", "?")
    cache = value.get("cache")
    sentence = (f"Calibrated by {e(method)} on {e(source)}"
                + (f", cache {e(fmt(cache))}" if cache is not None else "") + ".")
    return f"<h4>calibration</h4><p class=decision>{sentence}</p>" + render_value(value)


SPECIAL: dict[str, Callable[[Any], str | None]] = {
    "speed": _speed, "budget": _budget, "kept_float": _kept_float, "calibration": _calibration}
