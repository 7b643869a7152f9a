"""The run report as a document: built from a run, written as JSON or HTML (`--report`).

JSON shape (documented and tested: docs/report.schema.json): {"schema_version": 1, "model":
{before/after: nodes, params, bytes}, "passes": [{"name",
"options", "applied", "rolled_back", "seconds", "stats", "size", "verify", "bench", "error"}],
"summary": {...}, "environment": {...}}. `bench` per provider holds p50/p90 at
ORT_ENABLE_ALL plus a `disable_all` entry.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
from typing import Any

import onnxruntime as ort

from graphopt.manager import RunResult
from graphopt.report.html import render_html
from graphopt.transaction import Transaction


SCHEMA_VERSION = 1  # docs/report.schema.json; raised when a field is removed or changes meaning


def build_report(result: RunResult, *, input_path: str | None, output_path: str | None,
                 providers: dict[str, Any], feeds: dict[str, Any], threads: int = 0) -> dict[str, Any]:
    passes = [dataclasses.asdict(r) for r in result.passes]
    return {
        "schema_version": SCHEMA_VERSION,
        "model": {"input": input_path, "output": output_path,
                  "before": result.before.to_dict(), "after": result.after.to_dict()},
        "passes": passes,
        "bench": ({"input": result.baseline_bench, "final_vs_input": result.final_vs_input}
                  if result.baseline_bench else None),
        "summary": _summary(result),
        "data": feeds,
        "environment": {"onnxruntime": ort.__version__, "providers": providers,
                        "python": platform.python_version(), "machine": platform.machine(),
                        "cpu": cpu_name(), "cpu_count": os.cpu_count(), "bench_threads": threads},
    }


def _summary(result: RunResult) -> dict[str, Any]:
    from graphopt.bench import compare_timings

    before, after = result.before, result.after
    summary = {
        "passes_applied": [r.name for r in result.passes if r.applied],
        "passes_rolled_back": [r.name for r in result.passes if r.rolled_back],
        "nodes": [before.nodes, after.nodes],
        "params": [before.params, after.params],
        "bytes": [before.bytes, after.bytes],
        "seconds": sum(r.seconds for r in result.passes),
    }
    pair = {p: t for p, t in (result.final_vs_input or {}).items() if "final" in t}
    if pair:  # the input and the final model timed side by side at the end of the run
        summary["speedup_enable_all"] = {p: t["input"]["p50_ms"] / t["final"]["p50_ms"] for p, t in pair.items()}
        summary["speed_vs_input"] = {p: {**compare_timings(t["input"], t["final"]), "timed": "interleaved"}
                                     for p, t in pair.items()}
        return _with_final_verify(summary, result)
    final_bench = next((r.bench for r in reversed(result.passes) if r.bench), None)
    if result.baseline_bench and final_bench:
        timed = [p for p in final_bench
                 if "p50_ms" in final_bench[p] and "p50_ms" in result.baseline_bench.get(p, {})]
        summary["speedup_enable_all"] = {
            p: result.baseline_bench[p]["p50_ms"] / final_bench[p]["p50_ms"] for p in timed}
        # the same ratio with both spreads and whether it is within noise (bench.compare_timings)
        summary["speed_vs_input"] = {p: compare_timings(result.baseline_bench[p], final_bench[p])
                                     for p in timed}
    return _with_final_verify(summary, result)


def _with_final_verify(summary: dict[str, Any], result: RunResult) -> dict[str, Any]:
    if result.final is not None:
        summary["final_verify"] = result.final.summary()
    return summary


def write_json(report: dict[str, Any], path: str | os.PathLike) -> None:
    write_text_atomic(render_report(report, ".json"), path)


def write_report(report: dict[str, Any], path: str | os.PathLike) -> None:
    """`.html` -> the self-contained HTML page; anything else -> JSON."""
    write_text_atomic(render_report(report, path), path)


def render_report(report: dict[str, Any], path: str | os.PathLike) -> str:
    """The report as the text `path` gets: HTML for `.html`/`.htm`, JSON otherwise."""
    if str(path).lower().endswith((".html", ".htm")):
        return render_html(json.loads(json.dumps(report, default=_json_default)))
    return json.dumps(report, indent=2, default=_json_default)


def write_text_atomic(text: str, path: str | os.PathLike) -> None:
    """Atomic write: staged next to `path`, then renamed (graphopt.transaction)."""
    with Transaction() as txn:
        txn.write_text(path, text)
        txn.commit()


def _json_default(value: Any) -> Any:
    if isinstance(value, (set, tuple)):
        return list(value)
    if hasattr(value, "item"):
        return value.item()
    return str(value)


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


SIMD_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_tile", "amx_int8")


def cpu_flags() -> set[str]:
    """The CPU's feature flags from /proc/cpuinfo (empty where there is none)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cpu_line() -> str:
    """CPU model, count and the SIMD flags ORT's int8/bf16 kernels depend on, for the header of a
    benchmark table: "AMD EPYC ..., 2 CPUs, flags: avx2 avx512f avx512_vnni (no amx_int8)"."""
    flags = cpu_flags()
    have = [f for f in SIMD_FLAGS if f in flags]
    missing = [f for f in ("avx512_vnni", "amx_int8") if f not in flags]
    return (f"{cpu_name()}, {os.cpu_count()} CPUs, flags: {' '.join(have) or 'none'}"
            + (f" (no {', '.join(missing)})" if missing else ""))
