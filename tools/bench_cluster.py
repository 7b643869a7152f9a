"""Weight clustering benchmark: graphopt's `cluster` pass against its weight-only int8 / int4 on real models.

Models and data (models/tasks.py): all-MiniLM-L6-v2 (worst held-out sentence-embedding cosine),
PP-OCRv4 det (text-map agreement), rec (fraction of decoded strings equal to FP32's), and the v2.0
orientation classifier cls (top-1 agreement). Rows per model:
- FP32: the input model.
- cluster (budget): `ClusterWeights()`: one palette per weight (exact 1-D DP + Lloyd), bits searched
  per layer in [2, 8] under the budget, codes packed on ceil(log2 K) bits, expanded by a graph ONNX
  Runtime folds at load time.
- cluster channel (budget): the same with one palette per output channel (granularity=channel):
  more palettes to store, fewer bits needed where channels differ in scale (BatchNorm folded
  into convolutions).
- int8 weight-only / int4 weight-only: `quantize-weights:bits=8` / `:bits=4` (defaults: block 32,
  asymmetric, dq form = DequantizeLinear at opset 21; int4 falls back to int8 / float per layer
  under the budget). It covers MatMul / Gemm / Gather weights only, not Conv.
Every lossy row: graphopt.optimize(model, passes=[...], calib=the task's calibration feeds), run
budget = graphopt's default (worst-sample cosine 0.99 on every output, top1_dist 0.999 on
class-score outputs), its verification on the last quarter of the calibration feeds. Fidelity is
measured on the task's held-out feeds, which graphopt never sees.
Columns: constant bytes (initializers + Constant tensors) raw and zlib-deflated (level 6), each /
FP32; task fidelity; latency p50 and p10-p90 in ms (ORT CPU EP, ORT_ENABLE_ALL, `--threads`, batch
1 feed, all rows of a model timed in interleaved blocks, `--runs` runs each: graphopt.bench);
whether ONNX Runtime folds the expansion (cluster rows: the pass's own check at ORT_ENABLE_BASIC);
the optimize call's wall time.

Usage: python tools/bench_cluster.py [--models minilm,det,rec,cls] [--runs 40] [--threads 1]
       [--out-dir DIR]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx_ir as ir
import onnxruntime as ort

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from graphopt.report import cpu_line  # noqa: E402
from graphopt import optimize  # noqa: E402
from graphopt.bench import interleaved_timings  # noqa: E402
from graphopt.passes.cluster import ClusterWeights  # noqa: E402
from graphopt.passes.cluster.report import Deflated  # noqa: E402
from graphopt.size import data_bytes  # noqa: E402
from models.tasks import Task, get_task  # noqa: E402

VARIANTS = {
    "cluster (budget)": lambda: [ClusterWeights()],
    "cluster channel (budget)": lambda: [ClusterWeights(granularity="channel")],
    "int8 weight-only": lambda: "quantize-weights:bits=8",
    "int4 weight-only": lambda: "quantize-weights:bits=4",
}


def session(path: Path, threads: int) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def build(task: Task, label: str, out: Path) -> dict:
    """One lossy row: the optimize call, its pass record and wall time."""
    start = time.perf_counter()
    try:
        result = optimize(task.path, out, passes=VARIANTS[label](), calib=task.calib)
    except Exception as exc:  # noqa: BLE001  (a row that fails is reported, the others still run)
        return {"path": task.path, "seconds": time.perf_counter() - start, "stats": {},
                "note": f"failed: {str(exc).splitlines()[0][:80]}"}
    seconds = time.perf_counter() - start
    record = result.report["passes"][0]
    stats = record.get("stats") or {}
    row = {"path": out, "seconds": seconds, "applied": record.get("applied"), "stats": stats}
    if not record.get("applied"):
        row["note"] = f"not applied: {record.get('error') or stats.get('skipped')}"[:90]
    return row


def describe(label: str, row: dict) -> str:
    stats = row["stats"]
    if "note" in row:
        return row["note"]
    if label.startswith("cluster"):
        fold = stats.get("folding", {}).get("folds")
        bits = stats.get("by_bits", {})
        return f"{_counts(bits)}; folds: {fold}"
    return f"{_counts(stats.get('by_bits', {}))}; form {stats.get('form')}"


def _counts(counts: dict) -> str:
    return ", ".join(f"{n}x {label}" for label, n in sorted(counts.items()))


def outputs(s: ort.InferenceSession, feeds: list[dict]) -> list[dict]:
    names = [o.name for o in s.get_outputs()]
    return [dict(zip(names, s.run(None, feed))) for feed in feeds]


def measure(task: Task, rows: dict[str, dict], args) -> None:
    sessions = {label: session(row["path"], args.threads) for label, row in rows.items()}
    results = {label: outputs(s, task.holdout) for label, s in sessions.items()}
    deflated = Deflated()
    base = rows["FP32"]
    for label, row in rows.items():
        model = ir.load(str(row["path"]))
        row["raw"], row["deflated"] = data_bytes(model), deflated(model)
        row["fidelity"] = task.fidelity(results["FP32"], results[label], task.holdout)
    for label, row in rows.items():
        row["raw_ratio"], row["deflated_ratio"] = row["raw"] / base["raw"], row["deflated"] / base["deflated"]
    timings = interleaved_timings(list(sessions.values()), task.bench_feed, args.runs)
    for row, timing in zip(rows.values(), timings):
        row["timing"] = timing


def bench_model(name: str, folder: Path, args) -> tuple[Task, dict[str, dict]]:
    task = get_task(name)
    rows = {"FP32": {"path": task.path, "seconds": 0.0, "stats": {}, "note": "input model"}}
    for label in VARIANTS:
        print(f"[{name}] {label} ...", flush=True)
        stem = "".join(ch if ch.isalnum() else "_" for ch in label)
        rows[label] = build(task, label, folder / f"{name}_{stem}.onnx")
    print(f"[{name}] measuring ...", flush=True)
    measure(task, rows, args)
    return task, rows


def print_table(results: list[tuple[Task, dict[str, dict]]], args) -> None:
    print(f"\nONNX Runtime {ort.__version__}, CPU EP, ORT_ENABLE_ALL, intra-op threads {args.threads}; "
          f"{cpu_line()} (shared machine); latency = median of {args.runs} interleaved runs, batch 1\n")
    print("| model | variant | MB raw | raw / FP32 | deflated / FP32 | fidelity | p50 ms [p10-p90] | "
          "optimize s | notes |")
    print("|---|---|---|---|---|---|---|---|---|")
    for task, rows in results:
        for label, row in rows.items():
            t = row["timing"]
            print(f"| {task.name} | {label} | {row['raw'] / 1e6:.2f} | {row['raw_ratio']:.3f} | "
                  f"{row['deflated_ratio']:.3f} | {row['fidelity']:.4f} | {t['p50_ms']:.2f} "
                  f"[{t['p10_ms']:.2f}-{t['p90_ms']:.2f}] | {row['seconds']:.1f} | {describe(label, row)} |")
    print("\nfidelity: " + "; ".join(f"{task.name}: {task.metric} (bar {task.bar})" for task, _ in results))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="minilm,det,rec,cls")
    parser.add_argument("--runs", type=int, default=40)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out-dir", type=Path, help="keep the models here (default: a temporary folder)")
    args = parser.parse_args()
    if args.runs < 30:
        parser.error("--runs must be at least 30")
    np.random.seed(0)
    with tempfile.TemporaryDirectory(prefix="graphopt-bench-cluster-") as tmp:
        folder = args.out_dir or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        results = [bench_model(name, folder, args) for name in args.models.split(",")]
        print_table(results, args)


if __name__ == "__main__":
    main()
