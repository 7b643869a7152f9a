"""Per-output comparison metrics between a reference and a candidate run.

cosine similarity, max / mean absolute error, max ulp distance, SNR in dB
(10·log10(Σref² / Σ(ref−cand)²)) and top-1 agreement for [batch, classes] outputs and for
N-D softmax outputs ([N, T, C]: argmax over the last axis, agreement per position).
`top1_dist` is top-1 agreement only where the reference is a probability distribution over the
last axis (values in [0, 1] summing to 1): a class or per-position softmax, never an embedding;
the default budget holds it at 0.999 (a CTC recognizer's strings change while cosine stays high).
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
    top1_dist: float | None = None  # top1, only where the output is a probability distribution

    def to_dict(self) -> dict:
        return {k: _json_float(v) for k, v in asdict(self).items()}


def _json_float(value):
    if isinstance(value, float) and not np.isfinite(value):
        return str(value)
    return value


def shape_mismatch() -> OutputMetrics:
    """Worst-case metrics for an output whose shape changed (or that went missing)."""
    inf = float("inf")
    return OutputMetrics(inf, inf, -1.0, -inf, inf, 0.0, 0.0, shape_match=False, top1_dist=0.0)


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
    return _compare_float([ref], [cand])


def _compare_float(ref: list[np.ndarray], cand: list[np.ndarray]) -> OutputMetrics:
    """Float metrics over pairs of equally shaped arrays (one per feed), without stacking them."""
    sums = _FloatSums()
    for r, c in zip(ref, cand):
        flat_ref, flat_cand = r.reshape(-1), c.reshape(-1)
        for i in range(0, flat_ref.size, CHUNK):
            sums.add(flat_ref[i:i + CHUNK], flat_cand[i:i + CHUNK])
    return sums.metrics(_top1(ref, cand))


CHUNK = 1 << 13  # elements per block: the float64 temporaries stay in cache
# ulps of a float32 difference = diff / spacing(max(|ref|, |cand|)); the spacing of a float32 with
# biased exponent e is 2^(max(e, 1) - 150) (e = 0: subnormals), NaN for e = 255 (inf/NaN)
_F32_ULP_SCALE = np.array([2.0 ** (150 - max(e, 1)) for e in range(255)] + [np.nan])


@dataclass
class _FloatSums:
    """Running sums for the float metrics, fed block by block (one pass over the data)."""

    count: int = 0
    max_abs: float = 0.0
    sum_abs: float = 0.0
    dot: float = 0.0
    ref_sq: float = 0.0
    cand_sq: float = 0.0
    noise: float = 0.0
    max_ulps: float = 0.0
    any_ulps: bool = False
    ref_max: float = 0.0

    def add(self, ref: np.ndarray, cand: np.ndarray) -> None:
        r, c = ref.astype(np.float64), cand.astype(np.float64)
        delta = r - c
        diff = np.abs(delta)
        noise = float(np.dot(delta, delta))
        both_nan = np.isnan(r) & np.isnan(c) if np.isnan(noise) else None  # NaN == NaN counts as equal
        if both_nan is not None:
            diff[both_nan] = 0.0
        self.count += r.size
        self.max_abs = _max_nan(self.max_abs, float(np.max(diff, initial=0.0)))
        self.sum_abs += float(np.sum(diff))
        self.dot += float(np.dot(r, c))
        self.ref_sq += float(np.dot(r, r))
        self.cand_sq += float(np.dot(c, c))
        self.noise += noise
        ulps = _ulps(ref, cand, diff)
        if both_nan is not None:
            ulps[both_nan] = 0.0
        worst = float(np.fmax.reduce(ulps)) if ulps.size else float("nan")  # NaN only if all NaN
        if not np.isnan(worst):
            self.any_ulps, self.max_ulps = True, max(self.max_ulps, worst)
        finite_max = np.max(np.abs(ref), where=np.isfinite(ref), initial=0)
        self.ref_max = max(self.ref_max, float(finite_max))

    def metrics(self, top1: float | None) -> OutputMetrics:
        return OutputMetrics(
            max_abs=self.max_abs,
            mean_abs=self.sum_abs / self.count if self.count else 0.0,
            cosine=_cosine(self.dot, self.ref_sq, self.cand_sq),
            snr_db=_snr_db(self.ref_sq, self.noise),
            max_ulps=self.max_ulps if self.any_ulps or not self.count else float("inf"),
            ref_max_abs=self.ref_max,
            top1=top1,
        )


def _max_nan(a: float, b: float) -> float:
    return float("nan") if np.isnan(a) or np.isnan(b) else max(a, b)


def _ulps(ref: np.ndarray, cand: np.ndarray, diff: np.ndarray) -> np.ndarray:
    """|ref - cand| in units of the spacing at the larger magnitude (NaN where that is inf/NaN)."""
    if ref.dtype == np.float32 and cand.dtype == np.float32:
        exponent = np.maximum(np.abs(ref), np.abs(cand)).view(np.int32) >> 23
        return diff * _F32_ULP_SCALE[exponent]
    spacing = np.spacing(np.maximum(np.abs(ref), np.abs(cand))).astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(diff == 0, 0.0, diff / spacing)


def _cosine(dot: float, ref_sq: float, cand_sq: float) -> float:
    nr, nc = np.sqrt(ref_sq), np.sqrt(cand_sq)
    if nr == 0 and nc == 0:
        return 1.0
    if nr == 0 or nc == 0 or not np.isfinite(nr * nc):
        return 0.0 if np.isfinite(nr * nc) else -1.0
    return float(dot / (nr * nc))


def _snr_db(signal: float, noise: float) -> float:
    if noise == 0:
        return float("inf")
    if signal == 0:
        return float("-inf")
    return float(10.0 * np.log10(signal / noise))


def _top1(ref: list[np.ndarray], cand: list[np.ndarray]) -> float | None:
    """Row-wise argmax agreement of [batch, classes] outputs, over all feeds."""
    if not ref or any(r.ndim != 2 or r.shape[1] < 2 for r in ref):
        return None
    rows = sum(r.shape[0] for r in ref)
    agree = sum(int(np.sum(np.argmax(r, axis=1) == np.argmax(c, axis=1))) for r, c in zip(ref, cand))
    return agree / rows if rows else float("nan")


def _is_distribution(array: np.ndarray) -> bool:
    """Probabilities over the last axis (a softmax output: values in [0, 1] summing to 1)."""
    if array.ndim < 2 or array.shape[-1] < 2 or array.dtype.kind != "f" or not array.size:
        return False
    sums = array.sum(axis=-1, dtype=np.float64)
    return bool(array.min() >= 0 and array.max() <= 1 + 1e-6 and np.allclose(sums, 1.0, atol=1e-3))


def _sequence_top1(ref: list[np.ndarray], cand: list[np.ndarray]) -> float | None:
    """Top-1 agreement per position of N-D softmax outputs ([N, T, C]: a CTC recognizer, a
    token classifier), over all feeds; None for anything else (2-D outputs use `_top1`)."""
    if not ref or any(r.ndim < 3 for r in ref) or not all(_is_distribution(r) for r in ref):
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
        float_output = all(x.dtype.kind in "fc" for x in r)
        result[name] = _compare_float(r, c) if float_output else compare_arrays(_stack(r), _stack(c))
        sequence_top1 = _sequence_top1(r, c)
        if sequence_top1 is not None:
            result[name] = replace(result[name], top1=sequence_top1)
        if result[name].top1 is not None and all(_is_distribution(x) for x in r):
            result[name] = replace(result[name], top1_dist=result[name].top1)
    return result


def _stack(arrays: list[np.ndarray]) -> np.ndarray:
    if len(arrays) == 1:
        return arrays[0]
    if all(a.ndim == 2 for a in arrays):
        return np.concatenate(arrays, axis=0)
    return np.concatenate([a.reshape(1, -1) if a.ndim == 0 else a.reshape(-1) for a in arrays])
