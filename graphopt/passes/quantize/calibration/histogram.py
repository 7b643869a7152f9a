"""Streaming activation statistics of INT8 calibration: growing histograms, octave profiles.

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
2^(k+1)) over a strided subsample of each batch (x[::n // 8192 + 1], which graphopt.passes.quantize.calibration.summaries
can compute inside the graph) plus its exact extremes: enough to see that a
range is set by a few values far above the rest (`extreme_note`).

The clipping-range math of the calibration methods (percentile, entropy, mse) on these
histograms is in graphopt.passes.quantize.calibration.methods.
"""

from __future__ import annotations

import math

import numpy as np

SENTINEL = 1e30  # |x| at or above this is a mask-style stand-in for -inf, not data
E_MIN = -100  # smallest bin exponent: ranges below 2048 * 2**-100 count as zero
BLOCK = 1 << 16  # elements binned per step, so temporaries stay in cache
OCTAVE_SAMPLE = 1 << 13  # elements per batch in the octave profile
GAP_OCTAVES = 8  # a jump of 2^8 between value clusters is an extreme outlier


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
        t += offset  # exact: an integer below 2^24 (int32 indices: bincount is faster than on intp;
        # measured: docs/design-measurements.md)
        counts += np.bincount(t.astype(np.int32), minlength=2 * bins)
    return counts


def octave_sample(x: np.ndarray) -> np.ndarray:
    """The strided subsample x[::n // OCTAVE_SAMPLE + 1] of a flat array (at most OCTAVE_SAMPLE
    elements): the same one graphopt.passes.quantize.calibration.summaries computes inside the graph."""
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
        (graphopt.passes.quantize.calibration.summaries; every value finite). Statistics equal `update` on the whole tensor,
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
