"""float16 / bfloat16 on the real models: graphopt's `float16` pass vs onnxconverter-common.

Models and data (models/tasks.py): all-MiniLM-L6-v2 and PP-OCRv4 det / rec / cls, calibrated on
the task's calibration feeds; fidelity on its held-out feeds, which no step has seen:
- minilm: worst held-out sentence's embedding cosine vs FP32;
- det: text-map agreement (probability > 0.3) with FP32;
- rec: fraction of lines whose greedy CTC decoding equals FP32's;
- cls: top-1 agreement with FP32.
Rows per model:
- FP32: the model as shipped;
- graphopt float16: `optimize(..., passes="float16", calib=...)`: the pass measures ranges on the
  calibration feeds, searches its budget (default: worst cosine 0.99, top-1 0.999 on class
  scores) on them, and the manager verifies it on the held-back quarter;
- graphopt float16 (no fallback, unverified), only where the row above was not applied: the
  conversion itself (`fallback=false`, `verify="off"`), to compare with the anchor;
- graphopt bfloat16: the same as the first with `dtype=bfloat16` (ORT CPU has almost no bfloat16 kernels:
  the status column says whether the manager kept or rolled it back, and why);
- onnxconverter-common: `convert_float_to_float16(model, keep_io_types=True)` with its defaults
  (values clipped to [1e-7, 1e4]), the usual anchor. Imported here only (pip install
  onnxconverter-common; not a graphopt dependency).
Columns: file size ratio vs FP32, the task metric, NaN/Inf in any held-out output, p50 ms of the
task's batch-1 feed on ORT CPU (ORT_ENABLE_ALL), all rows of a model timed interleaved
(graphopt.bench.interleaved_p50, --runs each). Note: ORT's CPU provider has float16 kernels for
few ops and computes the others in float32 behind Casts it inserts, so float16 is not expected to
be faster on CPU; the point of the conversion is size and GPU/NPU deployment.

Usage: python tools/bench_float16.py [--models minilm,det,rec,cls] [--runs 30] [--no-bf16]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import onnx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from graphopt import optimize  # noqa: E402
from graphopt.bench import interleaved_p50  # noqa: E402
from graphopt.runtime import create_session, run_model  # noqa: E402
from models.tasks import TASKS, get_task  # noqa: E402


def file_bytes(path: Path) -> int:
    data = Path(str(path) + ".data")
    return path.stat().st_size + (data.stat().st_size if data.exists() else 0)


def graphopt_row(task, out: Path, dtype: str, alone: bool = False) -> dict:
    """The pass through `optimize` under the default budget, or (`alone`) without its fallback and
    without verification: the conversion itself, judged by the task metric only."""
    start = time.perf_counter()
    spec = f"float16:dtype={dtype}" + (";fallback=false" if alone else "")
    result = optimize(task.path, out, passes=spec, calib=task.calib, verify="off" if alone else "each")
    record = result.report["passes"][0]
    stats = record["stats"]
    label = f"graphopt {dtype}" + (" (no fallback, unverified)" if alone else "")
    row = {"name": label, "path": out, "seconds": time.perf_counter() - start, "stats": stats}
    if not record["applied"]:
        why = record.get("error") or stats.get("skipped") or "not applied"
        row["status"] = f"rolled back: {why[:110]}" if record["rolled_back"] else f"not applied: {why[:110]}"
        row["path"] = None
        return row
    reasons = Counter(_reason_kind(r) for r in stats["kept_float32"].values())
    kept = ", ".join(f"{n} {k}" for k, n in reasons.most_common()) or "none"
    row["status"] = (f"{stats['converted']} ops {dtype}, float32 kept: {kept}; {stats['casts_inserted']} Casts; "
                     f"ORT CPU: {_cpu_summary(stats['ort_cpu'], dtype)}")
    return row


def _reason_kind(reason: str) -> str:
    for prefix, kind in (("measured range", "by range"), ("divisor path", "by underflow"), ("budget", "by budget"),
                         ("shape computation", "shape"), ("control flow", "control flow")):
        if reason.startswith(prefix):
            return kind
    return "other"


def _cpu_summary(cpu: dict, dtype: str) -> str:
    native = sum(cpu.get(f"native_{dtype}", {}).values())
    other = cpu.get("through_ort_casts", cpu.get(f"no_{dtype}_kernel", {}))
    return f"{native} native, {sum(other.values())} through ORT casts" if dtype == "float16" \
        else f"{native} native, {sum(other.values())} without kernel"


def anchor_row(task, out: Path) -> dict:
    from onnxconverter_common.float16 import convert_float_to_float16

    start = time.perf_counter()
    try:
        with warnings.catch_warnings():  # one "will be truncated" line per clipped constant
            warnings.simplefilter("ignore")
            converted = convert_float_to_float16(onnx.load(task.path), keep_io_types=True)
        onnx.save(converted, out)
        create_session(out)
    except Exception as exc:  # noqa: BLE001  (the anchor may fail on a model: reported, not fatal)
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        return {"name": "onnxconverter-common", "path": None, "status": f"failed: {first[:110]}",
                "seconds": time.perf_counter() - start}
    return {"name": "onnxconverter-common", "path": out, "status": "defaults, keep_io_types=True",
            "seconds": time.perf_counter() - start}


def fidelity(task, reference: list[dict], row: dict) -> None:
    outputs = run_model(Path(row["path"]), task.holdout)
    row["finite"] = all(np.all(np.isfinite(a)) for o in outputs for a in o.values() if a.dtype.kind == "f")
    row["fidelity"] = task.fidelity(reference, outputs, task.holdout)


def bench_model(name: str, tmp: Path, runs: int, bf16: bool) -> list[dict]:
    task = get_task(name)
    rows = [{"name": "FP32", "path": Path(task.path), "status": "as shipped", "seconds": 0.0}]
    rows.append(graphopt_row(task, tmp / f"{name}_fp16.onnx", "float16"))
    if rows[-1]["path"] is None:  # the budget refused it: show what the conversion alone does
        rows.append(graphopt_row(task, tmp / f"{name}_fp16_alone.onnx", "float16", alone=True))
    if bf16:
        rows.append(graphopt_row(task, tmp / f"{name}_bf16.onnx", "bfloat16"))
    rows.append(anchor_row(task, tmp / f"{name}_anchor.onnx"))
    reference = run_model(Path(task.path), task.holdout)
    base = file_bytes(Path(task.path))
    for row in rows:
        if row["path"] is not None:
            row["ratio"] = file_bytes(Path(row["path"])) / base
            fidelity(task, reference, row)
    timed = [row for row in rows if row["path"] is not None]
    if runs:
        sessions = [create_session(Path(row["path"]), opt_level="enable_all") for row in timed]
        for row, p50 in zip(timed, interleaved_p50(sessions, task.bench_feed, runs)):
            row["p50_ms"] = p50
    for row in rows:
        row.update(model=name, metric=task.metric)
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| model | variant | size vs FP32 | task metric | value | NaN/Inf | p50 ms (ORT CPU) | what |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ok = r.get("path") is not None
        lines.append(f"| {r['model']} | {r['name']} | {r['ratio']:.3f}x | {r['metric']} | {r['fidelity']:.4f} | "
                     f"{'none' if r['finite'] else 'YES'} | {_ms(r)} | {r['status']} |" if ok else
                     f"| {r['model']} | {r['name']} | - | {r['metric']} | - | - | - | {r['status']} |")
    return "\n".join(lines)


def _ms(row: dict) -> str:
    return f"{row['p50_ms']:.2f}" if "p50_ms" in row else "-"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(TASKS))
    parser.add_argument("--runs", type=int, default=30, help="timed runs per row (interleaved; 0: no timing)")
    parser.add_argument("--no-bf16", action="store_true", help="skip the bfloat16 rows")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-float16-") as tmp:
        for name in args.models.split(","):
            print(f"[{name}]", file=sys.stderr, flush=True)
            rows += bench_model(name, Path(tmp), args.runs, not args.no_bf16)
    print(f"CPU: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; ORT CPU provider, "
          f"p50 of {args.runs} interleaved runs per row (batch-1 feed). The machine may be shared: "
          "latency is indicative only.")
    print(table(rows))
    for r in rows:
        print(f"{r['model']} {r['name']}: {r['seconds']:.1f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
