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
                 providers: dict[str, Any], feeds: dict[str, Any]) -> dict[str, Any]:
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
                        "cpu_count": os.cpu_count()},
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
    """Atomic write (temp file in the same directory, then rename)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(report, f, indent=2, default=_json_default)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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
        status = "applied" if rec["applied"] else ("ROLLED BACK" if rec["rolled_back"] else "no change")
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
