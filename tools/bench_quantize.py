"""INT8 benchmark: graphopt's `quantize` vs ONNX Runtime's quantizer on real models, side by side.

Rows per model (tools/quant_cases.py for data and metrics):
- FP32: the input model as shipped.
- graphopt BASE (float): the int8 chain without `quantize`, so the table shows which part of the
  speed-up is integer arithmetic and which is the float fusions of the base recipe.
- graphopt int8 (METHOD): the int8 chain (`--base` recipe, default `modern`, then
  `quantize:method=METHOD`) with `--calib` = calibration feeds, the accuracy budget measured on
  separate budget feeds, fidelity reported on held-out feeds no step has seen.
- ORT static (MinMax / Entropy): `quantize_static` in its best configuration for an AVX2 CPU
  (QDQ, U8 activations, S8 per-channel weights, reduce_range), same calibration feeds. Its
  `quant_pre_process` is tried first; when it fails the error is recorded and the raw model is used.
- ORT dynamic (MiniLM): `quantize_dynamic` (S8 weights, per-tensor).
Columns: latency p50 in ms (ORT CPU EP, ORT_ENABLE_ALL, batch 1, median of `--runs` runs, all rows
of a model timed in interleaved blocks), fidelity vs FP32 on held-out data, file size, and the
wall time of quantization. `--openvino` adds FP32 vs graphopt's `openvino` profile on the OpenVINO
EP, run by /tmp/venv-ov's python (onnxruntime-openvino) in a subprocess (tools/ov_latency.py).

Usage: python tools/bench_quantize.py [--models minilm,det,rec,cls] [--methods percentile,entropy]
       [--runs 30] [--threads 0] [--base modern|lossless] [--no-ort] [--openvino]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))

from graphopt import optimize  # noqa: E402
from graphopt.bench import BLOCK_PAUSE_S  # noqa: E402
from graphopt.recipes import RECIPES  # noqa: E402
from quant_cases import CASES, QuantCase  # noqa: E402

OV_PYTHON = "/tmp/venv-ov/bin/python"


def session(path: Path, threads: int, provider: str = "CPUExecutionProvider") -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.intra_op_num_threads = threads
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=[provider])


def graphopt_int8(case: QuantCase, out: Path, method: str, base: str, threads: int, profile: str = "ort-cpu"):
    spec = f"quantize:method={method};profile={profile};threads={threads};cache_dir=off"
    start = time.perf_counter()
    result = optimize(case.source, out, passes=",".join((*RECIPES[base], spec)), calib=case.calib,
                      data=case.budget_data, budget=case.budget)
    seconds = time.perf_counter() - start
    record = next(p for p in result.report["passes"] if p["name"] == "quantize")
    return seconds, _summary(record)


def _summary(record: dict) -> str:
    stats = record.get("stats", {})
    if record.get("rolled_back"):
        return f"rolled back: {record.get('error')}"
    if not record.get("applied"):
        return stats.get("skipped", "not applied")
    fallbacks = [f["node"] for f in stats.get("budget", {}).get("fallbacks", [])]
    speed = stats.get("speed", {}).get("chosen", "")
    parts = [f"{stats.get('quantized_nodes')} nodes int8 {stats.get('quantized_by_op')}"]
    if fallbacks:
        parts.append(f"{len(fallbacks)} kept float by the budget")
    if speed and speed != "int8":
        parts.append(speed)
    return "; ".join(parts)


class _Reader:
    def __init__(self, feeds):
        self.feeds, self.i = feeds, 0

    def get_next(self):
        self.i += 1
        return self.feeds[self.i - 1] if self.i <= len(self.feeds) else None

    def rewind(self):
        self.i = 0


def ort_static(case: QuantCase, out: Path, method: str, notes: list[str]):
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    source = case.source
    prep = out.with_suffix(".prep.onnx")
    with _inside(out.parent):  # ORT's tools write scratch files into the working directory
        try:
            quant_pre_process(str(case.source), str(prep))
            source = prep
        except Exception as exc:  # noqa: BLE001  (recorded, not hidden)
            notes.append(f"{case.name}: ORT quant_pre_process failed: {_first_line(exc)}")
        reader = _Reader([{k: v for k, v in f.items()} for f in case.calib])
        start = time.perf_counter()
        quantize_static(str(source), str(out), reader, quant_format=QuantFormat.QDQ, per_channel=True,
                        reduce_range=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method={"minmax": CalibrationMethod.MinMax,
                                          "entropy": CalibrationMethod.Entropy}[method])
    return time.perf_counter() - start, ""


@contextlib.contextmanager
def _inside(folder: Path):
    previous = os.getcwd()
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(previous)


def ort_dynamic(case: QuantCase, out: Path, notes: list[str]):
    from onnxruntime.quantization import QuantType, quantize_dynamic

    start = time.perf_counter()
    with _inside(out.parent):
        quantize_dynamic(str(case.source), str(out), weight_type=QuantType.QInt8)
    return time.perf_counter() - start, ""


def _first_line(exc: Exception) -> str:
    lines = [line for line in str(exc).strip().splitlines() if line.strip()]
    return (lines[-1] if lines else type(exc).__name__)[:160]


def build_rows(case: QuantCase, tmp: Path, args, notes: list[str]) -> dict[str, dict]:
    rows = {"FP32": {"path": case.source, "seconds": 0.0, "what": "input model"}}
    base = tmp / f"{case.name}_{args.base}.onnx"  # the float model quantize starts from: which gain is int8's
    start = time.perf_counter()
    optimize(case.source, base, recipe=args.base, data=case.budget_data[:2])
    rows[f"graphopt {args.base} (float)"] = {"path": base, "seconds": time.perf_counter() - start,
                                             "what": "the int8 chain without quantize"}
    for method in args.methods:
        out = tmp / f"{case.name}_graphopt_{method}.onnx"
        try:
            seconds, what = graphopt_int8(case, out, method, args.base, args.threads)
            rows[f"graphopt int8 ({method})"] = {"path": out, "seconds": seconds, "what": what}
        except Exception as exc:  # noqa: BLE001
            rows[f"graphopt int8 ({method})"] = {"error": _first_line(exc)}
    if not args.no_ort:
        makers = {f"ORT static ({m})": (lambda o, m=m: ort_static(case, o, m, notes)) for m in ("minmax", "entropy")}
        if case.name == "minilm":
            makers["ORT dynamic"] = lambda o: ort_dynamic(case, o, notes)
        for label, make in makers.items():
            out = tmp / f"{case.name}_{label.replace(' ', '_').replace('(', '').replace(')', '')}.onnx"
            try:
                seconds, what = make(out)
                rows[label] = {"path": out, "seconds": seconds, "what": what}
            except Exception as exc:  # noqa: BLE001
                rows[label] = {"error": _first_line(exc)}
    return rows


def measure(case: QuantCase, rows: dict[str, dict], args) -> None:
    live = {k: r for k, r in rows.items() if "path" in r}
    sessions = {}
    for label, row in live.items():
        try:
            sessions[label] = session(row["path"], args.threads)
        except Exception as exc:  # noqa: BLE001
            row["error"] = "ORT refused it: " + _first_line(exc)
    outputs = {label: [s.run(None, feed) for feed in case.holdout] for label, s in sessions.items()}
    for label in sessions:
        rows[label]["fidelity"] = case.fidelity(outputs["FP32"], outputs[label])
        rows[label]["mb"] = Path(rows[label]["path"]).stat().st_size / 2**20
    labels = list(sessions)
    wall, cpu = interleaved_wall_and_cpu([sessions[k] for k in labels], case.latency_feed, args.runs)
    for label, ms, cpu_ms in zip(labels, wall, cpu):
        rows[label]["ms"], rows[label]["cpu_ms"] = ms, cpu_ms


def interleaved_wall_and_cpu(sessions, feed, runs: int, block: int = 5) -> tuple[list[float], list[float]]:
    """Median wall ms and median calling-thread CPU ms per session, timed in alternating blocks.
    With one intra-op thread ORT computes on the calling thread, so its CPU time is the work
    itself, unaffected by other processes taking the core away (this machine is shared)."""
    for s in sessions:
        for _ in range(3):
            s.run(None, feed)
    wall = [[] for _ in sessions]
    cpu = [[] for _ in sessions]
    while len(wall[0]) < runs:
        for s, w, c in zip(sessions, wall, cpu):
            time.sleep(BLOCK_PAUSE_S)  # the previous session's threads stop spinning (graphopt.bench)
            for _ in range(block):
                start, start_cpu = time.perf_counter(), time.thread_time()
                s.run(None, feed)
                c.append((time.thread_time() - start_cpu) * 1e3)
                w.append((time.perf_counter() - start) * 1e3)
    return [float(np.median(x)) for x in wall], [float(np.median(x)) for x in cpu]


def openvino_rows(case: QuantCase, tmp: Path, args, notes: list[str]) -> dict[str, dict]:
    """FP32 vs graphopt's `openvino` profile on the OpenVINO EP (subprocess in /tmp/venv-ov)."""
    out = tmp / f"{case.name}_graphopt_openvino.onnx"
    try:
        seconds, what = graphopt_int8(case, out, args.methods[0], args.base, args.threads, profile="openvino")
    except Exception as exc:  # noqa: BLE001
        return {"graphopt openvino profile": {"error": _first_line(exc)}}
    feeds = tmp / f"{case.name}_ov_feeds.npz"
    np.savez(feeds, **{f"latency__{k}": v for k, v in case.latency_feed.items()},
             **{f"h{i}__{k}": v for i, f in enumerate(case.holdout) for k, v in f.items()})
    outputs_path = tmp / f"{case.name}_ov_outputs.npz"
    cmd = [OV_PYTHON, str(ROOT / "tools" / "ov_latency.py"), str(case.source), str(out), str(feeds),
           str(args.runs), str(outputs_path)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
    if done.returncode:
        notes.append(f"{case.name}: OpenVINO run failed: {done.stderr.strip().splitlines()[-1:]}")
        return {}
    result = json.loads(done.stdout.strip().splitlines()[-1])
    saved = np.load(outputs_path)
    outputs = {label: [[saved[f"{label}__{i}__{k}"] for k in range(_count(saved, label, i))]
                       for i in range(len(case.holdout))] for label in ("fp32", "int8")}
    fidelity = case.fidelity(outputs["fp32"], outputs["int8"])
    return {"OpenVINO EP: FP32": {"ms": result["fp32_ms"], "fidelity": 1.0, "mb": case.source.stat().st_size / 2**20,
                                  "seconds": 0.0, "what": result["device"]},
            "OpenVINO EP: graphopt openvino int8": {"ms": result["int8_ms"], "fidelity": fidelity,
                                                     "mb": out.stat().st_size / 2**20, "seconds": seconds,
                                                     "what": what}}


def _count(saved, label: str, index: int) -> int:
    return sum(1 for key in saved.files if key.startswith(f"{label}__{index}__"))


def print_table(case: QuantCase, rows: dict[str, dict], args) -> None:
    fp32 = rows["FP32"].get("ms")
    print(f"\n### {case.name} (fidelity: {case.metric}, bar {case.bar}; ORT {ort.__version__}, "
          f"threads {args.threads or 'default'}, {args.runs} runs)\n")
    cpu_fp32 = rows["FP32"].get("cpu_ms")
    print("| variant | p50 ms | x FP32 | CPU ms (1 thread) | x FP32 | fidelity | MB | quantize s | notes |")
    print("|---|---|---|---|---|---|---|---|---|")
    for label, row in rows.items():
        if "error" in row and "ms" not in row:
            print(f"| {label} | - | - | - | - | - | - | - | failed: {row['error']} |")
            continue
        base = rows.get("OpenVINO EP: FP32", {}).get("ms", 0) if "OpenVINO" in label else fp32
        cpu = f"{row['cpu_ms']:.2f} | {cpu_fp32 / row['cpu_ms']:.2f}" if args.threads == 1 and "cpu_ms" in row else "- | -"
        print(f"| {label} | {row['ms']:.2f} | {base / row['ms']:.2f} | {cpu} | {row['fidelity']:.4f} | "
              f"{row['mb']:.1f} | {row['seconds']:.1f} | {row.get('what', '')} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="minilm,det,rec,cls")
    parser.add_argument("--methods", default="percentile,entropy")
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--base", default="modern", choices=sorted(RECIPES))
    parser.add_argument("--no-ort", action="store_true")
    parser.add_argument("--openvino", action="store_true")
    args = parser.parse_args()
    args.methods = args.methods.split(",")
    notes: list[str] = []
    with tempfile.TemporaryDirectory(prefix="graphopt-bench-quantize-") as tmp:
        for name in args.models.split(","):
            case = CASES[name](Path(tmp))
            rows = build_rows(case, Path(tmp), args, notes)
            measure(case, rows, args)
            if args.openvino and Path(OV_PYTHON).exists():
                rows.update(openvino_rows(case, Path(tmp), args, notes))
            print_table(case, rows, args)
            sys.stdout.flush()
    for note in notes:
        print("note:", note)


if __name__ == "__main__":
    main()
