"""The palette math: the DP is the exact 1-D k-means optimum (brute force on small sets), the
grouped DP + Lloyd is never worse than Deep Compression's linear init + Lloyd, Lloyd never raises
the SSE, and the packed b-bit codes round-trip for every b."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from graphopt.passes.cluster.dp import optimal_centroids
from graphopt.passes.cluster.graph import index_bits, pack_codes, unpack_codes
from graphopt.passes.cluster.kmeans import SortedRows, cluster_rows, lloyd


def _brute_force(x: np.ndarray, w: np.ndarray, k: int) -> float:
    best = np.inf
    for cuts in itertools.combinations(range(1, len(x)), k - 1):
        bounds = [0, *cuts, len(x)]
        sse = 0.0
        for a, b in zip(bounds[:-1], bounds[1:]):
            if w[a:b].sum() > 0:
                sse += np.sum(w[a:b] * (x[a:b] - np.average(x[a:b], weights=w[a:b])) ** 2)
        best = min(best, sse)
    return best


def _sse(x: np.ndarray, w: np.ndarray, c: np.ndarray) -> float:
    return float(np.sum(w * np.min((x[:, None] - c[None, :]) ** 2, axis=1)))


@pytest.mark.parametrize("seed", range(40))
def test_dp_is_the_exact_optimum(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 10))
    k = int(rng.integers(1, n + 1))
    x = np.sort(rng.standard_normal(n) if seed % 3 else rng.integers(0, 3, n).astype(float))
    w = rng.integers(0 if seed % 4 == 0 else 1, 4, n).astype(float)
    centroids = optimal_centroids(x[None], w[None], k)[0]
    assert _sse(x, w, centroids) <= _brute_force(x, w, k) * (1 + 1e-9) + 1e-12


def test_dp_solves_many_rows_like_one():
    rng = np.random.default_rng(0)
    x = np.sort(rng.standard_normal((5, 30)), axis=1)
    w = np.ones_like(x)
    together = optimal_centroids(x, w, 4)
    for r in range(5):
        np.testing.assert_allclose(together[r], optimal_centroids(x[r:r + 1], w[r:r + 1], 4)[0])


@pytest.mark.parametrize("dist", ["normal", "laplace", "t3"])
@pytest.mark.parametrize("k", [4, 16, 256])
def test_dp_method_is_never_worse_than_linear_init_kmeans(dist, k):
    rng = np.random.default_rng(1)
    values = {"normal": rng.standard_normal, "laplace": rng.laplace,
              "t3": lambda size: rng.standard_t(3, size)}[dist](size=(1, 20000)).astype(np.float32)
    sse = {m: float(np.sum((values - cluster_rows(values, k, m).values()) ** 2)) for m in ("dp", "kmeans")}
    assert sse["dp"] <= sse["kmeans"] * (1 + 1e-6)


def test_large_tensor_is_near_the_exact_optimum():
    """3000 values at 256 entries go through the grouped DP; within 2% of the exact SSE."""
    rng = np.random.default_rng(2)
    x = rng.standard_normal((1, 3000))
    xs = np.sort(x.astype(np.float64), axis=1)
    exact = _sse(xs[0], np.ones(3000), optimal_centroids(xs, np.ones_like(xs), 256)[0])
    palette = cluster_rows(x.astype(np.float32), 256)
    assert float(np.sum((x - palette.values()) ** 2)) <= exact * 1.02


def test_lloyd_never_raises_the_sse():
    rng = np.random.default_rng(3)
    xs = np.sort(rng.standard_normal((3, 500)), axis=1)
    start = np.sort(rng.standard_normal((3, 8)), axis=1)
    rows = SortedRows(xs)
    _, one = lloyd(rows, start, False, 1)
    _, many = lloyd(rows, start, False, 50)
    assert np.all(many <= one + 1e-9)


def test_palette_codes_index_the_nearest_entry():
    rng = np.random.default_rng(4)
    rows = rng.standard_normal((3, 400)).astype(np.float32)
    palette = cluster_rows(rows, 8)
    distance = np.abs(rows[:, :, None] - palette.codebook[:, None, :])
    np.testing.assert_array_equal(np.take_along_axis(distance, palette.codes[:, :, None].astype(np.intp), 2)[..., 0],
                                  distance.min(axis=2))
    assert np.all(palette.sizes == 8) and not palette.exact.any()


@pytest.mark.parametrize("bits", range(1, 9))
@pytest.mark.parametrize("count", [1, 7, 8, 13, 64])
def test_packed_codes_round_trip(bits, count):
    codes = np.random.default_rng(bits).integers(0, 2**bits, count).astype(np.uint8)
    packed = pack_codes(codes, bits)
    assert packed.shape == (-(-count // 8), bits)
    np.testing.assert_array_equal(unpack_codes(packed, bits, count), codes)


def test_index_bits():
    assert [index_bits(w) for w in (1, 2, 3, 4, 5, 16, 17, 256)] == [1, 1, 2, 2, 3, 4, 5, 8]
