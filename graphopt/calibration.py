"""Calibration engine for INT8 quantization: activation ranges from streamed statistics.

`calibrate(model, names, feeds, options)` runs the model over the feeds with `names` exposed
(graphopt.activations: ORT graph optimizations off) and folds every batch into per-tensor running
statistics (graphopt.histogram): min/max, NaN/Inf and sentinel counts, an octave profile, and for
the histogram methods a 2·bins histogram whose range grows by exact power-of-two re-binning. Memory
is O(tensors x bins), independent of the sample count; nothing keeps a batch once it is folded.

Memory per ORT run: the exposed tensors' bytes are estimated from their shapes, symbolic dims
resolved by name from the first feed's input shapes (shapeless values count as the largest input).
When one feed would exceed `max_bytes` and every input shares a symbolic leading (batch) dim, the
feeds are split along it into sub-batches (statistics of a batch-independent model do not depend
on how samples are grouped, so this costs no extra pass); only if one sample still exceeds it are
the names split into chunks, each a separate pass over the feeds.

Ranges: `lo <= 0 <= hi` always (QDQ represents 0 exactly), clamped to the observed extremes; a
zero-width range (constant 0, or no finite value) becomes a unit range so a scale is never 0.
Method math is in graphopt/histogram.py. `TensorRange.extreme` flags tensors whose range a few
far-away values set (mask sentinels like -3.4e38, isolated outliers): keep those float, or at
least never use minmax on them.

Cache: `<cache_dir>/<key>.json`, key = sha256 over the graph structure, every weight's bytes, the
feeds' names/dtypes/shapes/bytes, the names and the options (except `max_bytes`, which changes
only how the work is split). The default directory is $GRAPHOPT_CACHE_DIR (`off` disables it) or
~/.cache/graphopt/calibration. A cache file that cannot be read is ignored and rewritten.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Literal

import numpy as np
import onnx_ir as ir

from graphopt.activations import stream_activations
from graphopt.calibration_cache import CACHE_VERSION, cache_folder, hash_model, load_ranges, store_ranges
from graphopt.data import input_specs, validate_feed
from graphopt.errors import InputError
from graphopt.histogram import (TensorStats, entropy_threshold, extreme_note, fold, mse_range,
                                percentile_range)

Feed = dict[str, np.ndarray]
MIN_SPAN = 1e-30


@dataclass(frozen=True)
class CalibrationOptions:
    method: Literal["minmax", "percentile", "entropy", "mse"] = "minmax"
    percentile: float = 99.999  # percentile method: keep this % of |values| mass (two-sided)
    bins: int = 2048  # histogram bins per sign (the histogram spans [-bins·w, bins·w))
    symmetric: bool = False  # True: range is [-a, a] (int8 symmetric); False: [lo, hi] (uint8 asym)
    num_quant_bins: int = 128  # entropy: target levels (128 for symmetric int8 half-range, 256 asym)
    max_bytes: int = 512 * 2**20  # activation bytes per ORT run before splitting (activations.py)

    def validate(self) -> None:
        if self.method not in ("minmax", "percentile", "entropy", "mse"):
            raise ValueError(f"method: expected minmax, percentile, entropy or mse, got {self.method!r}")
        if not 50.0 < self.percentile <= 100.0:
            raise ValueError(f"percentile must be in (50, 100], got {self.percentile}")
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


def calibrate(model: ir.Model, names: list[str], feeds: FeedsArg, options: CalibrationOptions, *,
              progress: Callable[[str], None] | None = None,
              cache_dir: str | os.PathLike | None = None) -> dict[str, TensorRange]:
    """Clipping range of each value in `names` over the feeds (see the module docstring)."""
    _validate(options)
    names = list(dict.fromkeys(names))
    source = _as_source(feeds)
    _check_names(model, names)
    key = cache_key(model, names, source, options)
    folder = cache_folder(cache_dir)
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
    held = feeds if isinstance(feeds, (list, tuple)) else list(feeds)
    return lambda: iter(held)


def _check_names(model: ir.Model, names: list[str]) -> None:
    known = {v.name for v in model.graph.inputs} | set(model.graph.initializers)
    known.update(v.name for node in model.graph for v in node.outputs)
    unknown = [n for n in names if n not in known]
    if unknown:
        raise InputError(f"calibration: no value named {', '.join(map(repr, unknown[:3]))} in the main graph")


def checked_feeds(source: Callable[[], Iterable[Feed]], model: ir.Model) -> Iterator[Feed]:
    """Iterate the source, checking each feed's names, dtypes, ranks and static dims."""
    specs = input_specs(model)
    count = 0
    for i, feed in enumerate(source()):
        if not isinstance(feed, dict):
            raise InputError(f"calibration feed {i}: expected a dict of arrays, got {type(feed).__name__}")
        feed = {k: np.asarray(v) for k, v in feed.items()}
        validate_feed(feed, specs, f"calibration feed {i}")
        count += 1
        yield feed
    if count == 0:
        raise InputError("calibration data holds no feeds")


def _collect(model, names, source, options, progress) -> dict[str, TensorStats]:
    histogram = options.method != "minmax"
    stats = {n: TensorStats(options.bins, histogram) for n in names}
    inputs = {v.name for v in model.graph.inputs} & set(names)
    for name in set(names) & set(model.graph.initializers):
        if name not in inputs:
            stats[name].update(model.graph.initializers[name].const_value.numpy())
    exposed = [n for n in names if n not in inputs and n not in model.graph.initializers]
    first = next(checked_feeds(source, model))
    sub, chunks = plan(model, exposed, first, options.max_bytes)
    say = progress or (lambda message: None)
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
    return stats


def _pass_message(message: str, index: int, total: int) -> str:
    return f"calibration pass {index + 1}/{total}: {message.rsplit(': ', 1)[-1]}"


def split_feed(feed: Feed, sub: int | None) -> Iterator[Feed]:
    if sub is None:
        yield feed
        return
    size = next(iter(feed.values())).shape[0]
    for start in range(0, size, sub):
        yield {k: v[start:start + sub] for k, v in feed.items()}


def plan(model: ir.Model, names: list[str], first: Feed, max_bytes: int) -> tuple[int | None, list[list[str]]]:
    """(sub-batch size or None, chunks of names) keeping one run's exposed bytes under max_bytes."""
    dims, batch = _symbol_sizes(model, first)
    fallback = max((a.nbytes for a in first.values()), default=0)
    by_name = {v.name: v for node in model.graph for v in node.outputs}
    sizes = {n: _value_bytes(by_name[n], dims, fallback) for n in names}
    total = sum(sizes.values())
    sub = None
    if batch and total > max_bytes:
        sub = max(1, int(max_bytes * batch // total))
        sizes = {n: s * sub / batch for n, s in sizes.items()}
    chunks: list[list[str]] = []
    used = 0.0
    for name in names:
        if chunks and used + sizes[name] <= max_bytes:
            chunks[-1].append(name)
            used += sizes[name]
        else:
            chunks.append([name])
            used = sizes[name]
    return (sub if sub is not None and sub < batch else None), chunks


def _symbol_sizes(model: ir.Model, feed: Feed) -> tuple[dict[str, int], int | None]:
    """Sizes of the inputs' symbolic dims in this feed, and the batch size when every input
    shares one symbolic leading dim (so feeds can be split along it)."""
    dims: dict[str, int] = {}
    leading = set()
    for spec in input_specs(model):
        shape = spec.shape or ()
        for dim, size in zip(shape, feed[spec.name].shape):
            if isinstance(dim, str):
                dims[dim] = size
        leading.add(shape[0] if shape and isinstance(shape[0], str) else None)
    sizes = {feed[s.name].shape[0] if feed[s.name].ndim else None for s in input_specs(model)}
    batch = next(iter(sizes)) if len(leading) == 1 and None not in leading and len(sizes) == 1 else None
    return dims, batch


def _value_bytes(value: ir.Value, dims: dict[str, int], fallback: int) -> int:
    if value.shape is None:
        return fallback
    itemsize = value.dtype.itemsize if value.dtype is not None else 4
    count = 1
    for dim in value.shape:
        size = dim if isinstance(dim, int) else dims.get(getattr(dim, "value", None))
        if size is None:
            return max(fallback, count * itemsize)
        count *= size
    return int(count * itemsize)


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
