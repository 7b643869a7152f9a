"""Feeds and planning for calibration passes: checked feeds, and how to split feeds and names
so an ORT run's exposed bytes stay under a cap.

Bytes are estimated for the first feed's input shapes (graphopt.value_bytes). When the total
exceeds the cap and every input shares a symbolic leading (batch) dim, feeds are split along it into sub-batches
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
from graphopt.value_bytes import packed, symbol_sizes, value_sizes
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
    batch = symbol_sizes(model, first)[1]
    total = sum(sizes.values())
    sub = None
    if batch and total > max_bytes:
        sub = max(1, int(max_bytes * batch // total))
        sizes = {n: s * sub / batch for n, s in sizes.items()}
    return (sub if sub is not None and sub < batch else None), packed(names, sizes, max_bytes)


__all__ = ["checked_feeds", "exposure_runs", "plan", "split_feed", "value_sizes"]
