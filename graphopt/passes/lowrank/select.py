"""Per-layer rank choice under the run's accuracy budget (the `budget` mode of svd and tucker).

Each layer offers `levels`: factorizations cheaper than its dense op, each with its MACs and a
predicted relative error e (output space when data-aware, weight space otherwise). The search:

1. Usage. Against the pass's share of the budget (graphopt.lossy.budget_share), a model's
   usage is max over the budget's metrics of spent / room, e.g. for cosine
   (cos₀ − cos) / (cos₀ − limit) with cos₀ the model before the pass: 0 = no loss, 1 = at the
   limit. A candidate model fits when its usage is <= 1.
2. Sensitivity. Each layer is factored alone at a probe level (about half its MACs) and the
   model's usage u measured on the held-out feeds: one ORT evaluation per layer. For small
   perturbations 1 − cos and the noise power grow with e², so the layer's usage at any level is
   predicted as k·e^p with k = u / e_probe^p (p = 2; p = 1 for max_abs, which grows linearly).
   Layers beyond the evaluation cap take the median k of the probed ones.
3. Allocation. Greedy on the predicted usages, which add over layers for independent errors:
   repeatedly take the move (a layer to a cheaper level) with the most MACs saved per unit of
   predicted usage that keeps the total under an allowance s (s = 1 at first).
4. Confirmation. The combined model is measured; if it misses, s shrinks (s·0.9/u), if it has
   room, s grows (s·0.95/u), bracketed between the largest fitting and smallest failing s, until
   the choice repeats or the evaluations run out. The best fitting choice wins; if none fits,
   nothing is factored. Total ORT evaluations <= 1 (start) + probes + confirmations <= max_evals.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from graphopt.lossy import worst
from graphopt.metrics import OutputMetrics
from graphopt.tolerance import BUDGET_METRICS, Budget

CONFIRM_EVALS = 6
PROBE_SAVING = 0.5


@dataclass(frozen=True)
class Level:
    rank: tuple[int, ...]  # (r,) for a matrix, (r_out, r_in) for Tucker-2
    macs: int
    error: float


@dataclass
class Candidate:
    where: str
    macs: int
    levels: list[Level]  # cheaper than `macs`, most expensive first
    k: float | None = None  # usage per error^p (from the probe)
    probe: dict | None = None


def budget_usage(metrics: dict[str, OutputMetrics], budget: Budget, start: dict[str, OutputMetrics]) -> float:
    """Fraction of the budget's room (from `start` to the limit) that `metrics` spends."""
    usage = 0.0
    for metric, limit in budget.limits.items():
        now, begin = worst(metrics, metric), worst(start, metric)
        if not np.isfinite(now):
            return math.inf
        lower_is_worse = BUDGET_METRICS[metric] == "min"
        room = (begin - limit) if lower_is_worse else (limit - begin)
        spent = (begin - now) if lower_is_worse else (now - begin)
        if room <= 0:
            if spent > 0:
                return math.inf
            continue
        usage = max(usage, spent / room)
    return usage


def usage_power(budget: Budget) -> float:
    return 1.0 if set(budget.limits) == {"max_abs"} else 2.0


@dataclass
class BudgetSearch:
    candidates: list[Candidate]
    measure: Callable[[dict[str, Level]], float]  # usage of the model with these levels
    max_evals: int
    power: float = 2.0
    progress: Callable[[str], None] | None = None
    evaluations: int = 0
    trace: list[dict] = field(default_factory=list)

    def run(self) -> dict[str, Level]:
        self._probe()
        return self._confirm()

    def _probe(self) -> None:
        budget = max(self.max_evals - CONFIRM_EVALS, 0)
        ranked = sorted((c for c in self.candidates if c.levels), key=lambda c: -c.macs)
        for i, cand in enumerate(ranked[:budget]):
            self._say(f"sensitivity probe {i + 1}/{min(budget, len(ranked))}: {cand.where}")
            level = min(cand.levels, key=lambda lv: abs(lv.macs - PROBE_SAVING * cand.macs))
            usage = self._measure({cand.where: level})
            cand.probe = {"rank": list(level.rank), "usage": _json_float(usage)}
            cand.k = usage / level.error ** self.power if level.error > 0 else 0.0
        known = [c.k for c in ranked if c.k is not None and np.isfinite(c.k)]
        fallback = float(np.median(known)) if known else 1.0
        for cand in ranked:
            if cand.k is None or not np.isfinite(cand.k):
                cand.k = fallback if cand.k is None else cand.k

    def _say(self, message: str) -> None:
        if self.progress is not None:
            self.progress(message)

    def _measure(self, choice: dict[str, Level]) -> float:
        self.evaluations += 1
        return self.measure(choice)

    def predicted(self, cand: Candidate, level: Level | None) -> float:
        return 0.0 if level is None else cand.k * level.error ** self.power

    def allocate(self, allowance: float) -> dict[str, Level]:
        """Greedy: most MACs saved per unit of predicted usage, total usage <= allowance."""
        state: dict[str, Level | None] = {c.where: None for c in self.candidates}
        used = 0.0
        while True:
            best = None
            for cand in self.candidates:
                current = state[cand.where]
                macs_now = cand.macs if current is None else current.macs
                use_now = self.predicted(cand, current)
                for level in cand.levels:
                    if level.macs >= macs_now or not np.isfinite(cand.k or 0.0):
                        continue
                    extra = self.predicted(cand, level) - use_now
                    if used + extra > allowance:
                        continue
                    ratio = (macs_now - level.macs) / max(extra, 1e-12)
                    if best is None or ratio > best[0]:
                        best = (ratio, cand, level, extra)
            if best is None:
                return {w: lv for w, lv in state.items() if lv is not None}
            _, cand, level, extra = best
            state[cand.where] = level
            used += extra

    def _confirm(self) -> dict[str, Level]:
        fit_s, fail_s, scale = 0.0, math.inf, 1.0
        best: dict[str, Level] = {}
        tried: list[dict[str, Level]] = []
        while self.evaluations < self.max_evals:
            choice = self.allocate(scale)
            if not choice or choice in tried:
                break
            tried.append(choice)
            self._say(f"confirming {len(choice)} factored layers (allowance {scale:.3g})")
            usage = self._measure(choice)
            self.trace.append({"allowance": scale, "layers": len(choice), "usage": _json_float(usage)})
            if usage <= 1.0:
                fit_s, best = scale, choice
                if usage > 0.9:
                    break
                scale = scale * min(4.0, 0.95 / max(usage, 1e-6))
            else:
                fail_s = scale
                scale = scale * max(0.25, 0.9 / usage) if np.isfinite(usage) else scale * 0.25
            if not fit_s < scale < fail_s:
                scale = math.sqrt(max(fit_s, 1e-6 * fail_s) * fail_s) if np.isfinite(fail_s) else scale
        return best


def _json_float(value: float) -> float | str:
    return float(value) if np.isfinite(value) else str(value)
