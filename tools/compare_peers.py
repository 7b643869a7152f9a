"""graphopt's recipes vs the tools people use today, on the real models; writes docs/results.md.

Models (models/tasks.py): all-MiniLM-L6-v2 and PP-OCR det/rec/cls with real inputs. Tools:
every built-in graphopt recipe (lossless, modern, int8, compress, ... whatever is registered) and
`--recipe auto` (default budget: cosine 0.99, top-1 0.999 on probability outputs; goal latency),
onnxsim, onnxslim, onnxoptimizer, ONNX Runtime's quantizer (quant_pre_process, then
quantize_static with U8 activations, S8 per-channel weights, reduce_range, MinMax; when
pre-processing fails, quantize_static runs on the raw model and the failure is noted) and ONNX
Runtime's transformers optimizer (MiniLM only). Each tool runs in its own subprocess with a
time limit (`--timeout`, 900 s; `--auto-timeout` for auto, 1800 s); a crash, a timeout or a file
ONNX Runtime refuses is recorded, never hidden.

Per model and tool: tool seconds, nodes, file MB, the task metric on held-out inputs vs FP32,
and ORT CPU latency at ORT_ENABLE_ALL (batch 1; 1 thread and all threads), median of `--runs`
runs with every variant of a model timed in alternating blocks so machine noise hits each alike.

Each model's section is written to docs/results/<model>.md with its own date, commit and machine;
docs/results.md is rebuilt from all of them, so `--models rec` reruns one model, keeping the rest.

Usage: python tools/compare_peers.py [--runs 30] [--models minilm,det,rec,cls] [--out docs]
Needs: pip install -e ".[models,bench]"
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from graphopt.bench import interleaved_p50  # noqa: E402
from graphopt.recipes import RECIPES  # noqa: E402
from graphopt.report import cpu_name  # noqa: E402
from graphopt.runtime import create_session, run_feeds  # noqa: E402
from graphopt.report.svg import bars_svg  # noqa: E402
from models.tasks import TASKS, Task, get_task  # noqa: E402

GRAPHOPT = "import sys\nfrom graphopt.cli import main\nsys.exit(main(sys.argv[1:]))"
SIMPLIFIERS = {
    "onnxsim": "import onnx, onnxsim, sys\nm, ok = onnxsim.simplify(onnx.load(sys.argv[1]))\n"
               "assert ok, 'onnxsim check failed'\nonnx.save(m, sys.argv[2])",
    "onnxslim": "import onnx, onnxslim, sys\nonnx.save(onnxslim.slim(onnx.load(sys.argv[1])), sys.argv[2])",
    "onnxoptimizer": "import onnx, onnxoptimizer, sys\n"
                     "onnx.save(onnxoptimizer.optimize(onnx.load(sys.argv[1])), sys.argv[2])",
}
ORT_QUANTIZE = """
import glob, sys, numpy as np
from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                      quantize_static)
from onnxruntime.quantization.shape_inference import quant_pre_process
src, out, calib_dir, method = sys.argv[1:5]
class Reader(CalibrationDataReader):
    def __init__(self):
        self.it = iter([dict(np.load(f)) for f in sorted(glob.glob(calib_dir + "/*.npz"))])
    def get_next(self):
        return next(self.it, None)
pre = out + ".pre.onnx"
try:
    quant_pre_process(src, pre)
    src = pre
except Exception as exc:
    print("NOTE quant_pre_process failed: " + (str(exc).strip().splitlines() or [type(exc).__name__])[-1][:100])
quantize_static(src, out, Reader(), quant_format=QuantFormat.QDQ, per_channel=True, reduce_range=True,
                activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                calibrate_method=getattr(CalibrationMethod, method))
"""
ORT_TRANSFORMERS = """
import sys
from onnxruntime.transformers.optimizer import optimize_model
optimize_model(sys.argv[1], model_type="bert", num_heads=0, hidden_size=0).save_model_to_file(sys.argv[2])
"""


@dataclass
class Row:
    tool: str
    path: Path | None = None
    seconds: float = 0.0
    error: str | None = None
    notes: list[str] = field(default_factory=list)
    printed: list[str] = field(default_factory=list)  # graphopt auto: its search table
    nodes: int = 0
    mb: float = 0.0
    fidelity: float = float("nan")
    ms: dict[int, float] = field(default_factory=dict)


def tool_commands(task: Task, data: Path, calib: Path) -> dict[str, list[str]]:
    """argv (after the python executable) per tool; the output path is appended."""
    tools = {f"graphopt {name}": ["-c", GRAPHOPT, "optimize", str(task.path), "--quiet", "--recipe", name,
                                  "--data", str(data), "--calib", str(calib), "-o"]
             for name in (*RECIPES, "auto")}
    tools.update({name: ["-c", code, str(task.path)] for name, code in SIMPLIFIERS.items()})
    tools["ort quantize_static MinMax"] = ["-c", ORT_QUANTIZE, str(task.path), "OUT", str(calib), "MinMax"]
    tools["ort quantize_static Entropy"] = ["-c", ORT_QUANTIZE, str(task.path), "OUT", str(calib), "Entropy"]
    if task.name == "minilm":
        tools["ort transformers optimizer"] = ["-c", ORT_TRANSFORMERS, str(task.path)]
    return tools


def run_tool(tool: str, argv: list[str], out: Path, timeout: int) -> Row:
    argv = [a if a != "OUT" else str(out) for a in argv] + ([] if "OUT" in argv else [str(out)])
    start = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, *argv], capture_output=True, text=True, timeout=timeout,
                              cwd=out.parent)
    except subprocess.TimeoutExpired:
        return Row(tool, error=f"timed out after {timeout}s")
    row = Row(tool, seconds=time.perf_counter() - start)
    row.notes = [line[5:] for line in proc.stdout.splitlines() if line.startswith("NOTE ")]
    row.printed = auto_table(proc.stdout)
    if proc.returncode != 0 or not out.exists():
        lines = [ln for ln in (proc.stderr or proc.stdout).strip().splitlines() if ln.strip()]
        row.error = f"exit {proc.returncode}: {lines[-1][:140] if lines else 'no output'}"
        return row
    row.path = out
    return row


def auto_table(stdout: str) -> list[str]:
    """The lines of `--recipe auto`'s search table: its title, then rows that start with a mark
    column (' ', '>', '*'); the pass table after it starts with `pass`."""
    lines = stdout.splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith("auto search (goal")), None)
    if start is None:
        return []
    end = next((i for i in range(start + 1, len(lines)) if lines[i][:1] not in (" ", ">", "*")), len(lines))
    return lines[start:end]


def measure(row: Row, task: Task, reference: list) -> None:
    model = onnx.load(str(row.path), load_external_data=False)
    row.nodes = len(model.graph.node)
    row.mb = sum(p.stat().st_size for p in row.path.parent.glob(row.path.name + "*")
                 if not p.name.endswith(".pre.onnx")) / 1e6
    try:
        outputs = run_feeds(create_session(row.path, opt_level="enable_all"), task.holdout)
    except Exception as exc:  # noqa: BLE001
        row.error, row.path = f"ORT refused or failed: {str(exc).splitlines()[0][:140]}", None
        return
    row.fidelity = task.fidelity(reference, outputs, task.holdout)


def compare_task(task: Task, tmp: Path, runs: int, timeout: int, auto_timeout: int, progress) -> list[Row]:
    data, calib = tmp / f"{task.name}-data", tmp / f"{task.name}-calib"
    for folder, feeds in ((data, task.holdout), (calib, task.calib)):
        folder.mkdir()
        for i, feed in enumerate(feeds):
            np.savez(folder / f"{i:04d}.npz", **feed)
    reference = run_feeds(create_session(Path(task.path), opt_level="enable_all"), task.holdout)
    rows = [Row("FP32 input", path=Path(task.path))]
    for tool, argv in tool_commands(task, data, calib).items():
        progress(f"{task.name}: {tool}")
        out_dir = tmp / f"{task.name}-{len(rows)}"
        out_dir.mkdir()
        limit = auto_timeout if tool == "graphopt auto" else timeout
        rows.append(run_tool(tool, argv, out_dir / "model.onnx", limit))
    for row in rows:
        if row.path is not None:
            measure(row, task, reference)
    ok = [r for r in rows if r.path is not None]
    for threads in (1, 0):
        progress(f"{task.name}: timing {len(ok)} models, threads={threads or 'all'}")
        sessions = [create_session(r.path, "cpu", "enable_all", threads) for r in ok]
        for row, ms in zip(ok, interleaved_p50(sessions, task.bench_feed, runs)):
            row.ms[threads] = ms
        del sessions
    return rows


def table(task: Task, rows: list[Row]) -> str:
    base = rows[0].ms
    lines = [f"| tool | tool s | nodes | MB | {task.metric} | 1-thread ms | speed-up | "
             f"{os.cpu_count()}-thread ms | speed-up | notes |", "|" + "---|" * 10]
    for r in rows:
        if r.error:
            lines.append(f"| {r.tool} | {r.seconds:.1f} | | | | | | | | **{r.error}** |")
            continue
        speed = [f"{base[t] / r.ms[t]:.2f}x" if t in r.ms and t in base else "" for t in (1, 0)]
        lines.append(f"| {r.tool} | {r.seconds:.1f} | {r.nodes} | {r.mb:.1f} | {r.fidelity:.4f} | "
                     f"{r.ms.get(1, float('nan')):.2f} | {speed[0]} | {r.ms.get(0, float('nan')):.2f} | "
                     f"{speed[1]} | {'; '.join(r.notes)} |")
    return "\n".join(lines)


def chart(task: Task, rows: list[Row]) -> str:
    base = rows[0].ms.get(1)
    bars = [(r.tool, base / r.ms[1] if not r.error and 1 in r.ms else float("nan"),
             "" if r.error else f"({task.metric[:12]} {r.fidelity:.3f})") for r in rows]
    return bars_svg(f"{task.name}: speed-up vs FP32 (1 thread, ENABLE_ALL)", bars, width=760, ref=1.0)


def graphopt_commit() -> str:
    """The checkout's commit (and '+ local changes' when code is dirty), so results name their
    code; docs/ is not code (this tool's own output lands there)."""
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                             text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".", ":!docs"],
                               cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    return rev + (" + local changes" if dirty else "")


def machine() -> str:
    return (f"{cpu_name()}, {os.cpu_count()} cores, {platform.system()} {platform.machine()}; "
            f"Python {platform.python_version()}, onnxruntime {ort.__version__}, onnx {onnx.__version__}")


def write_results(out: Path, sections: list[tuple[Task, list[Row]]], runs: int) -> None:
    """Each model's section goes to results/<model>.md (with its own date, commit and machine),
    then results.md is rebuilt from every section file there, so `--models rec` reruns one model
    and keeps the others as they were measured."""
    folder = out / "results"
    folder.mkdir(parents=True, exist_ok=True)
    for task, rows in sections:
        (folder / f"{task.name}.svg").write_text(chart(task, rows), encoding="utf-8")
        (folder / f"{task.name}.md").write_text("\n".join(section(task, rows, runs)), encoding="utf-8")
    order = {name: i for i, name in enumerate(TASKS)}
    parts = sorted(folder.glob("*.md"), key=lambda p: (order.get(p.stem, len(order)), p.stem))
    text = ["# graphopt vs peers on real models", "",
            "Generated by `python tools/compare_peers.py` (`--models NAME` reruns one model's section) "
            "— do not edit by hand.", "",
            "- Latency: ORT CPU EP, ORT_ENABLE_ALL, batch 1, median of the runs, all variants of a model "
            "timed in alternating blocks. Fidelity: the task metric on held-out inputs vs FP32 "
            "(ORT_ENABLE_ALL).", "- Tool seconds include the tool's own verification (graphopt checks "
            "every pass in ONNX Runtime).", ""]
    for part in parts:
        text += [part.read_text(encoding="utf-8"), ""]
    (out / "results.md").write_text("\n".join(text), encoding="utf-8")


def section(task: Task, rows: list[Row], runs: int) -> list[str]:
    text = [f"## {task.name} ({Path(task.path).name})", "",
            f"Measured {datetime.date.today()}, graphopt commit {graphopt_commit()}, median of {runs} runs; "
            f"{machine()}.", "", f"Task metric: {task.metric} (the issues' bar: {task.bar}).", "",
            table(task, rows), "", f"![{task.name} speed-up](results/{task.name}.svg)", ""]
    for row in rows:
        if row.printed:
            text += [f"`{row.tool}` search ({row.seconds:.0f} s; latency at the tool's own "
                     "held-out feed, all threads):", "", "```", *row.printed, "```", ""]
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--timeout", type=int, default=900)
    parser.add_argument("--auto-timeout", type=int, default=1800,
                        help="time limit of `--recipe auto`, a search over ~10 verified chains")
    parser.add_argument("--models", default=",".join(TASKS))
    parser.add_argument("--out", default=str(ROOT / "docs"))
    args = parser.parse_args()
    progress = lambda msg: print(f"compare_peers: {msg}", file=sys.stderr, flush=True)  # noqa: E731
    sections = []
    with tempfile.TemporaryDirectory(prefix="graphopt-peers-") as tmp:
        for name in args.models.split(","):
            task = get_task(name)
            rows = compare_task(task, Path(tmp), args.runs, args.timeout, args.auto_timeout, progress)
            sections.append((task, rows))
            print(f"\n## {name}\n{table(task, rows)}", flush=True)
    write_results(Path(args.out), sections, args.runs)
    print(f"\nwrote {Path(args.out) / 'results.md'}")


if __name__ == "__main__":
    main()
