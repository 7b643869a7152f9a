"""Ranges for the tensors a plan quantizes, user overrides, and the per-tensor SQNR report.

Ranges come from the streaming calibrator of graphopt.passes.quantize.calibration (minmax,
percentile, entropy, mse; histograms merged batch by batch, chunked under a memory cap), with the
`CalibrationOptions` the pass's options built. Constant tensors that a plan quantizes (the
constant operand of a quantized Add) take their own min/max.

SQNR of a quantized tensor x with parameters (s, z), over a few calibration batches:
    SQNR = 10·log10(Σ x² / Σ (x - DQ(Q(x)))²)  (non-finite elements ignored),
i.e. how much of the tensor survives its own quantization; low values point at the tensors to
exclude or override (a wide range from outliers, a tensor that needs more than 8 bits).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from graphopt.activations import stream_activations
from graphopt.errors import InputError
from graphopt.passes.quantize.calibration import CalibrationOptions, calibrate, exposure_runs
from graphopt.passes.quantize.plan import constant_array, is_constant
from graphopt.passes.quantize.profiles import FIXED_RANGES
from graphopt.passes.quantize.qdq import fake_quantize, sqnr_db


@dataclass(frozen=True)
class Overrides:
    float_tensors: frozenset[str] = frozenset()
    ranges: dict[str, tuple[float, float]] = field(default_factory=dict)


def parse_overrides(items: tuple[str, ...]) -> Overrides:
    """`NAME=float` keeps a tensor float; `NAME=LO..HI` fixes its range (LO <= 0 <= HI widened)."""
    floats, ranges = set(), {}
    for item in items:
        name, sep, spec = item.rpartition("=")
        if not sep or not name:
            raise ValueError(f"override {item!r}: expected NAME=float or NAME=LO..HI")
        if spec == "float":
            floats.add(name)
            continue
        lo, dots, hi = spec.partition("..")
        try:
            low, high = float(lo), float(hi)
        except ValueError:
            raise ValueError(f"override {item!r}: expected NAME=float or NAME=LO..HI") from None
        if not dots or not (np.isfinite(low) and np.isfinite(high)) or low > high:
            raise ValueError(f"override {item!r}: LO..HI must be finite with LO <= HI")
        ranges[name] = (low, high)
    return Overrides(frozenset(floats), ranges)


@dataclass(frozen=True)
class Calibration:
    ranges: dict[str, tuple[float, float]]
    calib: dict  # the report's calibration entry
    float_tensors: frozenset[str]  # user overrides plus tensors whose range extreme values set


def calibrate_ranges(model, plan, feeds, options: CalibrationOptions, cache_dir: str = "",
                     progress=None) -> tuple[dict[str, tuple[float, float]], dict]:
    """{tensor: (lo, hi)} for every tensor of the (full) plan, and a calibration summary.
    cache_dir: "" = graphopt's default ($GRAPHOPT_CACHE_DIR or ~/.cache/graphopt/calibration),
    "off" = no cache (no key is even computed), else that folder."""
    values = {o.name: o for n in model.graph for o in n.outputs}
    values.update(model.graph.initializers)
    ranges = {name: _constant_range(constant_array(values[name]))
              for name in plan.tensors if name in values and is_constant(values[name])}
    ranges.update(_fixed_ranges(model, plan.tensors))
    names = sorted(plan.tensors - set(ranges))
    info = {"method": options.method, "tensors": len(names)}
    if not names:
        return ranges, info
    found = calibrate(model, names, feeds, options, progress=progress, cache_dir=cache_dir or None)
    for name in names:
        r = found[name]
        ranges[name] = (float(r.lo), float(r.hi))
        if r.nonfinite:
            info.setdefault("nonfinite_values", {})[name] = int(r.nonfinite)
        if r.sentinels or (r.extreme and options.method == "minmax"):
            info.setdefault("extreme", {})[name] = r.note or "extreme values"
    return ranges, info


def _fixed_ranges(model, names: set[str]) -> dict[str, tuple[float, float]]:
    """Outputs of Softmax/Sigmoid/Tanh take the op's own range (FIXED_RANGES)."""
    fixed = {}
    for node in model.graph:
        bounds = FIXED_RANGES.get(node.op_type)
        if bounds is not None and node.outputs[0].name in names:
            fixed[node.outputs[0].name] = bounds
    return fixed


def _constant_range(array: np.ndarray) -> tuple[float, float]:
    finite = array[np.isfinite(array)] if array.size else array
    if finite.size == 0:
        return 0.0, 0.0
    return float(finite.min()), float(finite.max())


def tensor_sqnr(model, candidate, feeds, batches: int, max_bytes: int = 512 * 2**20) -> dict[str, float]:
    """SQNR (dB) of each quantized activation of `candidate`, worst first, on the float model."""
    values = {o.name: o for n in model.graph for o in n.outputs}
    values.update(model.graph.initializers)
    params = {n: p for n, p in candidate.applied.params.items() if n in values and not is_constant(values[n])}
    if not params:
        return {}
    signal = dict.fromkeys(params, 0.0)
    noise = dict.fromkeys(params, 0.0)

    def consume(_, arrays):
        for name, array in arrays.items():
            x = array[np.isfinite(array)].astype(np.float32)
            signal[name] += float(np.sum(x.astype(np.float64) ** 2))
            noise[name] += float(np.sum((x - fake_quantize(x, params[name])).astype(np.float64) ** 2))

    try:
        for chunk, source in exposure_runs(model, sorted(params), feeds, batches, max_bytes):
            stream_activations(model, chunk, source, consume, max_bytes=2**62)
    except InputError:
        return {}
    report = {n: round(sqnr_db(signal[n], noise[n]), 2) for n in params}
    return dict(sorted(report.items(), key=lambda kv: kv[1]))

