"""Budget search of `quantize-dynamic`: the fewest groups smoothed, then the fewest units back
in float, so the budget holds. Everything is measured on the held-out feeds against the input
model; m is the budget metric.

1. Smoothing (smooth.py) keeps units int8 at the cost of a Mul over their input: of the groups
   it helps, most sensitive first, the smallest prefix whose smoothing meets the budget
   (doubling, then bisection: O(log n) measurements); all of them when none does.
2. The float fallback, with that smoothing: units ranked most sensitive first (their estimated
   output SQNR, sensitivity.py), the smallest prefix whose units in float meet the budget (the
   same search), then thinned: every unit of the prefix except its last (needed: the prefix
   without it misses), least sensitive first, goes back to int8 if the budget still holds
   without it. Each fallback u of the final set F is reported with its measured effect,
   m(F \\ {u}) (u back in int8) against m(F).
"""

from __future__ import annotations

from typing import Callable

import onnx_ir as ir

from graphopt.lossy import CandidateSearch, Evaluator, smallest_fitting_prefix
from graphopt.tolerance import Budget


class Search(CandidateSearch):
    """Candidates are frozensets of nodes in float; `what` names them for the progress lines."""

    def __init__(self, build: Callable[[frozenset[str]], ir.Model], ev: Evaluator, budget: Budget,
                 progress: Callable[[str], None], what: str = "node(s) in float"):
        super().__init__(build, ev, budget, progress,
                         describe=lambda disabled: f"quantize-dynamic: {len(disabled)} {what}")

    def try_(self, disabled: frozenset[str]) -> bool:
        return self.measure(disabled)[0]


def fit_budget(search: Search, rank: Callable[[], list[str]], max_fallback: int
               ) -> tuple[frozenset[str] | None, dict]:
    """The units to keep float (None: no prefix of the ranking's first `max_fallback` fits) and a
    report; `rank()` (most sensitive first) is called only when the all-int8 candidate misses."""
    ok = search.try_(frozenset())
    report = {"measured": True, "limits": dict(search.budget.limits),
              "all_int8": {search.metric: search.measured[frozenset()][1]}}
    if ok:
        return frozenset(), {**report, "fits": True, "fallbacks": []}
    order = rank()[:max_fallback]
    k = smallest_prefix(len(order), lambda k: search.try_(frozenset(order[:k])))
    if k is None:
        reason = f"the budget is not met even with {len(order)} node(s) in float (max_fallback)"
        return None, {**report, "fits": False, "reason": reason}
    prefix = order[:k]
    kept = list(prefix)
    for unit in reversed(prefix[:-1]):  # the last one is needed: the prefix without it misses
        if search.try_(frozenset(kept) - {unit}):
            kept.remove(unit)
    final = frozenset(kept)
    effects = []
    for unit in kept:  # measured: the final set with this one back in int8
        search.try_(final - {unit})
        effects.append({"node": unit, "metric": search.metric, "int8": round(search.measured[final - {unit}][1], 6),
                        "float": round(search.measured[final][1], 6)})
    return final, {**report, "fits": True, "fallbacks": effects, "measurements": len(search.measured)}


def fit_smoothing(search: Search, groups: list[list[str]]) -> tuple[frozenset[str], dict]:
    """The units to smooth: the fewest of `groups` (most sensitive first) whose smoothing meets
    the budget, or all of them when none does (the float fallback goes on from there)."""
    fits = search.try_(frozenset())
    unsmoothed = {search.metric: search.measured[frozenset()][1]}
    if fits:
        return frozenset(), {"groups": 0, "of": len(groups), "fits": True, "unsmoothed": unsmoothed}

    def first(k: int) -> frozenset[str]:
        return frozenset(key for group in groups[:k] for key in group)

    k = smallest_prefix(len(groups), lambda k: search.try_(first(k)))
    chosen = first(len(groups) if k is None else k)
    search.try_(chosen)
    return chosen, {"groups": len(groups) if k is None else k, "of": len(groups), "fits": k is not None,
                    "unsmoothed": unsmoothed, "smoothed": {search.metric: search.measured[chosen][1]}}


def smallest_prefix(n: int, fits: Callable[[int], bool]) -> int | None:
    """The smallest k in 1..n with fits(k) (lossy.smallest_fitting_prefix); None when n is 0."""
    return smallest_fitting_prefix(n, fits) if n else None


__all__ = ["Search", "fit_budget", "fit_smoothing", "smallest_prefix"]
