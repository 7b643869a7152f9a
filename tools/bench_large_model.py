"""Large-model benchmark: time and peak memory of `graphopt optimize` on a 100M-parameter model.

Builds `models.large_mlp(redundant=True)` (24 x 2048x2048 MatMul+Add+Relu, ~403 MB of external
data, plus an Identity per layer and duplicated biases, so the lossless recipe really rewrites
and `--verify each` really builds candidate ORT sessions) in a temp dir, then measures each
step in its own subprocess, side by side in one run:

- one ORT CPU session of the model alone (load + one run): the floor any verification pays,
- onnx-graphsurgeon import + export of the model (what a gs-based tool pays),
- `graphopt optimize --verify each` with the default recipe.

Peak RSS is each child's own ru_maxrss, printed by the child at exit. Usage: python tools/bench_large_model.py [--layers 24 --width 2048]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

ORT_ONLY = """
import sys, numpy as np, onnxruntime as ort
so = ort.SessionOptions(); so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
s = ort.InferenceSession(sys.argv[1], so, providers=["CPUExecutionProvider"])
w = s.get_inputs()[0].shape[1]
s.run(None, {"x": np.ones((1, w), np.float32)})
"""
GS_ROUNDTRIP = """
import sys, onnx, onnx_graphsurgeon as gs
graph = gs.import_onnx(onnx.load(sys.argv[1]))
model = gs.export_onnx(graph)
onnx.save(model, sys.argv[2], save_as_external_data=True, location="gs.data")
"""


PEAK_REPORT = ("import atexit, resource, sys\n"
               "atexit.register(lambda: print('PEAK_KB', resource.getrusage(resource.RUSAGE_SELF)"
               ".ru_maxrss, file=sys.stderr))\n")
GRAPHOPT_CLI = "import sys\nfrom graphopt.cli import main\nsys.exit(main(sys.argv[1:]))\n"


def measure(code: str, *args: str) -> tuple[float, float]:
    """(seconds, peak RSS in MB) of `python -c code args` in a fresh child."""
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", PEAK_REPORT + code, *args], capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"step failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    peak_kb = int(proc.stderr.rsplit("PEAK_KB", 1)[1].split()[0])
    return seconds, peak_kb / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=24)
    parser.add_argument("--width", type=int, default=2048)
    args = parser.parse_args()
    from models import large_mlp

    with tempfile.TemporaryDirectory(prefix="graphopt-large-") as tmp:
        model = large_mlp(Path(tmp) / "large.onnx", args.layers, args.width, redundant=True)
        weight_mb = (Path(tmp) / "large.data").stat().st_size / 1e6
        out = str(Path(tmp) / "out.onnx")
        rows = [("ORT session alone (load + run)", measure(ORT_ONLY, str(model))),
                ("graphopt optimize --verify each", measure(
                    GRAPHOPT_CLI, "optimize", str(model), "-o", out, "--verify", "each", "--quiet")),
                ("onnx-graphsurgeon import+export", measure(GS_ROUNDTRIP, str(model), str(Path(tmp) / "gs.onnx")))]
        print(f"model: {args.layers} x {args.width}x{args.width}, weights {weight_mb:.0f} MB")
        print(f"{'step':34} {'seconds':>8} {'peak RSS MB':>12} {'x weights':>10}")
        for name, (seconds, peak) in rows:
            print(f"{name:34} {seconds:8.1f} {peak:12.0f} {peak / weight_mb:10.2f}")


if __name__ == "__main__":
    main()
