"""Peak memory of a calibrating run against the number of calibration feeds (issue 23's bar:
16 vs 128 feeds differ by less than one feed's size).

Each cell runs `graphopt optimize MODEL --calib DATA --data HELD -o OUT --passes PASSES` in its
own interpreter and reads its VmHWM (peak RSS) at exit. DATA holds N rendered PP-OCR samples
(det: one 992x736 page per feed, 8.8 MB; cls: one 48x192 line, 0.1 MB) as a directory of .npz
files or one .npz; HELD is a fixed set of 2 other samples, so verification is the same in every
cell and only calibration sees N. The default passes quantize without the budget search (which
measures candidates on up to 64 of the calibration feeds and keeps the input model's outputs on
them: see `--passes` to time the int8 recipe instead).

Usage: python tools/bench_data_memory.py [--models det,cls] [--forms dir,npz] [--counts 16,128]
       [--passes SPEC] [--repeat N]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from graphopt.report import cpu_line  # noqa: E402
from models.real_ppocr import ppocr_inputs, ppocr_models  # noqa: E402

CHILD = """
import sys
from graphopt.cli import main
try:
    code = main(sys.argv[1:])
finally:
    peak = int(next(l for l in open('/proc/self/status') if l.startswith('VmHWM')).split()[1]) / 1024
    print(f"VMHWM {peak}", file=sys.stderr)
sys.exit(code)
"""
PASSES = "quantize:fallback=false;speed_check=false;cache_dir=off"


def write_data(folder: Path, samples: np.ndarray, count: int, form: str) -> Path:
    if form == "npz":
        path = folder / f"calib{count}.npz"
        np.savez(path, x=samples[:count])
        return path
    path = folder / f"calib{count}"
    path.mkdir()
    for i in range(count):
        np.savez(path / f"{i:04d}.npz", x=samples[i:i + 1])
    return path


def run_cell(model: Path, calib: Path, held: Path, out: Path, passes: str) -> tuple[float, float]:
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", CHILD, "optimize", str(model), "--calib", str(calib),
                           "--data", str(held), "-o", str(out), "--passes", passes],
                          capture_output=True, text=True, cwd=ROOT)
    seconds = time.perf_counter() - start
    peak = [line for line in done.stderr.splitlines() if line.startswith("VMHWM")]
    if done.returncode or not peak:
        raise SystemExit(f"run failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return float(peak[0].split()[1]), seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="det,cls")
    parser.add_argument("--forms", default="dir,npz")
    parser.add_argument("--counts", default="16,128")
    parser.add_argument("--passes", default=PASSES)
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args()
    counts = [int(c) for c in args.counts.split(",")]
    print(cpu_line())
    print(f"passes: {args.passes}\n")
    print("| model | form | feed MB | " + " | ".join(f"{n} feeds: peak MB" for n in counts)
          + f" | {counts[-1]} - {counts[0]} MB | in feeds | seconds |")
    print("|---|---|---|" + "---|" * len(counts) + "---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for kind in args.models.split(","):
            model = ppocr_models()[kind]
            samples = ppocr_inputs(kind, max(counts), seed=1)["x"]
            held = folder / f"{kind}-held.npz"
            np.savez(held, x=ppocr_inputs(kind, 2, seed=2)["x"])
            feed_mb = samples[:1].nbytes / 2**20
            for form in args.forms.split(","):
                peaks, times = [], []
                for count in counts:
                    data = write_data(folder, samples, count, form)
                    cells = [run_cell(model, data, held, folder / "out.onnx", args.passes) for _ in range(args.repeat)]
                    peaks.append(statistics.median(c[0] for c in cells))
                    times.append(statistics.median(c[1] for c in cells))
                growth = peaks[-1] - peaks[0]
                print(f"| {kind} | {form} | {feed_mb:.2f} | " + " | ".join(f"{p:.1f}" for p in peaks)
                      + f" | {growth:+.1f} | {growth / feed_mb:+.2f} | "
                      + " / ".join(f"{t:.0f}" for t in times) + " |", flush=True)
            del samples


if __name__ == "__main__":
    main()
