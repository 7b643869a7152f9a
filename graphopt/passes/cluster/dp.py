"""Exact 1-D k-means by dynamic programming (the optimal palette for a set of weight values).

Problem: points x_1 <= ... <= x_n with weights w_i >= 0 (multiplicities), k centroids, minimize
    SSE = Σ_i w_i (x_i - c_{a(i)})².
In 1-D an optimal assignment is contiguous in sorted order, so a solution is a partition of the
sorted points into k runs, each run's centroid its weighted mean. With prefix sums S0, S1, S2
of w, w·x, w·x², the cost of the run [i, j) is
    cost(i, j) = (S2_j - S2_i) - (S1_j - S1_i)² / (S0_j - S0_i)          (O(1)),
and D_l(j), the least SSE of the first j points in l runs, is
    D_1(j) = cost(0, j),    D_l(j) = min_{l-1 <= i < j} D_{l-1}(i) + cost(i, j).
The best i (opt_l(j)) is nondecreasing in j (cost satisfies the concave Monge property), so each
level is solved by divide and conquer: opt at the middle j, then the left half searches
[lo, opt] and the right half [opt, hi]; O(n log n) per level, O(k·n·log n) in all (Ckmeans.1d.dp,
Wang & Song 2011; Grønlund et al. 2017). Ties take the smallest i (the leftmost argmin stays
monotone). Many rows (one palette per output channel) are solved together: every row has the
same n and k and the divide-and-conquer segments of all rows are processed level by level as
flat arrays. Values are centred per row before the prefix sums (float64) to keep the
cancellation in cost() small.
"""

from __future__ import annotations

import numpy as np

OPT_ENTRIES = 1 << 24  # back-pointer entries (int32) held at once: rows are solved in chunks


def optimal_centroids(x: np.ndarray, w: np.ndarray, k: int) -> np.ndarray:
    """Centroids [R, k] (ascending) of the optimal k-run partition of each row of `x` [R, n]
    (sorted ascending per row) with weights `w` [R, n]; requires 1 <= k <= n. A run whose
    weights are all 0 gets centroid 0 (callers drop duplicates)."""
    rows, n = x.shape
    if not 1 <= k <= n:
        raise ValueError(f"k must be in [1, {n}], got {k}")
    chunk = max(1, OPT_ENTRIES // (k * (n + 1)))
    return np.concatenate([_solve(x[s:s + chunk], w[s:s + chunk], k) for s in range(0, rows, chunk)])


def _solve(x: np.ndarray, w: np.ndarray, k: int) -> np.ndarray:
    x = np.asarray(x, np.float64)
    w = np.asarray(w, np.float64)
    total = w.sum(axis=1, keepdims=True)
    centre = np.where(total > 0, (w * x).sum(axis=1, keepdims=True) / np.where(total > 0, total, 1), 0.0)
    sums = _prefix(x - centre, w)
    bounds = _partition(sums, k)
    s0, s1 = sums[0], sums[1]
    r = np.arange(x.shape[0])[:, None]
    count = s0[r, bounds[:, 1:]] - s0[r, bounds[:, :-1]]
    mass = s1[r, bounds[:, 1:]] - s1[r, bounds[:, :-1]]
    with np.errstate(divide="ignore", invalid="ignore"):
        means = np.where(count > 0, mass / np.where(count > 0, count, 1), 0.0)
    return np.where(count > 0, means + centre, 0.0)


def _prefix(x: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    zero = np.zeros((x.shape[0], 1))
    return tuple(np.concatenate([zero, np.cumsum(v, axis=1)], axis=1) for v in (w, w * x, w * x * x))


def run_cost(sums, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """cost(i, j) for flat positions i, j into the raveled [R, n+1] prefix sums (same row);
    0 for a run of zero weight."""
    s0, s1, s2 = (s.ravel() for s in sums)
    n0 = s0[j] - s0[i]
    n1 = s1[j] - s1[i]
    n2 = s2[j] - s2[i]
    with np.errstate(divide="ignore", invalid="ignore"):
        spread = np.where(n0 > 0, n1 * n1 / np.where(n0 > 0, n0, 1), 0.0)
    return np.maximum(n2 - spread, 0.0)


def _partition(sums, k: int) -> np.ndarray:
    """Run boundaries [R, k+1] (0 = b_0 < b_1 < ... < b_k = n) of the optimal partition."""
    rows, n = sums[0].shape[0], sums[0].shape[1] - 1
    everyone = np.arange(rows)
    j = np.arange(n + 1)
    prev = np.full((rows, n + 1), np.inf)
    base = everyone[:, None] * (n + 1)
    prev[:, 1:] = run_cost(sums, np.repeat(base, n, axis=1), base + j[1:]).reshape(rows, n)
    back = np.zeros((k + 1, rows, n + 1), np.int32)
    for level in range(2, k + 1):
        prev, back[level] = _level(sums, prev, level, k, n)
    bounds = np.zeros((rows, k + 1), np.int64)
    bounds[:, k] = n
    for level in range(k, 1, -1):
        bounds[:, level - 1] = back[level][everyone, bounds[:, level]]
    return bounds


def _level(sums, prev: np.ndarray, level: int, k: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """D_level and opt_level for j in [level, n - k + level], by breadth-first divide and conquer."""
    rows, width = prev.shape
    cur = np.full_like(prev, np.inf)
    opt = np.zeros(prev.shape, np.int32)
    flat_prev = prev.ravel()
    seg = np.arange(rows)
    jlo = np.full(rows, level)
    jhi = np.full(rows, n - k + level)
    olo = np.full(rows, level - 1)
    ohi = np.full(rows, n - k + level - 1)
    while seg.size:
        mid = (jlo + jhi) // 2
        count = np.minimum(ohi, mid - 1) - olo + 1
        starts = np.cumsum(count) - count
        owner = np.repeat(np.arange(seg.size), count)
        i = olo[owner] + np.arange(owner.size) - starts[owner]
        base = seg[owner] * width
        value = flat_prev[base + i] + run_cost(sums, base + i, base + mid[owner])
        best = np.minimum.reduceat(value, starts)
        first = np.minimum.reduceat(np.where(value <= best[owner], np.arange(owner.size), owner.size), starts)
        best_i = i[first]
        cur[seg, mid] = best
        opt[seg, mid] = best_i
        left, right = jlo <= mid - 1, mid + 1 <= jhi
        seg, jlo, jhi, olo, ohi = (np.concatenate([a[left], b[right]]) for a, b in
                                   ((seg, seg), (jlo, mid + 1), (mid - 1, jhi), (olo, best_i), (best_i, ohi)))
    return cur, opt


__all__ = ["optimal_centroids", "run_cost"]
