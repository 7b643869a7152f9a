"""Wall time of the CLI's quick commands (`--version`, `--help`, `optimize --help`, `passes`,
`passes quantize`), each a fresh interpreter, as a user's shell runs them: median of --runs
(default 30) with the 10th-90th percentile spread, and `python -c pass` as the floor every
command pays. Issue 23's bar: under 0.5 s for `--help` and `passes`.

Usage: python tools/bench_cli_startup.py [--runs N]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

COMMANDS = {
    "python -c pass (floor)": ["-c", "pass"],
    "graphopt --version": ["-m", "graphopt", "--version"],
    "graphopt --help": ["-m", "graphopt", "--help"],
    "graphopt optimize --help": ["-m", "graphopt", "optimize", "--help"],
    "graphopt passes": ["-m", "graphopt", "passes"],
    "graphopt passes quantize": ["-m", "graphopt", "passes", "quantize"],
}


def wall(argv: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, *argv], check=True, capture_output=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30)
    args = parser.parse_args()
    from graphopt.report import cpu_line

    print(f"machine: {cpu_line()}; Python {sys.version.split()[0]}; {args.runs} runs each, interleaved\n")
    times: dict[str, list[float]] = {name: [] for name in COMMANDS}
    for _ in range(args.runs):  # interleaved, so drift of the machine reaches every command alike
        for name, argv in COMMANDS.items():
            times[name].append(wall(argv))
    print("| command | median s | p10-p90 s |\n|---|---:|---:|")
    for name, values in times.items():
        p10, p50, p90 = np.percentile(values, [10, 50, 90])
        print(f"| {name} | {p50:.3f} | {p10:.3f}-{p90:.3f} |")


if __name__ == "__main__":
    main()
