"""Growing histograms merge exactly; percentile/entropy/mse ranges match their definitions."""

import numpy as np
import pytest

from graphopt.passes.quantize.calibration.histogram import TensorStats, bin_counts, extreme_note, range_exponent, rebin
from graphopt.passes.quantize.calibration.methods import entropy_threshold, fold, mse_range, percentile_range

B = 2048


def _stats(batches, histogram=True, bins=B):
    stats = TensorStats(bins, histogram)
    for batch in batches:
        stats.update(batch)
    return stats


def _growing_batches(rng):
    """Batches whose range grows by many octaves (and shrinks), with zeros and both signs."""
    return [rng.standard_normal(5000).astype(np.float32) * scale for scale in (1e-3, 0.5, 3.0, 1e-2, 700.0, 2.0)] + [
        np.zeros(100, np.float32), np.array([-0.0, 1e-9, -5e-8], np.float32)]


@pytest.mark.parametrize("order", ["forward", "reverse", "shuffled"])
def test_merging_batches_in_any_order_equals_one_batch(order):
    rng = np.random.default_rng(0)
    batches = _growing_batches(rng)
    if order == "reverse":
        batches = batches[::-1]
    elif order == "shuffled":
        batches = [batches[i] for i in rng.permutation(len(batches))]
    merged = _stats(batches)
    whole = _stats([np.concatenate(batches)])
    assert merged.exponent == whole.exponent
    np.testing.assert_array_equal(merged.counts, whole.counts)
    assert merged.counts.sum() == sum(b.size for b in batches)


def test_range_is_the_smallest_power_of_two_grid_covering_the_max():
    assert range_exponent(0.0, B) is None
    e = range_exponent(3.0, B)
    assert B * 2.0 ** e > 3.0 >= B * 2.0 ** (e - 1)
    assert range_exponent(B * 2.0 ** -3, B) == -2  # the max exactly on an edge needs the next grid
    stats = _stats([np.array([-3.0, 0.0, 2.999], np.float32)])
    x = np.array([-3.0, 0.0, 2.999])
    expected = np.floor(x / stats.width).astype(int) + B
    assert list(np.flatnonzero(stats.counts)) == sorted(expected)


def test_rebin_matches_binning_at_the_coarser_width():
    rng = np.random.default_rng(1)
    x = (rng.standard_normal(20000) * 10).astype(np.float32)
    e = range_exponent(float(np.abs(x).max()), B)
    for shift in (1, 3, 11, 40):
        np.testing.assert_array_equal(rebin(bin_counts(x, e, B), B, shift), bin_counts(x, e + shift, B))


def _near_order_statistic(value, data, q, width):
    """Within a bin width of the order statistics around rank q·(n-1), as np.percentile uses."""
    ordered = np.sort(data)
    k = int(np.floor(q * (len(data) - 1)))
    return ordered[k] - width <= value <= ordered[min(k + 1, len(data) - 1)] + width


def test_percentile_matches_numpy_within_a_bin_width():
    rng = np.random.default_rng(2)
    x = np.concatenate([rng.standard_normal(200_000), rng.exponential(3.0, 5000)]).astype(np.float32)
    stats = _stats(np.array_split(x, 5))
    for pct in (99.0, 99.9):  # dense: within one bin of np.percentile
        lo, hi = percentile_range(stats.counts, stats.width, B, pct, symmetric=True)
        assert hi == -lo and abs(hi - np.percentile(np.abs(x), pct)) <= stats.width
        lo, hi = percentile_range(stats.counts, stats.width, B, pct, symmetric=False)
        cut = (100 - pct) / 2
        assert abs(lo - np.percentile(x, cut)) <= stats.width
        assert abs(hi - np.percentile(x, 100 - cut)) <= stats.width
    for pct in (99.0, 99.9, 99.999):  # sparse tails too: within a bin of the bracketing samples
        _, hi = percentile_range(stats.counts, stats.width, B, pct, symmetric=True)
        assert _near_order_statistic(hi, np.abs(x), pct / 100, stats.width)
        lo, hi = percentile_range(stats.counts, stats.width, B, pct, symmetric=False)
        cut = (100 - pct) / 200
        assert _near_order_statistic(lo, x, cut, stats.width)
        assert _near_order_statistic(hi, x, 1 - cut, stats.width)


def test_percentile_keeps_zero_inside_for_one_sided_data():
    x = np.random.default_rng(3).uniform(2.0, 5.0, 10000).astype(np.float32)
    stats = _stats([x])
    lo, hi = percentile_range(stats.counts, stats.width, B, 99.0, symmetric=False)
    assert lo == 0.0 and abs(hi - np.percentile(x, 99.5)) <= stats.width


def _entropy_reference(h, width, levels):
    """TensorRT's loop, written plainly (P with outliers in its last bin, Q merged and expanded)."""
    best, best_kl = None, np.inf
    last = np.flatnonzero(h)[-1] + 1
    for i in range(levels, last + 1):
        p = h[:i].astype(float).copy()
        p[-1] += h[i:].sum()
        k = i // levels
        q = np.zeros(i)
        for g in range(levels):
            start, stop = g * k, (g + 1) * k if g < levels - 1 else i
            nonzero = p[start:stop] > 0
            if nonzero.any():
                q[start:stop][nonzero] = h[start:stop].sum() / nonzero.sum()
        mask = p > 0
        if (q[mask] == 0).any():
            continue
        kl = np.sum(p[mask] / p.sum() * np.log((p[mask] / p.sum()) / (q[mask] / q.sum())))
        if kl < best_kl:
            best, best_kl = i, kl
    return best * width


def test_entropy_equals_the_plain_tensorrt_loop():
    rng = np.random.default_rng(4)
    x = np.concatenate([rng.standard_normal(50000), rng.uniform(8, 30, 40)]).astype(np.float32)
    stats = _stats([x], bins=512)
    h = fold(stats.counts, 512)
    assert entropy_threshold(h, stats.width, 64) == pytest.approx(_entropy_reference(h, stats.width, 64))


def test_entropy_clips_gaussian_outliers_well_below_the_max():
    rng = np.random.default_rng(5)
    x = np.concatenate([rng.standard_normal(500_000), rng.uniform(20, 60, 50) * rng.choice([-1, 1], 50)])
    stats = _stats([x.astype(np.float32)])
    t = entropy_threshold(fold(stats.counts, B), stats.width, 128)
    assert 2.5 < t < 0.25 * np.abs(x).max()


def _quantization_mse(x, lo, hi):
    step = (hi - lo) / 255
    zero = np.round(-lo / step)
    q = np.clip(np.round(x / step) + zero, 0, 255)
    return float(np.mean(((q - zero) * step - x) ** 2))


def test_mse_keeps_the_full_range_of_uniform_data():
    x = np.random.default_rng(6).uniform(-1, 1, 200_000).astype(np.float32)
    stats = _stats([x])
    lo, hi = mse_range(stats.counts, stats.width, B, symmetric=True)
    assert hi == -lo and 0.98 < hi <= 1.0 + stats.width


@pytest.mark.parametrize("symmetric", [True, False])
def test_mse_range_is_as_good_as_the_best_of_a_fine_grid(symmetric):
    x = np.random.default_rng(7).laplace(0, 1, 200_000).astype(np.float32)
    stats = _stats(np.array_split(x, 3))
    lo, hi = mse_range(stats.counts, stats.width, B, symmetric=symmetric)
    best = min(_quantization_mse(x, -t, t) for t in np.linspace(1, 15, 400))
    assert x.min() < lo < 0 < hi < 0.9 * x.max()  # the sparse tail is clipped
    assert _quantization_mse(x, lo, hi) <= 1.01 * best
    assert _quantization_mse(x, lo, hi) < 0.85 * _quantization_mse(x, x.min(), x.max())


def test_mse_keeps_a_few_huge_outliers_when_clipping_them_costs_more():
    x = np.concatenate([np.random.default_rng(8).laplace(0, 1, 200_000), [90.0, -70.0]]).astype(np.float32)
    lo, hi = mse_range(_stats([x]).counts, _stats([x]).width, B, symmetric=False)
    assert hi > 40 and _quantization_mse(x, lo, hi) < _quantization_mse(x, -10, 10)


def test_nonfinite_values_are_counted_and_excluded():
    x = np.array([1.0, np.nan, -2.0, np.inf, -np.inf, 0.5], np.float32)
    stats = _stats([x, np.array([np.nan], np.float32)])
    assert (stats.nonfinite, stats.samples, stats.min, stats.max) == (4, 7, -2.0, 1.0)
    assert stats.counts.sum() == 3


def test_sentinels_stay_in_min_max_but_not_in_the_histogram():
    rng = np.random.default_rng(8)
    scores = rng.standard_normal(10000).astype(np.float32)
    scores[::3] = np.finfo(np.float32).min
    stats = _stats([scores])
    assert stats.sentinels == len(scores[::3]) and stats.min == np.finfo(np.float32).min
    assert stats.counts.sum() == scores.size - stats.sentinels
    assert stats.width * B < 16  # the histogram spans the real scores only
    assert "sentinel" in extreme_note(stats)


def test_extreme_note_flags_isolated_outliers_not_heavy_tails():
    rng = np.random.default_rng(9)
    gaussian = rng.standard_normal(100_000).astype(np.float32)
    assert extreme_note(_stats([gaussian], histogram=False)) == ""
    heavy = rng.standard_t(2, 100_000).astype(np.float32)
    assert extreme_note(_stats([heavy], histogram=False)) == ""
    spiked = np.concatenate([gaussian, np.array([-20000.0], np.float32)])
    note = extreme_note(_stats([spiked], histogram=False))
    assert "extreme outliers" in note and "2e+04" in note
