"""Budget fallback: put the fewest quantized nodes back to float until the budget holds.

Units (quantized nodes) are ranked by sensitivity: by default with a free proxy, the worst SQNR
among u's quantized inputs and weight (from the per-tensor report), or, with `rank="measured"`,
by one held-out measurement per unit: how much the budget metric m improves when u alone goes
back to float in the fully quantized model,
    gain(u) = m(Q \\ {u}) - m(Q)      (for max_abs: the decrease).
With units in that order, the smallest prefix that meets the budget is found by doubling then
bisection (O(log n) measurements); then the prefix is thinned from its end: its last unit is
needed, and an exponential + binary search finds how many units below it can go back to int8
at once; the first that cannot is needed too, and so on (_prune). The stats list every fallback
with its measured effect m(without it in float) -> m(with); a miss is decided on the first feeds
that show it (graphopt.staged), so m(without it) may cover only those.

In a budget retry (the verification feeds rejected the last try's set F), every subset of F
counts as a miss: fewer units in float cannot fit where F did not, by the same monotonicity
the search assumes. Without this, a retry whose tighter budget F still meets on the search
feeds (a top-1 rate already at 1.0 there) would choose F again and fail the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import onnx_ir as ir

from graphopt.deadline import OutOfTime
from graphopt.lossy import Evaluator, smallest_fitting_prefix, summarize, worst
from graphopt.search_memo import SearchMemo
from graphopt.tolerance import BUDGET_METRICS, Budget
from graphopt.phases import timed


@dataclass
class Candidate:
    model: ir.Model
    plan: object
    applied: object
    disabled: frozenset[str]


Build = Callable[[frozenset[str]], Candidate]


class _Search:
    """Builds and measures candidates, remembering each measurement."""

    def __init__(self, build: Build, ev: Evaluator, budget: Budget, progress, memo: SearchMemo | None = None):
        self.build, self.ev, self.budget = build, ev, budget
        self.memo = memo if memo is not None else SearchMemo()  # earlier tries' (graphopt.search_memo)
        self.metric = next(iter(budget.limits))
        self.progress = progress or (lambda message: None)
        self.measured: dict[frozenset[str], tuple[bool, float]] = {}
        self.ruled_out = len(self.memo.chosen)  # earlier tries' results, rejected by their verification

    def score(self, metrics) -> float:
        value = worst(metrics, self.metric)
        return value if BUDGET_METRICS[self.metric] == "min" else -value

    def try_(self, disabled: frozenset[str], early: bool = True) -> tuple[bool, float]:
        """Whether the candidate with `disabled` in float fits, and its score (higher = better;
        with `early`, a miss's score may cover only the feeds that decided it: graphopt.staged).
        Candidates are not kept (each holds its own quantized weights); the winner is rebuilt."""
        if disabled not in self.measured:
            ok, metrics = self.memo.fits(disabled, lambda: self.build(disabled).model, self.ev, self.budget, early)
            ok = ok and not self.memo.rejects(disabled, frozenset.issubset)
            self.measured[disabled] = (ok, self.score(metrics))
            seen = "" if self.ev.feeds_seen == len(self.ev.feeds) else \
                f", decided on {self.ev.feeds_seen} of {len(self.ev.feeds)} feeds"
            self.progress(f"quantize: {len(disabled)} node(s) in float: {self.metric} "
                          f"{worst(metrics, self.metric):.5g} ({'fits' if ok else 'misses'} the budget{seen})")
        return self.measured[disabled]


@timed("budget search")
def fit_budget(full: Candidate, build: Build, ev: Evaluator, budget: Budget, max_fallback: int,
               progress=None, rank: str = "sqnr", proxy: dict[str, float] | None = None,
               memo: SearchMemo | None = None):
    """The candidate with the fewest float fallbacks that meets `budget`, and a report; `memo`:
    what earlier tries of the pass measured (graphopt.search_memo)."""
    search = _Search(build, ev, budget, progress, memo)
    ok, metrics = search.memo.fits(frozenset(), lambda: full.model, ev, budget, early=False)  # reported; the gains' base
    ok = ok and not search.memo.rejects(frozenset(), frozenset.issubset)
    search.measured[frozenset()] = (ok, search.score(metrics))
    report = {"measured": True, "limits": dict(budget.limits), "all_quantized": summarize(metrics)}
    if ok or max_fallback == 0:
        if ok:
            search.memo.chosen.append(frozenset())
        return full, {**report, "fits": ok, "fallbacks": []}
    try:
        order = _ranking(full, search, rank, proxy)
        chosen = _smallest_prefix(order[:max_fallback], search)
        if chosen is None:
            worst_case = frozenset(order[:max_fallback])
            search.try_(worst_case)
            report["reason"] = (f"the budget is not met even with {len(worst_case)} node(s) in float "
                                "(max_fallback); the result misses it")
            return build(worst_case), {**report, "fits": False, "fallbacks": sorted(worst_case)}
        kept, effects = _prune(chosen, order, search)
    except OutOfTime as exc:
        stopped = {**report, "stopped": f"no time left (--max-time) for {exc.what}"}
        return _best_so_far(search, build, len(full.plan.units), stopped)
    best = build(kept) if kept else full
    memo_report = {"ruled_out": search.ruled_out} if search.ruled_out else {}
    search.memo.chosen.append(kept)
    return best, {**report, "fits": True, "final": _final(search, kept, best), "fallbacks": effects,
                  "measurements": len(search.measured), **memo_report}


def _final(search: _Search, kept: frozenset[str], best: Candidate) -> dict:
    """The chosen candidate's metrics: from its measurement on every search feed (a fitting one)."""
    entry = search.memo.get(kept)
    metrics = entry.metrics if entry is not None and entry.complete else search.ev.measure(best.model)
    return summarize(metrics)


def _best_so_far(search: _Search, build: Build, units: int, report: dict) -> tuple[Candidate | None, dict]:
    """Out of time: the fitting candidate with the fewest units in float measured so far, or None
    (keep the model float) when none that quantizes any of the `units` fit."""
    fitting = sorted((d for d, (ok, _) in search.measured.items() if ok and len(d) < units),
                     key=lambda d: (len(d), sorted(d)))
    if not fitting:
        return None, {**report, "fits": False, "reason": report["stopped"] + "; no quantized candidate fitted yet"}
    kept = fitting[0]
    best = build(kept)
    return best, {**report, "fits": True, "final": _final(search, kept, best), "fallbacks": sorted(kept),
                  "measurements": len(search.measured)}


def _ranking(full: Candidate, search: _Search, rank: str, proxy: dict[str, float] | None) -> list[str]:
    units = list(full.plan.units)
    if rank == "sqnr" and proxy is not None:
        return sorted(units, key=lambda u: proxy.get(u, float("inf")))
    base = search.measured[frozenset()][1]
    gains = {}
    for unit in units:
        _, score = search.try_(frozenset({unit}), early=False)  # gains compare full-feed scores
        gains[unit] = score - base
    return sorted(units, key=lambda u: -gains[u])


def _smallest_prefix(order: list[str], search: _Search) -> frozenset[str] | None:
    """Smallest k such that the first k units in float meet the budget (doubling + bisection)."""
    k = smallest_fitting_prefix(len(order), lambda n: search.try_(frozenset(order[:n]))[0])
    return None if k is None else frozenset(order[:k])


def _prune(chosen: frozenset[str], order: list[str], search: _Search) -> tuple[frozenset[str], list[dict]]:
    """The fewest of `chosen` (the smallest fitting prefix of `order`) that still fit, and each
    one's measured effect. The prefix's last unit is needed (the prefix without it misses). Below
    the last needed unit, an exponential then binary search finds how many units can go back to
    int8 at once (dropping 1, 2, 4, ... from the top); the first one that cannot is needed too.
    A needed unit costs O(log gap) measurements, so a poor proxy order that pulled in many
    harmless units stays cheap, and a tight prefix costs one measurement per unit.

    Each needed unit's effect comes from the two measured candidates that proved it needed: they
    differ in that unit alone, one fits and the other (the unit back in int8) misses; the other
    units in float there are the needed ones found before it and the units below it."""
    prefix = [u for u in order if u in chosen]
    required: list[str] = []
    effects = []
    fitting = frozenset(prefix)
    top = len(prefix)
    while top > 0:
        unit = prefix[top - 1]
        required.append(unit)
        effects.append(_effect(search, unit, fitting))
        top, fitting = _droppable(prefix[:top - 1], required, search)
    effects.sort(key=lambda e: -(abs(e["float"] - e["quantized"])))
    return frozenset(required), effects


def _effect(search: _Search, unit: str, fitting: frozenset[str]) -> dict:
    """`unit`'s measured effect: the fitting candidate `fitting` against it with `unit` in int8."""
    _, with_unit = search.try_(fitting)
    _, without = search.try_(fitting - {unit})
    sign = 1 if BUDGET_METRICS[search.metric] == "min" else -1
    return {"node": unit, "metric": search.metric, "quantized": round(sign * without, 6),
            "float": round(sign * with_unit, 6), "others_in_float": len(fitting) - 1}


def _droppable(rest: list[str], required: list[str], search: _Search) -> tuple[int, frozenset[str]]:
    """How many of `rest` must stay float (a prefix length) with `required` also float, and the
    fitting candidate with that many; the search assumes that dropping more units from the top
    of `rest` never helps."""
    def chosen(dropped: int) -> frozenset[str]:
        return frozenset(required) | frozenset(rest[:len(rest) - dropped])

    def fits(dropped: int) -> bool:
        return search.try_(chosen(dropped))[0]

    good, step = 0, 1
    while True:
        trial = min(step, len(rest))
        if not fits(trial):
            bad = trial
            break
        good = trial
        if trial == len(rest):
            return 0, chosen(good)
        step *= 2
    while bad - good > 1:
        mid = (good + bad) // 2
        good, bad = (mid, bad) if fits(mid) else (good, mid)
    return len(rest) - good, chosen(good)
