"""Sensitivity of each `quantize-dynamic` unit: its output SQNR under dynamic INT8, from one float run.

For y = x·W with x quantized at run time (x̂ = s_x·(xq - z_x), e_x = x - x̂) and W per channel
(Ŵ = s_w·Wq, ΔW = W - Ŵ):
    y - ŷ = e_x·W + x̂·ΔW
Rounding errors are, to a good approximation, independent across the reduction index k, so
    E‖y - ŷ‖² ≈ Σ_k ‖e_x[:, k]‖²·‖W[k, :]‖² + Σ_k ‖x̂[:, k]‖²·‖ΔW[k, :]‖²
which needs no matrix product: column sums of the activation and the weight's row norms
(computed once per unit). Dynamic quantization never clips (its range is the tensor's own
min/max), so rounding is the whole error; an activation with outliers has a coarse s_x and a
large e_x. With the signal Σ‖y‖² read from the float run (the node's own output; Gemm's alpha
scales the noise by alpha²),
    sqnr(u) = 10·log10(Σ‖y‖² / E‖y - ŷ‖²)   summed over the feeds; lowest = most sensitive.
A smoothed variant (smooth.py) is the same with x/s and diag(s)·W. Conv units: the SQNR of x
through DynamicQuantizeLinear, combined with the weight's as noise powers add
(1/sqnr = 1/sqnr_x + 1/sqnr_w, linear).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from graphopt.activations import stream_activations
from graphopt.passes.dynamic.build import quantize_layout, unit_weight
from graphopt.passes.dynamic.select import Unit, constant_tensor, node_keys
from graphopt.passes.dynamic.weights import dynamic_quantize

Feed = dict[str, np.ndarray]


@dataclass
class _Variant:
    smooth: np.ndarray | None  # s: x is divided by it and W's rows multiplied (smooth.py)
    rows: np.ndarray | None  # Σ_n W'[k, n]² (None for Conv)
    delta: np.ndarray | None  # Σ_n ΔW'[k, n]²
    noise: float = 0.0


@dataclass
class _Profile:
    x: str  # the input's name
    y: str  # the value whose power is the signal (the output; Conv: the input)
    variants: dict[str, _Variant]
    gain: float = 1.0  # alpha²
    signal: float = 0.0
    weight_db: float = float("inf")  # Conv: the weight's own SQNR


def unit_sqnr(model: ir.Model, units: dict[str, Unit], feeds: list[Feed], per_channel: bool, bits: int,
              smoothing: dict[str, dict[str, np.ndarray | None]] | None = None) -> dict[str, dict[str, float]]:
    """Each unit's output SQNR in dB (lower = more sensitive) over `feeds`, for each of its
    variants in `smoothing` (label -> s, None: unsmoothed; default: {"none": None})."""
    nodes = node_keys(model.graph)
    smoothing = smoothing or {}
    profiles = {key: _profile(unit, nodes[key], per_channel, bits, smoothing.get(key, {"none": None}))
                for key, unit in units.items()}

    def consume(_: int, arrays: dict[str, np.ndarray]) -> None:
        for p in profiles.values():  # a chunk of the exposed values at a time (activations.py)
            if p.x in arrays:
                for variant in p.variants.values():
                    variant.noise += p.gain * _noise(variant, arrays[p.x])
            if p.y in arrays:
                p.signal += float(np.sum(np.square(arrays[p.y], dtype=np.float64)))

    names = sorted({n for p in profiles.values() for n in (p.x, p.y)})
    stream_activations(model, names, lambda: iter(feeds), consume, many_sessions=True)
    return {key: {label: _unit_db(units[key], p.signal, v.noise, p) for label, v in p.variants.items()}
            for key, p in profiles.items()}


def _unit_db(unit: Unit, signal: float, noise: float, profile: _Profile) -> float:
    db = _db(signal, noise)
    if unit.op == "Conv":
        db = -10 * np.log10(10 ** (-db / 10) + 10 ** (-profile.weight_db / 10))
    return round(float(db), 2)


def _profile(unit: Unit, node: ir.Node, per_channel: bool, bits: int,
             smoothing: dict[str, np.ndarray | None]) -> _Profile:
    x = node.inputs[0].name
    w = constant_tensor(node.inputs[1]).numpy()
    if unit.op == "Conv":
        return _Profile(x, x, {"none": _Variant(None, None, None)},
                        weight_db=quantize_layout(w, unit, per_channel, bits).sqnr_db)
    w = unit_weight(w, unit).astype(np.float32)
    variants = {}
    for label, smooth in smoothing.items():
        made = quantize_layout(w, unit, per_channel, bits, smooth)
        scaled = w if smooth is None else w * smooth[:, None]
        restored = made.q.astype(np.float32) * made.scale
        variants[label] = _Variant(smooth, np.sum(np.square(scaled, dtype=np.float64), axis=1),
                                   np.sum(np.square(scaled - restored, dtype=np.float64), axis=1))
    return _Profile(x, node.outputs[0].name, variants, float(unit.alpha) ** 2)


def _noise(v: _Variant, x: np.ndarray) -> float:
    """E‖y - ŷ‖² of one feed (the module docstring) with x / s for a smoothed variant; Conv: ‖e_x‖²."""
    if v.smooth is not None:
        x = x / v.smooth
    q, scale, zero = dynamic_quantize(x)
    restored = (q.astype(np.float32) - np.float32(zero)) * scale
    if v.rows is None:
        return float(np.sum(np.square(x - restored, dtype=np.float64)))
    k = v.rows.shape[0]
    error = np.sum(np.square((x - restored).reshape(-1, k), dtype=np.float64), axis=0)
    power = np.sum(np.square(restored.reshape(-1, k), dtype=np.float64), axis=0)
    return float(error @ v.rows + power @ v.delta)


def _db(signal: float, noise: float) -> float:
    if noise <= 0:
        return float("inf")
    return float(10 * np.log10(signal / noise)) if signal > 0 else float("-inf")


__all__ = ["unit_sqnr"]
