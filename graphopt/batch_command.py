"""`graphopt optimize A.onnx B.onnx ... --out-dir DIR [--executor ...]`: the batch's command line.

It checks what only a batch can get wrong (`-o` beside `--out-dir`, DIR not a folder, a manifest
that cannot be read, a model's output that is another model's input), plans the units
(graphopt.batch_plan), runs them on the executor (graphopt.batch), then prints one table (a row
per model) and writes the same rows to DIR/batch.json (atomically, graphopt.transaction).

Exit code of the batch (the single run's codes, graphopt.cli, summed up): 0 when every model
succeeded; 2 when any model's input was bad (its own run exited 2: a missing file, not ONNX, an
option its model refuses); 1 otherwise (a model missed its verification or budget, hit a bug in
graphopt (its row says exit 3), or lost its worker twice). A usage error of the batch itself is
exit 2 before anything runs; Ctrl-C (exit 130) or SIGTERM (143) stops the batch without writing
batch.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable

from graphopt.batch import Entry, UnitResult, run_units
from graphopt.batch_plan import plan_units
from graphopt.errors import InputError
from graphopt.executor import ExecutorSpec, check_available

BATCH_JSON = "batch.json"
SCHEMA_VERSION = 1


def cmd_batch(args: argparse.Namespace, parse: Callable[[list[str]], argparse.Namespace], entry: Entry) -> int:
    """Run the batch `args` describes (`parse`: the CLI's parser; `entry`: its `main`, which runs
    each model); returns its exit code (above).
    Progress, a line per finished model, goes to stderr unless --quiet; the table to stdout."""
    say = _quiet if args.quiet else _say
    if args.output:
        raise InputError(f"-o {args.output} names one output; with --out-dir every model's output goes to "
                         f"{args.out_dir}/NAME.onnx: drop -o")
    spec = args.executor or ExecutorSpec()
    check_available(spec)
    units = plan_units(args, Path(args.out_dir), parse)
    out_dir = _make_out_dir(Path(args.out_dir))  # once nothing else can refuse the batch
    say(f"batch: {len(units)} model(s) on --executor {spec}")
    results = run_units(units, spec, entry, say)
    code = batch_exit_code(results)
    print(format_batch(results))
    path = out_dir / BATCH_JSON
    write_batch_json(path, results, spec, code)
    print(f"wrote {path}")
    return code


def _say(message: str) -> None:
    print(f"graphopt: {message}", file=sys.stderr, flush=True)


def _quiet(message: str) -> None:
    pass


def _make_out_dir(out_dir: Path) -> Path:
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"--out-dir {out_dir}: exists and is not a folder")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"--out-dir {out_dir}: cannot create it ({exc.strerror or exc})") from None
    if not os.access(out_dir, os.W_OK | os.X_OK):
        raise InputError(f"--out-dir {out_dir}: not writable")
    return out_dir


def batch_exit_code(results: list[UnitResult]) -> int:
    """0 all succeeded; 2 any model's input was bad; 1 any other failure."""
    codes = {r.exit_code for r in results}
    if codes <= {0}:
        return 0
    return 2 if 2 in codes else 1


def format_batch(results: list[UnitResult]) -> str:
    """The summary table: one row per model, with its output or its one-line error."""
    from graphopt.report.table import text_table

    header = ["model", "status", "nodes", "MB", "worst cos", "sec", "output / error"]
    rows = [[r.model, r.status + (" (retried)" if r.attempts > 1 and r.exit_code == 0 else ""),
             _pair(r.nodes_before, r.nodes_after, "{}"), _pair(r.mb_before, r.mb_after, "{:.2f}"),
             "-" if r.worst_cosine is None else f"{r.worst_cosine:.6f}", f"{r.seconds:.1f}",
             r.output if r.exit_code == 0 else (r.error or "")] for r in results]
    failed = sum(r.exit_code != 0 for r in results)
    lines = [line.rstrip() for line in text_table(header, rows)]
    return "\n".join(lines + [f"{len(results) - failed} of {len(results)} model(s) optimized"])


def _pair(before: Any, after: Any, form: str) -> str:
    return "-" if before is None else f"{form.format(before)} -> {form.format(after)}"


def write_batch_json(path: Path, results: list[UnitResult], spec: ExecutorSpec, code: int) -> None:
    """DIR/batch.json: the table's rows (every UnitResult field), the executor and the exit code."""
    from graphopt.report import write_text_atomic

    document = {"schema_version": SCHEMA_VERSION, "executor": str(spec), "exit_code": code,
                "models": [asdict(r) for r in results]}
    write_text_atomic(json.dumps(document, indent=1) + "\n", path)
