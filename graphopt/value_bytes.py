"""How many bytes the intermediate values of a model take for one feed: the planning estimate
behind every pass that reads activations in bounded chunks (graphopt.activations, quantize's
calibration plans and segments, float16's range streams).

A value's size is resolved in three steps, each only for what the one before left open:
1. its declared shape, symbolic dims sized by name from the feed's input shapes (an export's
   `batch` or `seq` dims keep their names through the graph);
2. ONNX shape inference on a clone whose graph inputs take the feed's concrete shapes: a
   convolution's spatial output dims, which shape inference leaves unnamed, become numbers;
3. still unknown: the largest input's bytes, or the product of its known dims if that is more.
Without step 2, a detector exported with [N, 3, H, W] inputs has every feature map at "unknown"
size; counting each unknown dim as a fixed guess made each of PP-OCR det's 49 channel tensors
look like a 1 GB one, so every tensor got its own pass over the data (32 passes, 20 s, where
one pass of 130 MB per feed does). Other feeds may be larger: it is an estimate, not a bound.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
from onnx_ir.passes.common import LiftConstantsToInitializersPass

from graphopt.analyses import infer_shapes
from graphopt.data import input_specs

Feed = dict[str, np.ndarray]


def symbol_sizes(model: ir.Model, feed: Feed) -> tuple[dict[str, int], int | None]:
    """Sizes of the inputs' symbolic dims in this feed, and the batch size when every input
    shares one symbolic leading dim (so feeds can be split along it)."""
    dims: dict[str, int] = {}
    leading = set()
    specs = [s for s in input_specs(model) if s.name in feed]  # a missing input is ORT's error to give
    for spec in specs:
        shape = spec.shape or ()
        for dim, size in zip(shape, np.shape(feed[spec.name])):
            if isinstance(dim, str):
                dims[dim] = size
        leading.add(shape[0] if shape and isinstance(shape[0], str) else None)
    sizes = {np.shape(feed[s.name])[0] if np.ndim(feed[s.name]) else None for s in specs}
    batch = next(iter(sizes)) if len(leading) == 1 and None not in leading and len(sizes) == 1 else None
    return dims, batch


def value_sizes(model: ir.Model, names: list[str], feed: Feed, found: dict | None = None) -> dict[str, int]:
    """Estimated bytes of each named value (node output or graph input) for this feed;
    `found`: `inferred(model, feed)` when the caller already has it."""
    dims = symbol_sizes(model, feed)[0]
    by_name = {v.name: v for v in model.graph.inputs}
    by_name.update(model.graph.initializers)
    by_name.update((v.name, v) for node in model.graph for v in node.outputs)
    sizes = {n: _declared_bytes(by_name[n], dims) for n in names}
    open_names = [n for n, size in sizes.items() if size is None]
    if open_names:
        found = found if found is not None else inferred(model, feed)
        fallback = max((np.asarray(a).nbytes for a in feed.values()), default=0)
        for name in open_names:
            sizes[name] = found.get(name, (None, None))[1] or max(fallback, _known_bytes(by_name[name], dims))
    return sizes


def inferred(model: ir.Model, feed: Feed) -> dict[str, tuple[ir.DataType | None, int | None]]:
    """{value: (dtype, bytes or None)} of every node output, from ONNX shape inference on a clone
    whose graph inputs have this feed's concrete shapes (so convolution outputs get sizes too)."""
    clone = model.clone()
    LiftConstantsToInitializersPass(size_limit=1024)(clone)  # inference then leaves the weights out
    for value in clone.graph.inputs:
        if value.name in feed:
            value.shape = ir.Shape(np.shape(feed[value.name]))
    infer_shapes(clone, strict=False)
    result = {}
    for node in clone.graph:
        for value in node.outputs:
            concrete = value.shape is not None and all(isinstance(d, int) for d in value.shape)
            size = int(np.prod(value.shape.numpy(), dtype=np.int64)) * value.dtype.itemsize \
                if concrete and value.dtype is not None else None
            result[value.name] = (value.dtype, size)
    for name, value in clone.graph.initializers.items():  # the lifted Constant outputs
        result.setdefault(name, (value.dtype, None))
    return result


def _sizes_of(value: ir.Value, dims: dict[str, int]) -> list[int | None]:
    """Each declared dim's size (symbols from `dims`; None where unknown)."""
    return [dim if isinstance(dim, int) else dims.get(getattr(dim, "value", None)) for dim in value.shape or ()]


def _declared_bytes(value: ir.Value, dims: dict[str, int]) -> int | None:
    sizes = _sizes_of(value, dims)
    if value.shape is None or None in sizes:
        return None
    return _known_bytes(value, dims)


def _known_bytes(value: ir.Value, dims: dict[str, int]) -> int:
    """Bytes of the known dims alone (a lower bound when some are unknown)."""
    itemsize = value.dtype.itemsize if value.dtype is not None else 4
    return int(np.prod([s for s in _sizes_of(value, dims) if s is not None], dtype=np.int64)) * itemsize


def packed(names: list[str], sizes: dict[str, float], max_bytes: float) -> list[list[str]]:
    """Greedy split of `names`, in order, into chunks whose sizes total at most `max_bytes`
    (a name larger than that is a chunk of its own)."""
    chunks: list[list[str]] = []
    used = 0.0
    for name in names:
        if chunks and used + sizes[name] <= max_bytes:
            chunks[-1].append(name)
            used += sizes[name]
        else:
            chunks.append([name])
            used = sizes[name]
    return chunks
