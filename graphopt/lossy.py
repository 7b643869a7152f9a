"""What lossy passes (prune, svd, quantize) use to size themselves to the accuracy budget.

The run's budget is measured on held-out feeds against the *input* model's outputs (the
manager computes those once). A lossy pass asks `Evaluator.measure(candidate)` for the
metrics of a candidate, and `Evaluator.fits(candidate, budget)` whether it meets a budget.
The evaluator infers once what each output is (graphopt.output_kinds) from that reference, so
every candidate is judged by the same task metrics (graphopt.tolerance: worst-sample cosine,
per-position top-1 on class scores, ...).

Several lossy passes in one run (the `compress` recipe) split the budget: a pass with share s
may spend the fraction s of what is left, measured from the model it received. For a
"higher is better" metric m with limit L and current value m0 the pass's own floor is
m0 - s·(m0 - L); for max_abs (lower is better) the ceiling is m0 + s·(L - m0).

`budget_statement` says, per budget entry and output, which statistic judged it, over how many
held-out samples (and positions), and which inferred class-score outputs an explicit budget
leaves without a top-1 bound; `check_run_budget` logs those as warnings once per run.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Callable, Sequence

import numpy as np
import onnx_ir as ir

from graphopt.errors import InputError
from graphopt.metrics import OutputMetrics, compare_outputs, json_float
from graphopt.output_kinds import OutputKind, infer_kinds
from graphopt.runtime import create_session, return_freed_memory, run_feeds, run_model
from graphopt.search_memo import SearchMemo
from graphopt.staged import best_case, merge_metrics, promote, stageable, stages
from graphopt.tolerance import BUDGET_METRICS, DEFAULT_BUDGET, TOP1_METRICS, Budget, Lossy, judged_value, split_key

Feed = dict[str, np.ndarray]


def effective_budget(budget: Budget) -> Budget:
    """The run's budget, or DEFAULT_BUDGET when the user set none."""
    return budget if budget.limits else DEFAULT_BUDGET


def worst(metrics: dict[str, OutputMetrics], metric: str) -> float:
    """Worst judged value of `metric` over outputs (min for higher-is-better, max for max_abs);
    an 'OUTPUT:METRIC' key reads that output only."""
    output, name = split_key(metric)
    chosen = [m for out, m in metrics.items() if output in (None, out)]
    values = [v for m in chosen if (v := judged_value(m, name)) is not None]
    if not values:
        return float("nan")
    return min(values) if BUDGET_METRICS[name] == "min" else max(values)


def budget_share(budget: Budget, current: dict[str, OutputMetrics], share: float) -> Budget:
    """The part of `budget` a pass may spend, starting from a model whose metrics are `current`."""
    if not 0 < share <= 1:
        raise InputError(f"budget share must be in (0, 1], got {share}")
    limits = {}
    for metric, limit in budget.limits.items():
        now = worst(current, metric)
        if not np.isfinite(now):
            now = {"cosine": 1.0, "top1": 1.0, "top1_dist": 1.0, "max_abs": 0.0}.get(split_key(metric)[1],
                                                                                       limit + 60.0)
        limits[metric] = now - share * (now - limit) if BUDGET_METRICS[metric] == "min" \
            else now + share * (limit - now)
    return Budget(limits)


@dataclass
class Evaluator:
    """Measures candidates on held-out feeds against the input model's reference outputs.
    `fits` decides a miss on the first stages of the feeds when they already show it
    (graphopt.staged); `feeds_seen` is how many feeds its last answer ran on."""

    feeds: Sequence[Feed]
    reference: list[Feed]
    order: list[int] = field(default_factory=list)  # feed indices, hardest found first
    feeds_seen: int = 0
    decided_early: int = 0  # misses decided before the last stage

    @classmethod
    def for_model(cls, model: ir.Model, feeds: Sequence[Feed]) -> Evaluator:
        """Reference outputs taken from `model` itself (when no run reference exists)."""
        if not feeds:
            raise InputError("no held-out feeds to measure the accuracy budget on")
        return cls(feeds, run_model(model, feeds))

    @cached_property
    def kinds(self) -> dict[str, OutputKind]:
        """What each output is, inferred once from the reference (graphopt.output_kinds)."""
        return infer_kinds(self.reference, self.feeds)

    @cached_property
    def total_positions(self) -> dict[str, int]:
        """Top-1 positions per output over every feed (the denominators `best_case` completes)."""
        full = compare_outputs(self.reference, self.reference, self.kinds)
        return {name: m.positions for name, m in full.items()}

    def measure(self, model: ir.Model) -> dict[str, OutputMetrics]:
        self.feeds_seen = len(self.feeds)
        return compare_outputs(self.reference, run_model(model, self.feeds), self.kinds)

    def fits(self, model: ir.Model, budget: Budget, early: bool = True) -> tuple[bool, dict[str, OutputMetrics]]:
        """Whether `model` meets `budget`, and its metrics. With `early`, a miss the first stages
        already decide stops there (the metrics then cover `feeds_seen` feeds)."""
        if not early or not stageable(self.reference):
            metrics = self.measure(model)
            return not budget.violations(metrics), metrics
        order = self.order if len(self.order) == len(self.feeds) else list(range(len(self.feeds)))
        session = create_session(model)
        try:
            parts, seen = [], 0
            for stage in stages(order):
                outputs = run_feeds(session, [self.feeds[i] for i in stage])
                parts.append(compare_outputs([self.reference[i] for i in stage], outputs, self.kinds))
                merged, seen = merge_metrics(parts), seen + len(stage)
                bound = best_case(merged, self.total_positions) if seen < len(order) else merged
                if budget.violations(bound):
                    self.order = promote(order, self._hardest(stage, outputs, budget))
                    self.feeds_seen, self.decided_early = seen, self.decided_early + (seen < len(order))
                    return False, merged
        finally:
            del session
            return_freed_memory()
        self.order, self.feeds_seen = order, seen
        return True, merged

    def _hardest(self, stage: list[int], outputs: list[Feed], budget: Budget) -> list[int]:
        """The feeds of the stage that decided a miss which miss the budget on their own
        (the whole stage when none does alone)."""
        alone = [i for i, out in zip(stage, outputs)
                 if budget.violations(compare_outputs([self.reference[i]], [out], self.kinds))]
        return alone or stage


def summarize(metrics: dict[str, OutputMetrics]) -> dict[str, float]:
    """Worst value of each budget metric, for pass stats and reports."""
    out = {}
    for metric in BUDGET_METRICS:
        value = worst(metrics, metric)
        if np.isfinite(value):
            out[metric] = float(value)
    return out


STATISTICS = {"cosine": "worst-sample cosine", "snr_db": "worst-sample SNR (dB)",
              "max_abs": "max abs error over all elements"}


def _statistic(metric: str, m: OutputMetrics) -> str:
    if metric not in TOP1_METRICS:
        return STATISTICS[metric]
    if m.top1_dist is None:
        return "row-wise top-1 agreement"
    return "per-position top-1 agreement" if m.positions > m.samples else "per-sample top-1 agreement"


def budget_statement(budget: Budget, metrics: dict[str, OutputMetrics], explicit: bool) -> dict:
    """For the report: each entry per output, with the statistic that judged it, its value and
    the number of held-out samples (and positions); the class-score outputs left uncovered."""
    entries = []
    for key, limit in budget.limits.items():
        output, metric = split_key(key)
        for name, m in metrics.items():
            value = judged_value(m, metric) if output in (None, name) else None
            if value is None:
                continue
            bound = ">=" if BUDGET_METRICS[metric] == "min" else "<="
            ok = value >= limit if bound == ">=" else value <= limit
            entry = {"entry": f"{key}{bound}{limit:g}", "output": name, "statistic": _statistic(metric, m),
                     "value": json_float(float(value)), "ok": bool(ok), "samples": m.samples}
            if metric in TOP1_METRICS:
                entry["positions"] = m.positions
            entries.append(entry)
    return {"source": "--budget" if explicit else "default", "entries": entries,
            "uncovered": uncovered(budget, metrics) if explicit else [],
            "kinds": {name: m.kind for name, m in metrics.items()}}


def uncovered(budget: Budget, metrics: dict[str, OutputMetrics]) -> list[str]:
    """Inferred class-score outputs (top1_dist defined) that no top1/top1_dist entry bounds."""
    return [_uncovered_line(budget, name, m.kind) for name, m in metrics.items()
            if m.top1_dist is not None and not budget.bounds_top1(name)]


def _uncovered_line(budget: Budget, name: str, kind: str) -> str:
    given = " ".join(f"{k}={v:g}" for k, v in budget.limits.items())
    return (f"--budget {given} sets no top-1 bound on output '{name}' ({kind}): its classes may change "
            f"while the budget holds; add --budget {name}:top1=0.999 (or top1=...)")


def check_run_budget(budget: Budget, kinds: dict[str, OutputKind] | None, logger: logging.Logger) -> list[str]:
    """Once per run, before any pass: InputError for an entry naming an unknown output, and a
    logged warning per inferred class-score output an explicit budget leaves without top-1 bound.
    `kinds`: the run's outputs as `infer_kinds` read them from the input model's reference."""
    if not budget.limits or not kinds:
        return []
    budget.check_outputs(kinds)
    lines = [_uncovered_line(budget, name, kind.label()) for name, kind in kinds.items()
             if kind.class_scores and not budget.bounds_top1(name)]
    for line in lines:
        logger.warning(line)
    return lines


def smallest_fitting_prefix(count: int, fits: Callable[[int], bool]) -> int | None:
    """The smallest k in [1, count] with `fits(k)`, assuming fitting is monotone in k (more units
    kept float / at higher precision fit at least as well); None when even `count` does not.
    Doubling then bisection: O(log k) measurements instead of k."""
    lo, k = 0, 1
    while True:
        k = min(k, count)
        if fits(k):
            break
        if k == count:
            return None
        lo, k = k, k * 2
    hi = k
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if fits(mid) else (mid, hi)
    return hi


RETRY_SHARES = (0.5, 0.25)  # of its allowance, a lossy pass may spend on its second and third try


def run_with_retries(run_one: Callable, p, model: ir.Model, ctx) -> tuple:
    """Run a lossy pass; when it sized itself on the search feeds and the verification feeds then
    show the budget missed, run it again spending half, then a quarter, of what it may spend.

    A search keeps the candidate that just passes on its feeds, so on other feeds it misses about
    as often as not when the budget is a worst-sample statistic (a search at worst-sample cosine
    0.990 on 64 feeds met 0.985 on 32 others). Spending less of the allowance is the guard band.
    Each try starts from the model before the pass (the manager's rollback point) and is verified
    in full; the record's stats list the tries ("budget_retries"). A try reuses what the last one
    measured (`ctx.retry_memo`, graphopt.search_memo). `run_one(model) -> (model, record)` is the
    manager's single run; `ctx.budget` is restored afterwards."""
    run_budget, tries = ctx.budget, []
    ctx.retry_memo = {}
    try:
        model, record = run_one(model)
        for share in RETRY_SHARES:
            if not _retry_worth_it(p, record, ctx):
                break
            if ctx.deadline.expired():
                ctx.deadline.skip(f"{p.name}: budget retry at {share:g} of the budget")
                break
            tries.append({"share": tries[-1]["next"] if tries else 1.0, "problem": record.error, "next": share})
            ctx.budget = budget_share(effective_budget(run_budget), ctx.evaluator(model).measure(model), share)
            ctx.progress and ctx.progress(f"{p.name}: verification missed the budget; again at {share:g} of it")
            model, record = run_one(model)
    finally:
        ctx.budget, ctx.retry_memo = run_budget, None
    if tries:
        record.stats["budget_retries"] = [{"share": t["share"], "problem": t["problem"]} for t in tries]
        record.stats["budget_share_spent"] = tries[-1]["next"]
    return model, record


def _retry_worth_it(p, record, ctx) -> bool:
    """Rolled back by its verification after a budget search on feeds apart from it."""

    budget = record.stats.get("budget")
    searched = isinstance(budget, dict) and budget.get("measured", True) is not False
    failed = record.rolled_back and record.verify is not None and not record.verify.get("ok", True)
    return isinstance(p.tolerance, Lossy) and searched and failed and bool(ctx.search)


@dataclass
class CandidateSearch:
    """Builds and measures budget-search candidates, each once (the shared core of the lossy
    passes' fallback searches). A candidate is whatever `build` takes (a frozenset of units kept
    at higher precision, a {layer: bits} map); `key` makes it hashable, `describe` names it for
    the progress line. `measure` -> (fits the budget, worst value of the budget's first metric).
    With `worse_than(key, other)` (a partial order: `key`'s candidate cannot fit where `other`'s
    did not), a candidate no better than one an earlier try chose (`memo.chosen`: the
    verification rejected it, or there would be no retry) counts as a miss; `chosen(key)`
    records a try's result."""

    build: Callable[[Any], ir.Model]
    ev: Evaluator
    budget: Budget
    progress: Callable[[str], None] | None = None
    describe: Callable[[Any], str] = str
    key: Callable[[Any], Any] = lambda candidate: candidate
    measured: dict = field(default_factory=dict)
    memo: SearchMemo = field(default_factory=SearchMemo)  # earlier tries' measurements (ctx.search_memo)
    worse_than: Callable[[Any, Any], bool] | None = None

    @property
    def metric(self) -> str:
        return next(iter(self.budget.limits))

    def ruled_out(self, key) -> bool:
        return self.worse_than is not None and self.memo.rejects(key, self.worse_than)

    def chosen(self, key) -> None:
        self.memo.chosen.append(key)

    def measure(self, candidate) -> tuple[bool, float]:
        key = self.key(candidate)
        if key not in self.measured:
            ok, metrics = self.memo.fits(key, lambda: self.build(candidate), self.ev, self.budget)
            ok = ok and not self.ruled_out(key)
            self.measured[key] = (ok, worst(metrics, self.metric))
            if self.progress is not None:
                self.progress(f"{self.describe(candidate)}: {self.metric} {self.measured[key][1]:.5g} "
                              f"({'fits' if ok else 'misses'} the budget)")
        return self.measured[key]


def levels_key(levels: dict[str, int]) -> tuple:
    """A {layer: bits} candidate as a hashable key."""
    return tuple(sorted(levels.items()))
