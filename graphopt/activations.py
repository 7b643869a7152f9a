"""Stream intermediate activations of a model over calibration feeds.

Lossy passes need statistics of the tensors inside the graph (quantization ranges, the
second-moment matrix of a layer's input for data-aware SVD, channel norms for pruning).
`stream_activations` exposes the requested values as extra graph outputs of a copy of the
model, runs ONNX Runtime (graph optimizations disabled, so every exposed value exists; the
session borrows the model's weights, graphopt.shared_session, when it can) over the feeds, and
hands each batch's arrays to a consumer, which must fold them into running statistics: nothing
here keeps more than one batch of activations alive.

When the exposed tensors of one run would exceed `max_bytes`, the names are split into
chunks and the feeds are iterated once per chunk (the feed source is a callable so it can be
re-iterated). The sizes are those of the first feed (graphopt.value_bytes: declared shapes,
then shape inference at the feed's input shapes), so a planning estimate, not a bound; a feed
source that is not callable is sized from declared shapes alone, unknown dims as `dynamic_dim`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

import numpy as np
import onnx_ir as ir

from graphopt.errors import InputError
from graphopt.io import in_memory_bytes
from graphopt.runtime import create_session, model_file, return_freed_memory
from graphopt.shared_session import shared_weight_session
from graphopt.value_bytes import packed, value_sizes

Feed = dict[str, np.ndarray]
FeedSource = Callable[[], Iterable[Feed]]
Consumer = Callable[[int, dict[str, np.ndarray]], None]

DEFAULT_MAX_BYTES = 512 * 1024 * 1024
# Above this many in-memory weight bytes the exposed model goes to ORT as a temporary file with
# external data: ORT maps the weights instead of parsing a serialized copy, so the session is built
# faster and with far less memory than from bytes (measured: docs/design-measurements.md).
FILE_SESSION_MIN_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True)
class StreamStats:
    runs: int  # passes over the feeds (= chunks)
    batches: int  # feeds seen per pass
    chunks: list[list[str]]


def estimated_bytes(value: ir.Value, dynamic_dim: int = 128) -> int:
    """Bytes of one instance of `value`; unknown dims count as `dynamic_dim`."""
    shape = value.shape
    itemsize = value.dtype.itemsize if value.dtype is not None else 4
    if shape is None:
        return dynamic_dim * dynamic_dim * itemsize
    count = 1
    for dim in shape:
        count *= dim if isinstance(dim, int) else dynamic_dim
    return int(count * itemsize)


def plan_chunks(values: list[ir.Value], max_bytes: int, dynamic_dim: int = 128) -> list[list[str]]:
    """Greedy split of the values into chunks whose declared-shape size stays under `max_bytes`."""
    return packed([v.name for v in values], {v.name: estimated_bytes(v, dynamic_dim) for v in values}, max_bytes)


def with_outputs(model: ir.Model, names: list[str]) -> ir.Model:
    """A copy of `model` (tensors shared, not copied) whose outputs are exactly `names`."""
    copy = model.clone()
    by_name = _values_by_name(copy.graph)
    missing = [n for n in names if n not in by_name]
    if missing:
        raise InputError(f"cannot expose {missing[:3]}: no such value in the main graph")
    copy.graph.outputs.clear()
    for name in names:
        copy.graph.outputs.append(by_name[name])
    return copy


def _values_by_name(graph: ir.Graph) -> dict[str, ir.Value]:
    values = {v.name: v for v in graph.inputs}
    values.update(graph.initializers)
    for node in graph:
        for out in node.outputs:
            values[out.name] = out
    return values


def stream_activations(model: ir.Model, names: list[str], feeds: FeedSource, consume: Consumer,
                       max_bytes: int = DEFAULT_MAX_BYTES,
                       progress: Callable[[str], None] | None = None,
                       many_sessions: bool = False) -> StreamStats:
    """Run `model` over `feeds()` and call `consume(batch_index, {name: array})` per batch.
    `many_sessions`: sessions whose threads do not spin after a run (graphopt.runtime), so a
    consumer that computes leaves the cores to them.

    Each chunk of names is one pass over the feeds; a consumer sees each name exactly once
    per batch. Raises InputError when the feeds are empty or ORT rejects a feed.
    """
    by_name = _values_by_name(model.graph)
    values = [by_name[n] for n in dict.fromkeys(names) if n in by_name]
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise InputError(f"cannot expose {unknown[:3]}: no such value in the main graph")
    chunks = _chunks(model, [v.name for v in values], feeds, max_bytes) if values else []
    batches = 0
    for ci, chunk in enumerate(chunks):
        session = exposed_session(with_outputs(model, chunk), owned=True, many_sessions=many_sessions)
        try:
            batches = run_exposed(session, chunk, feeds, consume, progress, (ci, len(chunks)))
        finally:
            del session
            return_freed_memory()
    return StreamStats(len(chunks), batches, chunks)


def _chunks(model: ir.Model, names: list[str], feeds: FeedSource, max_bytes: int) -> list[list[str]]:
    if max_bytes >= 2**62:
        return [names]
    first = next(iter(feeds()), None) if callable(feeds) else None
    if first is None:
        by_name = _values_by_name(model.graph)
        return plan_chunks([by_name[n] for n in names], max_bytes)
    return packed(names, value_sizes(model, names, first), max_bytes)


def exposed_session(model: ir.Model, opt_level: str = "disable_all", low_memory: bool = False,
                    many_sessions: bool = False, owned: bool = False):
    """A CPU session for a model with exposed outputs: borrowing the weights when possible,
    else from bytes (small models) or a temporary file (large ones). `owned`: `model` is a copy
    made for this session, which may rewrite it (graphopt.shared_session)."""
    session = shared_weight_session(model, opt_level, low_memory=low_memory, many_sessions=many_sessions,
                                    owned=owned)
    if session is not None:
        return session
    if in_memory_bytes(model) < FILE_SESSION_MIN_BYTES:
        return create_session(model, opt_level=opt_level, low_memory=low_memory, many_sessions=many_sessions)
    with model_file(model) as path:
        return create_session(path, opt_level=opt_level, low_memory=low_memory, many_sessions=many_sessions)


def run_exposed(session, chunk: list[str], feeds: FeedSource, consume: Consumer,
               progress, where: tuple[int, int]) -> int:
    count = 0
    for i, feed in enumerate(_iterate(feeds)):
        try:
            arrays = session.run(chunk, feed)
        except Exception as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise InputError(f"calibration feed {i}: ONNX Runtime failed: {first}") from None
        consume(i, dict(zip(chunk, arrays)))
        count += 1
        if progress is not None:
            progress(f"calibration chunk {where[0] + 1}/{where[1]}: batch {count}")
    if count == 0:
        raise InputError("calibration data holds no feeds")
    return count


def _iterate(feeds: FeedSource) -> Iterator[Feed]:
    source = feeds() if callable(feeds) else feeds
    return iter(source)
