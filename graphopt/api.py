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
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Iterable

from graphopt.arguments import check_optimize_arguments
from graphopt.bench import BenchConfig
from graphopt.declared_shapes import check_input
from graphopt.data import Feed
from graphopt.deadline import Deadline
from graphopt.errors import InputError
from graphopt.io import LoadedModel, external_data_files, load_model, to_kind, uses_external_data
from graphopt.manager import PassManager, RunConfig
from graphopt.outputs import Transaction, plan_writes, write_outputs
from graphopt.pass_api import Pass, PassContext
from graphopt.recipes import DEFAULT_RECIPE, passes_from_recipe, passes_from_spec
from graphopt.replay_files import ReplayPaths
from graphopt.report import build_report, format_table
from graphopt.run_data import RunData, is_synthetic, require_real_data, run_feeds
from graphopt.runtime import active_custom_op_libraries, resolve_providers
from graphopt.tolerance import Budget, Lossy
from graphopt.targets import get_target, target_problems
from graphopt.verify import reference_outputs, structural_problems
from graphopt.phases import clocked, clocked_run, current_table, timed

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
             reports: Iterable[str | os.PathLike] = (),
             progress: Callable[[str], None] | None = None, max_time: float | None = None,
             save_inputs: str | os.PathLike | None = None,
             save_outputs: str | os.PathLike | None = None) -> OptimizeResult:
    """Run a recipe (default `lossless`, adapted to `target`) or a pass list over a model,
    verified pass by pass. `recipe="auto"` searches pass chains for the fastest (`goal=
    "latency"`) or smallest (`goal="size"`) model inside the budget (default cosine 0.99).
    `output` and every `reports` path (.html or JSON) are written together or not at all, and
    never over anything the run reads (graphopt.outputs). `max_time` (seconds): the best result
    found within that time; the report's `max_time` names what was skipped (graphopt.deadline).
    `save_inputs` / `save_outputs`: the verification feeds and the input model's outputs on them,
    in Polygraphy's JSON (graphopt.replay_files), written with the model."""
    deadline = Deadline(max_time)  # the clock starts here
    data, calib, shapes = check_optimize_arguments(locals())
    reports = list(reports)
    replay = ReplayPaths(save_inputs, save_outputs)
    if recipe == "auto":
        if passes is not None:
            raise InputError("give either --passes or --recipe, not both")
        return _optimize_auto(source, output, goal=goal, data=data, calib=calib, shapes=shapes,
                              budget=budget, seed=seed, target=target, threads=threads,
                              runs=bench_runs, reports=reports, progress=progress, deadline=deadline, replay=replay)
    with clocked() as clock:
        loaded = _load_checked(source, output, reports, data, calib, replay)
        declared = check_input(loaded.model)  # contradicted declared shapes dropped before any pass
        profile = get_target(target)
        pass_list = _resolve_passes(passes, recipe, target)
        lossy = [p.name for p in pass_list if isinstance(p.tolerance, Lossy)]
        require_real_data(lossy, data, calib)
        run_budget = _as_budget(budget)
        choice = resolve_providers(providers) if bench else None  # default: every available EP
        run = run_feeds(loaded, data, calib, shapes, seed, bool(lossy))
        feeds, data_info = run.verification, run.info
        config = RunConfig(verify=verify, on_fail=on_fail, budget=run_budget,
                           bench=BenchConfig(tuple(choice.usable), bench_runs, threads=threads) if choice else None)
        with Transaction(say=progress) as txn:  # SIGINT/SIGTERM from here on leave nothing behind
            reference, began = None, time.perf_counter()
            if (verify != "off" or run_budget.limits) and loaded.path is not None:
                reference = reference_outputs(loaded.path, feeds)  # ORT reads the input file as it is
                deadline.set_reference_cost(time.perf_counter() - began)
            if replay.outputs is not None and reference is None:  # before any pass edits an in-memory model
                reference = _reference_on(loaded.path or loaded.model, feeds)
            declared.refuse_if_invalid(loaded.path)  # after ORT had its say on the file
            manager = _manager(pass_list, config, run, seed, progress, _search_reference(loaded, run, lossy), deadline)
            known = frozenset(structural_problems(loaded.model, checked=True))
            result = manager.run(loaded.model, reference, known_problems=known)
            provider_info = {"benchmarked": choice.usable, "skipped": choice.skipped} if choice else {}
            report = build_report(result, input_path=str(loaded.path) if loaded.path else None,
                                  output_path=str(output) if output else None, providers=provider_info,
                                  feeds=data_info, threads=threads)
            report["target"] = {"name": target, "problems": target_problems(result.model, profile)}
            report["repaired"] = declared.repaired
            report["summary"]["verify"] = verify
            report["timings"] = clock.table()  # up to writing the outputs
            if deadline.summary() is not None:
                report["max_time"] = deadline.summary()
            write_outputs(txn, result.model, output, reports, report, progress, replay.texts(feeds, reference))
    return OptimizeResult(to_kind(result.model, loaded), report, Path(output) if output else None)


def optimize_auto(source: Any, output, *, goal: str, data, calib, shapes, budget, seed: int, target: str,
                  threads: int, runs: int, progress, reports: Iterable[str | os.PathLike] = (),
                  max_time: float | None = None, save_inputs: str | os.PathLike | None = None,
                  save_outputs: str | os.PathLike | None = None) -> OptimizeResult:
    """Try each candidate chain (graphopt.auto), measure the survivors side by side, keep the best.
    Chains that start alike (the lossless or modern clean-up) share that prefix: it runs once,
    verified, and each candidate's lossy passes run on a copy of its result."""
    deadline = Deadline(max_time)
    data, calib, shapes = check_optimize_arguments({**locals(), "bench_runs": runs})
    return _optimize_auto(source, output, goal=goal, data=data, calib=calib, shapes=shapes, budget=budget,
                          seed=seed, target=target, threads=threads, runs=runs, progress=progress,
                          reports=list(reports), deadline=deadline, replay=ReplayPaths(save_inputs, save_outputs))


@clocked_run
def _optimize_auto(source: Any, output, *, goal: str, data, calib, shapes, budget, seed: int, target: str,
                   threads: int, runs: int, progress, reports: list, deadline: Deadline,
                   replay: ReplayPaths = ReplayPaths()) -> OptimizeResult:
    """`optimize_auto` on arguments already checked (check_optimize_arguments)."""
    from graphopt import auto
    from graphopt.lossy import effective_budget
    from graphopt.registry import registered_passes
    from graphopt.recipes import RECIPES
    from graphopt.targets import adapt_recipe, with_target_options

    if goal not in ("latency", "size"):
        raise InputError(f"--goal: expected latency or size, got '{goal}'")
    run_budget = effective_budget(_as_budget(budget))
    lossless = adapt_recipe(RECIPES[auto.LOSSLESS], get_target(target))
    profile = get_target(target)
    chains = auto.candidate_chains(lossless, set(registered_passes()), goal,
                                   lambda item: with_target_options(item, profile))
    tried = {item.split(":", 1)[0] for _, _, tail, _ in chains for item in tail}
    lossy = ["auto"] if any(isinstance(registered_passes()[n].tolerance, Lossy) for n in tried) else []
    require_real_data(lossy, data, calib)
    say = progress or (lambda message: None)
    reports = list(reports)
    loaded = _load_checked(source, output, reports, data, calib, replay)
    declared = check_input(loaded.model)
    run = run_feeds(loaded, data, calib, shapes, seed, bool(lossy))
    feeds, data_info = run.verification, run.info
    say("auto: reference outputs")
    config = RunConfig(verify="each", on_fail="rollback", budget=run_budget)
    began = time.perf_counter()
    reference = reference_outputs(loaded.path or loaded.model, feeds)
    deadline.set_reference_cost(2 * (time.perf_counter() - began))  # and the candidates' final timing
    declared.refuse_if_invalid(loaded.path)
    search_reference = _search_reference(loaded, run, lossy)
    known = frozenset(structural_problems(loaded.model, checked=True))  # once, for every chain
    prefixes: dict[tuple[str, ...], tuple[Any, list]] = {}

    def run_chain(prefix: list[str], tail: list[str]) -> OptimizeResult:
        if tuple(prefix) not in prefixes:
            manager = _manager(passes_from_spec(",".join(prefix)), config, run, seed, None, search_reference, deadline)
            prefixes[tuple(prefix)] = (manager.run(loaded.model.clone(), reference, known_problems=known),
                                       manager.previous)
        base, base_outputs = prefixes[tuple(prefix)]
        result = base
        if tail:
            manager = _manager(passes_from_spec(",".join(tail)), config, run, seed, None, search_reference, deadline)
            result = manager.run(base.model.clone(), reference, previous=base_outputs, known_problems=known)
            result = replace(result, passes=[*base.passes, *result.passes], before=base.before)
        report = build_report(result, input_path=str(loaded.path) if loaded.path else None, output_path=None,
                              providers={}, feeds=data_info, threads=threads)
        return OptimizeResult(result.model, report, None)

    with Transaction(say=progress) as txn:  # SIGINT/SIGTERM from here on leave nothing behind
        trials = auto.search(chains, run_chain, say, deadline)
        say("auto: timing the candidates side by side")
        auto.measure_latency(trials, feeds[0], max(runs, 10), threads)
        cost = (lambda t: t.bytes) if goal == "size" else (lambda t: t.ms)
        chosen = auto.choose(trials, goal)
        front = auto.pareto(trials, cost)
        report = dict(chosen.result.report)
        report["target"] = {"name": target, "problems": target_problems(chosen.result.model, get_target(target))}
        report["repaired"] = declared.repaired
        report["auto"] = {"goal": goal, "budget": run_budget.limits, "chosen": chosen.name,
                          "pareto": [t.name for t in front], "tried": [t.row() for t in trials],
                          "table": auto.format_trials(trials, front, chosen, goal)}
        model = chosen.result.model
        if output is not None:
            report["model"] = {**report["model"], "output": str(output)}
        report["timings"] = current_table()  # up to writing the outputs
        if deadline.summary() is not None:
            report["max_time"] = deadline.summary()
        write_outputs(txn, model, output, reports, report, progress, replay.texts(feeds, reference))
    return OptimizeResult(to_kind(model, loaded), report, Path(output) if output else None)


def _manager(pass_list: list[Pass], config: RunConfig, run: RunData, seed: int, progress,
             search_reference: list[Feed] | Callable[[], list[Feed]] | None,
             deadline: Deadline | None = None) -> PassManager:
    calib = run.calibration
    ctx = PassContext(seed=seed, budget=config.budget, calibration=(lambda: iter(calib)) if calib else None,
                      search=run.search if search_reference is not None else [], search_reference=search_reference,
                      deadline=deadline or Deadline())
    return PassManager(pass_list, config, run.verification, ctx, progress)


def _search_reference(loaded: LoadedModel, run: RunData, lossy: list[str]):
    """The input model's outputs on the search feeds (graphopt.run_data), for runs with lossy
    passes: computed when a pass first asks for them (a lossy pass that keeps the model as it is,
    e.g. quantize finding int8 slower here, never does) where the input is a file the run does
    not change; at once for an in-memory model, which the passes may edit in place."""
    if not lossy or not run.search:
        return None
    if loaded.path is None:
        return _reference_on(loaded.model, run.search)
    results: list = []

    def once() -> list[Feed]:
        if not results:
            results.append(_reference_on(loaded.path, run.search))
        return results[0]

    return once


@timed("reference outputs")
def _reference_on(model, feeds: list[Feed]) -> list[Feed]:
    return reference_outputs(model, feeds)


@timed("load")
def _load_checked(source: Any, output, reports: list | tuple = (), data=None, calib=None,
                  replay: ReplayPaths = ReplayPaths()) -> LoadedModel:
    """Load the model, then check what the run will write against what it reads and against
    each other (graphopt.outputs), before any pass runs."""
    loaded = load_model(source)
    plan_writes(output, reports, input_path=loaded.path, weight_files=sorted(external_data_files(loaded.model)),
                data={"--data": data, "--calib": None if is_synthetic(calib) else calib},
                external_likely=uses_external_data(loaded.model), libraries=active_custom_op_libraries(),
                extra=replay.writes())
    return loaded


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
