"""Quantization arithmetic and Q/DQ insertion in the IR.

Affine quantization (ONNX QuantizeLinear / DequantizeLinear):
    q = saturate(round_half_even(x / s) + z),   x' = (q - z) · s
- Activations, asymmetric UINT8 over a real range [lo, hi] (widened to contain 0, so that 0 is
  exact, which zero padding and Relu need): s = (hi - lo) / 255, z = round(-lo / s) in [0, 255].
- Activations, symmetric INT8: s = max(|lo|, |hi|) / 127, z = 0.
- FP8 E4M3FN (opset 19, activations and/or weights): z = 0, s = max|x| / 448 (per channel for
  weights), q = the nearest float8 of clip(x / s, ±448), what QuantizeLinear computes.
- 16-bit activations (UINT16 / INT16, opset 21) the same way with 65535 steps (asymmetric) or
  s = max(|lo|, |hi|) / 32767 (symmetric): 256x finer than 8 bits, for targets (NPUs) that
  run 16-bit activations with 8-bit weights.
- Weights, symmetric per output channel c with B magnitude bits (qmax = 2^(B-1) - 1):
  s_c = max|W_c| / qmax, q = clip(round(W / s_c), -qmax, qmax), z = 0 (UINT8 weights: z = 128).
- Bias as INT32 with s_b,c = s_x · s_w,c and z = 0, so the integer kernel adds it to the int32
  accumulator: Σ q_x·q_w + q_b = (Σ x·w + b) / (s_x·s_w). If |b / s_b| would overflow int32 the
  weight scale of that channel grows until it fits.
A range that is empty, zero or not finite (constant tensors, NaN/Inf in the calibration data)
gets a safe scale (1.0 for zero width, finite bounds otherwise): never a 0 or NaN scale.

Insertion: a quantized activation `t` gets one `Q(t) -> DQ` pair right after its producer and
the chosen consumers read the DQ output; a weight becomes a new INT8 initializer behind a DQ;
the original tensors are never modified (rollback shares them).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from graphopt.passes.quantize.profiles import FLOAT8, TensorType

INT32_MAX = 2**31 - 1


@dataclass(frozen=True)
class QParams:
    scale: np.ndarray  # float32, scalar or [C]
    zero_point: np.ndarray  # same shape, dtype of the quantized type
    axis: int | None = None  # per-channel axis (DequantizeLinear's `axis`)

    @property
    def dtype(self) -> np.dtype:
        return self.zero_point.dtype


def is_float8(dtype: np.dtype) -> bool:
    return np.dtype(dtype) in FLOAT8.values()


def _limits(dtype: np.dtype) -> tuple[float, float]:
    if is_float8(dtype):
        top = float(np.finfo(dtype).max)  # E4M3FN: 448
        return -top, top
    info = np.iinfo(dtype)
    return int(info.min), int(info.max)


def to_quantized(scaled: np.ndarray, zero: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """saturate(round(x / s) + z) in `dtype`, given x / s: integers round half to even and clip to
    the type; float8 (z = 0) clips to its largest finite value and rounds to the nearest float8,
    as QuantizeLinear does with saturate=1."""
    low, high = _limits(dtype)
    if is_float8(dtype):
        return np.clip(scaled, low, high).astype(dtype)
    return np.clip(np.round(scaled) + zero.astype(np.float32), low, high).astype(dtype)


def safe_range(lo: float, hi: float) -> tuple[float, float]:
    """[lo, hi] made finite, ordered and containing 0."""
    lo = float(lo) if np.isfinite(lo) else 0.0
    hi = float(hi) if np.isfinite(hi) else 0.0
    return min(lo, hi, 0.0), max(lo, hi, 0.0)


def activation_params(lo: float, hi: float, qtype: TensorType) -> QParams:
    """Per-tensor scale and zero point of an activation whose real range is [lo, hi]."""
    lo, hi = safe_range(lo, hi)
    dtype = qtype.np_dtype
    qmin, qmax = _limits(dtype)
    if qtype.is_float8:  # s = max|x| / 448, z = 0 (float8 has no zero-point offset)
        bound = max(-lo, hi)
        return QParams(np.array(bound / qmax if bound > 0 else 1.0, np.float32), np.zeros((), dtype))
    if qtype.symmetric:  # signed: z = 0; unsigned (uint8, uint16): z at mid-range, 128 or 32768
        signed = qmin < 0
        bound = max(-lo, hi)
        scale = bound / (qmax if signed else (qmax - qmin) // 2) if bound > 0 else 1.0
        zero = 0 if signed else (qmax + 1) // 2
    else:
        scale = (hi - lo) / (qmax - qmin) if hi > lo else 1.0
        zero = int(np.clip(np.round(qmin - lo / scale), qmin, qmax))
    return QParams(np.array(scale, np.float32), np.array(zero, dtype))


def weight_params(weight: np.ndarray, axis: int | None, qtype: TensorType) -> tuple[QParams, np.ndarray]:
    """Symmetric (per-channel along `axis`, or per-tensor when None) scales and the quantized weight."""
    w = np.nan_to_num(weight.astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    qmax = _limits(qtype.np_dtype)[1] if qtype.is_float8 else 2 ** (qtype.bits - 1) - 1
    if axis is None:
        amax = np.array(np.max(np.abs(w), initial=0.0), np.float32)
    else:
        other = tuple(i for i in range(w.ndim) if i != axis)
        amax = np.max(np.abs(w), axis=other, initial=0.0).astype(np.float32)
    scale = np.where(amax > 0, amax / qmax, 1.0).astype(np.float32)
    return _quantize_weight(w, scale, axis, qtype)


def _quantize_weight(w: np.ndarray, scale: np.ndarray, axis: int | None,
                     qtype: TensorType) -> tuple[QParams, np.ndarray]:
    shaped = scale if axis is None else scale.reshape([-1 if i == axis else 1 for i in range(w.ndim)])
    if qtype.is_float8:
        zero = np.zeros(scale.shape, qtype.np_dtype)
        return QParams(scale, zero, axis), to_quantized(w / shaped, zero, qtype.np_dtype)
    qmax = 2 ** (qtype.bits - 1) - 1
    q = np.clip(np.round(w / shaped), -qmax, qmax)
    offset = 0 if qtype.dtype == "int8" else 128
    zero = np.full(scale.shape, offset, qtype.np_dtype)
    return QParams(scale, zero, axis), (q + offset).astype(qtype.np_dtype)


def bias_params(bias: np.ndarray, x_scale: float, w: QParams, weight: np.ndarray,
                qtype: TensorType) -> tuple[QParams, np.ndarray, QParams | None, np.ndarray | None]:
    """INT32 bias with scale s_x·s_w; returns (bias params, int32 bias, new weight params and
    quantized weight if a channel's scale had to grow to keep the bias in int32, else None)."""
    b = np.nan_to_num(bias.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    w_scale = np.broadcast_to(w.scale.astype(np.float64), b.shape)
    needed = np.abs(b) / (float(x_scale) * (INT32_MAX // 2))  # keep a 2x headroom for accumulation
    grown = None
    if np.any(w_scale < needed):
        w_scale = np.maximum(w_scale, needed)
        new_scale = w_scale.astype(np.float32) if w.axis is not None else np.array(w_scale.max(), np.float32)
        grown = _quantize_weight(np.nan_to_num(weight.astype(np.float32)), new_scale, w.axis, qtype)
        w_scale = np.broadcast_to(grown[0].scale.astype(np.float64), b.shape)
    b_scale = (float(x_scale) * w_scale).astype(np.float32)
    if w.axis is None:  # per-tensor weights: one bias scale (DequantizeLinear without axis)
        b_scale = np.array(b_scale.reshape(-1)[0] if b_scale.size else x_scale * float(w.scale), np.float32)
    q = np.clip(np.round(b / b_scale), -INT32_MAX, INT32_MAX).astype(np.int32)
    params = QParams(b_scale, np.zeros(b_scale.shape, np.int32), 0 if b_scale.ndim else None)
    return (params, q, *(grown if grown else (None, None)))


def fake_quantize(x: np.ndarray, qp: QParams) -> np.ndarray:
    """DequantizeLinear(QuantizeLinear(x)) in numpy (per-tensor params)."""
    q = to_quantized(x / qp.scale, qp.zero_point, qp.dtype).astype(np.float32)
    return (q - qp.zero_point.astype(np.float32)) * qp.scale


def sqnr_db(signal_power: float, noise_power: float) -> float:
    """10·log10(Σx² / Σ(x - x')²); +inf without noise."""
    if noise_power <= 0:
        return float("inf")
    if signal_power <= 0:
        return float("-inf")
    return float(10.0 * np.log10(signal_power / noise_power))


def weight_sqnr(weight: np.ndarray, qp: QParams, q: np.ndarray) -> float:
    shape = [-1 if i == qp.axis else 1 for i in range(weight.ndim)] if qp.axis is not None else []
    scale = qp.scale.reshape(shape) if shape else qp.scale
    zero = qp.zero_point.astype(np.float32).reshape(shape) if shape else qp.zero_point.astype(np.float32)
    restored = (q.astype(np.float32) - zero) * scale
    w = np.nan_to_num(weight.astype(np.float64))
    return sqnr_db(float(np.sum(w**2)), float(np.sum((w - restored) ** 2)))


class QdqWriter:
    """Adds Q/DQ nodes and quantized initializers to a graph under fresh names."""

    def __init__(self, graph: ir.Graph, fresh):
        self.graph = graph
        self.fresh = fresh  # callable base -> unused name
        self.added_nodes = 0

    def constant(self, base: str, array: np.ndarray) -> ir.Value:
        name = self.fresh(base)
        value = ir.Value(name=name, shape=ir.Shape(array.shape), type=ir.TensorType(ir.DataType.from_numpy(array.dtype)),
                         const_value=ir.tensor(array, name=name))
        self.graph.register_initializer(value)
        return value

    def _node(self, op: str, inputs: list[ir.Value], base: str, axis: int | None, dtype) -> ir.Value:
        attrs = {"axis": axis} if axis is not None else {}
        node = ir.node(op, inputs, attrs, name=self.fresh(f"{base}_{op}"), num_outputs=1)
        out = node.outputs[0]
        out.name = self.fresh(f"{base}_{'quantized' if op == 'QuantizeLinear' else 'dequantized'}")
        out.dtype = dtype
        self.graph.append(node)
        self.added_nodes += 1
        return out

    def params(self, base: str, qp: QParams) -> tuple[ir.Value, ir.Value]:
        return self.constant(f"{base}_scale", qp.scale), self.constant(f"{base}_zero_point", qp.zero_point)

    def quantize_dequantize(self, value: ir.Value, qp: QParams) -> ir.Value:
        """Q(value) -> DQ; returns the DQ output (same shape and float type as `value`)."""
        scale, zero = self.params(value.name, qp)
        quantized = self._node("QuantizeLinear", [value, scale, zero], value.name, None,
                               ir.DataType.from_numpy(qp.dtype))
        quantized.shape = value.shape
        restored = self._node("DequantizeLinear", [quantized, scale, zero], value.name, None, value.dtype)
        restored.shape = value.shape
        return restored

    def dequantized_constant(self, base: str, q: np.ndarray, qp: QParams, dtype: ir.DataType) -> ir.Value:
        """A quantized initializer behind a DequantizeLinear; returns the DQ output."""
        data = self.constant(f"{base}_quantized", q)
        scale, zero = self.params(base, qp)
        restored = self._node("DequantizeLinear", [data, scale, zero], base, qp.axis, dtype)
        restored.shape = ir.Shape(q.shape)
        return restored

    def dequantize(self, value: ir.Value, qp: QParams, dtype: ir.DataType, base: str) -> ir.Value:
        """DQ of an already-quantized value (e.g. rows gathered from an INT8 table)."""
        scale, zero = self.params(base, qp)
        restored = self._node("DequantizeLinear", [value, scale, zero], base, qp.axis, dtype)
        restored.shape = value.shape
        return restored
