"""Error-compensating block quantization (GPTQ) with the layer input's second moment H = Σ xxᵀ.

The layer output error over the calibration rows, tr(ΔWᵀ H ΔW) (stats.py), is minimized greedily,
one input channel (a row k of W [K, N]) at a time: row k is rounded to its block's grid, and its
error is spread over the rows not yet rounded by the optimal (least-squares) update
    e = (w_k - ŵ_k) / U_kk,    w_j ← w_j - U_kj · e    for j > k,
where U is the upper Cholesky factor of H⁻¹ (H⁻¹ = UᵀU) with H damped: H + λ·mean(diag H)·I.
A block's scale and zero point are set when its first row is reached, from the rows as updated
so far (blocks.quantize_rtn on that block, its clipping ratio searched with diag(H) as weights).
Updates inside a block are applied row by row, the rest of W once per block (the "lazy batch").
A channel the calibration data never excites (H_kk = 0) gets H_kk = 1: rounded, and its error
spread like any other, but its weights are not zeroed (other inputs may excite it).
"""

from __future__ import annotations

import numpy as np

from graphopt.passes.weights.blocks import BlockFormat, BlockQuantized, quantize_rtn


def inverse_cholesky(gram: np.ndarray, damping: float) -> np.ndarray:
    """Upper U with (H + λ·mean(diag H)·I)⁻¹ = UᵀU."""
    h = np.array(gram, np.float64)
    diag = np.diagonal(h).copy()
    diag[diag <= 0] = 1.0
    np.fill_diagonal(h, diag + damping * float(np.mean(diag)))
    lower = np.linalg.cholesky(np.linalg.inv(h))  # inv(h) = L Lᵀ
    return lower.T


def quantize_gptq(w: np.ndarray, gram: np.ndarray, fmt: BlockFormat, damping: float = 0.01,
                  search: bool = True) -> BlockQuantized:
    """GPTQ of `w` [K, N] along axis 0 in blocks of fmt.block_size (see the module docstring)."""
    work = np.nan_to_num(np.asarray(w, np.float64), nan=0.0, posinf=0.0, neginf=0.0).copy()
    rows, cols = work.shape
    upper = inverse_cholesky(gram, damping)
    importance = np.maximum(np.diagonal(gram), 0.0)
    q = np.zeros((rows, cols), np.int8 if fmt.symmetric else np.uint8)
    scales, zeros = [], []
    for start in range(0, rows, fmt.block_size):
        end = min(start + fmt.block_size, rows)
        block = quantize_rtn(work[start:end].astype(np.float32), fmt, search, importance[start:end])
        scale, zero = block.scales[0], None if block.zero_points is None else block.zero_points[0]
        errors = _round_block(work, upper, start, end, scale, zero, fmt, q)
        work[end:] -= upper[start:end, end:].T @ errors
        scales.append(scale)
        zeros.append(zero)
    zero_points = None if fmt.symmetric else np.stack(zeros).astype(np.uint8)
    return BlockQuantized(q, np.stack(scales).astype(np.float32), zero_points, fmt)


def _round_block(work: np.ndarray, upper: np.ndarray, start: int, end: int, scale: np.ndarray,
                 zero: np.ndarray | None, fmt: BlockFormat, q: np.ndarray) -> np.ndarray:
    """Round rows start..end-1 of `work` in turn (codes into `q`), spreading each row's error over
    the block's later rows; the scaled errors [end-start, N] for the update of the rows below."""
    offset = 0.0 if zero is None else zero.astype(np.float64)
    errors = np.zeros((end - start, work.shape[1]))
    for k in range(start, end):
        codes = np.clip(np.round(work[k] / scale) + offset, fmt.qmin, fmt.qmax)
        q[k] = codes
        err = (work[k] - (codes - offset) * scale) / upper[k, k]
        work[k + 1:end] -= np.outer(upper[k, k + 1:end], err)
        errors[k - start] = err
    return errors
