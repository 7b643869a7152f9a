"""Per-output comparison metrics between a reference and a candidate run.

cosine similarity, max / mean absolute error, max ulp distance, SNR in dB
(10·log10(Σref² / Σ(ref−cand)²)) and top-1 agreement for [batch, classes] outputs and for
N-D softmax outputs ([N, T, C]: argmax over the last axis, agreement per position).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import numpy as np


@dataclass(frozen=True)
class OutputMetrics:
    max_abs: float
    mean_abs: float
    cosine: float
    snr_db: float
    max_ulps: float
    ref_max_abs: float
    top1: float | None = None
    shape_match: bool = True

    def to_dict(self) -> dict:
        return {k: _json_float(v) for k, v in asdict(self).items()}


def _json_float(value):
    if isinstance(value, float) and not np.isfinite(value):
        return str(value)
    return value


def shape_mismatch() -> OutputMetrics:
    """Worst-case metrics for an output whose shape changed (or that went missing)."""
    inf = float("inf")
    return OutputMetrics(inf, inf, -1.0, -inf, inf, 0.0, 0.0, shape_match=False)


def compare_arrays(ref: np.ndarray, cand: np.ndarray) -> OutputMetrics:
    """Metrics of `cand` against `ref` (shapes must match, else every metric is worst-case)."""
    if ref.shape != cand.shape:
        return shape_mismatch()
    if ref.dtype.kind not in "fc":  # integers and booleans by value; strings (object arrays) equal or not
        equal = np.array_equal(ref, cand)
        numeric = ref.dtype.kind in "iub"
        err = 0.0 if equal else (float(np.max(np.abs(ref.astype(np.float64) - cand.astype(np.float64))))
                                 if numeric else float("inf"))
        ref_max = float(np.max(np.abs(ref.astype(np.float64)), initial=0)) if numeric else 0.0
        return OutputMetrics(err, err, 1.0 if equal else 0.0, float("inf") if equal else 0.0,
                             0.0 if equal else float("inf"), ref_max)
    r = ref.astype(np.float64).ravel()
    c = cand.astype(np.float64).ravel()
    diff = np.abs(r - c)
    both_nan = np.isnan(r) & np.isnan(c)
    diff[both_nan] = 0.0
    return OutputMetrics(
        max_abs=float(np.max(diff, initial=0.0)),
        mean_abs=float(np.mean(diff)) if diff.size else 0.0,
        cosine=_cosine(r, c),
        snr_db=_snr_db(r, c),
        max_ulps=_max_ulps(ref, cand),
        ref_max_abs=float(np.max(np.abs(r[np.isfinite(r)]), initial=0.0)),
        top1=_top1(ref, cand),
    )


def _cosine(r: np.ndarray, c: np.ndarray) -> float:
    nr, nc = np.linalg.norm(r), np.linalg.norm(c)
    if nr == 0 and nc == 0:
        return 1.0
    if nr == 0 or nc == 0 or not np.isfinite(nr * nc):
        return 0.0 if np.isfinite(nr * nc) else -1.0
    return float(np.dot(r, c) / (nr * nc))


def _snr_db(r: np.ndarray, c: np.ndarray) -> float:
    noise = float(np.sum((r - c) ** 2))
    signal = float(np.sum(r**2))
    if noise == 0:
        return float("inf")
    if signal == 0:
        return float("-inf")
    return 10.0 * np.log10(signal / noise)


def _max_ulps(ref: np.ndarray, cand: np.ndarray) -> float:
    diff = np.abs(ref.astype(np.float64) - cand.astype(np.float64))
    spacing = np.spacing(np.maximum(np.abs(ref), np.abs(cand))).astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        ulps = np.where(diff == 0, 0.0, diff / spacing)
    ulps = np.where(np.isnan(ref) & np.isnan(cand), 0.0, ulps)
    return float(np.nanmax(ulps, initial=0.0)) if not np.isnan(ulps).all() else float("inf")


def _top1(ref: np.ndarray, cand: np.ndarray) -> float | None:
    if ref.ndim != 2 or ref.shape[1] < 2:
        return None
    return float(np.mean(np.argmax(ref, axis=1) == np.argmax(cand, axis=1)))


def _is_distribution(array: np.ndarray) -> bool:
    """Probabilities over the last axis (a softmax output: values in [0, 1] summing to 1)."""
    if array.ndim < 3 or array.shape[-1] < 2 or array.dtype.kind != "f" or not array.size:
        return False
    sums = array.sum(axis=-1, dtype=np.float64)
    return bool(array.min() >= 0 and array.max() <= 1 + 1e-6 and np.allclose(sums, 1.0, atol=1e-3))


def _sequence_top1(ref: list[np.ndarray], cand: list[np.ndarray]) -> float | None:
    """Top-1 agreement per position of N-D softmax outputs ([N, T, C]: a CTC recognizer, a
    token classifier), over all feeds; None for anything else (2-D outputs use `_top1`)."""
    if not ref or not all(_is_distribution(r) for r in ref):
        return None
    agree = sum(int(np.sum(np.argmax(r, axis=-1) == np.argmax(c, axis=-1))) for r, c in zip(ref, cand))
    return agree / sum(r[..., 0].size for r in ref)


def compare_outputs(ref: list[dict[str, np.ndarray]], cand: list[dict[str, np.ndarray]],
                    ) -> dict[str, OutputMetrics]:
    """Metrics per output name, over all feeds (arrays concatenated along a new axis)."""
    names = list(ref[0].keys()) if ref else []
    result = {}
    for name in names:
        r = [feed[name] for feed in ref]
        c = [feed.get(name) for feed in cand]
        if any(x is None or x.shape != y.shape for x, y in zip(c, r)):
            result[name] = shape_mismatch()
            continue
        result[name] = compare_arrays(_stack(r), _stack(c))
        sequence_top1 = _sequence_top1(r, c)
        if sequence_top1 is not None:
            result[name] = replace(result[name], top1=sequence_top1)
    return result


def _stack(arrays: list[np.ndarray]) -> np.ndarray:
    if len(arrays) == 1:
        return arrays[0]
    if all(a.ndim == 2 for a in arrays):
        return np.concatenate(arrays, axis=0)
    return np.concatenate([a.reshape(1, -1) if a.ndim == 0 else a.reshape(-1) for a in arrays])
