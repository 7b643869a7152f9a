"""Budget fallback: put the fewest quantized nodes back to float until the budget holds.

Units (quantized nodes) are ranked by sensitivity: by default with a free proxy, the worst SQNR
among u's quantized inputs and weight (from the per-tensor report), or, with `rank="measured"`,
by one held-out measurement per unit: how much the budget metric m improves when u alone goes
back to float in the fully quantized model,
    gain(u) = m(Q \\ {u}) - m(Q)      (for max_abs: the decrease).
With units in that order, the smallest prefix that meets the budget is found by doubling then
bisection (O(log n) measurements), then each fallback is tried back in quantized form, least
sensitive first, and stays quantized if the budget still holds. The stats list every fallback
with its measured effect m(without it in float) -> m(with).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import onnx_ir as ir

from graphopt.lossy import Evaluator, summarize, worst
from graphopt.tolerance import BUDGET_METRICS, Budget


@dataclass
class Candidate:
    model: ir.Model
    plan: object
    applied: object
    disabled: frozenset[str]


Build = Callable[[frozenset[str]], Candidate]


class _Search:
    """Builds and measures candidates, remembering each measurement."""

    def __init__(self, build: Build, ev: Evaluator, budget: Budget, progress):
        self.build, self.ev, self.budget = build, ev, budget
        self.metric = next(iter(budget.limits))
        self.progress = progress or (lambda message: None)
        self.measured: dict[frozenset[str], tuple[bool, float]] = {}

    def score(self, metrics) -> float:
        value = worst(metrics, self.metric)
        return value if BUDGET_METRICS[self.metric] == "min" else -value

    def try_(self, disabled: frozenset[str]) -> tuple[bool, float]:
        """Whether the candidate with `disabled` in float fits, and its score (higher = better).
        Candidates are not kept (each holds its own quantized weights); the winner is rebuilt."""
        if disabled not in self.measured:
            candidate = self.build(disabled)
            ok, metrics = self.ev.fits(candidate.model, self.budget)
            self.measured[disabled] = (ok, self.score(metrics))
            del candidate
            self.progress(f"quantize: {len(disabled)} node(s) in float: {self.metric} "
                          f"{worst(metrics, self.metric):.5g} ({'fits' if ok else 'misses'} the budget)")
        return self.measured[disabled]


def fit_budget(full: Candidate, build: Build, ev: Evaluator, budget: Budget, max_fallback: int,
               progress=None, rank: str = "sqnr", proxy: dict[str, float] | None = None):
    """The candidate with the fewest float fallbacks that meets `budget`, and a report."""
    search = _Search(build, ev, budget, progress)
    ok, metrics = ev.fits(full.model, budget)
    search.measured[frozenset()] = (ok, search.score(metrics))
    report = {"measured": True, "limits": dict(budget.limits), "all_quantized": summarize(metrics)}
    if ok or max_fallback == 0:
        return full, {**report, "fits": ok, "fallbacks": []}
    order = _ranking(full, search, rank, proxy)
    chosen = _smallest_prefix(order[:max_fallback], search)
    if chosen is None:
        worst_case = frozenset(order[:max_fallback])
        search.try_(worst_case)
        report["reason"] = (f"the budget is not met even with {len(worst_case)} node(s) in float "
                            "(max_fallback); the result misses it")
        return build(worst_case), {**report, "fits": False, "fallbacks": sorted(worst_case)}
    kept, effects = _prune(chosen, order, search)
    best = build(kept) if kept else full
    final = summarize(ev.measure(best.model))
    return best, {**report, "fits": True, "final": final, "fallbacks": effects,
                  "measurements": len(search.measured)}


def _ranking(full: Candidate, search: _Search, rank: str, proxy: dict[str, float] | None) -> list[str]:
    units = list(full.plan.units)
    if rank == "sqnr" and proxy is not None:
        return sorted(units, key=lambda u: proxy.get(u, float("inf")))
    base = search.measured[frozenset()][1]
    gains = {}
    for unit in units:
        _, score = search.try_(frozenset({unit}))
        gains[unit] = score - base
    return sorted(units, key=lambda u: -gains[u])


def _smallest_prefix(order: list[str], search: _Search) -> frozenset[str] | None:
    """Smallest k such that the first k units in float meet the budget (doubling + bisection)."""
    lo, k = 0, 1
    while True:
        k = min(k, len(order))
        if search.try_(frozenset(order[:k]))[0]:
            break
        if k == len(order):
            return None
        lo, k = k, k * 2
    hi = k
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if search.try_(frozenset(order[:mid]))[0]:
            hi = mid
        else:
            lo = mid
    return frozenset(order[:hi])


def _prune(chosen: frozenset[str], order: list[str], search: _Search) -> tuple[frozenset[str], list[dict]]:
    """Try each fallback back in quantized form (least sensitive first); keep it if the budget holds."""
    kept = set(chosen)
    for unit in [u for u in reversed(order) if u in chosen]:
        trial = frozenset(kept - {unit})
        if search.try_(trial)[0]:
            kept.discard(unit)
    effects = []
    final = frozenset(kept)
    _, with_all = search.try_(final)
    for unit in sorted(kept):
        _, without = search.try_(frozenset(kept - {unit}))
        sign = 1 if BUDGET_METRICS[search.metric] == "min" else -1
        effects.append({"node": unit, "metric": search.metric,
                        "quantized": round(sign * without, 6), "float": round(sign * with_all, 6)})
    effects.sort(key=lambda e: -(abs(e["float"] - e["quantized"])))
    return final, effects
