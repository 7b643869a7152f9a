"""What lossy passes (prune, svd, quantize) use to size themselves to the accuracy budget.

The run's budget is measured on held-out feeds against the *input* model's outputs (the
manager computes those once). A lossy pass asks `Evaluator.measure(candidate)` for the
metrics of a candidate, and `Evaluator.fits(candidate, budget)` whether it meets a budget.

Several lossy passes in one run (the `compress` recipe) split the budget: a pass with share s
may spend the fraction s of what is left, measured from the model it received. For a
"higher is better" metric m with limit L and current value m0 the pass's own floor is
m0 - s·(m0 - L); for max_abs (lower is better) the ceiling is m0 + s·(L - m0).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from graphopt.errors import InputError
from graphopt.metrics import OutputMetrics, compare_outputs
from graphopt.runtime import run_model
from graphopt.tolerance import BUDGET_METRICS, DEFAULT_BUDGET, Budget

Feed = dict[str, np.ndarray]


def effective_budget(budget: Budget) -> Budget:
    """The run's budget, or DEFAULT_BUDGET when the user set none."""
    return budget if budget.limits else DEFAULT_BUDGET


def worst(metrics: dict[str, OutputMetrics], metric: str) -> float:
    """Worst value of `metric` over outputs (min for higher-is-better, max for max_abs)."""
    values = [getattr(m, metric) for m in metrics.values() if getattr(m, metric) is not None]
    if not values:
        return float("nan")
    return min(values) if BUDGET_METRICS[metric] == "min" else max(values)


def budget_share(budget: Budget, current: dict[str, OutputMetrics], share: float) -> Budget:
    """The part of `budget` a pass may spend, starting from a model whose metrics are `current`."""
    if not 0 < share <= 1:
        raise InputError(f"budget share must be in (0, 1], got {share}")
    limits = {}
    for metric, limit in budget.limits.items():
        now = worst(current, metric)
        if not np.isfinite(now):
            now = {"cosine": 1.0, "top1": 1.0, "top1_dist": 1.0, "max_abs": 0.0}.get(metric, limit + 60.0)
        limits[metric] = now - share * (now - limit) if BUDGET_METRICS[metric] == "min" \
            else now + share * (limit - now)
    return Budget(limits)


@dataclass
class Evaluator:
    """Measures candidates on held-out feeds against the input model's reference outputs."""

    feeds: list[Feed]
    reference: list[Feed]

    @classmethod
    def for_model(cls, model: ir.Model, feeds: list[Feed]) -> Evaluator:
        """Reference outputs taken from `model` itself (when no run reference exists)."""
        if not feeds:
            raise InputError("no held-out feeds to measure the accuracy budget on")
        return cls(list(feeds), run_model(model, list(feeds)))

    def measure(self, model: ir.Model) -> dict[str, OutputMetrics]:
        return compare_outputs(self.reference, run_model(model, self.feeds))

    def fits(self, model: ir.Model, budget: Budget) -> tuple[bool, dict[str, OutputMetrics]]:
        metrics = self.measure(model)
        return not budget.violations(metrics), metrics


def summarize(metrics: dict[str, OutputMetrics]) -> dict[str, float]:
    """Worst value of each budget metric, for pass stats and reports."""
    out = {}
    for metric in BUDGET_METRICS:
        value = worst(metrics, metric)
        if np.isfinite(value):
            out[metric] = float(value)
    return out
