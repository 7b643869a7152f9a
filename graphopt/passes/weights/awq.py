"""Activation-aware per-input-channel scaling (AWQ) before block quantization.

For y = x·W, a per-input-channel factor s > 0 changes nothing in exact arithmetic:
    y = (x · diag(1/s)) · (diag(s) · W),
but rounding diag(s)·W gives the rows of the channels that carry large activations (large s)
finer steps relative to their size, and their errors are divided by s on the way back:
    Ŵ_eff = diag(1/s) · Q(diag(s) · W).
The factor is searched on the layer input's statistics (stats.py): s = m^α with m_k = E|x_k|,
normalized so that √(max s · min s) = 1, for α in ALPHAS; α = 0 is plain rounding. The α kept
minimizes the summed output error of the layers that read that input,
    Σ_layers tr((W - Ŵ_eff)ᵀ H (W - Ŵ_eff)),
exact over the calibration rows. α is searched with plain rounding; with the per-block clipping
search on, the best α is then compared with α = 0 (the RTN result) both rounded with it, and
the better kept. Layers reading the same x must share s (x/s is computed once): the pass
groups them. The division by s is one Mul on x, added to the graph by the rewrite.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from graphopt.passes.weights.blocks import BlockFormat, quantize_rtn

ALPHAS = (0.0, 0.125, 0.25, 0.375, 0.5, 0.625, 0.75, 0.875, 1.0)
FLOOR = 1e-5  # channels with (almost) no activation: m_k is raised to FLOOR · max m


@dataclass(frozen=True)
class AwqChoice:
    alpha: float
    scales: np.ndarray | None  # s [K]; None when α = 0 wins (no scaling)
    errors: dict  # α (and the final pair, with clipping search) -> summed relative output error


def channel_scales(mean_abs: np.ndarray, alpha: float) -> np.ndarray:
    m = np.asarray(mean_abs, np.float64)
    m = np.maximum(m, FLOOR * max(float(m.max(initial=0.0)), 1e-30))
    s = m**alpha
    s /= np.sqrt(s.max() * s.min())
    return s.astype(np.float32)


def scaled_error(w: np.ndarray, s: np.ndarray, gram: np.ndarray, fmt: BlockFormat, search: bool) -> float:
    """tr(ΔᵀHΔ) / tr(WᵀHW) with Δ = W - diag(1/s)·Q(diag(s)·W)."""
    approx = quantize_rtn(w * s[:, None], fmt, search).dequantize() / s[:, None]
    w64 = w.astype(np.float64)
    delta = w64 - approx
    signal = float(np.sum((gram @ w64) * w64))
    return float(np.sum((gram @ delta) * delta)) / signal if signal > 0 else 0.0


def search_scales(weights: list[np.ndarray], gram: np.ndarray, mean_abs: np.ndarray, fmt: BlockFormat,
                  search: bool = True) -> AwqChoice:
    """The α (and s) with the smallest summed output error of `weights` ([K, N] each): α searched
    with plain rounding, then, with `search`, the best α and α = 0 both rounded with the clipping
    search, the better kept (so the result is never worse than RTN on the calibration rows)."""
    def error(alpha: float, clip: bool) -> float:
        s = channel_scales(mean_abs, alpha)
        return sum(scaled_error(w, s, gram, fmt, clip) for w in weights)

    errors = {alpha: error(alpha, False) for alpha in ALPHAS}
    best = min(errors, key=lambda a: (errors[a], a))
    if search and best != 0.0:
        final = {0.0: error(0.0, True), best: error(best, True)}
        best = min(final, key=lambda a: (final[a], a))
        errors = {**errors, **{f"{a} with clipping search": e for a, e in final.items()}}
    return AwqChoice(best, None if best == 0.0 else channel_scales(mean_abs, best), errors)
