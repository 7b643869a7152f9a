"""Streaming activation statistics and the clipping-range math of INT8 calibration.

**Growing histogram (exact merge).** A tensor's histogram has 2B bins of width w = 2^e over
[-B·w, B·w); bin j holds [(j-B)·w, (j-B+1)·w), so 0 is always a bin edge (QDQ needs 0 exactly).
e is the smallest integer with B·2^e > max|x| seen so far. A value's bin is floor(x·2^-e) + B,
computed in float32 (multiplying by a power of two is exact), so it never depends on rounding.
When a batch needs a larger range, e grows by d and the old counts are re-binned exactly:
signed index k becomes k >> d (floor(k / 2^d)), because floor(floor(x/2^e)/2^d) = floor(x/2^(e+d)).
Hence the final histogram depends only on the data and the final range: batches merged in any
order give *exactly* the counts of one batch holding all data. Memory is 2B int64 per tensor.

**Non-finite values and sentinels.** NaN/Inf are counted and excluded from every statistic.
Finite values with |x| >= 1e30 (the -3.4e38 "minus infinity" of attention masks) are counted
as sentinels: they stay in min/max (what the minmax method sees) but not in the histogram, so
percentile/entropy/mse clip them to the range of the real values, which keeps masked
positions masked after Softmax.

**Octave profile (diagnostics).** A 256-bin count of float32 exponents (the octave 2^k <= |x| <
2^(k+1)) over a strided subsample of each batch (x[::n // 8192 + 1], which graphopt.summaries
can compute inside the graph) plus its exact extremes: enough to see that a
range is set by a few values far above the rest (`extreme_note`).

**Clipping ranges** from the histogram (counts c, bin centers x_b):
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

import math

import numpy as np

SENTINEL = 1e30  # |x| at or above this is a mask-style stand-in for -inf, not data
E_MIN = -100  # smallest bin exponent: ranges below 2048 * 2**-100 count as zero
BLOCK = 1 << 16  # elements binned per step, so temporaries stay in cache
OCTAVE_SAMPLE = 1 << 13  # elements per batch in the octave profile
GAP_OCTAVES = 8  # a jump of 2^8 between value clusters is an extreme outlier
LEVELS = 255  # quantization steps over the clipping range (8 bits)
ENTROPY_BLOCK = 128  # entropy candidates evaluated at once


def range_exponent(amax: float, bins: int) -> int | None:
    """Smallest e with bins·2^e > amax (None for amax == 0)."""
    if amax <= 0:
        return None
    e = max(math.frexp(amax / bins)[1], E_MIN)
    while bins * 2.0 ** e <= amax:
        e += 1
    return e


def rebin(counts: np.ndarray, bins: int, shift: int) -> np.ndarray:
    """Counts of a 2B-bin signed histogram at a width 2^shift times larger (exact)."""
    if shift <= 0:
        return counts
    signed = np.arange(-bins, bins, dtype=np.int64) >> min(shift, 62)
    return np.bincount(signed + bins, weights=counts, minlength=2 * bins).astype(np.int64)


def bin_counts(x: np.ndarray, exponent: int, bins: int) -> np.ndarray:
    """Histogram of x (float32, |x| < bins·2^exponent) on the signed grid of width 2^exponent."""
    scale, offset = np.float32(2.0 ** -exponent), np.float32(bins)
    counts = np.zeros(2 * bins, dtype=np.int64)
    tmp = np.empty(min(len(x), BLOCK), dtype=np.float32)
    for start in range(0, len(x), BLOCK):
        block = x[start:start + BLOCK]
        t = tmp[:len(block)]
        np.multiply(block, scale, out=t)
        np.floor(t, out=t)
        t += offset  # exact: an integer below 2^24 (int32 indices: bincount is ~2x faster than on intp)
        counts += np.bincount(t.astype(np.int32), minlength=2 * bins)
    return counts


def octave_sample(x: np.ndarray) -> np.ndarray:
    """The strided subsample x[::n // OCTAVE_SAMPLE + 1] of a flat array (at most OCTAVE_SAMPLE
    elements): the same one graphopt.summaries computes inside the graph."""
    return x[::len(x) // OCTAVE_SAMPLE + 1]


def octave_counts(sample: np.ndarray) -> np.ndarray:
    """256 counts of the float32 exponent fields (octaves of |x|) of a sample."""
    exponents = (np.ascontiguousarray(sample, dtype=np.float32).view(np.uint32) >> 23) & 0xFF
    return np.bincount(exponents, minlength=256)


class TensorStats:
    """Running statistics of one tensor, folded batch by batch (nothing else is kept)."""

    def __init__(self, bins: int, histogram: bool):
        self.bins = bins
        self.min, self.max = math.inf, -math.inf
        self.nonfinite = self.sentinels = self.samples = 0
        self.octaves = np.zeros(256, dtype=np.int64)
        self.exponent: int | None = None
        self.counts = np.zeros(2 * bins, dtype=np.int64) if histogram else None

    def update(self, array: np.ndarray) -> None:
        x = np.asarray(array).reshape(-1)
        x = x if x.dtype == np.float32 else x.astype(np.float32)
        self.samples += x.size
        if x.size == 0:
            return
        lo, hi = float(x.min()), float(x.max())
        if not (math.isfinite(lo) and math.isfinite(hi)):
            finite = np.isfinite(x)
            self.nonfinite += int(x.size - np.count_nonzero(finite))
            x = x[finite]
            if x.size == 0:
                return
            lo, hi = float(x.min()), float(x.max())
        self._fold_extremes(lo, hi, octave_sample(x))
        if max(-lo, hi) >= SENTINEL:
            keep = np.abs(x) < SENTINEL
            self.sentinels += int(x.size - np.count_nonzero(keep))
            if self.counts is None or not keep.any():
                return
            x = x[keep]
            lo, hi = float(x.min()), float(x.max())
        if self.counts is not None:
            self._add_to_histogram(x, max(-lo, hi))

    def update_summary(self, lo: float, hi: float, size: int, sample: np.ndarray) -> None:
        """Fold one batch known only by its exact extremes, element count and `octave_sample`
        (graphopt.summaries; every value finite). Statistics equal `update` on the whole tensor,
        except the sentinel count, estimated from the sample. No histogram: minmax only."""
        assert self.counts is None, "histogram statistics need the whole tensor"
        self.samples += size
        if size == 0:
            return
        self._fold_extremes(lo, hi, sample)
        if max(-lo, hi) >= SENTINEL:
            in_sample = int(np.count_nonzero(np.abs(sample) >= SENTINEL))
            self.sentinels += max(1, round(in_sample * size / max(len(sample), 1)))

    def _fold_extremes(self, lo: float, hi: float, sample: np.ndarray) -> None:
        self.min, self.max = min(self.min, lo), max(self.max, hi)
        self.octaves += octave_counts(sample)
        self.octaves[_octave(lo)] += 1
        self.octaves[_octave(hi)] += 1

    def _add_to_histogram(self, x: np.ndarray, amax: float) -> None:
        exponent = range_exponent(amax, self.bins)
        if exponent is None:  # all zeros: bin B at any width
            self.counts[self.bins] += x.size
            return
        if self.exponent is None or exponent > self.exponent:
            if self.exponent is not None:
                self.counts = rebin(self.counts, self.bins, exponent - self.exponent)
            self.exponent = exponent
        self.counts += bin_counts(x, self.exponent, self.bins)

    @property
    def width(self) -> float:
        return 2.0 ** (self.exponent if self.exponent is not None else E_MIN)


def _octave(value: float) -> int:
    return int((np.array([value], np.float32).view(np.uint32)[0] >> 23) & 0xFF)


def extreme_note(stats: TensorStats) -> str:
    """Why minmax would be a bad range for this tensor ("" when it is fine)."""
    amax = max(abs(stats.min), abs(stats.max)) if stats.max >= stats.min else 0.0
    if amax >= SENTINEL:
        return (f"holds mask-style sentinel values (|x| up to {amax:.3g}); a minmax scale would "
                "wipe out the other values")
    occupied = np.flatnonzero(stats.octaves[1:255]) + 1
    if len(occupied) < 2:
        return ""
    gaps = np.diff(occupied)
    cut = int(np.argmax(gaps))
    below = stats.octaves[occupied[:cut + 1]].sum() / stats.octaves[occupied].sum()
    if gaps[cut] >= GAP_OCTAVES and below >= 0.01:
        low_top, high_bottom = 2.0 ** (occupied[cut] - 126), 2.0 ** (occupied[cut + 1] - 127)
        return (f"extreme outliers: {below:.1%} of values are below {low_top:.3g} while the range "
                f"reaches {amax:.3g} (values jump past {high_bottom:.3g}); minmax would crush them")
    return ""


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
