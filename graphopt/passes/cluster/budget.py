"""Bits per layer under the run's budget: the smallest global palette, then single layers lower.

Every candidate (build.py's dense form) is measured by the run's evaluator against the input
model (graphopt.lossy); fitting is taken as monotone in the bits of any layer.
1. Global: the smallest b in [min_bits, max_bits] such that every layer at b meets the budget,
   by bisection on the ladder (3 measurements for 2..8; each new b clusters every layer once).
2. Per layer (`per_layer`): from b, the layers are ordered most sensitive first by
       s_l = (e_l(b-1) - e_l(b)) / n_l,    e_l(b) = ||W_l - Ŵ_l||² / ||W_l||² at 2^b entries,
   the weight error one bit less adds, per bit it saves (n_l elements); the smallest prefix of
   that order kept at b, the rest at b-1, that meets the budget is found the same way. The
   layers lowered try b-2 the same way, and so on down to min_bits.
3. If every layer at max_bits misses, layers go float, most sensitive first by e_l(max_bits)/n_l,
   the smallest prefix that fits (all float = the input model, which always fits).
The weight error ignores where a layer sits in the network: it only orders the candidates;
every decision is a measurement. O(log) measurements per step.
"""

from __future__ import annotations

from typing import Callable

import onnx_ir as ir

from graphopt.lossy import CandidateSearch, Evaluator, levels_key, smallest_fitting_prefix
from graphopt.tolerance import Budget

Levels = dict[str, int]  # layer key -> bits (0: float)
Error = Callable[[str, int], float]  # (layer key, bits) -> relative weight error


def _cluster_levels(levels: Levels) -> str:
    bits = sorted(set(levels.values()))
    return "cluster: " + ", ".join(f"{sum(v == b for v in levels.values())} at {b or 'float'}" for b in bits)


class Search(CandidateSearch):
    """Candidates are {layer: bits} maps (0: float)."""

    def __init__(self, build: Callable[[Levels], ir.Model], ev: Evaluator, budget: Budget,
                 progress: Callable[[str], None] | None = None):
        super().__init__(build, ev, budget, progress, describe=_cluster_levels, key=levels_key)

    def fits(self, levels: Levels) -> bool:
        return self.measure(levels)[0]

    def value(self, levels: Levels) -> float:
        return self.measure(levels)[1]


def fit_bits(search: Search, sizes: dict[str, int], error: Error, low: int, high: int,
             per_layer: bool) -> tuple[Levels, dict]:
    """Levels that meet the budget with few bits ({layer: elements} = `sizes`), and a report."""
    keys = list(sizes)
    ladder = list(range(low, high + 1))
    report: dict = {"measured": True, "limits": dict(search.budget.limits)}
    count = _bisect(len(ladder), lambda n: search.fits(dict.fromkeys(keys, ladder[n - 1])))
    if count is None:
        levels, fallback = _to_float(search, sizes, error, high)
        report.update(global_bits=None, float_fallback=fallback, fits=search.fits(levels))
        return _finish(search, levels, report)
    levels = dict.fromkeys(keys, ladder[count - 1])
    report["global_bits"] = ladder[count - 1]
    if per_layer:
        levels, report["lowered"] = _lower(search, levels, sizes, error, low)
    report["fits"] = True
    return _finish(search, levels, report)


def _bisect(count: int, fits: Callable[[int], bool]) -> int | None:
    """The smallest n in [1, count] with fits(n) (monotone), by bisection; None if not even count."""
    lo, hi = 0, None
    top = count
    while top - lo > 0:
        mid = (lo + top + 1) // 2
        if fits(mid):
            hi, top = mid, mid - 1
        else:
            lo = mid
    return hi


def _lower(search: Search, levels: Levels, sizes: dict[str, int], error: Error, low: int) -> tuple[Levels, list]:
    """Lower single layers below the global bits while the budget holds (step 2)."""
    movable, steps = list(levels), []
    current = next(iter(levels.values())) if levels else low
    while movable and current > low:
        lower = current - 1
        order = sorted(movable, key=lambda k: -(error(k, lower) - error(k, current)) / sizes[k])

        def kept_at_current(n: int, base=levels, order=order, lower=lower) -> Levels:
            return {**base, **dict.fromkeys(order[n:], lower)}

        kept = 0 if search.fits(kept_at_current(0)) else smallest_fitting_prefix(
            len(order), lambda n: search.fits(kept_at_current(n)))
        if kept is None or kept == len(order):
            break
        steps.append({"bits": lower, "lowered": len(order) - kept, "kept": kept})
        levels, movable, current = kept_at_current(kept), order[kept:], lower
    return levels, steps


def _to_float(search: Search, sizes: dict[str, int], error: Error, high: int) -> tuple[Levels, dict]:
    """Every layer at `high` misses: the smallest most-sensitive prefix kept float (step 3)."""
    order = sorted(sizes, key=lambda k: -error(k, high) / sizes[k])
    base = dict.fromkeys(sizes, high)

    def with_float(n: int) -> Levels:
        return {**base, **dict.fromkeys(order[:n], 0)}

    count = smallest_fitting_prefix(len(order), lambda n: search.fits(with_float(n)))
    count = len(order) if count is None else count
    return with_float(count), {"float": order[:count], "reason": f"every layer at {high} bits misses the budget"}


def _finish(search: Search, levels: Levels, report: dict) -> tuple[Levels, dict]:
    report["measurements"] = len(search.measured)
    report["result"] = {search.metric: round(search.value(levels), 6)}
    return levels, report


__all__ = ["Levels", "Search", "fit_bits"]
