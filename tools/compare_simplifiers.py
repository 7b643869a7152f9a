"""graphopt (`lossless`; `modern` = opset 20 first; `--target ort` = with ONNX Runtime contrib
fusions) vs onnxsim, onnxslim and onnxoptimizer on the same models, in one run.

Per model and tool: node count, contrib (non-standard-domain) nodes, file size, max abs error vs the input model on the same feed
(ORT CPU, graph optimizations off), whether output shapes are unchanged, the tool's wall time,
and ORT CPU latency at ORT_ENABLE_ALL with 1 and 2 threads: median of `--runs` runs, all
variants of a model timed in alternating blocks so machine noise hits each alike.

Each tool runs in its own subprocess with a time limit; a tool that crashes, times out or
writes a model ORT refuses is recorded as such, not hidden. Peers come with
`pip install -e ".[bench]"`; real models with `pip install -e ".[models]"` (skipped if absent).

Usage: python tools/compare_simplifiers.py [--runs 30] [--models default,cnn,...] [--timeout 600]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from graphopt.bench import interleaved_p50  # noqa: E402
from graphopt.runtime import create_session  # noqa: E402
from model_cases import ModelCase, all_cases  # noqa: E402

PEERS = {
    "onnxsim": "import onnx, onnxsim, sys\nm, ok = onnxsim.simplify(onnx.load(sys.argv[1]))\n"
               "assert ok, 'onnxsim check failed'\nonnx.save(m, sys.argv[2])",
    "onnxslim": "import onnx, onnxslim, sys\nonnx.save(onnxslim.slim(onnx.load(sys.argv[1])), sys.argv[2])",
    "onnxoptimizer": "import onnx, onnxoptimizer, sys\n"
                     "onnx.save(onnxoptimizer.optimize(onnx.load(sys.argv[1])), sys.argv[2])",
}
GRAPHOPT = "import sys\nfrom graphopt.cli import main\nsys.exit(main(sys.argv[1:]))"


@dataclass
class Row:
    tool: str
    path: Path | None = None
    seconds: float = 0.0
    error: str | None = None
    nodes: int = 0
    kb: float = 0.0
    max_abs: float = float("nan")
    shapes_ok: bool = True
    ms: dict[int, float] = field(default_factory=dict)
    contrib: int = 0  # nodes outside the standard ONNX domains (TensorRT/OpenVINO may refuse)


GRAPHOPT_VARIANTS = {"graphopt": ["--recipe", "lossless"], "graphopt-modern": ["--recipe", "modern"],
                     "graphopt-ort": ["--target", "ort"]}


def run_tool(tool: str, src: Path, out: Path, data: Path, timeout: int) -> Row:
    if tool in GRAPHOPT_VARIANTS:
        argv = [sys.executable, "-c", GRAPHOPT, "optimize", str(src), "-o", str(out), "--quiet", "--data",
                str(data), *GRAPHOPT_VARIANTS[tool]]
    else:
        argv = [sys.executable, "-c", PEERS[tool], str(src), str(out)]
    start = time.perf_counter()
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, cwd=out.parent)
    except subprocess.TimeoutExpired:
        return Row(tool, error=f"timed out after {timeout}s")
    row = Row(tool, seconds=time.perf_counter() - start)
    if proc.returncode != 0 or not out.exists():
        lines = (proc.stderr or proc.stdout).strip().splitlines()
        row.error = f"exit {proc.returncode}: {lines[-1][:120] if lines else 'no output'}"
        return row
    row.path = out
    return row


def measure(row: Row, ref: list[np.ndarray], feed: dict) -> None:
    model = onnx.load(str(row.path), load_external_data=False)
    row.nodes = len(model.graph.node)
    row.contrib = sum(1 for n in model.graph.node if n.domain not in ("", "ai.onnx", "ai.onnx.ml"))
    row.kb = sum(p.stat().st_size for p in row.path.parent.glob(row.path.name + "*")) / 1e3
    try:
        got = create_session(row.path).run(None, feed)
    except Exception as exc:  # noqa: BLE001
        row.error, row.path = f"ORT refused or failed: {str(exc).splitlines()[0][:120]}", None
        return
    row.shapes_ok = [g.shape for g in got] == [r.shape for r in ref]
    row.max_abs = max(float(np.max(np.abs(g - r))) if g.shape == r.shape else float("inf")
                      for g, r in zip(got, ref))


def compare_case(case: ModelCase, tmp: Path, runs: int, timeout: int) -> list[Row]:
    data = tmp / f"{case.name}.npz"
    np.savez(data, **case.feed)
    ref = create_session(case.path).run(None, case.feed)
    rows = [Row("input", path=case.path)]
    for tool in [*GRAPHOPT_VARIANTS, *PEERS]:
        out_dir = tmp / f"{case.name}-{tool}"
        out_dir.mkdir()
        rows.append(run_tool(tool, case.path, out_dir / "model.onnx", data, timeout))
    for row in rows:
        if row.path is not None:
            measure(row, ref, case.feed)
    ok = [r for r in rows if r.path is not None]
    for threads in (1, 2):
        sessions = [create_session(r.path, "cpu", "enable_all", threads) for r in ok]
        for row, ms in zip(ok, interleaved_p50(sessions, case.feed, runs)):
            row.ms[threads] = ms
    return rows


def print_case(case: ModelCase, rows: list[Row]) -> None:
    print(f"\n{case.name}  ({case.description})")
    print(f"{'tool':16} {'nodes':>6} {'contrib':>7} {'KB':>9} {'max_abs':>9} {'shapes':>7} {'1T ms':>8} "
          f"{'2T ms':>8} {'tool s':>7}")
    for r in rows:
        if r.error:
            print(f"{r.tool:16} {r.error}")
            continue
        print(f"{r.tool:16} {r.nodes:6d} {r.contrib:7d} {r.kb:9.0f} {r.max_abs:9.2g} "
              f"{'same' if r.shapes_ok else 'CHANGED':>7} {r.ms.get(1, float('nan')):8.2f} "
              f"{r.ms.get(2, float('nan')):8.2f} {r.seconds:7.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--timeout", type=int, default=600)
    parser.add_argument("--models", help="comma-separated case names (default: all available)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="graphopt-peers-") as tmp:
        cases = all_cases(Path(tmp), args.models.split(",") if args.models else None)
        for case in cases:
            print_case(case, compare_case(case, Path(tmp), args.runs, args.timeout))
    print(f"\nlatency: ORT CPU ENABLE_ALL, median of {args.runs} runs, variants interleaved; "
          "max_abs vs the input model on the same feed")


if __name__ == "__main__":
    main()
