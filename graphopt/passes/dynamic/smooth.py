"""SmoothQuant-like channel scaling for `quantize-dynamic`, only on the units where it helps.

DynamicQuantizeLinear's one scale per tensor is set by the largest |x|, so a few outlier
channels (as in transformers' LayerNorm outputs) make the rounding step coarse for all the
others. For a MatMul/Gemm with weight W [K, N] and a factor s_k per input channel k,
    x·W = (x / s)·(diag(s)·W)                       exactly (float rounding aside)
    s_k = max|x_k|^α / max_n |W[k, n]|^(1 - α)      (s_k = 1 where either max is 0)
moves range from the activation into the weight's rows, whose scales are per output column.
max|x_k| is taken over the calibration feeds (the held-out ones without --calib; one float
run). For each α in ALPHAS the unit's output SQNR is estimated (sensitivity.py, one more run for
all α and units) and a unit is worth smoothing with its best α only if that beats the
unsmoothed estimate by MIN_GAIN_DB: elsewhere scaling can cost accuracy (a row scaled up
coarsens its columns' scales). Units that read one activation (Q, K, V) are one group with one
s, max_n taken over all their weights, so they keep sharing one quantization of x/s; the
group's worst unit decides. Each smoothed group
costs a Mul over x at run time, so the pass smooths only as many groups as the budget needs,
most sensitive first (budget.py). The rewrite puts Mul(x, 1/s) before the group's quantization
(rewrite.py); a unit back in float is left as it was.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx_ir as ir

from graphopt.activations import stream_activations
from graphopt.passes.dynamic.build import unit_weight
from graphopt.passes.dynamic.select import Unit, constant_tensor, node_keys
from graphopt.passes.dynamic.sensitivity import unit_sqnr

ALPHAS = (0.25, 0.5, 0.75)
MIN_GAIN_DB = 1.0
Feed = dict[str, np.ndarray]


def factors(amax: np.ndarray, rows: np.ndarray, alpha: float) -> np.ndarray:
    """s [K] for activation channel maxima `amax` [K] and weight row maxima `rows` [K]."""
    ok = (amax > 0) & (rows > 0) & np.isfinite(amax)
    s = np.ones(amax.shape, np.float64)
    s[ok] = amax[ok].astype(np.float64) ** alpha / rows[ok].astype(np.float64) ** (1 - alpha)
    return s.astype(np.float32)


def channel_absmax(model: ir.Model, names: list[str], feeds: list[Feed]) -> dict[str, np.ndarray]:
    """max |x[..., k]| over the feeds of each named value (its last axis is the channel)."""
    found: dict[str, np.ndarray] = {}

    def consume(_: int, arrays: dict[str, np.ndarray]) -> None:
        for name, array in arrays.items():
            top = np.max(np.abs(array.reshape(-1, array.shape[-1])), axis=0, initial=0.0)
            found[name] = top if name not in found else np.maximum(found[name], top)

    stream_activations(model, names, lambda: iter(feeds), consume)
    return found


@dataclass
class SmoothingPlan:
    """What smoothing can do: the groups it helps, most sensitive first, and the estimates."""

    groups: list[list[str]] = field(default_factory=list)  # unit keys of each group worth smoothing
    factors: dict[str, np.ndarray] = field(default_factory=dict)  # unit -> its group's s
    alpha: dict[str, float] = field(default_factory=dict)
    plain: dict[str, float] = field(default_factory=dict)  # unit -> SQNR estimate unsmoothed
    smoothed: dict[str, float] = field(default_factory=dict)  # unit -> estimate with s
    inputs: dict[str, str] = field(default_factory=dict)  # unit -> the activation it reads

    def sqnr(self, active: frozenset[str]) -> dict[str, float]:
        """Each unit's estimate with the units in `active` smoothed."""
        return {key: self.smoothed[key] if key in active else db for key, db in self.plain.items()}

    def report(self, active: frozenset[str]) -> dict[str, dict]:
        return {key: {"input": self.inputs[key], "alpha": self.alpha[key],
                      "sqnr_db": {"before": self.plain[key], "after": self.smoothed[key]}} for key in sorted(active)}


def plan_smoothing(model: ir.Model, units: dict[str, Unit], feeds: list[Feed], per_channel: bool,
                   bits: int) -> SmoothingPlan:
    """Units reading one activation are one group with one s (max_n over all their weights), so
    they still share its quantization (rewrite.py); a group is worth smoothing when its worst
    unit's estimate gains MIN_GAIN_DB with its best α. Groups are ordered by that worst unit's
    unsmoothed estimate, lowest first."""
    nodes = node_keys(model.graph)
    groups: dict[str, list[str]] = {}
    for key, unit in units.items():
        if unit.op != "Conv":
            groups.setdefault(nodes[key].inputs[0].name, []).append(key)
    amax = channel_absmax(model, sorted(groups), feeds)
    variants: dict[str, dict[str, np.ndarray | None]] = {key: {"none": None} for key in units}
    for name, keys in groups.items():
        rows = np.max([np.max(np.abs(unit_weight(constant_tensor(nodes[k].inputs[1]).numpy(), units[k])), axis=1)
                       for k in keys], axis=0)
        for alpha in ALPHAS:
            s = factors(amax[name], rows, alpha)
            for key in keys:
                variants[key][str(alpha)] = s
    estimates = unit_sqnr(model, units, feeds, per_channel, bits, variants)
    plan = SmoothingPlan(plain={key: by_variant["none"] for key, by_variant in estimates.items()})
    for keys in groups.values():
        worst = {label: min(estimates[k][label] for k in keys) for label in variants[keys[0]]}
        best = max(worst, key=lambda label: worst[label])
        if best != "none" and worst[best] >= worst["none"] + MIN_GAIN_DB:
            plan.groups.append(keys)
            for key in keys:
                plan.factors[key], plan.alpha[key] = variants[key][best], float(best)
                plan.inputs[key] = nodes[key].inputs[0].name
                plan.smoothed[key] = estimates[key][best]
    plan.groups.sort(key=lambda keys: min(plan.plain[k] for k in keys))
    return plan


__all__ = ["ALPHAS", "MIN_GAIN_DB", "SmoothingPlan", "channel_absmax", "factors", "plan_smoothing"]
