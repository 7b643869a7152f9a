"""Tolerance classes: how far a pass's outputs may move from the reference outputs.

- `Exact`: every element within 1 ulp (bitwise for rewrites that do not touch arithmetic).
- `Reassoc(rtol, atol)`: float re-association (folding, fusion): max |a-b| <= atol + rtol * max |ref|,
  per output, so the bound scales with the output's magnitude.
- `Lossy(budget)`: pruning, low-rank, quantization; judged by the run's accuracy `Budget`.

A `Budget` maps entries to bounds: `METRIC` (every output) or `OUTPUT:METRIC` (that output only;
the output name may itself contain ':'). Every entry must hold: a per-output entry adds a bound, it
never loosens a global one. Each metric is judged by the statistic in `JUDGED_BY`, per sample
where that is what the task means (design.md, "Models"; graphopt.metrics):
- cosine: the worst sample's cosine; snr_db: the worst sample's SNR (dB);
- top1: top-1 agreement where defined (per position on inferred class-score outputs, row-wise on
  other [N, C] outputs); top1_dist: the same, on inferred class-score outputs only;
- max_abs: the largest absolute error of any element.
Bounds must be finite and in range (cosine in [-1, 1], top1 and top1_dist in [0, 1], max_abs
>= 0): a NaN bound would compare false and switch the budget off.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field

import numpy as np

from graphopt.errors import InputError
from graphopt.metrics import OutputMetrics

_DIRECTIONS = {"cosine": "min", "top1": "min", "top1_dist": "min", "snr_db": "min", "max_abs": "max"}
_RANGES = {"cosine": (-1.0, 1.0), "top1": (0.0, 1.0), "top1_dist": (0.0, 1.0),
           "snr_db": (-np.inf, np.inf), "max_abs": (0.0, np.inf)}
_SLACK = 1e-9  # budget_share arithmetic may land a hair outside a range
JUDGED_BY = {"cosine": "sample_cosine", "snr_db": "sample_snr_db", "top1": "top1",
             "top1_dist": "top1_dist", "max_abs": "max_abs"}
TOP1_METRICS = ("top1", "top1_dist")


def split_key(key: str) -> tuple[str | None, str]:
    """'cosine' -> (None, 'cosine'); 'out:0:top1' -> ('out:0', 'top1')."""
    output, sep, metric = key.rpartition(":")
    return (output if sep else None), metric


class _Directions(Mapping):
    """metric -> "min" (higher is better) or "max"; answers for 'OUTPUT:METRIC' keys too, and
    iterates over the plain metric names."""

    def __getitem__(self, key: str) -> str:
        return _DIRECTIONS[split_key(key)[1]]

    def __iter__(self) -> Iterator[str]:
        return iter(_DIRECTIONS)

    def __len__(self) -> int:
        return len(_DIRECTIONS)


BUDGET_METRICS = _Directions()


def judged_value(m: OutputMetrics, metric: str) -> float | None:
    """The statistic the budget judges `metric` by (whole-tensor when no per-sample one exists)."""
    metric = split_key(metric)[1]
    value = getattr(m, JUDGED_BY[metric])
    return getattr(m, metric) if value is None and metric in ("cosine", "snr_db") else value


def _check_entry(key: str, value: float) -> None:
    output, metric = split_key(key)
    if metric not in _DIRECTIONS or output == "":
        raise InputError(f"--budget '{key}={value}': expected METRIC=VALUE or OUTPUT:METRIC=VALUE with "
                         f"METRIC one of {', '.join(_DIRECTIONS)}")
    low, high = _RANGES[metric]
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = float("nan")
    if not np.isfinite(number) or not low - _SLACK <= number <= high + _SLACK:
        span = "a finite number" if metric == "snr_db" else f"a number in [{low:g}, {high:g}]"
        raise InputError(f"--budget '{key}={value}': {metric} must be {span}")


@dataclass(frozen=True)
class Budget:
    """Accuracy bounds, e.g. {"cosine": 0.99, "logits:top1": 0.999} (module docstring)."""

    limits: dict[str, float] = field(default_factory=dict)

    def __post_init__(self):
        for key, value in self.limits.items():
            _check_entry(key, value)

    @classmethod
    def parse(cls, items: list[str]) -> Budget:
        limits: dict[str, float] = {}
        for item in items:
            key, sep, raw = item.rpartition("=")
            if not sep or split_key(key)[1] not in _DIRECTIONS or split_key(key)[0] == "":
                raise InputError(f"--budget '{item}': expected METRIC=VALUE or OUTPUT:METRIC=VALUE with "
                                 f"METRIC one of {', '.join(_DIRECTIONS)}")
            try:
                limits[key] = float(raw)
            except ValueError:
                raise InputError(f"--budget '{item}': '{raw}' is not a number") from None
        return cls(limits)

    def check_outputs(self, names: Iterable[str]) -> None:
        """InputError when an entry names an output the model does not have."""
        names = list(names)
        for key, value in self.limits.items():
            output = split_key(key)[0]
            if output is not None and output not in names:
                raise InputError(f"--budget '{key}={value:g}': the model has no output '{output}' "
                                 f"(outputs: {', '.join(names)})")

    def bounds_top1(self, output: str) -> bool:
        """Whether some entry bounds `output`'s top-1 agreement."""
        return any(split_key(key)[1] in TOP1_METRICS and split_key(key)[0] in (None, output)
                   for key in self.limits)

    def violations(self, metrics: dict[str, OutputMetrics]) -> list[str]:
        """Human-readable list of what misses the budget (empty when it holds)."""
        self.check_outputs(metrics)
        found = []
        for out_name, m in metrics.items():
            for key, limit in self.limits.items():
                output, metric = split_key(key)
                value = judged_value(m, metric) if output in (None, out_name) else None
                if value is None:
                    continue
                worse = value < limit if _DIRECTIONS[metric] == "min" else value > limit
                if worse or np.isnan(value):
                    found.append(f"{out_name}: {metric} {value:.6g} vs budget {limit:g}")
        return found


# worst-sample cosine >= 0.99 on every output, and top-1 agreement >= 0.999 on inferred class-score
# outputs (probabilities or logits; per position on a CTC recognizer's [N, T, C], where cosine can
# stay above 0.99 while a sizeable share of the decoded lines change, and agreement on 0.999 of
# the positions keeps changed lines rare; measured: docs/budget-task-metrics.md)
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
