"""Calibration benchmark: graphopt's calibrate() (quantize/calibration) against ONNX Runtime's calibrators.

Models and data (all local): all-MiniLM-L6-v2 on 48 real sentences (max_len 128, batches of 8),
PP-OCR det on rendered document pages (one page per feed) and PP-OCR rec on rendered text lines
(batches of 8, the width varies per batch). Tensors: graphopt calibrates every float activation
feeding MatMul/Conv/Gemm/Add (what the quantize pass asks for); ORT's `create_calibrator` gets
op_types_to_calibrate=[MatMul, Conv, Gemm, Add] (it then also calibrates those ops' outputs).
ORT runs with its own defaults (percentile: 2048 bins, symmetric; entropy: 128 bins and levels);
graphopt with 2048 bins, percentile symmetric like ORT, and its cache off.

Every measurement runs in its own subprocess; seconds are measured inside it (model load +
calibration, not interpreter start or data loading) and peak RSS is its VmHWM. "net MB" is peak
RSS minus the RSS after the imports, so graphopt's heavier imports (onnx, onnx_ir, and the passes
the CLI loads at start-up, e.g. the opset converter) do not count.
The float model's ORT session memory (load + one feed, ORT_DISABLE_ALL) is the memory bar's unit.
ORT's and graphopt's runs of a cell alternate, so drift of the machine reaches both alike.
Usage: python tools/bench_calibration.py [--models minilm,det,rec] [--methods minmax,percentile,entropy]
       [--repeat N] [--median] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CHILD_PRELUDE = """
import json, sys, time
sys.path.insert(0, {root!r})
import numpy as np
args = json.loads(sys.argv[1])
feeds = [dict(np.load(f)) for f in args["feeds"]]
"""
# VmHWM, not ru_maxrss: Linux carries ru_maxrss over fork+exec, so a child would report at least
# the parent's RSS (this script imports torch to tokenize); VmHWM belongs to the new address space.
PEAK = "int(next(l for l in open('/proc/self/status') if l.startswith('VmHWM')).split()[1]) / 1024"
SESSION = CHILD_PRELUDE + """
import onnxruntime as ort
base = {peak}
so = ort.SessionOptions(); so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
so.intra_op_num_threads = args["threads"]
start = time.perf_counter()
session = ort.InferenceSession(args["model"], so, providers=["CPUExecutionProvider"])
session.run(None, feeds[0])
print(json.dumps({{"seconds": time.perf_counter() - start, "peak": {peak}, "base": base}}))
"""
GRAPHOPT = CHILD_PRELUDE + """
from pathlib import Path
import graphopt.passes  # the CLI imports every pass at start-up; graphopt's base RSS includes them
from graphopt.io import load_path
from graphopt.passes.quantize.calibration import CalibrationOptions, calibrate
import graphopt.runtime as runtime
_session_options = runtime.session_options
runtime.session_options = lambda *a, **k: _with_threads(_session_options(*a, **k))
def _with_threads(so):
    if args["threads"]:  # 0: graphopt's own choice (ORT's default, or its segment sessions' count)
        so.intra_op_num_threads = args["threads"]
    return so
base = {peak}
start = time.perf_counter()
model = load_path(Path(args["model"]))  # as the CLI loads it (weights decoded once)
options = CalibrationOptions(**args["options"])
for _ in range(args.get("calls", 1)):
    ranges = calibrate(model, args["names"], feeds * args.get("times", 1), options, cache_dir=args["cache"])
    if _ == 0:
        first = time.perf_counter() - start
        start = time.perf_counter()
seconds = time.perf_counter() - start if args.get("calls", 1) > 1 else first
extreme = sorted(n for n, r in ranges.items() if r.extreme)
print(json.dumps({{"seconds": seconds, "peak": {peak}, "base": base, "extreme": extreme}}))
"""
ORT = CHILD_PRELUDE + """
import os, tempfile
from onnxruntime.quantization.calibrate import CalibrationDataReader, CalibrationMethod, create_calibrator
base = {peak}
class Reader(CalibrationDataReader):
    def __init__(self): self.items = iter(feeds * args.get("times", 1))
    def get_next(self): return next(self.items, None)
method = {{"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
          "entropy": CalibrationMethod.Entropy}}[args["method"]]
start = time.perf_counter()
try:
    with tempfile.TemporaryDirectory() as tmp:
        calibrator = create_calibrator(args["model"], ["MatMul", "Conv", "Gemm", "Add"],
                                       os.path.join(tmp, "augmented.onnx"), calibrate_method=method)
        calibrator.collect_data(Reader())
        ranges = calibrator.compute_data()
    error = ""
except Exception as exc:
    error = (str(exc).strip().splitlines() or [type(exc).__name__])[-1][:90]
print(json.dumps({{"seconds": time.perf_counter() - start, "peak": {peak}, "base": base, "error": error}}))
"""


def run_child(code: str, args: dict) -> dict:
    proc = subprocess.run([sys.executable, "-c", code.format(root=str(ROOT), peak=PEAK), json.dumps(args)],
                          capture_output=True, text=True, env={**_env(), "GRAPHOPT_CACHE_DIR": "off"})
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        return {"error": (proc.stderr.strip().splitlines() or ["failed"])[-1][:90]}
    return json.loads(lines[-1])


def _env() -> dict:
    import os

    return dict(os.environ)


def calibration_names(path: Path) -> list[str]:
    """Float activations feeding MatMul/Conv/Gemm/Add (not weights, not Constant outputs); dtypes
    from ONNX shape inference, since Paddle exports (PP-OCR) carry no value_info."""
    import onnx
    import onnx_ir as ir

    model = ir.from_proto(onnx.shape_inference.infer_shapes(onnx.load(str(path))))
    names = []
    for node in model.graph:
        if node.op_type not in ("MatMul", "Conv", "Gemm", "Add"):
            continue
        for value in node.inputs:
            producer = value.producer() if value is not None else None
            if value is None or value.const_value is not None or value.name in model.graph.initializers:
                continue
            if producer is not None and producer.op_type == "Constant":
                continue
            if value.dtype in (ir.DataType.FLOAT, ir.DataType.FLOAT16):
                names.append(value.name)
    return list(dict.fromkeys(names))


def prepare(kind: str, tmp: Path) -> tuple[Path, list[str]]:
    """The model path and the .npz feed files of one benchmark case."""
    import numpy as np

    from models.real import MINILM_SENTENCES, minilm_onnx, minilm_tokenize, ppocr_inputs, ppocr_models

    if kind == "minilm":
        model = minilm_onnx(Path("/tmp/graphopt-models/minilm.onnx"))
        data = minilm_tokenize(MINILM_SENTENCES[:48], max_len=128)
        feeds = [{k: v[i:i + 8] for k, v in data.items()} for i in range(0, 48, 8)]
    elif kind == "det":
        model = ppocr_models()["det"]
        feeds = [ppocr_inputs("det", 1, seed=s) for s in range(4)]
    else:
        model = ppocr_models()["rec"]
        feeds = [ppocr_inputs("rec", 8, seed=s) for s in range(4)]
    files = []
    for i, feed in enumerate(feeds):
        files.append(str(tmp / f"{kind}_{i}.npz"))
        np.savez(files[-1], **feed)
    return model, files


def measure_case(kind: str, tmp: Path, args) -> list[tuple]:
    model, files = prepare(kind, tmp)
    names = calibration_names(model)
    base = {"model": str(model), "feeds": files, "threads": args.threads}
    pick = _median if args.median else _best
    session = pick([run_child(SESSION, base) for _ in range(args.repeat)])
    rows = [(kind, "ORT float session (load + 1 feed)", session, None)]
    for method in args.methods.split(","):
        options = {"method": method, "symmetric": method == "percentile"}
        pairs = [(run_child(ORT, {**base, "method": method}),
                  run_child(GRAPHOPT, {**base, "names": names, "options": options, "cache": None}))
                 for _ in range(args.repeat)]  # interleaved
        ort_result, ours = pick([p[0] for p in pairs]), pick([p[1] for p in pairs])
        rows += [(kind, f"ORT {method}", ort_result, None), (kind, f"graphopt {method}", ours, ort_result)]
    if "percentile" in args.methods.split(","):
        rows += _extra_rows(kind, base, names, tmp, args.repeat, pick)
    print(f"{kind}: {Path(model).name}, {len(files)} feeds, graphopt calibrates {len(names)} tensors", flush=True)
    return rows


def _extra_rows(kind: str, base: dict, names: list[str], tmp: Path, repeat: int, pick) -> list[tuple]:
    capped = {"method": "percentile", "symmetric": True, "max_bytes": 64 * 2**20}
    return [
        (kind, "graphopt percentile, max_bytes=64MiB",
         pick([run_child(GRAPHOPT, {**base, "names": names, "options": capped, "cache": None})
               for _ in range(repeat)]), None),
        (kind, "graphopt percentile, 64MiB, data x4",
         run_child(GRAPHOPT, {**base, "names": names, "options": capped, "cache": None, "times": 4}), None),
        (kind, "graphopt mse", run_child(GRAPHOPT, {**base, "names": names, "cache": None,
                                                   "options": {"method": "mse"}}), None),
        (kind, "graphopt minmax, cache hit", run_child(GRAPHOPT, {
            **base, "names": names, "options": {"method": "minmax"}, "cache": str(tmp / f"cache-{kind}"),
            "calls": 2}), None),
    ]


def _median(results: list[dict]) -> dict:
    """The run with the median seconds (the upper one of an even count); failures if all failed."""
    good = sorted((r for r in results if "seconds" in r and not r.get("error")), key=lambda r: r["seconds"])
    return good[len(good) // 2] if good else results[0]


def _best(results: list[dict]) -> dict:
    good = [r for r in results if "seconds" in r and not r.get("error")]
    return min(good, key=lambda r: r["seconds"]) if good else results[0]


def print_table(rows: list[tuple], threads: int, stat: str) -> None:
    print(f"\nORT intra-op threads: {threads or 'default (all cores)'}; {stat} of the repeats; seconds = load + calibrate")
    print(f"{'model':7} {'calibrator':38} {'seconds':>8} {'x ORT':>6} {'peak MB':>8} {'net MB':>7} {'x sess':>7}  notes")
    sessions = {kind: r for kind, name, r, _ in rows if name.startswith("ORT float")}
    for kind, name, result, ort_result in rows:
        if "seconds" not in result or result.get("error"):
            print(f"{kind:7} {name:38} {'-':>8} {'':>6} {'-':>8} {'-':>7} {'':>7}  failed: {result.get('error')}")
            continue
        net = result["peak"] - result["base"]
        session = sessions.get(kind, {})
        sess_net = session.get("peak", 0) - session.get("base", 0)
        ratio = (f"{result['seconds'] / ort_result['seconds']:.2f}"
                 if ort_result and "seconds" in ort_result and not ort_result.get("error") else "")
        x_sess = f"{net / sess_net:.2f}" if sess_net > 0 else ""
        notes = f"extreme: {', '.join(result['extreme'])[:60]}" if result.get("extreme") else ""
        print(f"{kind:7} {name:38} {result['seconds']:8.2f} {ratio:>6} {result['peak']:8.0f} {net:7.0f} "
              f"{x_sess:>7}  {notes}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="minilm,det,rec")
    parser.add_argument("--methods", default="minmax,percentile,entropy")
    parser.add_argument("--repeat", type=int, default=1, help="runs per cell (the fastest is reported)")
    parser.add_argument("--median", action="store_true", help="report the median run, not the fastest")
    parser.add_argument("--threads", type=int, default=0, help="ORT intra-op threads (0: ORT's default)")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="graphopt-calib-bench-") as tmp:
        for kind in args.models.split(","):
            rows += measure_case(kind, Path(tmp), args)
    print_table(rows, args.threads, "median" if args.median else "best")


if __name__ == "__main__":
    main()
