"""Zoo benchmark: the `lossless` recipe on the real graphs shipped in the onnx wheel.

For each model in onnx/backend/test/data/light: node count and file size before/after,
max abs error against the expected output file, graphopt's own run time, and ORT CPU latency
of input vs output at ORT_ENABLE_ALL (what deployments run), measured side by side:
the two sessions alternate in blocks of 5 runs until each has `--runs` samples, so machine
noise hits both alike. Prints medians and the ratio (input / output; > 1 means faster).

Usage: python tools/bench_zoo.py [--runs 30] [--threads 1]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from graphopt import optimize  # noqa: E402
from graphopt.bench import interleaved_p50  # noqa: E402
from graphopt.runtime import create_session  # noqa: E402
from models.zoo import light_model_paths, load_case  # noqa: E402


def interleaved_medians(path_a: Path, path_b: Path, feed, runs: int, threads: int) -> tuple[float, float]:
    """Median ms of two models at ENABLE_ALL, timed alternately in blocks of 5."""
    sessions = [create_session(p, "cpu", "enable_all", threads) for p in (path_a, path_b)]
    a, b = interleaved_p50(sessions, feed, runs)
    return a, b


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    header = f"{'model':22} {'nodes':>11} {'KB':>13} {'max_abs':>9} {'tool s':>7} {'in ms':>8} {'out ms':>8} {'ratio':>6}"
    print(header)
    print("-" * len(header))
    with tempfile.TemporaryDirectory(prefix="graphopt-zoo-") as tmp:
        for path in light_model_paths():
            case = load_case(path)
            out = Path(tmp) / f"{case.name}.onnx"
            start = time.perf_counter()
            result = optimize(path, out, data=[case.feed])
            tool_s = time.perf_counter() - start
            got = create_session(out).run(None, case.feed)[0]
            err = float(np.max(np.abs(got - case.expected[0])))
            t_in, t_out = interleaved_medians(path, out, case.feed, args.runs, args.threads)
            nodes = result.report["summary"]["nodes"]
            kb = (path.stat().st_size / 1e3, out.stat().st_size / 1e3)
            print(f"{case.name:22} {nodes[0]:>5}->{nodes[1]:<5} {kb[0]:>6.0f}->{kb[1]:<6.0f} {err:9.2g} "
                  f"{tool_s:7.1f} {t_in:8.2f} {t_out:8.2f} {t_in / t_out:6.2f}")
    print(f"latency: ORT CPU ENABLE_ALL, {args.threads} thread(s), median of {args.runs} runs each, interleaved")


if __name__ == "__main__":
    main()
