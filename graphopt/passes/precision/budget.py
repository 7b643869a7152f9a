"""Budget fallback: the fewest converted ops back to float32 until the run's budget holds.

Measured on the run's search feeds against the input model (`ctx.evaluator`), with the pass's
share of the budget (graphopt.lossy.budget_share). If the fully converted candidate misses it,
the ops are ranked (rank.py, most error-adding first) and the smallest prefix of the first
`max_fallback` that meets the budget in float32 is found by doubling then bisection
(graphopt.lossy.smallest_fitting_prefix: O(log n) measurements). The prefix is then thinned: its
last op is needed (the prefix without it misses); each earlier one, from the end, goes back to
the low type if the budget still holds without it (at most MAX_THIN tries). Each remaining
fallback u of the final set F is reported with its measured effect (the first MAX_EFFECTS):
m(F \\ {u}) -> m(F), "budget: cosine 0.9981 -> 0.9995 when kept float32". In a budget retry
the set an earlier try chose, which the verification rejected, and its subsets count as misses.
"""

from __future__ import annotations

from typing import Callable

import onnx_ir as ir

from graphopt.lossy import CandidateSearch, Evaluator, smallest_fitting_prefix
from graphopt.tolerance import Budget

MAX_THIN = 16
MAX_EFFECTS = 8


class Search(CandidateSearch):
    """Builds and measures candidates (`kept` ops in float32), remembering each measurement."""

    def __init__(self, build: Callable[[frozenset[str]], ir.Model], ev: Evaluator, budget: Budget,
                 progress: Callable[[str], None]):
        super().__init__(build, ev, budget, progress,
                         describe=lambda kept: f"float16: {len(kept)} op(s) back in float32",
                         worse_than=frozenset.issubset)  # fewer ops in float32 cannot fit better

    def try_(self, kept: frozenset[str]) -> bool:
        return self.measure(kept)[0]

    def value(self, kept: frozenset[str]) -> float:
        return self.measure(kept)[1]


def fit_budget(search: Search, rank: Callable[[], list[str]], max_fallback: int) -> tuple[frozenset[str] | None, dict]:
    """The ops to put back in float32 (None: no prefix of the first `max_fallback` fits) and a
    report; `rank()` is called only when the fully converted candidate misses the budget."""
    none = frozenset()
    report = {"measured": True, "limits": dict(search.budget.limits),
              "all_converted": {search.metric: round(search.value(none), 6)}}
    if search.try_(none):
        search.chosen(none)
        return none, {**report, "fits": True, "fallbacks": {}}
    order = rank()[:max_fallback]
    k = smallest_fitting_prefix(len(order), lambda n: search.try_(frozenset(order[:n]))) if order else None
    if k is None:
        reason = f"the budget is not met even with {len(order)} op(s) back in float32 (max_fallback={max_fallback})"
        return None, {**report, "fits": False, "reason": reason, "measurements": len(search.measured)}
    kept = _thin(search, order[:k])
    final = frozenset(kept)
    search.chosen(final)
    effects = {}
    for i, key in enumerate(kept):
        if i < MAX_EFFECTS:
            effects[key] = (f"budget: {search.metric} {search.value(final - {key}):.6g} -> "
                            f"{search.value(final):.6g} when kept float32")
        else:
            effects[key] = "budget: in the smallest fitting prefix of the ranking (effect not measured alone)"
    return final, {**report, "fits": True, "fallbacks": effects,
                   "final": {search.metric: round(search.value(final), 6)}, "measurements": len(search.measured)}


def _thin(search: Search, prefix: list[str]) -> list[str]:
    """Drop ops of the fitting prefix that the budget does not need (the last one is needed)."""
    kept = list(prefix)
    for key in list(reversed(prefix[:-1]))[:MAX_THIN]:
        if search.try_(frozenset(kept) - {key}):
            kept.remove(key)
    return kept


__all__ = ["Search", "fit_budget"]
