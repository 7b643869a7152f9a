"""Clipping-range math of the histogram calibration methods (percentile, entropy, mse).

The histograms are graphopt.passes.quantize.calibration.histogram's: 2B signed bins of width w
over [-B·w, B·w), so 0 is a bin edge. Ranges from the histogram (counts c, bin centers x_b):
- percentile p: symmetric, the p-th percentile of |x|; asymmetric, (100-p)/2 % cut from each
  tail. Linear interpolation inside the bin, so the error is below one bin width.
- entropy (TensorRT): for each candidate i >= m bins of the |x| histogram h, P = h[:i] with the
  outlier mass added to its last bin; Q = h[:i] merged into m groups, each group's sum spread
  evenly over the group's bins where P > 0; threshold = i·w at the minimum of KL(P||Q). With G_g,
  n_g the group sums and nonzero counts, S = sum h[:i], N = sum h:
  N·KL = sum P log P - N log N - sum_g (sum_{b in g} P_b)(log G_g - log n_g) + N log S, so every
  candidate costs O(m) from prefix sums (of h, of [h > 0], of h log h), all candidates at once.
- mse: expected squared error of a uniform quantizer with step Δ = (hi - lo)/255 on [lo, hi]:
  a bin inside whose center is within Δ/2 of 0 rounds to 0 (error x²), other inside bins add
  Δ²/12, bins outside add (x - clip)² + w²/12. Prefix sums of c, c·x, c·x² make each (lo, hi)
  O(1); ranges scan T = k·w symmetrically, asymmetric ones then alternate scans of hi and lo.
"""

from __future__ import annotations

import numpy as np

LEVELS = 255  # quantization steps over the clipping range (8 bits)
ENTROPY_BLOCK = 128  # entropy candidates evaluated at once


def percentile_range(counts: np.ndarray, width: float, bins: int, percentile: float,
                     symmetric: bool) -> tuple[float, float]:
    """Clipping range keeping `percentile` % of the mass (interpolated within a bin)."""
    if symmetric:
        t = _quantile(fold(counts, bins), 0.0, width, percentile / 100)
        return -t, t
    cut = (100.0 - percentile) / 200.0
    start = -bins * width
    return (min(_quantile(counts, start, width, cut), 0.0),
            max(_quantile(counts, start, width, 1.0 - cut), 0.0))


def fold(counts: np.ndarray, bins: int) -> np.ndarray:
    """|x| histogram (B bins) of a signed 2B-bin histogram."""
    return counts[bins:] + counts[:bins][::-1]


def _quantile(counts: np.ndarray, start: float, width: float, q: float) -> float:
    cum = np.cumsum(counts)
    target = q * cum[-1]
    j = int(np.searchsorted(cum, target, side="left" if target > 0 else "right"))
    j = min(j, len(counts) - 1)
    before = cum[j - 1] if j > 0 else 0
    frac = (target - before) / counts[j] if counts[j] else 0.0
    return start + (j + min(max(frac, 0.0), 1.0)) * width


def entropy_threshold(abs_counts: np.ndarray, width: float, levels: int) -> float:
    """TensorRT's KL-divergence threshold on an |x| histogram (vectorized over candidates, in
    blocks of ENTROPY_BLOCK so the (candidates x levels) temporaries stay small)."""
    h = abs_counts.astype(np.float64)
    last = int(np.flatnonzero(h)[-1]) + 1 if h.any() else 0
    if last <= levels:
        return last * width
    prefix = (np.concatenate([[0.0], np.cumsum(h)]), np.concatenate([[0], np.cumsum(h > 0)]),
              np.concatenate([[0.0], np.cumsum(_xlogx(h))]))
    cand = np.arange(levels, last + 1)
    kl = np.concatenate([_kl_divergences(h, prefix, cand[i:i + ENTROPY_BLOCK], levels)
                         for i in range(0, len(cand), ENTROPY_BLOCK)])
    return float(cand[int(np.argmin(kl))] * width)


def _kl_divergences(h: np.ndarray, prefix: tuple, cand: np.ndarray, levels: int) -> np.ndarray:
    """KL(P||Q) of each candidate threshold in `cand` (module docstring's formula)."""
    cum, nonzero, hlogh = prefix
    total = cum[-1]
    group = (cand // levels)[:, None]
    edges = np.minimum(np.arange(levels + 1)[None, :] * group, cand[:, None])
    edges[:, -1] = cand
    sums = np.diff(cum[edges], axis=1)
    counts_nz = np.diff(nonzero[edges], axis=1).astype(np.float64)
    outliers = total - cum[cand]
    last_bin = h[cand - 1]
    counts_nz[:, -1] += (last_bin == 0) & (outliers > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        logs = np.where(sums > 0, np.log(sums) - np.log(np.maximum(counts_nz, 1)), 0.0)
        p_in_group = sums.copy()
        p_in_group[:, -1] += outliers
        cross = (p_in_group * logs).sum(axis=1)
        p_log_p = hlogh[cand - 1] + _xlogx(last_bin + outliers)
        kl = (p_log_p - cross - _xlogx(total) + total * np.log(cum[cand])) / total
    kl[(sums[:, -1] == 0) & (outliers > 0)] = np.inf
    return kl


def _xlogx(x):
    x = np.asarray(x, dtype=np.float64)
    return np.where(x > 0, x * np.log(np.where(x > 0, x, 1.0)), 0.0)


def mse_range(counts: np.ndarray, width: float, bins: int, symmetric: bool,
              min_bins: int = 128, rounds: int = 4) -> tuple[float, float]:
    """Clipping range minimizing the expected squared quantization error (see module doc)."""
    sums = _moment_prefix(counts, width, bins)
    occupied = np.flatnonzero(counts)
    if len(occupied) == 0:
        return 0.0, 0.0
    neg = max(bins - int(occupied[0]), 0)
    pos = max(int(occupied[-1]) + 1 - bins, 0)
    k = np.arange(1, max(neg, pos) + 1)
    k = k[k >= min(min_bins, k[-1])]
    kl, kh = (k, k) if symmetric else (np.minimum(k, neg), np.minimum(k, pos))
    best = int(np.argmin(_mse_error(sums, width, bins, kl, kh)))
    if symmetric:
        return -int(k[best]) * width, int(k[best]) * width
    kl, kh = int(kl[best]), int(kh[best])  # the best symmetric cut, then each side on its own
    for _ in range(rounds):
        kh = _best_side(sums, width, bins, kl, pos, min_bins, high=True)
        kl = _best_side(sums, width, bins, kh, neg, min_bins, high=False)
    return -kl * width, kh * width


def _best_side(sums, width, bins, other: int, extent: int, min_bins: int, high: bool) -> int:
    if extent == 0:
        return 0
    cand = np.arange(max(1, min(extent, min_bins - other)), extent + 1)
    fixed = np.full_like(cand, other)
    error = _mse_error(sums, width, bins, fixed, cand) if high else _mse_error(sums, width, bins, cand, fixed)
    return int(cand[int(np.argmin(error))])


def _moment_prefix(counts: np.ndarray, width: float, bins: int) -> tuple[np.ndarray, ...]:
    c = counts.astype(np.float64)
    x = (np.arange(-bins, bins) + 0.5) * width
    return tuple(np.concatenate([[0.0], np.cumsum(v)]) for v in (c, c * x, c * x * x))


def _mse_error(sums, width: float, bins: int, kl: np.ndarray, kh: np.ndarray) -> np.ndarray:
    """Expected squared error for ranges [-kl·w, kh·w] (arrays of bin counts per side)."""
    c, m1, m2 = sums
    lo, hi = -kl * width, kh * width
    step = (hi - lo) / LEVELS
    a, b = bins - kl, bins + kh  # inside bins: [a, b)
    clip_low = m2[a] - 2 * lo * m1[a] + lo * lo * c[a]
    clip_high = (m2[-1] - m2[b]) - 2 * hi * (m1[-1] - m1[b]) + hi * hi * (c[-1] - c[b])
    outside = c[a] + c[-1] - c[b]
    j = np.ceil(step / (2 * width) - 0.5).astype(np.int64)
    wa, wb = np.maximum(bins - j, a), np.minimum(bins + j, b)
    wb = np.maximum(wa, wb)
    window = c[wb] - c[wa]
    noise = (c[b] - c[a] - window) * step * step / 12 + (m2[wb] - m2[wa])
    return clip_low + clip_high + noise + outside * width * width / 12
