"""Dynamic INT8 arithmetic: weights quantized once, activations at run time.

Weights W [K, N] (a MatMul/Gemm B operand; a Conv weight [M, C/g, kh, kw] with its output channel
first), symmetric INT8 per output channel j with B magnitude bits (qmax = 2^(B-1) - 1):
    s_j = max_k |W[k, j]| / qmax,   Wq[k, j] = clip(round_half_even(W[k, j] / s_j), -qmax, qmax)
with zero point 0 (per tensor: one s for all j); an all-zero channel gets s_j = 1.
Activations, at run time (ONNX DynamicQuantizeLinear), uint8 asymmetric per tensor over the
range widened to hold 0:
    lo = min(min x, 0), hi = max(max x, 0),  s_x = (hi - lo) / 255 (1 when hi = lo),
    z_x = saturate(round_half_even(-lo / s_x)),   xq = saturate(round_half_even(x / s_x) + z_x)
The product is computed in integers and rescaled once:
    x·W ≈ s_x·(xq - z_x)·Wq·s_w = Cast(MatMulInteger(xq, Wq, z_x)) · (s_x · s_w)
where the int32 accumulator is exact while K·255·qmax < 2^31 (K < 66,000 at 8 bits).
B = 7 (reduce_range) on AVX2 without VNNI: ONNX Runtime's u8×s8 kernel sums pairs of products in
int16 with `vpmaddubsw`, which saturates for 255·127·2 > 32767; with |Wq| <= 63 it is exact.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from graphopt.runtime import cpu_flags

INT32_MAX = 2**31 - 1


@dataclass(frozen=True)
class QuantizedWeight:
    q: np.ndarray  # int8, the weight's layout ([K, N] for MatMul; the Conv layout for Conv)
    scale: np.ndarray  # float32 [N] (per channel) or scalar
    sqnr_db: float  # 10·log10(Σw² / Σ(w - w')²) of the restored weight
    smooth: np.ndarray | None = None  # s [K]: the activation is divided by it, W's rows multiplied (smooth.py)


def max_depth(bits: int) -> int:
    """The largest reduction length K whose int32 accumulator cannot overflow."""
    return INT32_MAX // (255 * (2 ** (bits - 1) - 1))


def quantize_weight(w: np.ndarray, axis: int | None, bits: int) -> QuantizedWeight:
    """Symmetric INT8 per channel along `axis` (None: per tensor); NaN/Inf read as 0."""
    w = np.nan_to_num(np.asarray(w, np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    qmax = 2 ** (bits - 1) - 1
    other = tuple(i for i in range(w.ndim) if i != axis) if axis is not None else None
    amax = np.max(np.abs(w), axis=other, initial=0.0, keepdims=True)
    shaped = np.where(amax > 0, amax / qmax, 1.0).astype(np.float32)
    q = np.clip(np.round(w / shaped), -qmax, qmax).astype(np.int8)
    noise = float(np.sum((w.astype(np.float64) - q * shaped.astype(np.float64)) ** 2))
    scale = shaped.reshape(-1) if axis is not None else shaped.reshape(())
    return QuantizedWeight(q, scale, _sqnr_db(float(np.sum(w.astype(np.float64) ** 2)), noise))


def _sqnr_db(signal: float, noise: float) -> float:
    if noise <= 0:
        return float("inf")
    return float(10 * np.log10(signal / noise)) if signal > 0 else float("-inf")


def dynamic_quantize(x: np.ndarray) -> tuple[np.ndarray, np.float32, np.uint8]:
    """numpy DynamicQuantizeLinear: (uint8 xq, scale, zero point)."""
    x = np.asarray(x, np.float32)
    lo = min(float(np.min(x, initial=0.0)), 0.0)
    hi = max(float(np.max(x, initial=0.0)), 0.0)
    scale = np.float32((hi - lo) / 255.0) if hi > lo else np.float32(1.0)
    zero = np.uint8(np.clip(np.round(np.float32(-lo) / scale), 0, 255))
    q = np.clip(np.round(x / scale) + zero, 0, 255).astype(np.uint8)
    return q, scale, zero


def dynamic_matmul(x: np.ndarray, weight: QuantizedWeight) -> np.ndarray:
    """The reference of the rewritten MatMul: (xq - z_x)·Wq·(s_x·s_w), with Wq as [K, N]."""
    q, scale, zero = dynamic_quantize(x)
    # float64 holds every integer sum exactly (|sum| < 2^31 < 2^53) and multiplies through BLAS
    acc = (q.astype(np.float64) - float(zero)) @ weight.q.astype(np.float64)
    return (acc * np.float64(scale * weight.scale)).astype(np.float32)


def weight_bits(flags: frozenset[str] | None = None) -> int:
    """8, or 7 on AVX2 without VNNI (see the module docstring)."""
    flags = cpu_flags() if flags is None else flags
    vnni = bool(flags & {"avx512_vnni", "avx_vnni", "avx_vnni_int8", "amx_int8"})
    return 7 if "avx2" in flags and not vnni else 8


__all__ = ["QuantizedWeight", "dynamic_matmul", "dynamic_quantize", "max_depth", "quantize_weight",
           "weight_bits"]
