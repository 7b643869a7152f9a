"""Feeds and planning for calibration passes: checked feeds, and how to split feeds and names
so an ORT run's exposed bytes stay under a cap.

Bytes are estimated from each value's shape, symbolic dims resolved by name from the first feed's
input shapes (shapeless values count as the largest input). When the total exceeds the cap and
every input shares a symbolic leading (batch) dim, feeds are split along it into sub-batches
(statistics of a batch-independent model do not depend on how samples are grouped, so this costs
no extra pass); only if one sample still exceeds it are the names split into chunks, each a
separate pass over the feeds.
"""

from __future__ import annotations

import itertools
from typing import Callable, Iterable, Iterator

import numpy as np
import onnx_ir as ir

from graphopt.data import input_specs, validate_feed
from graphopt.errors import InputError

Feed = dict[str, np.ndarray]


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


def split_feed(feed: Feed, sub: int | None) -> Iterator[Feed]:
    if sub is None:
        yield feed
        return
    size = next(iter(feed.values())).shape[0]
    for start in range(0, size, sub):
        yield {k: v[start:start + sub] for k, v in feed.items()}


def exposure_runs(model: ir.Model, names: list[str], feeds: Callable[[], Iterable[Feed]], batches: int,
                  max_bytes: int) -> list[tuple[list[str], Callable[[], Iterator[Feed]]]]:
    """(names, feed source) per ORT run that exposes `names` over the first `batches` feeds:
    symbolic dims sized from the first feed, feeds split into sub-batches when one is too big,
    names in chunks when one sample still is (`plan`)."""
    first = next(iter(feeds()))
    sub, chunks = plan(model, names, first, max_bytes)

    def source() -> Iterator[Feed]:
        for feed in itertools.islice(iter(feeds()), batches):
            yield from split_feed(feed, sub)

    return [(chunk, source) for chunk in chunks]


def plan(model: ir.Model, names: list[str], first: Feed, max_bytes: int) -> tuple[int | None, list[list[str]]]:
    """(sub-batch size or None, chunks of names) keeping one run's exposed bytes under max_bytes."""
    sizes = value_sizes(model, names, first)
    batch = _symbol_sizes(model, first)[1]
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


def value_sizes(model: ir.Model, names: list[str], feed: Feed) -> dict[str, int]:
    """Estimated bytes of each named node output for this feed (see the module docstring)."""
    dims = _symbol_sizes(model, feed)[0]
    fallback = max((a.nbytes for a in feed.values()), default=0)
    by_name = {v.name: v for node in model.graph for v in node.outputs}
    return {n: _value_bytes(by_name[n], dims, fallback) for n in names}


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
