"""Tolerance classes: how far a pass's outputs may move from the reference outputs.

- `Exact`: every element within 1 ulp (bitwise for rewrites that do not touch arithmetic).
- `Reassoc(rtol, atol)`: float re-association (folding, fusion): max |a-b| <= atol + rtol * max |ref|,
  per output, so the bound scales with the output's magnitude.
- `Lossy(budget)`: pruning, low-rank, quantization; judged by the run's accuracy `Budget`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from graphopt.errors import InputError
from graphopt.metrics import OutputMetrics

BUDGET_METRICS = {"cosine": "min", "top1": "min", "top1_dist": "min", "snr_db": "min", "max_abs": "max"}


@dataclass(frozen=True)
class Budget:
    """Accuracy floor/ceiling per metric, e.g. {"cosine": 0.99}; checked on every output."""

    limits: dict[str, float] = field(default_factory=dict)

    @classmethod
    def parse(cls, items: list[str]) -> Budget:
        limits: dict[str, float] = {}
        for item in items:
            name, sep, raw = item.partition("=")
            if not sep or name not in BUDGET_METRICS:
                raise InputError(f"--budget '{item}': expected METRIC=VALUE with METRIC one of "
                                 f"{', '.join(BUDGET_METRICS)}")
            try:
                limits[name] = float(raw)
            except ValueError:
                raise InputError(f"--budget '{item}': '{raw}' is not a number") from None
        return cls(limits)

    def violations(self, metrics: dict[str, OutputMetrics]) -> list[str]:
        """Human-readable list of what misses the budget (empty when it holds)."""
        found = []
        for out_name, m in metrics.items():
            for metric, limit in self.limits.items():
                value = getattr(m, metric)
                if value is None:
                    continue
                worse = value < limit if BUDGET_METRICS[metric] == "min" else value > limit
                if worse:
                    found.append(f"{out_name}: {metric} {value:.6g} vs budget {limit:g}")
        return found


# cosine >= 0.99 on every output, and top-1 agreement >= 0.999 where an output is a probability
# distribution (a class softmax; a CTC recognizer's per-time-step softmax, where cosine can stay
# above 0.99 while a sizeable share of the decoded lines change, and agreement on 0.999 of the
# steps keeps changed lines rare; measured on PP-OCR rec: docs/design-measurements.md)
DEFAULT_BUDGET = Budget({"cosine": 0.99, "top1_dist": 0.999})


@dataclass(frozen=True)
class Tolerance:
    kind: str = "exact"

    def violations(self, metrics: dict[str, OutputMetrics], budget: Budget) -> list[str]:
        raise NotImplementedError


@dataclass(frozen=True)
class Exact(Tolerance):
    kind: str = "exact"
    max_ulps: int = 1

    def violations(self, metrics, budget):
        return [f"{name}: {m.max_ulps:.3g} ulp apart, max abs error {m.max_abs:.3g} "
                f"(exact allows {self.max_ulps} ulp)"
                for name, m in metrics.items() if m.max_ulps > self.max_ulps]


@dataclass(frozen=True)
class Reassoc(Tolerance):
    kind: str = "reassoc"
    rtol: float = 1e-4
    atol: float = 1e-6

    def violations(self, metrics, budget):
        found = []
        for name, m in metrics.items():
            bound = self.atol + self.rtol * m.ref_max_abs
            if not np.isfinite(m.max_abs) or m.max_abs > bound:
                found.append(f"{name}: max abs error {m.max_abs:.3g} > {bound:.3g} "
                             f"(rtol {self.rtol:g} x max|ref| {m.ref_max_abs:.3g} + atol {self.atol:g})")
        return found


@dataclass(frozen=True)
class Lossy(Tolerance):
    """Judged by the run's budget; `default` applies when the user set none."""

    kind: str = "lossy"
    default: Budget = field(default_factory=lambda: DEFAULT_BUDGET)

    def violations(self, metrics, budget):
        return (budget if budget.limits else self.default).violations(metrics)
