"""Candidates of `quantize-dynamic`: the weights quantized once, then any subset of units rewritten.

Weights are streamed: each unit's float weight is decoded alone (an external-data tensor is read
from its memory map), quantized (weights.py) into the layout its integer kernel takes, and
dropped, so a model larger than memory is never decoded at once; only the INT8 copies (a quarter
of the float bytes; a second copy for the units smoothing may scale) are kept, shared by every
candidate. Units reading the same weight in the same layout (and smoothing factors) share one
quantized copy. A candidate is a clone of the input model with the units not in `disabled`
rewritten (rewrite.py), those in `active` with their smoothed weights (smooth.py); the input
model is never modified.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import onnx_ir as ir

from graphopt.pass_api import NameAuthority
from graphopt.passes.dynamic.rewrite import rewrite
from graphopt.passes.dynamic.select import Unit, constant_tensor, node_keys
from graphopt.passes.dynamic.weights import QuantizedWeight, quantize_weight


def quantize_units(graph: ir.Graph, units: dict[str, Unit], per_channel: bool, bits: int,
                   smoothing: dict[str, np.ndarray] | None = None,
                   progress: Callable[[str], None] | None = None) -> dict[str, QuantizedWeight]:
    """Each unit's INT8 weight as its kernel takes it: [K, N] for MatMul/Gemm, the Conv layout;
    a unit in `smoothing` gets diag(s)·W (its activation is divided by s, smooth.py)."""
    nodes, smoothing = node_keys(graph), smoothing or {}
    done: dict[tuple, QuantizedWeight] = {}
    result = {}
    for i, (key, unit) in enumerate(units.items()):
        layout = (unit.weight, unit.op == "Conv", unit.trans_b, id(smoothing[key]) if key in smoothing else 0)
        if layout not in done:
            w = unit_weight(constant_tensor(nodes[key].inputs[1]).numpy(), unit)
            done[layout] = quantize_layout(w, unit, per_channel, bits, smoothing.get(key))
            del w
            if progress is not None and (i + 1) % 16 == 0:
                progress(f"quantize-dynamic: {i + 1}/{len(units)} weights quantized")
        result[key] = done[layout]
    return result


def unit_weight(w: np.ndarray, unit: Unit) -> np.ndarray:
    """The weight as [K, N] for MatMul/Gemm (a view: Gemm's transB reads Bᵀ), the Conv layout as is."""
    return w.T if unit.trans_b else w


def quantize_layout(w: np.ndarray, unit: Unit, per_channel: bool, bits: int,
                    smooth: np.ndarray | None = None) -> QuantizedWeight:
    """INT8 per output channel (Conv: axis 0, else the columns of [K, N]), of diag(s)·W if smoothed."""
    if unit.op == "Conv":
        return quantize_weight(w, 0 if per_channel else None, bits)
    if smooth is not None:
        w = w * smooth[:, None]
    made = quantize_weight(w, 1 if per_channel else None, bits)
    return QuantizedWeight(np.ascontiguousarray(made.q), made.scale, made.sqnr_db, smooth)


@dataclass(frozen=True)
class Builder:
    """Builds candidates of one run: `build(disabled)` -> a new model, the units in `disabled`
    left float and those in `active` smoothed (their `smoothed` weights)."""

    model: ir.Model
    units: dict[str, Unit]
    weights: dict[str, QuantizedWeight]
    form: str
    smoothed: dict[str, QuantizedWeight] = field(default_factory=dict)
    active: frozenset[str] = frozenset()

    def __call__(self, disabled: frozenset[str] = frozenset()) -> ir.Model:
        candidate = self.model.clone()
        names = NameAuthority(candidate)
        chosen = [u for k, u in self.units.items() if k not in disabled]
        weights = {k: self.smoothed[k] if k in self.active else w for k, w in self.weights.items()}
        rewrite(candidate, chosen, weights, self.form, names.fresh)
        return candidate


__all__ = ["Builder", "quantize_units"]
