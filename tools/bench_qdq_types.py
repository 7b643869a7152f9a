"""Q/DQ types side by side on the repo's real task models: 8-bit vs 16-bit activations (both with
8-bit per-channel weights) on the ort-cpu placement, and symmetric int8 vs FP8 E4M3FN on the
tensorrt placement: what each type costs in task fidelity.

Each row: the `modern` recipe then `quantize` with MinMax ranges over the task's calibration feeds,
every node quantized (fallback and speed check off, so rows of one placement differ in types
only), judged on the task's held-out feeds with its own metric (models/tasks.py: MiniLM worst
sentence cosine, PP-OCR rec decoded-line agreement, det text-map agreement, cls top-1) and the
worst-sample output cosine, with ORT graph optimizations off (the graph as written). No latency
column: ONNX Runtime's CPU EP has no 16-bit or FP8 kernels, so timing those would measure Q/DQ
simulation.

Usage: python tools/bench_qdq_types.py [--models minilm,rec,det,cls]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from graphopt import optimize  # noqa: E402
from graphopt.recipes import RECIPES  # noqa: E402
from graphopt.report import cpu_line  # noqa: E402
from graphopt.verify import reference_outputs  # noqa: E402

EVERY_NODE = "quantize:method=minmax;fallback=false;speed_check=false"
VARIANTS = {"ort-cpu A8W8 (uint8 act)": EVERY_NODE,
            "ort-cpu A16W8 (uint16 act)": f"{EVERY_NODE};activation_type=uint16",
            "tensorrt int8 (symmetric)": f"{EVERY_NODE};profile=tensorrt",
            "tensorrt FP8 E4M3FN": f"{EVERY_NODE};profile=tensorrt;activation_type=float8e4m3fn;"
                                   "weight_type=float8e4m3fn"}


def worst_cosine(ref: list[dict], cand: list[dict]) -> float:
    worst = 1.0
    for r, c in zip(ref, cand):
        for name, a in r.items():
            a, b = np.asarray(a, np.float64).reshape(len(a), -1), np.asarray(c[name], np.float64).reshape(len(a), -1)
            denom = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
            cos = np.where(denom > 0, (a * b).sum(1) / np.maximum(denom, 1e-30), 1.0)
            worst = min(worst, float(cos.min()))
    return worst


def main() -> None:
    from models.tasks import get_task

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="minilm,rec,det,cls")
    args = parser.parse_args()
    print(f"machine: {cpu_line()}\n")
    print("| model | types | task metric | worst-sample cos | quantize s |\n|---|---|---|---:|---:|")
    for name in args.models.split(","):
        task = get_task(name)
        reference = reference_outputs(Path(task.path), task.holdout)
        for label, spec in VARIANTS.items():
            began = time.perf_counter()
            result = optimize(str(task.path), passes=",".join([*RECIPES["modern"], spec]), calib=task.calib,
                              data=task.holdout[:2], verify="off")  # judged here, on every held-out feed
            seconds = time.perf_counter() - began
            applied = [p for p in result.report["passes"] if p["name"] == "quantize" and p.get("applied")]
            if not applied:
                print(f"| {name} | {label} | not applied | - | {seconds:.1f} |")
                continue
            outputs = reference_outputs(result.model, task.holdout)
            fidelity = task.fidelity(reference, outputs, task.holdout)
            print(f"| {name} | {label} | {task.metric} {fidelity:.4f} | {worst_cosine(reference, outputs):.5f} | "
                  f"{seconds:.1f} |")
            sys.stdout.flush()


if __name__ == "__main__":
    main()
