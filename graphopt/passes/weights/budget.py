"""Budget fallback per layer: the most sensitive layers go to int8, then to float, until it fits.

Levels: every layer starts at the pass's bits (4). Layers are ordered most sensitive first: by
default (`rank="measured"`) with one held-out measurement per layer, how much the budget metric
m improves when that layer alone is kept float,
    gain(l) = m(Q \\ {l}) - m(Q)      (for max_abs: the decrease);
or (`rank="proxy"`, free) by the layer's relative output error on the calibration rows
tr(ΔWᵀHΔW)/tr(WᵀHW) (stats.py; an embedding, which has no input statistics, by its relative
weight error ||ΔW||²/||W||²). The proxy ignores where a layer sits in the network and ranks
transformer layers poorly (docs/weights-int4.md); the measurements are made only when the fully
quantized model misses the budget. The order is by sensitivity per element (gain / number of
weights), since a layer moved up costs bytes in proportion to its size: a large embedding table
goes up only if it matters as much as the many small layers that would cost the same. With more
than `max_measured` layers (a 1.1B decoder has 156, each measurement a session of the whole
model) the layers are cut, in graph order, into `max_measured` contiguous parts of about equal
weight count (a transformer block is about one part), each part's gain measured with the whole
part kept float; parts are ordered by gain per element, the layers inside a part by the proxy.
Then the smallest prefix of that order which, moved to int8, meets the budget is found by
doubling then bisection (O(log n) measurements). If even every layer at int8 misses, all stay
int8 and the smallest prefix moved to float is searched the same way. The report gives the
measured effect of the first MAX_EFFECTS fallbacks: the metric with every fallback, and with that
one back at the level below (`without`).
"""

from __future__ import annotations

from typing import Callable

import onnx_ir as ir

from graphopt.lossy import CandidateSearch, Evaluator, levels_key, smallest_fitting_prefix
from graphopt.tolerance import BUDGET_METRICS, Budget

Levels = dict[str, int]  # layer key -> bits (0: float)
MAX_EFFECTS = 8  # fallbacks whose effect is measured (one measurement each)


def _weight_levels(levels: Levels) -> str:
    counts = {bits: sum(1 for b in levels.values() if b == bits) for bits in set(levels.values())}
    parts = (f"{n} {'int' + str(b) if b else 'float'}" for b, n in sorted(counts.items()))
    return "quantize-weights: " + ", ".join(parts)


class Search(CandidateSearch):
    """Candidates are {layer: bits} maps (0: float)."""

    def __init__(self, build: Callable[[Levels], ir.Model], ev: Evaluator, budget: Budget,
                 progress: Callable[[str], None] | None = None):
        super().__init__(build, ev, budget, progress, describe=_weight_levels, key=levels_key)

    def try_(self, levels: Levels) -> tuple[bool, float]:
        """Whether `levels` fits the budget, and its value of the first budget metric."""
        return self.measure(levels)

    def gain(self, better: float, base: float) -> float:
        return better - base if BUDGET_METRICS[self.metric] == "min" else base - better


def fit_levels(search: Search, sizes: dict[str, int], bits: int, proxy: dict[str, float],
               rank: str, max_measured: int = 0) -> tuple[Levels, dict]:
    """Levels that meet the budget with few bytes above `bits` ({layer: elements} = `sizes`), and a report."""
    keys = list(sizes)
    base = {k: bits for k in keys}
    ok, value = search.try_(base)
    report = {"measured": True, "limits": dict(search.budget.limits), "all_quantized": {search.metric: value}}
    if ok:
        return base, {**report, "fits": True, "fallbacks": []}
    order, gains = ranking(search, sizes, bits, proxy, rank, max_measured)
    report["order"] = order
    if gains:
        report["measured_gain"] = gains
    steps = [8, 0] if bits == 4 else [0]
    current = base
    for level in steps:
        chosen = smallest_prefix(search, current, order, level)
        if chosen is not None:
            return chosen, {**report, "fits": True, "fallbacks": effects(search, chosen, current, order)}
        current = {k: level for k in keys}
    report["reason"] = "the budget is not met even with every layer in float"
    return current, {**report, "fits": False, "fallbacks": []}


def ranking(search: Search, sizes: dict[str, int], bits: int, proxy: dict[str, float], rank: str,
            max_measured: int = 0):
    """Most sensitive per element first, and the measured gains (by layer, or by part: see the
    module docstring; {} for rank="proxy")."""
    keys = list(sizes)
    by_proxy = sorted(keys, key=lambda k: -proxy.get(k, 0.0) / sizes[k])
    if rank != "measured":
        return by_proxy, {}
    _, base = search.try_({k: bits for k in keys})
    grouped = 0 < max_measured < len(keys)
    parts = contiguous_parts(sizes, max_measured) if grouped else [[k] for k in keys]
    gains = []
    for part in parts:
        _, value = search.try_({**{j: bits for j in keys}, **{k: 0 for k in part}})
        gains.append(round(search.gain(value, base), 6))
    per_element = {i: gains[i] / sum(sizes[k] for k in part) for i, part in enumerate(parts)}
    position = {k: i for i, k in enumerate(by_proxy)}
    order = [k for i in sorted(per_element, key=lambda i: -per_element[i])
             for k in sorted(parts[i], key=position.__getitem__)]
    if not grouped:
        return order, {part[0]: gain for part, gain in zip(parts, gains)}
    return order, {f"{part[0]} .. {part[-1]} ({len(part)} layers)": gain for part, gain in zip(parts, gains)}


def contiguous_parts(sizes: dict[str, int], count: int) -> list[list[str]]:
    """The keys, in order, cut into at most `count` runs of about equal total size (each run
    aims at what is left divided by the runs left, so one large key does not skew the rest)."""
    parts: list[list[str]] = []
    current, current_size, left = [], 0, sum(sizes.values())
    for key, size in sizes.items():
        runs_left = count - len(parts)
        if current and runs_left > 1 and current_size + size / 2 > left / runs_left:
            parts.append(current)
            left -= current_size
            current, current_size = [], 0
        current.append(key)
        current_size += size
    return parts + [current]


def smallest_prefix(search: Search, start: Levels, order: list[str], level: int) -> Levels | None:
    """`start` with the smallest prefix of `order` set to `level` that fits (doubling + bisection)."""
    def with_prefix(count: int) -> Levels:
        return {**start, **{k: level for k in order[:count]}}

    k = smallest_fitting_prefix(len(order), lambda n: search.try_(with_prefix(n))[0])
    return None if k is None else with_prefix(k)


def effects(search: Search, chosen: Levels, below: Levels, order: list[str]) -> list[dict]:
    """Each fallback's measured effect: the metric with it, and with that layer back at `below`
    (the first MAX_EFFECTS fallbacks in sensitivity order; the others are listed unmeasured)."""
    _, with_all = search.try_(chosen)
    out = []
    for i, key in enumerate(k for k in order if chosen[k] != below[k]):
        entry = {"layer": key, "bits": chosen[key], "metric": search.metric, "with_fallback": round(with_all, 6)}
        if i < MAX_EFFECTS:
            entry["without"] = round(search.try_({**chosen, key: below[key]})[1], 6)
        out.append(entry)
    return out


__all__ = ["Levels", "Search", "fit_levels"]
