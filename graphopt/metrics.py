"""Per-output comparison metrics between a reference and a candidate run.

Whole-tensor statistics over all feeds: cosine similarity, max / mean absolute error, max ulp
distance, SNR in dB (10·log10(Σref² / Σ(ref−cand)²)).

Per-sample statistics (a sample = one entry of the output's sample axis, graphopt.output_kinds):
`sample_cosine` and `sample_snr_db` are the worst sample's cosine and SNR. One aggregate over the
whole tensor hides a sample that moved a lot among many that did not; the accuracy budget judges
cosine and snr_db by these (graphopt.tolerance). A sample whose reference is all zeros has cosine
1 if its candidate is zero too, else 0.

Top-1 agreement (argmax over the last axis, fraction of positions where it is unchanged):
- `top1`: on inferred class-score outputs (per sample [N, C], or per position [N, T, C] /
  [T, N, C]: probabilities, log-probabilities or logits), and row-wise on any other float
  [N, C] output (its meaning before output kinds, kept for existing budgets);
- `top1_dist`: the same number, only on inferred class-score outputs (None elsewhere): the one
  the default budget holds, because a CTC head's per-position classes (hence its decoded
  strings) can change while cosine stays high, softmaxed or not. (It was named for probability
  distributions; logits and log-probabilities count now too.)
- `sample_top1`: the worst sample's per-position agreement (report only).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import numpy as np

from graphopt.output_kinds import OutputKind, infer_kinds, squeeze_trailing
from graphopt.phases import timed


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
    top1_dist: float | None = None  # top1, only on inferred class-score outputs
    sample_cosine: float | None = None  # worst sample's cosine (None: not computed)
    sample_snr_db: float | None = None  # worst sample's SNR
    sample_top1: float | None = None  # worst sample's top-1 agreement (class scores)
    samples: int = 0  # held-out samples the per-sample statistics ran over
    positions: int = 0  # positions top-1 agreement ran over
    kind: str = ""  # the inferred output kind (OutputKind.label)

    def to_dict(self) -> dict:
        return {k: json_float(v) for k, v in asdict(self).items()}


def json_float(value):
    if isinstance(value, float) and not np.isfinite(value):
        return str(value)
    return value


def shape_mismatch() -> OutputMetrics:
    """Worst-case metrics for an output whose shape changed (or that went missing)."""
    inf = float("inf")
    return OutputMetrics(inf, inf, -1.0, -inf, inf, 0.0, 0.0, shape_match=False, top1_dist=0.0,
                         sample_cosine=-1.0, sample_snr_db=-inf, sample_top1=0.0)


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
    return agree / rows if rows else 1.0  # nothing to disagree on


@timed("compare outputs")
def compare_outputs(ref: list[dict[str, np.ndarray]], cand: list[dict[str, np.ndarray]],
                    kinds: dict[str, OutputKind] | None = None) -> dict[str, OutputMetrics]:
    """Metrics per output name, over all feeds; `kinds` (graphopt.output_kinds) say what each
    output is and where its samples are (inferred from `ref` alone when not given)."""
    kinds = infer_kinds(ref) if kinds is None else kinds
    names = list(ref[0].keys()) if ref else []
    result = {}
    for name in names:
        r = [feed[name] for feed in ref]
        c = [feed.get(name) for feed in cand]
        kind = kinds.get(name) or OutputKind()
        if any(x is None or x.shape != y.shape for x, y in zip(c, r)):
            result[name] = replace(shape_mismatch(), kind=kind.label())
            continue
        float_output = all(x.dtype.kind in "fc" for x in r)
        base = _compare_float(r, c) if float_output else compare_arrays(_stack(r), _stack(c))
        result[name] = replace(base, kind=kind.label(), **_per_sample(r, c, kind, base),
                               **_class_agreement(r, c, kind, base.top1))
    return result


def _class_agreement(ref: list[np.ndarray], cand: list[np.ndarray], kind: OutputKind,
                     rows_top1: float | None) -> dict:
    """top1 / top1_dist / sample_top1 / positions (module docstring)."""
    if not kind.class_scores:
        return {"top1": rows_top1, "top1_dist": None}
    agree, positions, worst = 0, 0, 1.0
    for r, c in zip(ref, cand):
        same = np.argmax(squeeze_trailing(r), axis=-1) == np.argmax(squeeze_trailing(c), axis=-1)
        agree, positions = agree + int(np.sum(same)), positions + same.size
        rows = _sample_rows(same, kind.sample_axis)
        if rows.size:
            worst = min(worst, float(np.min(np.mean(rows, axis=1))))
    top1 = agree / positions if positions else 1.0  # nothing to disagree on
    return {"top1": top1, "top1_dist": top1, "sample_top1": worst, "positions": positions}


def _sample_rows(array: np.ndarray, axis: int | None) -> np.ndarray:
    """[samples, rest]: one row per sample (the whole array when there is no sample axis)."""
    moved = array.reshape(1, -1) if axis is None or axis >= array.ndim else np.moveaxis(array, axis, 0)
    return moved.reshape(moved.shape[0], -1) if moved.size else np.zeros((moved.shape[0], 0), array.dtype)


def _per_sample(ref: list[np.ndarray], cand: list[np.ndarray], kind: OutputKind,
                base: OutputMetrics) -> dict:
    """Worst-sample cosine and SNR; the whole-tensor ones for string and complex outputs."""
    if any(x.dtype.kind not in "fiub" for x in ref):
        return {"sample_cosine": base.cosine, "sample_snr_db": base.snr_db, "samples": len(ref)}
    cosines, snrs = [], []
    for r, c in zip(ref, cand):
        sums = _row_sums(_sample_rows(r, kind.sample_axis), _sample_rows(c, kind.sample_axis))
        cosines += [_cosine(d, rs, cs) for d, rs, cs, _ in sums.T]
        snrs += [_snr_db(rs, nz) if np.isfinite(nz) else float("-inf") for _, rs, _, nz in sums.T]
    if not cosines:
        return {"sample_cosine": 1.0, "sample_snr_db": float("inf"), "samples": 0}
    return {"sample_cosine": min(cosines), "sample_snr_db": min(snrs), "samples": len(cosines)}


def _row_sums(ref: np.ndarray, cand: np.ndarray) -> np.ndarray:
    """[4, rows]: Σref·cand, Σref², Σcand², Σ(ref−cand)² per row, in float64 blocks of about
    CHUNK elements; NaN where both have NaN counts as equal (as in the whole-tensor sums)."""
    rows, length = ref.shape
    sums = np.zeros((4, rows))
    step_rows, step_cols = max(1, CHUNK // max(length, 1)), max(1, min(length, CHUNK))
    for i in range(0, rows, step_rows):
        for j in range(0, length, step_cols):
            a = ref[i:i + step_rows, j:j + step_cols].astype(np.float64)
            b = cand[i:i + step_rows, j:j + step_cols].astype(np.float64)
            both_nan = np.isnan(a) & np.isnan(b)
            if both_nan.any():
                a[both_nan], b[both_nan] = 0.0, 0.0
            delta = a - b
            sums[:, i:i + step_rows] += np.stack([np.einsum("ij,ij->i", a, b), np.einsum("ij,ij->i", a, a),
                                                  np.einsum("ij,ij->i", b, b),
                                                  np.einsum("ij,ij->i", delta, delta)])
    return sums


def _stack(arrays: list[np.ndarray]) -> np.ndarray:
    if len(arrays) == 1:
        return arrays[0]
    if all(a.ndim == 2 for a in arrays):
        return np.concatenate(arrays, axis=0)
    return np.concatenate([a.reshape(1, -1) if a.ndim == 0 else a.reshape(-1) for a in arrays])
