"""The Python API: everything the CLI does is one call here.

    import graphopt
    result = graphopt.optimize("model.onnx", "model.opt.onnx", recipe="lossless", bench=True)
    print(result.table)

`optimize` accepts a path, an `onnx.ModelProto`, an `onnx_ir.Model` or an
`onnx_graphsurgeon.Graph` and returns the optimized model as the same kind (an
`onnx_ir.Model` for a path) together with the report.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Iterable

from graphopt.bench import BenchConfig
from graphopt.data import (Feed, input_specs, load_feeds, parse_shapes, reject_infinite, split_holdout, synthesize_feeds,
                           validate_feed)
from graphopt.errors import InputError
from graphopt.io import LoadedModel, load_model, save_model, to_kind
from graphopt.manager import PassManager, RunConfig
from graphopt.pass_api import Pass, PassContext
from graphopt.recipes import DEFAULT_RECIPE, passes_from_recipe, passes_from_spec
from graphopt.report import build_report, format_table
from graphopt.runtime import resolve_providers
from graphopt.tolerance import Budget
from graphopt.targets import get_target, target_problems
from graphopt.verify import reference_outputs

SYNTHETIC_FEEDS = 2


@dataclass
class OptimizeResult:
    model: Any
    report: dict[str, Any]
    output: Path | None

    @property
    def table(self) -> str:
        return format_table(self.report)


def optimize(source: Any, output: str | os.PathLike | None = None, *,
             passes: str | list[Pass] | None = None, recipe: str | None = None,
             data: str | os.PathLike | Iterable[Feed] | None = None,
             calib: str | os.PathLike | Iterable[Feed] | None = None,
             shapes: list[str] | dict[str, tuple[int, ...]] | None = None,
             budget: list[str] | dict[str, float] | Budget | None = None,
             verify: str = "each", on_fail: str = "rollback", bench: bool = False,
             providers: list[str] | None = None, bench_runs: int = 20, threads: int = 0,
             seed: int = 0, target: str = "portable", goal: str = "latency",
             progress: Callable[[str], None] | None = None) -> OptimizeResult:
    """Run a recipe (default `lossless`, adapted to `target`) or a pass list over a model,
    verified pass by pass. `recipe="auto"` searches pass chains for the fastest (`goal=
    "latency"`) or smallest (`goal="size"`) model inside the budget (default cosine 0.99)."""
    if recipe == "auto":
        if passes is not None:
            raise InputError("give either --passes or --recipe, not both")
        return optimize_auto(source, output, goal=goal, data=data, calib=calib, shapes=shapes,
                             budget=budget, seed=seed, target=target, threads=threads,
                             runs=bench_runs, progress=progress)
    loaded = _load_checked(source, output)
    profile = get_target(target)
    pass_list = _resolve_passes(passes, recipe, target)
    run_budget = _as_budget(budget)
    choice = resolve_providers(providers) if bench else None  # default: every available EP
    feeds, calib_feeds, data_info = _feeds(loaded, data, calib, shapes, seed)
    config = RunConfig(verify=verify, on_fail=on_fail, budget=run_budget,
                       bench=BenchConfig(tuple(choice.usable), bench_runs, threads=threads) if choice else None)
    manager = _manager(pass_list, config, feeds, calib_feeds, seed, progress)
    reference = None
    if (verify != "off" or run_budget.limits) and loaded.path is not None:
        reference = reference_outputs(loaded.path, feeds)  # ORT reads the input file as it is
    result = manager.run(loaded.model, reference)
    provider_info = {"benchmarked": choice.usable, "skipped": choice.skipped} if choice else {}
    report = build_report(result, input_path=str(loaded.path) if loaded.path else None,
                          output_path=str(output) if output else None, providers=provider_info, feeds=data_info,
                          threads=threads)
    report["target"] = {"name": target, "problems": target_problems(result.model, profile)}
    if output is not None:
        if progress:
            progress(f"saving {output}")
        save_model(result.model, output)
    return OptimizeResult(to_kind(result.model, loaded), report, Path(output) if output else None)


def optimize_auto(source: Any, output, *, goal: str, data, calib, shapes, budget, seed: int, target: str,
                  threads: int, runs: int, progress) -> OptimizeResult:
    """Try each candidate chain (graphopt.auto), measure the survivors side by side, keep the best.
    Chains that start alike (the lossless or modern clean-up) share that prefix: it runs once,
    verified, and each candidate's lossy passes run on a copy of its result."""
    from graphopt import auto
    from graphopt.lossy import effective_budget
    from graphopt.registry import registered_passes
    from graphopt.recipes import RECIPES
    from graphopt.targets import adapt_recipe

    if goal not in ("latency", "size"):
        raise InputError(f"--goal: expected latency or size, got '{goal}'")
    run_budget = effective_budget(_as_budget(budget))
    lossless = adapt_recipe(RECIPES[auto.LOSSLESS], get_target(target))
    chains = auto.candidate_chains(lossless, set(registered_passes()), goal)
    say = progress or (lambda message: None)
    loaded = _load_checked(source, output)
    feeds, calib_feeds, data_info = _feeds(loaded, data, calib, shapes, seed)
    say("auto: reference outputs")
    config = RunConfig(verify="each", on_fail="rollback", budget=run_budget)
    reference = reference_outputs(loaded.path or loaded.model, feeds)
    prefixes: dict[tuple[str, ...], tuple[Any, list]] = {}

    def run_chain(prefix: list[str], tail: list[str]) -> OptimizeResult:
        if tuple(prefix) not in prefixes:
            manager = _manager(passes_from_spec(",".join(prefix)), config, feeds, calib_feeds, seed, None)
            prefixes[tuple(prefix)] = manager.run(loaded.model.clone(), reference), manager.previous
        base, base_outputs = prefixes[tuple(prefix)]
        result = base
        if tail:
            manager = _manager(passes_from_spec(",".join(tail)), config, feeds, calib_feeds, seed, None)
            result = manager.run(base.model.clone(), reference, previous=base_outputs)
            result = replace(result, passes=[*base.passes, *result.passes], before=base.before)
        report = build_report(result, input_path=str(loaded.path) if loaded.path else None, output_path=None,
                              providers={}, feeds=data_info, threads=threads)
        return OptimizeResult(result.model, report, None)

    trials = auto.search(chains, run_chain, say)
    say("auto: timing the candidates side by side")
    auto.measure_latency(trials, feeds[0], max(runs, 10), threads)
    cost = (lambda t: t.bytes) if goal == "size" else (lambda t: t.ms)
    chosen = auto.choose(trials, goal)
    front = auto.pareto(trials, cost)
    report = dict(chosen.result.report)
    report["target"] = {"name": target, "problems": target_problems(chosen.result.model, get_target(target))}
    report["auto"] = {"goal": goal, "budget": run_budget.limits, "chosen": chosen.name,
                      "pareto": [t.name for t in front], "tried": [t.row() for t in trials],
                      "table": auto.format_trials(trials, front, chosen, goal)}
    model = chosen.result.model
    if output is not None:
        save_model(model, output)
        report["model"] = {**report["model"], "output": str(output)}
    return OptimizeResult(to_kind(model, loaded), report, Path(output) if output else None)


def _manager(pass_list: list[Pass], config: RunConfig, feeds: list[Feed], calib_feeds: list[Feed], seed: int,
             progress) -> PassManager:
    ctx = PassContext(seed=seed, budget=config.budget,
                      calibration=(lambda: iter(calib_feeds)) if calib_feeds else None)
    return PassManager(pass_list, config, feeds, ctx, progress)


def _load_checked(source: Any, output) -> LoadedModel:
    loaded = load_model(source)
    if output is not None and loaded.path is not None and _same_file(Path(output), loaded.path):
        raise InputError(f"output {output} is the input file; graphopt never overwrites its input")
    if output is not None and Path(output).is_dir():
        raise InputError(f"output {output} is a directory; give a file path, e.g. {Path(output) / 'model.onnx'}")
    return loaded


def _same_file(a: Path, b: Path) -> bool:
    return a.exists() and b.exists() and os.path.samefile(a, b)


def _resolve_passes(passes: str | list[Pass] | None, recipe: str | None, target: str) -> list[Pass]:
    if passes is not None and recipe is not None:
        raise InputError("give either --passes or --recipe, not both")
    if passes is None:
        return passes_from_recipe(recipe or DEFAULT_RECIPE, target)
    return passes_from_spec(passes) if isinstance(passes, str) else list(passes)


def _as_budget(budget: list[str] | dict[str, float] | Budget | None) -> Budget:
    if budget is None:
        return Budget()
    if isinstance(budget, Budget):
        return budget
    if isinstance(budget, dict):
        return Budget.parse([f"{k}={v}" for k, v in budget.items()])
    return Budget.parse(list(budget))


def _feeds(loaded: LoadedModel, data, calib, shapes, seed: int):
    """Verification feeds, calibration feeds, and a description of where they came from."""
    model = loaded.model
    specs = input_specs(model)
    shape_map = parse_shapes(shapes, specs) if isinstance(shapes, list) else (shapes or {})
    calib_feeds = _load(calib, model) if calib is not None else []
    reject_infinite(calib_feeds, f"--calib {calib}" if isinstance(calib, (str, os.PathLike)) else "calibration data")
    if data is not None:
        feeds = _load(data, model)
        return feeds, calib_feeds, {"verify": "data", "count": len(feeds)}
    if calib_feeds:
        calib_part, held_out = split_holdout(calib_feeds)
        return held_out, calib_part, {"verify": "held-out calibration feeds", "count": len(held_out)}
    feeds = synthesize_feeds(model, SYNTHETIC_FEEDS, shape_map, seed)
    return feeds, [], {"verify": f"synthesized (seed {seed})", "count": len(feeds)}


def _load(source, model) -> list[Feed]:
    if isinstance(source, (str, os.PathLike)):
        return load_feeds(source, model)
    feeds = [dict(feed) for feed in source]
    if not feeds:
        raise InputError("data holds no feeds")
    specs = input_specs(model)
    for i, feed in enumerate(feeds):
        validate_feed(feed, specs, f"feed {i}")
    return feeds
