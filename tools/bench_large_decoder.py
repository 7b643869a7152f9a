"""A ~1.1B-parameter torch-exported decoder through the first command: peak RSS against its weights.

Builds a TinyLlama-1.1B-shaped LlamaForCausalLM from a config in code (hidden 2048, 22 layers,
32 heads, 4 KV heads, SwiGLU 5632, vocab 32000; random init, fixed seed, no hub) with
tests/models/decoder.py and exports one forward step with the KV cache through torch's
TorchScript exporter. Above 2 GB that exporter writes every weight to its own file next to the
model without an `offset` (issue 25's per-tensor layout). Then, each in its own process:

- an ORT CPU session of the model alone (load + one decode step): the floor any verification pays;
- `graphopt optimize M -o OUT` with no data and the default recipe (shape search, every pass
  verified in ORT, output written with external data).

Peak RSS is each child's VmHWM at exit; "x weights" divides it by the bytes of the external
weight files. Usage: python tools/bench_large_decoder.py [--folder DIR] [--layers 22]
(`--folder` keeps the export between runs; it takes ~4.4 GB of disk, the output as much again).
"""

from __future__ import annotations

import argparse
import importlib.util
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from graphopt.report import cpu_line  # noqa: E402

PEAK = "int(next(l for l in open('/proc/self/status') if l.startswith('VmHWM')).split()[1]) / 1024"
ORT_ONLY = f"""
import sys, numpy as np, onnxruntime as ort
so = ort.SessionOptions(); so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
s = ort.InferenceSession(sys.argv[1], so, providers=["CPUExecutionProvider"])
feed = {{}}
for i in s.get_inputs():
    if i.name == "input_ids": feed[i.name] = np.zeros((1, 1), np.int64)
    elif i.name == "attention_mask": feed[i.name] = np.ones((1, 5), np.int64)
    elif i.name == "position_ids": feed[i.name] = np.array([[4]], np.int64)
    else: feed[i.name] = np.zeros((1, i.shape[1], 4, i.shape[3]), np.float32)
s.run(None, feed)
print("VMHWM", {PEAK}, file=sys.stderr)
"""
GRAPHOPT = f"""
import sys
from graphopt.cli import main
try:
    code = main(sys.argv[1:])
finally:
    print("VMHWM", {PEAK}, file=sys.stderr)
sys.exit(code)
"""


def _decoder_module():
    spec = importlib.util.spec_from_file_location("bench_decoder_builder", ROOT / "tests" / "models" / "decoder.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def export(folder: Path, layers: int) -> Path:
    decoder = _decoder_module()
    cfg = decoder.DecoderConfig(vocab=32000, hidden=2048, intermediate=5632, layers=layers, heads=32, kv_heads=4,
                                max_positions=2048)
    path = folder / f"decoder-{cfg.key()}" / "model.onnx"
    if not path.exists():
        start = time.perf_counter()
        print(f"exporting {cfg.parameters / 1e9:.2f}B parameters to {path.parent} ...", flush=True)
        decoder.export_decoder(path, cfg)
        print(f"  exported in {time.perf_counter() - start:.0f} s", flush=True)
    return path


def child(code: str, args: list[str]) -> tuple[float, float, str]:
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=ROOT)
    seconds = time.perf_counter() - start
    peak = [line for line in done.stderr.splitlines() if line.startswith("VMHWM")]
    if done.returncode or not peak:
        raise SystemExit(f"child failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return seconds, float(peak[0].split()[1]), done.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folder", type=Path)
    parser.add_argument("--layers", type=int, default=22)
    parser.add_argument("--recipes", default="lossless",
                        help="comma-separated recipes; lossy ones run with --calib synthetic (random-init "
                             "weights: memory and time, not fidelity)")
    parser.add_argument("--budget", action="append", default=[], metavar="METRIC=VALUE",
                        help="passed to the lossy runs (random-init logits are near ties: the default "
                             "top-1 budget sends every layer back to float)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.folder or Path(tmp)
        model = export(folder, args.layers)
        files = [f for f in model.parent.iterdir() if f.is_file() and f.suffix != ".onnx"]
        weights = sum(f.stat().st_size for f in files) / 2**20
        print(cpu_line())
        graph_mb = model.stat().st_size / 2**20
        print(f"\n{graph_mb:.1f} MB graph, {len(files)} external files, {weights:.0f} MB of weights\n")
        print("| step | seconds | peak RSS MB | x weights | output |\n|---|---|---|---|---|")
        seconds, peak, _ = child(ORT_ONLY, [str(model)])
        print(f"| ORT session alone (load + one decode step) | {seconds:.1f} | {peak:.0f} | {peak / weights:.2f} | |",
              flush=True)
        for recipe in args.recipes.split(","):
            out = Path(tmp) / f"out-{recipe}" / "model.onnx"
            out.parent.mkdir()
            extra = [] if recipe == "lossless" else ["--calib", "synthetic"]
            extra += [item for b in args.budget for item in ("--budget", b)] if extra else []
            seconds, peak, stdout = child(GRAPHOPT, ["optimize", str(model), "-o", str(out), "--recipe", recipe,
                                                     *extra])
            size = sum(f.stat().st_size for f in out.parent.iterdir()) / 2**20
            command = " ".join(["graphopt optimize M -o OUT --recipe", recipe, *extra])
            print(f"| `{command}` | {seconds:.1f} | {peak:.0f} | {peak / weights:.2f} | {size:.0f} MB out |\n",
                  flush=True)
            print(stdout, flush=True)
            shutil.rmtree(out.parent)


if __name__ == "__main__":
    main()
