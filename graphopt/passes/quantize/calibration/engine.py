"""Calibration engine for INT8 quantization: activation ranges from streamed statistics.

`calibrate(model, names, feeds, options)` folds every batch into per-tensor running statistics
(graphopt.passes.quantize.calibration.histogram): min/max, NaN/Inf and sentinel counts, an octave profile, and for the
histogram methods a 2·bins histogram whose range grows by exact power-of-two re-binning. Memory
is O(tensors x bins), independent of the sample count; nothing keeps a batch once it is folded.
ORT sessions borrow the model's weights (graphopt.shared_session) instead of copying them.

- minmax, in the graph (graphopt.passes.quantize.calibration.ingraph): one ORT pass of per-tensor summaries
  (extremes, a NaN flag, a strided sample); only a few bytes per tensor leave ORT.
- percentile/entropy/mse, in segments (graphopt.passes.quantize.calibration.segmented): one pass over the data
  with the model cut into segments of about SEGMENT_BYTES of calibrated tensors (graphopt.passes.quantize.calibration.segments);
  each segment's tensors are folded into the streaming statistics on a worker thread while ORT
  runs the next one. Both routes give the same statistics as exposure (the histogram merge is
  exact; tests compare them).
- Exposed (graphopt.activations: the tensors become graph outputs, ORT optimizations off): for
  models the summaries do not support (opset < 10, non-float32 values) and when ORT refuses the
  summaries or a segment (logged at debug). Feeds are split into sub-batches or names into chunks
  so one run's exposed bytes stay under `max_bytes` (graphopt.passes.quantize.calibration.plan).

Ranges: `lo <= 0 <= hi` always (QDQ represents 0 exactly), clamped to the observed extremes; a
zero-width range (constant 0, or no finite value) becomes a unit range so a scale is never 0.
Method math is in graphopt.passes.quantize.calibration.methods. `TensorRange.extreme` flags
tensors whose range a few far-away values set (mask sentinels like -3.4e38, isolated outliers):
keep those float, or at least never use minmax on them.

Cache: `<cache_dir>/<key>.json`, key = sha256 over the graph structure, every weight's bytes, the
feeds' names/dtypes/shapes/bytes, the names and the options (except `max_bytes`, which changes
only how the work is split). The default directory is $GRAPHOPT_CACHE_DIR (`off` disables it) or
~/.cache/graphopt/calibration. A cache file that cannot be read is ignored and rewritten.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from dataclasses import dataclass
from collections.abc import Sequence
from typing import Callable, Iterable, Iterator, Literal

import numpy as np
import onnx_ir as ir

from graphopt.passes.quantize.calibration import ingraph
from graphopt.passes.quantize.calibration import segmented
from graphopt.activations import stream_activations
from graphopt.passes.quantize.calibration.plan import checked_feeds, plan, split_feed
from graphopt.passes.quantize.calibration.cache import CACHE_VERSION, cache_folder, hash_model, load_ranges, store_ranges
from graphopt.errors import InputError
from graphopt.passes.quantize.calibration.histogram import TensorStats, extreme_note
from graphopt.passes.quantize.calibration.methods import entropy_threshold, fold, mse_range, percentile_range
from graphopt.phases import timed

Feed = dict[str, np.ndarray]
MIN_SPAN = 1e-30
SEGMENT_BYTES = 8 * 2**20  # wanted bytes per segment run (histogram methods, graphopt.passes.quantize.calibration.segments)
log = logging.getLogger("graphopt.calibration")


@dataclass(frozen=True)
class CalibrationOptions:
    method: Literal["minmax", "percentile", "entropy", "mse"] = "minmax"
    percentile: float = 99.999  # percentile method: keep this % of |values| mass (two-sided), in [90, 100]
    bins: int = 2048  # histogram bins per sign (the histogram spans [-bins·w, bins·w))
    symmetric: bool = False  # True: range is [-a, a] (int8 symmetric); False: [lo, hi] (uint8 asym)
    num_quant_bins: int = 128  # entropy: target levels (128 for symmetric int8 half-range, 256 asym)
    max_bytes: int = 512 * 2**20  # activation bytes per ORT run before splitting (activations.py)

    def validate(self) -> None:
        if self.method not in ("minmax", "percentile", "entropy", "mse"):
            raise ValueError(f"method: expected minmax, percentile, entropy or mse, got {self.method!r}")
        if not 90.0 <= self.percentile <= 100.0:  # the one bound (the quantize pass validates through it)
            raise ValueError(f"percentile must be in [90, 100], got {self.percentile}")
        if not 16 <= self.bins <= 2**20:
            raise ValueError(f"bins must be in [16, 1048576], got {self.bins}")
        if not 2 <= self.num_quant_bins <= self.bins:
            raise ValueError(f"num_quant_bins must be in [2, bins={self.bins}], got {self.num_quant_bins}")
        if self.max_bytes < 1:
            raise ValueError(f"max_bytes must be >= 1, got {self.max_bytes}")


@dataclass(frozen=True)
class TensorRange:
    lo: float  # the clipping range chosen (lo <= 0 <= hi always, as QDQ needs 0 exactly)
    hi: float
    min: float  # observed extremes (finite values only; 0.0 when there were none)
    max: float
    nonfinite: int  # count of NaN/Inf seen (reported, excluded from stats)
    samples: int  # number of elements seen
    sentinels: int = 0  # finite |x| >= 1e30 (mask-style -inf); in min/max, not in histograms
    extreme: bool = False  # a few far-away values set the observed range: keep float / avoid minmax
    note: str = ""  # why `extreme`, or what made the range a fallback


FeedsArg = Callable[[], Iterable[Feed]] | Iterable[Feed]


@timed("calibration")
def calibrate(model: ir.Model, names: list[str], feeds: FeedsArg, options: CalibrationOptions, *,
              progress: Callable[[str], None] | None = None,
              cache_dir: str | os.PathLike | None = None) -> dict[str, TensorRange]:
    """Clipping range of each value in `names` over the feeds (see the module docstring)."""
    _validate(options)
    names = list(dict.fromkeys(names))
    source = _as_source(feeds)
    _check_names(model, names)
    folder = cache_folder(cache_dir)
    key = cache_key(model, names, source, options) if folder else ""
    cached = load_ranges(folder, key, names, TensorRange) if folder else None
    if cached is not None:
        if progress:
            progress(f"calibration: cache hit ({len(names)} tensors)")
        return cached
    stats = _collect(model, names, source, options, progress)
    ranges = {name: finish(stats[name], options) for name in names}
    if folder:
        store_ranges(folder, key, ranges)
    return ranges


def _validate(options: CalibrationOptions) -> None:
    try:
        options.validate()
    except ValueError as exc:
        raise InputError(f"calibration: {exc}") from None


def _as_source(feeds: FeedsArg) -> Callable[[], Iterable[Feed]]:
    """A re-iterable source; a one-shot iterator is read into a list once."""
    if callable(feeds):
        return feeds
    if isinstance(feeds, dict):
        raise InputError("calibration data must be an iterable of feed dicts, not a single dict")
    held = feeds if isinstance(feeds, Sequence) else list(feeds)
    return lambda: iter(held)


def _check_names(model: ir.Model, names: list[str]) -> None:
    known = {v.name for v in model.graph.inputs} | set(model.graph.initializers)
    known.update(v.name for node in model.graph for v in node.outputs)
    unknown = [n for n in names if n not in known]
    if unknown:
        raise InputError(f"calibration: no value named {', '.join(map(repr, unknown[:3]))} in the main graph")


def _collect(model, names, source, options, progress) -> dict[str, TensorStats]:
    """minmax by in-graph summaries, the histogram methods in segments; exposure for the models
    the summaries do not support and as the fallback when ORT refuses either route."""
    say = progress or (lambda message: None)
    inputs = {v.name for v in model.graph.inputs} & set(names)
    exposed = [n for n in names if n not in inputs and n not in model.graph.initializers]
    try:
        if exposed and options.method != "minmax":
            stats = _initial_stats(model, names, options)
            segmented.collect(model, exposed, source, stats, inputs, say, options.method,
                              min(options.max_bytes, SEGMENT_BYTES))
            return stats
        if exposed and ingraph.usable(model, exposed):
            stats = _initial_stats(model, names, options)
            ingraph.collect_summaries(model, exposed, source, stats, inputs, say)
            return stats
    except ingraph.Refused as exc:
        log.debug("calibration: ORT refused the %s route (%s); exposing the tensors instead",
                  "segmented" if options.method != "minmax" else "in-graph", exc)
    stats = _initial_stats(model, names, options)  # nothing half-folded is kept
    _collect_exposed(model, names, exposed, inputs, source, options, stats, say)
    return stats


def _initial_stats(model, names, options) -> dict[str, TensorStats]:
    stats = {n: TensorStats(options.bins, options.method != "minmax") for n in names}
    inputs = {v.name for v in model.graph.inputs}
    for name in set(names) & set(model.graph.initializers) - inputs:
        stats[name].update(model.graph.initializers[name].const_value.numpy())
    return stats


def _collect_exposed(model, names, exposed, inputs, source, options, stats, say) -> None:
    first = next(checked_feeds(source, model))
    sub, chunks = plan(model, exposed, first, options.max_bytes)
    say(f"calibration ({options.method}): {len(names)} tensors, {len(chunks)} pass(es) over the data"
        + (f", sub-batches of {sub}" if sub else ""))

    def feed_runs(first_pass: bool) -> Iterator[Feed]:
        for feed in checked_feeds(source, model):
            for name in inputs if first_pass else ():
                stats[name].update(feed[name])
            yield from split_feed(feed, sub)

    def consume(_index: int, arrays: dict[str, np.ndarray]) -> None:
        for name, array in arrays.items():
            stats[name].update(array)

    for ci, chunk in enumerate(chunks):
        stream_activations(model, chunk, lambda first_pass=(ci == 0): feed_runs(first_pass), consume,
                           max_bytes=2**62, progress=lambda m, ci=ci: say(_pass_message(m, ci, len(chunks))))
    if not chunks:
        for _ in feed_runs(True):
            pass


def _pass_message(message: str, index: int, total: int) -> str:
    return f"calibration pass {index + 1}/{total}: {message.rsplit(': ', 1)[-1]}"


def finish(stats: TensorStats, options: CalibrationOptions) -> TensorRange:
    """The clipping range of one tensor's statistics under `options`."""
    seen = stats.max >= stats.min
    low, high = (stats.min, stats.max) if seen else (0.0, 0.0)
    extreme = extreme_note(stats) if seen else ""
    note = extreme if seen else "no finite values seen"
    counts = stats.counts
    if options.method == "minmax" or counts is None or not counts.any():
        lo, hi = low, high
    elif options.method == "percentile":
        lo, hi = percentile_range(counts, stats.width, stats.bins, options.percentile, options.symmetric)
    elif options.method == "entropy":
        t = entropy_threshold(fold(counts, stats.bins), stats.width, options.num_quant_bins)
        lo, hi = -t, t
    else:
        lo, hi = mse_range(counts, stats.width, stats.bins, options.symmetric, options.num_quant_bins)
    lo, hi = min(max(lo, low), 0.0), max(min(hi, high), 0.0)
    if options.symmetric:
        lo, hi = -max(-lo, hi), max(-lo, hi)
    if not hi - lo > MIN_SPAN:
        lo, hi = (-1.0, 1.0) if options.symmetric else (lo, lo + 1.0)
        note = note or "constant value: unit range used so the scale is never 0"
    return TensorRange(float(lo), float(hi), float(low), float(high), stats.nonfinite, stats.samples,
                       stats.sentinels, bool(extreme), note)


def cache_key(model: ir.Model, names: list[str], feeds: FeedsArg, options: CalibrationOptions) -> str:
    """sha256 of the graph, its weights, the feeds, the names and the options (not max_bytes)."""
    h = hashlib.sha256(CACHE_VERSION.encode())
    hash_model(model, h)
    for feed in checked_feeds(_as_source(feeds), model):
        for name in sorted(feed):
            array = np.ascontiguousarray(feed[name])
            h.update(f"{name}|{array.dtype.str}|{array.shape}".encode())
            h.update(memoryview(array).cast("B"))
    h.update(json.dumps(sorted(dict.fromkeys(names))).encode())
    settings = {k: v for k, v in dataclasses.asdict(options).items() if k != "max_bytes"}
    h.update(json.dumps(settings, sort_keys=True).encode())
    return h.hexdigest()
