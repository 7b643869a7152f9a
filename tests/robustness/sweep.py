"""One sweep step: optimize one model with one recipe or one pass and check every invariant.

`prepare` loads a case once (feeds, ONNX Runtime reference outputs of the input model,
whether those meet the case's expected outputs) or says why the case cannot run here;
`check_run` optimizes into a fresh directory and returns the list of broken invariants
(empty when all hold). Lossy runs need real data: on a case whose feeds were synthesized they
opt in with `calib="synthetic"` (and the report must then say nothing was checked on real data);
cases with real inputs pass them as `data`. Recipes and passes are read from graphopt's registries at call time,
so a newly registered pass or recipe is swept without editing this file.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import onnx
import onnx_ir as ir

from graphopt import optimize
from graphopt.data import synthesize_feeds
from graphopt.errors import GraphoptError
from graphopt.registry import registered_passes
from graphopt.recipes import RECIPES, passes_from_recipe, passes_from_spec
from graphopt.tolerance import Lossy, Reassoc

from robustness.invariants import (Allowed, DirSnapshot, expected_problems, numeric_problems,
                        rollback_problems, run, signature, signature_problems, size_problems)

Feed = dict[str, np.ndarray]


def sweep_runs() -> list[tuple[str, str]]:
    """("recipe", name) for every recipe, then ("pass", name) for every registered pass."""
    return [("recipe", name) for name in RECIPES] + [("pass", name) for name in registered_passes()]


@dataclass
class Prepared:
    path: Path
    feeds: list[Feed]
    reference: list[list[np.ndarray]]
    output_names: list[str]
    expected: list[np.ndarray] | None  # None: no expected outputs, or ORT itself does not meet them
    note: str
    rtol: float
    atol: float
    synthetic: bool = False  # the feeds were synthesized here, not the case's own inputs


def prepare(case, directory: Path) -> Prepared | str:
    """The case ready to sweep, or the reason it cannot run here (a string)."""
    directory.mkdir(parents=True, exist_ok=True)
    path = case.write(directory)
    try:
        model = onnx.load(path, load_external_data=False)
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as exc:  # noqa: BLE001
        return f"the input does not pass onnx.checker: {_line(exc)}"
    non_tensor = [v.name for v in model.graph.input if not v.type.HasField("tensor_type")]
    if non_tensor:
        return f"non-tensor graph inputs {non_tensor} (graphopt feeds tensors only)"
    feeds = case.feeds()
    synthetic = feeds is None
    if synthetic:
        try:
            feeds = synthesize_feeds(ir.load(path), 1)
        except GraphoptError as exc:
            return f"graphopt cannot synthesize inputs: {exc}"
    try:
        reference = run(path, feeds)
    except Exception as exc:  # noqa: BLE001
        return f"ONNX Runtime cannot run the input model: {_line(exc)}"
    expected, note = case.expected(), ""
    if expected is not None:
        misses = expected_problems(reference[0], expected, case.rtol, case.atol)
        if misses:
            expected, note = None, f"ORT's own output misses the expected file ({misses[0]})"
    return Prepared(path, feeds, reference, [o.name for o in model.graph.output], expected, note,
                    case.rtol, case.atol, synthetic)


def _line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__


def allowed_change(kind: str, name: str, report: dict) -> Allowed:
    """The loosest tolerance among the passes that were applied (lossy > reassoc > exact)."""
    passes = passes_from_recipe(name) if kind == "recipe" else passes_from_spec(name)
    by_name = {p.name: p.tolerance for p in passes}
    applied = [by_name[r["name"]] for r in report["passes"] if r["applied"]]
    if any(isinstance(t, Lossy) for t in applied):
        return Allowed("lossy", min_cosine=0.99)
    reassoc = [t for t in applied if isinstance(t, Reassoc)]
    if reassoc:
        return Allowed("reassoc", rtol=sum(t.rtol for t in reassoc), atol=sum(t.atol for t in reassoc))
    return Allowed("exact")


def lossy_pass_names() -> set[str]:
    return {name for name, cls in registered_passes().items() if isinstance(cls.tolerance, Lossy)}


def _data_arguments(prepared: Prepared, kind: str, name: str) -> dict:
    """Real inputs as `data`; synthesized ones as an explicit opt-in where a lossy pass runs."""
    passes = passes_from_recipe(name) if kind == "recipe" else passes_from_spec(name)
    if prepared.synthetic and any(isinstance(p.tolerance, Lossy) for p in passes):
        return {"calib": "synthetic"}
    return {"data": prepared.feeds}


def _synthetic_problems(arguments: dict, report: dict) -> list[str]:
    data = report.get("data") or {}
    if arguments.get("calib") == "synthetic" and not (data.get("synthetic") and data.get("warnings")):
        return ["a lossy run on synthetic inputs does not say so in the report's data"]
    return []


def check_run(prepared: Prepared, kind: str, name: str, out_dir: Path,
              watch: list[Path]) -> tuple[list[str], dict | None]:
    """Optimize and check; returns (broken invariants, report). `watch`: directories that must
    not gain entries (the working directory, the temp directory, the input's directory)."""
    out = out_dir / "model.onnx"
    snapshot = DirSnapshot(watch).take()
    arguments = _data_arguments(prepared, kind, name)
    try:
        result = optimize(prepared.path, out, **arguments,
                          **({"recipe": name} if kind == "recipe" else {"passes": name}))
    except GraphoptError as exc:
        return [f"graphopt refused a model ONNX Runtime runs (exit {exc.exit_code}): {exc}"], None
    problems = [f"file left behind: {p}" for p in snapshot.new_entries()]
    extra = sorted(p.name for p in out_dir.iterdir() if p.name not in ("model.onnx", "model.onnx.data"))
    problems += [f"unexpected entry in the output directory: {p}" for p in extra]
    report = result.report
    problems += rollback_problems(report, lossy_pass_names()) + _synthetic_problems(arguments, report)
    problems += _file_problems(prepared, out, kind, name, report)
    return problems, report


def _file_problems(prepared: Prepared, out: Path, kind: str, name: str, report: dict) -> list[str]:
    try:
        onnx.checker.check_model(str(out), full_check=True)
    except Exception as exc:  # noqa: BLE001
        return [f"onnx.checker rejects the output: {_line(exc)}"]
    try:
        outputs = run(out, prepared.feeds)
    except Exception as exc:  # noqa: BLE001
        return [f"ONNX Runtime cannot load or run the output: {_line(exc)}"]
    before = signature(onnx.load(prepared.path, load_external_data=False))
    problems = signature_problems(before, signature(onnx.load(out, load_external_data=False)))
    allowed = allowed_change(kind, name, report)
    problems += numeric_problems(prepared.reference, outputs, prepared.output_names, allowed)
    if prepared.expected is not None and allowed.kind != "lossy":
        problems += expected_problems(outputs[0], prepared.expected, prepared.rtol, prepared.atol)
    problems += size_problems(prepared.path, out, report)
    return problems


@contextlib.contextmanager
def isolated_dirs(root: Path) -> Iterator[tuple[Path, Path]]:
    """Run with a fresh, empty working directory and temp directory under `root` (TMPDIR and
    `tempfile.tempdir` both point there), so "no file appears outside the output path" can be
    checked exactly even while other processes use /tmp. Restores both afterwards."""
    cwd, tmp = root / "cwd", root / "tmp"
    cwd.mkdir(parents=True, exist_ok=True)
    tmp.mkdir(parents=True, exist_ok=True)
    saved = (os.getcwd(), os.environ.get("TMPDIR"), tempfile.tempdir)
    os.chdir(cwd)
    os.environ["TMPDIR"], tempfile.tempdir = str(tmp), str(tmp)
    try:
        yield cwd, tmp
    finally:
        os.chdir(saved[0])
        if saved[1] is None:
            os.environ.pop("TMPDIR", None)
        else:
            os.environ["TMPDIR"] = saved[1]
        tempfile.tempdir = saved[2]


def sweep_one(prepared: Prepared, kind: str, name: str, root: Path) -> tuple[list[str], dict | None]:
    """`check_run` in isolated directories under `root`, watching them and the input's folder."""
    out_dir = root / "out"
    out_dir.mkdir(parents=True, exist_ok=True)
    with isolated_dirs(root) as (cwd, tmp):
        return check_run(prepared, kind, name, out_dir, [cwd, tmp, prepared.path.parent])

