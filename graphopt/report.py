"""The run report: JSON for machines (`--report`), a table for people.

JSON shape (design.md): {"model": {before/after: nodes, params, bytes}, "passes": [{"name",
"options", "applied", "rolled_back", "seconds", "stats", "size", "verify", "bench", "error"}],
"summary": {...}, "environment": {...}}. `bench` per provider holds p50/p90 at
ORT_ENABLE_ALL plus a `disable_all` entry.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import platform
import tempfile
from pathlib import Path
from typing import Any

import onnxruntime as ort

from graphopt.manager import RunResult


def build_report(result: RunResult, *, input_path: str | None, output_path: str | None,
                 providers: dict[str, Any], feeds: dict[str, Any], threads: int = 0) -> dict[str, Any]:
    passes = [dataclasses.asdict(r) for r in result.passes]
    return {
        "model": {"input": input_path, "output": output_path,
                  "before": result.before.to_dict(), "after": result.after.to_dict()},
        "passes": passes,
        "bench": {"input": result.baseline_bench} if result.baseline_bench else None,
        "summary": _summary(result),
        "data": feeds,
        "environment": {"onnxruntime": ort.__version__, "providers": providers,
                        "python": platform.python_version(), "machine": platform.machine(),
                        "cpu": cpu_name(), "cpu_count": os.cpu_count(), "bench_threads": threads},
    }


def _summary(result: RunResult) -> dict[str, Any]:
    before, after = result.before, result.after
    summary = {
        "passes_applied": [r.name for r in result.passes if r.applied],
        "passes_rolled_back": [r.name for r in result.passes if r.rolled_back],
        "nodes": [before.nodes, after.nodes],
        "params": [before.params, after.params],
        "bytes": [before.bytes, after.bytes],
        "seconds": sum(r.seconds for r in result.passes),
    }
    final_bench = next((r.bench for r in reversed(result.passes) if r.bench), None)
    if result.baseline_bench and final_bench:
        summary["speedup_enable_all"] = {
            p: result.baseline_bench[p]["p50_ms"] / final_bench[p]["p50_ms"] for p in final_bench
            if "p50_ms" in final_bench[p] and "p50_ms" in result.baseline_bench.get(p, {})}
    if result.final is not None:
        summary["final_verify"] = result.final.summary()
    return summary


def write_json(report: dict[str, Any], path: str | os.PathLike) -> None:
    write_text_atomic(json.dumps(report, indent=2, default=_json_default), path)


def write_report(report: dict[str, Any], path: str | os.PathLike) -> None:
    """`.html` -> the self-contained HTML page; anything else -> JSON."""
    if str(path).lower().endswith((".html", ".htm")):
        from graphopt.html_report import render_html

        write_text_atomic(render_html(json.loads(json.dumps(report, default=_json_default))), path)
    else:
        write_json(report, path)


def write_text_atomic(text: str, path: str | os.PathLike) -> None:
    """Atomic write (temp file in the same directory, then rename)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; a report is an ordinary file
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def _json_default(value: Any) -> Any:
    if isinstance(value, (set, tuple)):
        return list(value)
    if hasattr(value, "item"):
        return value.item()
    return str(value)


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
    widths = [max(len(r[i]) for r in rows + [header]) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(header, widths))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows]
    for rec in report["passes"]:
        if rec["error"]:
            lines.append(f"{rec['name']}: {rec['error']}")
    return "\n".join(lines)


def pass_status(rec: dict[str, Any]) -> str:
    return "applied" if rec["applied"] else ("ROLLED BACK" if rec["rolled_back"] else "no change")


def format_summary(report: dict[str, Any]) -> str:
    """The closing lines people read: size, speed and accuracy before -> after."""
    summary = report["summary"]
    lines = [f"nodes {summary['nodes'][0]} -> {summary['nodes'][1]}, "
             f"params {summary['params'][0]:,} -> {summary['params'][1]:,}, "
             f"weights {_mb(summary['bytes'][0])} -> {_mb(summary['bytes'][1])} MB"]
    for provider, ratio in (summary.get("speedup_enable_all") or {}).items():
        lines.append(f"{provider}: {ratio:.2f}x the input model's speed (ORT_ENABLE_ALL p50)")
    cosines = [((r.get("verify") or {}).get("vs_input") or {}).get("cosine")
               for r in report["passes"] if r["applied"]]
    cosines = [c for c in cosines if isinstance(c, float)]
    if cosines:
        lines.append(f"worst cosine vs input: {cosines[-1]:.6f}")
    rolled = summary.get("passes_rolled_back") or []
    lines.append(f"passes applied {len(summary['passes_applied'])}, rolled back {len(rolled)}"
                 + (f" ({', '.join(rolled)})" if rolled else ""))
    return "\n".join(lines)


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


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
