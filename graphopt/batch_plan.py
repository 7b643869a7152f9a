"""Planning a batch: which models, where each one's files go, and each model's argument list.

Why up front: every name is decided before anything runs, so two inputs never race for one
output and a rerun of the same command writes the same files. The rules:
- Each positional is an input model; one ending in `.txt` is a manifest whose lines are model
  paths (blank lines and lines starting with `#` skipped; relative paths are relative to the
  manifest's folder).
- A model's NAME is its file stem (`a/m.onnx` -> `m`); a stem met again gets `-2`, `-3`, ...
  (the first free one; stems compare case-blind, for case-insensitive file systems). Its files:
  DIR/NAME.onnx (with DIR/NAME.onnx.data when the single run writes external data), its JSON
  report DIR/NAME.report.json (always: the batch table reads it), DIR/NAME.report.html when a
  `--report` names an .html page, DIR/NAME.inputs.json / DIR/NAME.outputs.json for
  `--save-inputs` / `--save-outputs`.
- Every other option given to the batch is passed on to each model's run unchanged, so a batch
  of one model runs exactly `graphopt optimize IN -o DIR/NAME.onnx --report ... [options]`.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Callable

from graphopt.batch import BatchUnit
from graphopt.errors import InputError

MANIFEST_SUFFIX = ".txt"
# the batch's own arguments (or ones it sets per model): never passed on as they are
BATCH_OWN = frozenset({"command", "debug", "model", "output_path", "output", "out_dir", "executor", "report",
                       "save_inputs", "save_outputs", "quiet"})


def expand_inputs(positionals: list[str]) -> list[str]:
    """The model paths: positionals as given, each `.txt` manifest replaced by the paths it lists."""
    models: list[str] = []
    for item in positionals:
        models += read_manifest(Path(item)) if item.lower().endswith(MANIFEST_SUFFIX) else [item]
    return models


def read_manifest(path: Path) -> list[str]:
    """The model paths a manifest lists, resolved against its folder."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else "not a UTF-8 text file"
        raise InputError(f"manifest {path}: cannot read it ({why})") from None
    lines = [line.strip() for line in text.splitlines()]
    models = [str(path.parent / line) for line in lines if line and not line.startswith("#")]
    if not models:
        raise InputError(f"manifest {path}: lists no model paths")
    return models


def output_names(models: list[str]) -> list[str]:
    """One distinct NAME per model: its stem, with `-2`, `-3`, ... for a stem already taken."""
    stems = [Path(model).stem or "model" for model in models]
    names: list[str | None] = [None] * len(stems)
    taken: set[str] = set()
    for i, stem in enumerate(stems):  # first, every stem that is free keeps its own name
        if stem.casefold() not in taken:
            names[i] = stem
            taken.add(stem.casefold())
    for i, stem in enumerate(stems):
        k = 2
        while names[i] is None:
            if f"{stem}-{k}".casefold() not in taken:
                names[i] = f"{stem}-{k}"
                taken.add(names[i].casefold())
            k += 1
    return [name for name in names if name is not None]


def plan_units(args: argparse.Namespace, out_dir: Path,
               parse: Callable[[list[str]], argparse.Namespace]) -> list[BatchUnit]:
    """The batch's units (`args`: the parsed `optimize` arguments; `parse`: the CLI's parser, which
    checks that the options passed on read back as given)."""
    models = expand_inputs([args.model, *args.output_path])
    options = passed_on(args, parse)
    units = []
    for index, (model, name) in enumerate(zip(models, output_names(models))):
        output, report = out_dir / f"{name}.onnx", out_dir / f"{name}.report.json"
        own = ["-o", str(output), "--report", str(report), "--quiet"]
        if any(str(r).lower().endswith((".html", ".htm")) for r in args.report):
            own += ["--report", str(out_dir / f"{name}.report.html")]
        if args.save_inputs:
            own += ["--save-inputs", str(out_dir / f"{name}.inputs.json")]
        if args.save_outputs:
            own += ["--save-outputs", str(out_dir / f"{name}.outputs.json")]
        argv = (["--debug"] if args.debug else []) + ["optimize", *own, *options, "--", model]
        units.append(BatchUnit(index, model, str(output), str(report), tuple(argv)))
    _refuse_overwriting_inputs(units)
    return units


def _refuse_overwriting_inputs(units: list[BatchUnit]) -> None:
    """No model's output may be another model's input (`src/m.onnx` and `DIR/m.onnx` in one batch:
    the first's output is DIR/m.onnx). Each run checks its own input; this checks across them."""
    inputs = {os.path.realpath(unit.model) for unit in units}
    for unit in units:
        for path in (unit.output, unit.output + ".data"):
            if os.path.realpath(path) in inputs - {os.path.realpath(unit.model)}:
                raise InputError(f"{unit.model} would be written to {path}, another input model of this batch; "
                                 "give another --out-dir")


def passed_on(args: argparse.Namespace, parse: Callable[[list[str]], argparse.Namespace]) -> list[str]:
    """The options given to the batch that each model's run takes as they are, as `--flag=value`
    (so a value starting with '-' stays a value); those left at their defaults are left out."""
    defaults = parse(["optimize", "model.onnx"])
    argv: list[str] = []
    for dest, value in vars(args).items():
        if dest in BATCH_OWN or value == getattr(defaults, dest, None):
            continue
        flag = "--" + dest.replace("_", "-")
        if value is True:
            argv.append(flag)
        else:
            argv += [f"{flag}={item}" for item in (value if isinstance(value, list) else [value])]
    again = parse(["optimize", *argv, "--", "model.onnx"])
    changed = [d for d, v in vars(args).items() if d not in BATCH_OWN and getattr(again, d, None) != v]
    if changed:  # an option whose flag is not its dest: a bug here, not the user's
        raise RuntimeError(f"batch: options {', '.join(changed)} do not pass on to each model's run as given")
    return argv
