"""The driver the `svd` and `tucker` passes share: options, data, rank choice, speed gate, stats.

Flow of `LowRankPass.run` (the passes supply layer discovery, factorization and rewriting):
1. find the layers; anything refused is recorded with a reason (stats "skipped", --debug);
2. stream the layers' inputs: the held-out feeds give shapes (rows / pixels for FLOPs and the
   micro-benchmarks) and the second moments for held-out output errors; calibration data gives
   the second moments of the data-aware factorization (factor.py);
3. choose each layer's rank: fixed rules (energy / rank_ratio / rank) or the accuracy budget
   (select.py); a rank whose factorization is not cheaper than the dense op is refused;
4. speed gate (speed.py): a layer is factored only if its factored chain runs faster than
   the dense op on ORT CPU at its real shapes;
5. rewrite, then time the whole model before/after (ORT_ENABLE_ALL, interleaved medians); with
   the speed gate on, a rewrite that did not make the model faster is not applied.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import onnx_ir as ir

from graphopt.bench import interleaved_p50
from graphopt.lossy import budget_share, effective_budget, summarize
from graphopt.pass_api import Pass, PassContext, PassResult
from graphopt.passes.lowrank.graph import InputStats, collect_input_stats
from graphopt.passes.lowrank.select import BudgetSearch, Candidate, Level, budget_usage, usage_power
from graphopt.passes.lowrank.speed import SpeedCache, faster
from graphopt.runtime import create_session, return_freed_memory
from graphopt.tolerance import Lossy

Mode = Literal["auto", "energy", "rank_ratio", "rank", "budget"]


@dataclass(frozen=True)
class LowRankOptions:
    select: Mode = "auto"  # auto: rank / rank_ratio / energy if given, else budget with --budget, else energy
    energy: float | None = None  # fraction of squared singular values kept (0.95 when none is given)
    data_aware: Literal["auto", "on", "off"] = "auto"  # auto: on when calibration data (--calib) is given
    damping: float = 0.01  # λ = damping · tr(C)/K added to the second moment before whitening
    min_size: int = 16384  # weights with fewer elements are left dense
    speed_check: bool = True  # factor only what ORT runs faster (layer micro-benchmark + whole model)
    min_speedup: float = 0.05  # a factored layer must be this much faster than the dense one
    budget_share: float = 1.0  # share of the run's accuracy budget this pass may spend
    max_evals: int = 64  # ORT evaluations of the whole model in budget mode
    latency_runs: int = 30  # timed runs per model for the before/after latency (0: not measured)
    threads: int = 0  # ORT intra-op threads for timings (0: ORT's default)

    def validate(self) -> None:
        if self.energy is not None and not 0 < self.energy <= 1:
            raise ValueError(f"energy must be in (0, 1], got {self.energy}")
        if self.damping < 0:
            raise ValueError(f"damping must be >= 0, got {self.damping}")
        if self.min_size < 0:
            raise ValueError(f"min_size must be >= 0, got {self.min_size}")
        if not 0 <= self.min_speedup < 1:
            raise ValueError(f"min_speedup must be in [0, 1), got {self.min_speedup}")
        if not 0 < self.budget_share <= 1:
            raise ValueError(f"budget_share must be in (0, 1], got {self.budget_share}")
        if self.max_evals < 2:
            raise ValueError(f"max_evals must be >= 2, got {self.max_evals}")
        if self.latency_runs < 0 or self.threads < 0:
            raise ValueError("latency_runs and threads must be >= 0")
        given = [name for name in ("energy", "rank_ratio", "rank") if getattr(self, name, None) is not None]
        if len(given) > 1:
            raise ValueError(f"give one of energy, rank_ratio, rank (got {', '.join(given)})")
        if self.select not in ("auto", "budget") and given and given[0] != self.select:
            raise ValueError(f"select={self.select} conflicts with {given[0]}=")
        if self.select in ("rank", "rank_ratio") and not given:
            raise ValueError(f"select={self.select} needs {self.select}=")

    def mode(self, run_has_budget: bool) -> str:
        if self.select != "auto":
            return self.select
        for name in ("rank", "rank_ratio", "energy"):
            if getattr(self, name, None) is not None:
                return name
        return "budget" if run_has_budget else "energy"


@dataclass
class LayerData:
    moment: np.ndarray | None  # calibration second moment (data-aware), None otherwise
    holdout_moment: np.ndarray | None  # for held-out output errors in stats
    input_shape: tuple[int, ...] | None  # in the first held-out feed


class LowRankPass(Pass):
    """Template for the low-rank passes; subclasses handle one layer kind."""

    tolerance = Lossy()
    layer_kind = "layer"

    # --- what a subclass provides ------------------------------------------------------
    @abc.abstractmethod
    def find_layers(self, model: ir.Model, ctx: PassContext) -> tuple[list[Any], list[tuple[str, str]]]:
        """(layers, [(where, why skipped)]); each layer has .where, .x (ir.Value), .channel_axis."""

    @abc.abstractmethod
    def prepare(self, layer: Any, data: LayerData) -> str | None:
        """Factorize; None when ready, else why the layer is skipped."""

    @abc.abstractmethod
    def fixed_level(self, layer: Any, mode: str) -> Level | str:
        """The level of an energy / rank_ratio / rank rule, or why there is none."""

    @abc.abstractmethod
    def grid(self, layer: Any) -> list[Level]:
        """Levels the budget search may choose from (each cheaper than dense)."""

    @abc.abstractmethod
    def time_level(self, layer: Any, level: Level, speed: SpeedCache) -> tuple[float, float]:
        """(dense ms, factored ms) of the layer alone."""

    @abc.abstractmethod
    def rewrite(self, model: ir.Model, ctx: PassContext, layer: Any, level: Level) -> None:
        """Replace the layer's node in `model` (found by name) by its factors."""

    @abc.abstractmethod
    def layer_stats(self, layer: Any, level: Level) -> dict[str, Any]:
        """Per-layer report: shape, rank, FLOPs before/after, errors."""

    # --- the shared flow ----------------------------------------------------------------
    def run(self, model: ir.Model, ctx: PassContext) -> PassResult:
        opts = self.options
        mode = opts.mode(bool(ctx.budget.limits))
        layers, skipped = self.find_layers(model, ctx)
        stats: dict[str, Any] = {"mode": mode, "skipped": []}
        self._skip(ctx, stats, skipped)
        if not layers:
            return PassResult(model, False, stats)
        aware = self._data_aware(ctx, stats)
        data = self._collect(model, ctx, layers, aware)
        layers = self._prepared(ctx, stats, layers, data)
        speed = SpeedCache(opts.threads) if opts.speed_check and ctx.holdout else None
        stats["speed_check"] = "layer micro-benchmarks on ORT CPU" if speed else "off"
        choice = (self._budget_choice(model, ctx, layers, speed, stats) if mode == "budget"
                  else self._fixed_choice(ctx, layers, mode, speed, stats))
        if speed is not None:
            stats["micro_benchmarks"] = {"count": len(speed.results), "seconds": round(speed.seconds, 2)}
        if not choice:
            return PassResult(model, False, stats)
        before = model.clone() if opts.latency_runs and ctx.holdout else None
        apply_levels(self, model, ctx, layers, choice)
        stats["layers"] = [self.layer_stats(layer, choice[layer.where]) for layer in layers if layer.where in choice]
        _totals(stats, layers, choice)
        return self._latency_gate(before, model, ctx, stats)

    def _skip(self, ctx: PassContext, stats: dict, skipped: list[tuple[str, str]]) -> None:
        for where, reason in skipped:
            ctx.no_match(self.name, where, reason)
            stats["skipped"].append({"node": where, "reason": reason})

    def _data_aware(self, ctx: PassContext, stats: dict) -> bool:
        setting = self.options.data_aware
        aware = setting == "on" or (setting == "auto" and ctx.calibration is not None)
        stats["data_aware"] = aware
        return aware

    def _collect(self, model: ir.Model, ctx: PassContext, layers: list, aware: bool) -> dict[str, LayerData]:
        axes = {}
        for layer in layers:
            axes.setdefault(layer.x.name, layer.channel_axis)
        held = collect_input_stats(model, axes, lambda: iter(ctx.holdout), True, ctx) if ctx.holdout else InputStats()
        calib = held
        if aware:
            feeds, origin = ctx.calibration_source()
            if ctx.calibration is not None:
                calib = collect_input_stats(model, axes, feeds, True, ctx)
            ctx.logger.debug("%s: data-aware factorization from %s (%d feeds)", self.name, origin, calib.batches)
        return {name: LayerData(calib.moment(name) if aware else None, held.moment(name), held.shapes.get(name))
                for name in axes}

    def _prepared(self, ctx: PassContext, stats: dict, layers: list, data: dict[str, LayerData]) -> list:
        ready = []
        for layer in layers:
            reason = self.prepare(layer, data[layer.x.name])
            if reason is None:
                ready.append(layer)
            else:
                self._skip(ctx, stats, [(layer.where, reason)])
        return ready

    def _speed_ok(self, layer, level: Level, speed: SpeedCache | None) -> tuple[bool, str | None]:
        if speed is None:
            return True, None
        dense, factored = self.time_level(layer, level, speed)
        layer.timings[level.rank] = {"dense_ms": round(dense, 4), "factored_ms": round(factored, 4)}
        if faster((dense, factored), self.options.min_speedup):
            return True, None
        return False, (f"rank {'x'.join(map(str, level.rank))} is not faster on ORT CPU: dense {dense:.3f} ms, "
                       f"factored {factored:.3f} ms (needs {self.options.min_speedup:.0%} less)")

    def _fixed_choice(self, ctx, layers, mode, speed, stats) -> dict[str, Level]:
        choice = {}
        for layer in layers:
            level = self.fixed_level(layer, mode)
            ok, reason = (False, level) if isinstance(level, str) else self._speed_ok(layer, level, speed)
            if ok:
                choice[layer.where] = level
            else:
                self._skip(ctx, stats, [(layer.where, reason)])
        return choice

    def _budget_choice(self, model, ctx, layers, speed, stats) -> dict[str, Level]:
        ev = ctx.evaluator(model)
        start = ev.measure(model)
        budget = budget_share(effective_budget(ctx.budget), start, self.options.budget_share)
        stats["budget"] = {"limits": budget.limits, "start": summarize(start), "evaluations": 1}
        missed = budget.violations(start)
        if missed:
            self._skip(ctx, stats, [(layer.where, f"no accuracy budget left before this pass ({missed[0]})")
                                    for layer in layers])
            return {}
        candidates = []
        for layer in layers:
            levels = [lv for lv in self.grid(layer) if self._speed_ok(layer, lv, speed)[0]]
            if not levels:
                self._skip(ctx, stats, [(layer.where, "no rank below the FLOP break-even runs faster on ORT CPU"
                                         if speed else "no rank below the FLOP break-even")])
                continue
            candidates.append(Candidate(layer.where, layer.dense_macs, levels))
        by_where = {layer.where: layer for layer in layers}

        def measure(picked: dict[str, Level]) -> float:
            trial = model.clone()
            apply_levels(self, trial, ctx, layers, picked)
            return budget_usage(ev.measure(trial), budget, start)

        search = BudgetSearch(candidates, measure, self.options.max_evals - 1, usage_power(budget),
                              progress=ctx.progress)
        choice = search.run() if candidates else {}
        for cand in candidates:
            by_where[cand.where].probe = cand.probe
            if cand.where not in choice:
                self._skip(ctx, stats, [(cand.where, "left dense: the accuracy budget is spent on cheaper savings")])
        stats["budget"].update(evaluations=1 + search.evaluations, search=search.trace)
        return choice

    def _latency_gate(self, before: ir.Model | None, model: ir.Model, ctx: PassContext, stats: dict) -> PassResult:
        if before is None:
            return PassResult(model, True, stats)
        dense_ms, factored_ms = model_latency([before, model], ctx.holdout[0], self.options)
        stats["latency_ms"] = {"before": round(dense_ms, 3), "after": round(factored_ms, 3),
                               "runs": self.options.latency_runs, "threads": self.options.threads or "ORT default",
                               "provider": "cpu", "graph_optimization": "ORT_ENABLE_ALL"}
        if self.options.speed_check and factored_ms >= dense_ms:
            stats["not_applied"] = (f"the factored model is not faster on ORT CPU ({factored_ms:.2f} ms vs "
                                    f"{dense_ms:.2f} ms)")
            ctx.no_match(self.name, "model", stats["not_applied"])
            return PassResult(before, False, stats)
        return PassResult(model, True, stats)


def _totals(stats: dict, layers: list, choice: dict) -> None:
    """FLOPs (2·MACs) over every layer that was a candidate, factored or left dense."""
    before = sum(layer.dense_macs for layer in layers)
    after = sum(choice[layer.where].macs if layer.where in choice else layer.dense_macs for layer in layers)
    stats["layers_factored"] = len(stats["layers"])
    stats["candidate_layers"] = len(layers)
    stats["flops_before"], stats["flops_after"] = 2 * int(before), 2 * int(after)
    stats["flops_cut"] = round(1 - after / before, 4) if before else 0.0


def apply_levels(owner: LowRankPass, model: ir.Model, ctx: PassContext, layers: list, choice: dict) -> None:
    """Rewrite the chosen layers, last first, so earlier layers keep their graph positions."""
    for layer in sorted(layers, key=lambda lay: -lay.index):
        if layer.where in choice:
            owner.rewrite(model, ctx, layer, choice[layer.where])


def model_latency(models: list[ir.Model], feed: dict, opts: LowRankOptions) -> list[float]:
    """Median ms of each model on `feed`, ORT CPU ENABLE_ALL, timed interleaved."""
    sessions = [create_session(m, "cpu", "enable_all", opts.threads) for m in models]
    try:
        return interleaved_p50(sessions, feed, opts.latency_runs)
    finally:
        del sessions
        return_freed_memory()
