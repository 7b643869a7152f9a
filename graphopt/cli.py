"""The `graphopt` command line. It only parses arguments and calls the API.

Exit codes (README "CLI"): 0 success; 1 a verification or budget failure; 2 bad input or
usage, with one readable line on stderr (a traceback only with --debug), in every subcommand;
3 a bug in graphopt (any exception that is not graphopt's own); 130 interrupted. Numeric
arguments are range-checked while parsing, so a bad one never reaches the API. No output
file on a non-zero exit. A batch (`optimize ... --out-dir DIR`, graphopt.batch_command) runs each
model as a single run and sums their codes up: 0 all succeeded, 2 any bad input, else 1.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import traceback

from graphopt.errors import GraphoptError, InputError
from graphopt.limits import PRECISIONS, RECIPE_SUMMARIES, RUNS, SEED, THREADS


def _int_in(low: int, high: int):
    """An argparse `type=` that accepts integers from `low` to `high` (one-line refusal)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got '{text}'") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be an integer from {low} to {high}, got {value}")
        return value

    return parse


def _executor(text: str):
    """An argparse `type=` for `--executor` (graphopt.executor.ExecutorSpec; one-line refusal)."""
    from graphopt.executor import ExecutorSpec

    try:
        return ExecutorSpec.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _seconds(text: str) -> float:
    """An argparse `type=` for a positive, finite number of seconds."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got '{text}'") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text}")
    return value


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one readable line, exit 2
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        sys.exit(2)


class _Help(argparse.RawDescriptionHelpFormatter):
    """Every option's default in its help line (none for flags and empty ones); descriptions (the
    recipe list) as written."""

    def _get_help_string(self, action):
        text = action.help or ""
        if action.default not in (None, False, [], argparse.SUPPRESS) and "%(default)" not in text:
            text += " (default: %(default)s)"
        return text


def build_parser() -> argparse.ArgumentParser:
    from graphopt import __version__

    parser = _Parser(prog="graphopt", description="Verified ONNX graph rewriting.")
    parser.add_argument("--version", action="version", version=f"graphopt {__version__}")
    parser.add_argument("--debug", action="store_true", help="tracebacks and pass no-match reasons")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    _add_optimize(sub)
    p = sub.add_parser("inspect", help="ops, params, bytes, MACs, opsets, inputs/outputs")
    p.add_argument("model")
    p.add_argument("--json", action="store_true")
    p.add_argument("--target", help="flag what this runtime cannot parse: portable, ort, tensorrt, openvino; "
                   "exit 1 if anything is flagged")
    p = sub.add_parser("compare", help="numeric comparison of two models, per output")
    p.add_argument("a")
    p.add_argument("b")
    p.add_argument("--data")
    p.add_argument("--shape", action="append", default=[])
    p.add_argument("--json", action="store_true")
    _add_custom_ops(p)
    p = sub.add_parser("bench", help="latency on ONNX Runtime execution providers", formatter_class=_Help)
    p.add_argument("model")
    p.add_argument("--providers", help="default: every provider this onnxruntime has")
    p.add_argument("--threads", type=_int_in(*THREADS), default=0, help="ORT intra-op threads (0: ORT's default)")
    p.add_argument("--runs", type=_int_in(*RUNS), default=50, help="timed runs")
    p.add_argument("--shape", action="append", default=[], metavar="NAME=DIMS", help="symbolic dims of an input")
    p.add_argument("--data", help=".npz or directory of .npz: the feed to time")
    p.add_argument("--json", action="store_true")
    _add_custom_ops(p)
    p = sub.add_parser("passes", help="every pass with its options and defaults; `passes NAME`: one pass explained")
    p.add_argument("name", nargs="?", help="a pass name: its description and each option explained")
    for p in sub.choices.values():
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    return parser


def _add_optimize(sub) -> None:
    recipes = "\n".join(f"  {name:<13} {line}" for name, line in RECIPE_SUMMARIES.items())
    p = sub.add_parser("optimize", help="run a recipe or pass list, verified pass by pass", formatter_class=_Help,
                       description=f"Run a recipe or pass list, verified pass by pass.\n\nrecipes:\n{recipes}")
    p.add_argument("model", help="the input model")
    p.add_argument("output_path", nargs="*", metavar="OUTPUT", help="the optimized model (or -o); with "
                   "--out-dir: more input models")
    p.add_argument("-o", "--output", help="the optimized model (or the positional OUTPUT)")
    p.add_argument("--out-dir", metavar="DIR", help="a batch: every positional is an input model (or a .txt "
                   "manifest of model paths); each one goes to DIR/NAME.onnx with DIR/NAME.report.json, and "
                   "DIR/batch.json sums them up")
    p.add_argument("--executor", type=_executor, metavar="local|process:N|ray[:ADDRESS]",
                   help="with --out-dir: where the models run (default: local, one after another in this process; "
                   "process:N: N worker processes)")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--passes", help="name[:key=value;...],... (see `graphopt passes`)")
    group.add_argument("--recipe", help="a recipe name (listed above; default lossless) or a recipe file "
                       "(.toml, .json or .yaml: {passes: [...]})")
    group.add_argument("--precision", choices=sorted(PRECISIONS),
                       help="short form of the matching recipe (Olive's and ModelOpt's flag): " +
                       ", ".join(f"{k} = --recipe {v}" for k, v in PRECISIONS.items()))
    p.add_argument("--calib", help=".npz, .npy, directory of .npz, Polygraphy's .json or a loader.py[:FUNC] "
                   "data loader script: calibration data; `synthetic` (./synthetic for a file of that name): "
                   "generated inputs, nothing checked on real data")
    p.add_argument("--data", help="verification data, in the forms --calib takes")
    p.add_argument("--shape", action="append", default=[], metavar="NAME=DIMS",
                   help="symbolic dims of an input when no data is given (repeatable)")
    p.add_argument("--budget", action="append", default=[], metavar="METRIC=VALUE",
                   help="accuracy budget, e.g. cosine=0.99 or NAME:top1=0.999 (repeatable; default: "
                   "cosine=0.99 and top1_dist=0.999)")
    p.add_argument("--providers", help="for --bench: some of cpu,cuda,tensorrt,openvino,dml "
                   "(default: every one this onnxruntime has)")
    p.add_argument("--bench", action="store_true", help="benchmark the input and every applied pass")
    p.add_argument("--runs", type=_int_in(*RUNS), default=20, help="timed runs per benchmark")
    p.add_argument("--threads", type=_int_in(*THREADS), default=0, help="ORT intra-op threads (0: ORT's default)")
    p.add_argument("--verify", default="each", choices=["each", "end", "off"],
                   help="check every pass, only the final model, or nothing")
    p.add_argument("--on-fail", default="rollback", choices=["rollback", "fail", "warn"],
                   help="what a failed verification does")
    p.add_argument("--target", default="portable", help="portable (standard ops only), ort "
                   "(adds ONNX Runtime contrib fusions), tensorrt, openvino")
    p.add_argument("--report", action="append", default=[], metavar="PATH",
                   help="write the report here: PATH.html = a self-contained page with charts, "
                   "anything else = JSON; repeatable")
    p.add_argument("--save-inputs", default=None, metavar="PATH.json",
                   help="the feeds every pass was verified on, in Polygraphy's JSON (polygraphy run "
                   "--load-inputs; graphopt --data reads it too)")
    p.add_argument("--save-outputs", default=None, metavar="PATH.json",
                   help="the input model's outputs on those feeds, a Polygraphy RunResults "
                   "(polygraphy run --load-outputs): the reference graphopt verified against")
    p.add_argument("--goal", default="latency", choices=["latency", "size"],
                   help="with --recipe auto: what the search minimizes inside the budget")
    p.add_argument("--seed", type=_int_in(*SEED), default=0, help="for synthesized inputs")
    p.add_argument("--max-time", type=_seconds, default=None, metavar="SECONDS",
                   help="lossy recipes and auto: the best result found within this many seconds; the "
                        "report names what was skipped")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    _add_custom_ops(p)


def _add_custom_ops(p) -> None:
    p.add_argument("--custom-ops", action="append", default=[], metavar="LIB.so",
                   help="a custom-op library ONNX Runtime registers for every session (repeatable), "
                   "so models with custom domains are verified")


def cmd_optimize(args) -> int:
    if args.out_dir is not None:  # a batch of models (graphopt.batch_command)
        from graphopt.batch_command import cmd_batch

        return cmd_batch(args, build_parser().parse_args, main)
    if args.executor is not None:
        raise InputError("--executor runs a batch: give --out-dir DIR (and any number of models)")
    from graphopt.api import optimize
    from graphopt.progress import TerminalProgress
    from graphopt.report import format_summary

    args.output = _output_path(args)
    progress = None if args.quiet else TerminalProgress()
    try:
        result = _run_optimize(args, optimize, progress)  # writes the model and reports together
    finally:
        if progress is not None:
            progress.close()
    if "auto" in result.report:
        print(result.report["auto"]["table"])
    print(result.table)
    print(format_summary(result.report))
    if result.report.get("repaired"):  # graphopt.declared_shapes: what was dropped from the input
        print(f"repaired input (not the file): {'; '.join(result.report['repaired'])}")
    for line in result.report["target"]["problems"]:
        print(f"target {args.target}: {line}")
    skipped = result.report["environment"]["providers"].get("skipped") or {}
    for name, why in skipped.items():
        print(f"skipped provider {name}: {why}")
    saved = [p for p in (args.save_inputs, args.save_outputs) if p]
    print("wrote " + ", ".join([args.output, *args.report, *saved]))  # together, or none of them
    return 0


def _output_path(args) -> str:
    """`optimize IN OUT` (onnxsim's form) or `optimize IN -o OUT`: exactly one of them."""
    if len(args.output_path) > 1:
        raise InputError(f"unrecognized arguments: {' '.join(args.output_path[1:])} (several models: "
                         "--out-dir DIR)")
    positional = args.output_path[0] if args.output_path else None
    if args.output and positional and args.output != positional:
        raise InputError(f"two output paths: '{positional}' and -o '{args.output}'; give one")
    path = args.output or positional
    if not path:
        raise InputError("no output path: graphopt optimize IN OUT (or -o OUT)")
    return path


def _run_optimize(args, optimize, progress):
    recipe = PRECISIONS[args.precision] if args.precision else args.recipe
    return optimize(args.model, args.output, passes=args.passes, recipe=recipe, data=args.data,
                    calib=args.calib, shapes=args.shape, budget=args.budget, verify=args.verify,
                    on_fail=args.on_fail, bench=args.bench, providers=_split(args.providers),
                    bench_runs=args.runs, threads=args.threads, seed=args.seed, target=args.target,
                    goal=args.goal, reports=args.report, progress=progress, max_time=args.max_time,
                    save_inputs=args.save_inputs, save_outputs=args.save_outputs)


def cmd_inspect(args) -> int:
    from graphopt.io import load_path
    from graphopt.model_stats import format_stats, model_stats
    from pathlib import Path

    model = load_path(Path(args.model))
    stats = model_stats(model)
    data = stats.to_dict()
    problems = None
    if args.target:
        from graphopt.targets import get_target, target_problems

        problems = target_problems(model, get_target(args.target))
        data["target"] = {"name": args.target, "problems": problems}
    if args.json:
        print(json.dumps(data, indent=2))
    else:
        print(format_stats(stats))
        if problems is not None:
            print(f"\ntarget {args.target}: " + ("ok" if not problems else f"{len(problems)} problem(s)"))
            for line in problems:
                print(f"  {line}")
    return 1 if problems else 0


def cmd_compare(args) -> int:
    from graphopt.compare import compare_models, format_comparison

    result = compare_models(args.a, args.b, data=args.data, shapes=args.shape)
    print(json.dumps(result, indent=2) if args.json else format_comparison(result))
    return 0


def cmd_bench(args) -> int:
    from graphopt.compare import bench_file, format_bench

    result = bench_file(args.model, _split(args.providers), threads=args.threads, runs=args.runs,
                        data=args.data, shapes=args.shape)
    print(json.dumps(result, indent=2) if args.json else format_bench(result))
    return 0


def cmd_passes(args) -> int:
    """The built-in passes and recipes, from the catalogue (graphopt.catalogue: no pass imported)."""
    from graphopt.catalogue import catalogue_text, load_catalogue, pass_text

    catalogue = load_catalogue()
    if not args.name:
        print(catalogue_text(catalogue))
        return 0
    if args.name not in catalogue["passes"]:
        raise InputError(f"unknown pass '{args.name}' (known: {', '.join(catalogue['passes'])})")
    print(pass_text(args.name, catalogue["passes"][args.name]))
    return 0


def _split(text: str | None) -> list[str] | None:
    return [p.strip() for p in text.split(",") if p.strip()] if text else None


COMMANDS = {"optimize": cmd_optimize, "inspect": cmd_inspect, "compare": cmd_compare,
            "bench": cmd_bench, "passes": cmd_passes}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.WARNING,
                        format="graphopt: %(levelname)s %(name)s: %(message)s")
    if not args.debug:
        for noisy in ("onnx_ir", "onnxscript"):
            logging.getLogger(noisy).setLevel(logging.ERROR)
    try:
        return _with_custom_ops(args)
    except GraphoptError as exc:
        if args.debug:
            traceback.print_exc()
        print(f"graphopt: error: {_one_line(str(exc))}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("graphopt: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `graphopt passes | head`: the reader left; not an error of the run
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # Python's flush at exit would raise again
        return 0
    except MemoryError as exc:  # the model or its feeds are too large for this machine: not a bug
        if args.debug:
            traceback.print_exc()
        print(f"graphopt: error: out of memory ({_one_line(str(exc)) or 'MemoryError'}): the model or its "
              "feeds are too large for this machine", file=sys.stderr)
        return 2
    except Exception as exc:  # a bug in graphopt: still one line unless --debug
        if args.debug:
            traceback.print_exc()
        print(f"graphopt: internal error (a bug in graphopt: rerun with --debug and report it): "
              f"{type(exc).__name__}: {_one_line(str(exc))}", file=sys.stderr)
        return 3


def _with_custom_ops(args) -> int:
    libraries = getattr(args, "custom_ops", None)
    if not libraries:
        return COMMANDS[args.command](args)
    from graphopt.runtime import custom_op_libraries

    with custom_op_libraries(libraries):
        return COMMANDS[args.command](args)


def _one_line(text: str) -> str:
    return " ".join(line.strip() for line in text.splitlines() if line.strip())


if __name__ == "__main__":
    sys.exit(main())
