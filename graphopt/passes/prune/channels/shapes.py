"""Channel index maps through shape ops: Flatten, Reshape, Split, Slice, Squeeze, Unsqueeze,
Reduce*, and Shape reads (part of the channel analysis, see groups.py).

- Flatten(axis f) of [.., C, d₁…dₖ] with every dim between f and C equal to 1 gives [N, C·∏dᵢ]:
  channel c spans the ∏dᵢ consecutive positions c·∏dᵢ … (the `inner` factor of a Piece).
- Reshape keeps channels when it leaves every dim before the channel axis alone: the axis is
  copied (0), stays explicit (C; the entry is rewritten), merges all trailing dims (C·∏dᵢ as
  the last entry; rewritten), or is inferred (-1). Anything else splits or reorders channels.
- Split on the channel axis cuts the layout by position ranges (sizes rewritten); a cut may
  not fall inside one channel's `inner` positions.
- Shape of a pruned tensor is safe only if its users read entries other than the channel axis.
"""

from __future__ import annotations

import math

import onnx_ir as ir

from graphopt.passes.prune.channels.dims import Dim, Piece, Site, Tracker
from graphopt.passes.prune.common import const_array


def _static(value: ir.Value) -> list[int | None] | None:
    if value.shape is None:
        return None
    return [d if isinstance(d, int) else None for d in value.shape]


def _axes(t: Tracker, node: ir.Node, input_from: int) -> list[int] | None:
    """Axes given as an attribute (older opsets) or as input 1 (opset >= input_from)."""
    if t.opset >= input_from and len(node.inputs) > 1 and node.inputs[1] is not None:
        array = const_array(node.inputs[1])
        return None if array is None else [int(a) for a in array.reshape(-1)]
    attr = node.attributes.get_ints("axes", None)
    return None if attr is None else list(attr)


def scaled(pieces: tuple[Piece, ...], factor: int) -> tuple[Piece, ...]:
    return tuple(Piece(p.seed, p.start, p.stop, p.inner * factor) for p in pieces)


def cut(pieces: tuple[Piece, ...], lo: int, hi: int) -> tuple[Piece, ...] | None:
    """The pieces covering positions [lo, hi); None if a bound falls inside a channel."""
    out, pos = [], 0
    for p in pieces:
        a, b = max(lo, pos), min(hi, pos + p.length)
        if a < b:
            da, db = a - pos, b - pos
            if da % p.inner or db % p.inner:
                return None
            out.append(Piece(p.seed, p.start + da // p.inner, p.start + db // p.inner, p.inner))
        pos += p.length
    return tuple(out)


def flatten_rule(t: Tracker, node: ir.Node, dim: Dim) -> str | None:
    f = node.attributes.get_int("axis", 1)
    f = f + dim.rank if f < 0 else f
    shape = _static(node.inputs[0])
    if dim.axis < f or shape is None:
        return "Flatten merges the channel axis into the leading axis"
    if any(d != 1 for d in shape[f:dim.axis]):
        return "the channel axis is not the outermost flattened axis"
    trailing = shape[dim.axis + 1:]
    if None in trailing:
        return "flattened trailing dims are not static"
    t.dims[node.outputs[0]] = Dim(1, 2, scaled(dim.pieces, math.prod(trailing)))
    return None


def reshape_rule(t: Tracker, node: ir.Node, dim: Dim) -> str | None:
    spec = const_array(node.inputs[1])
    shape = _static(node.inputs[0])
    if spec is None or shape is None:
        return "target shape is not constant"
    spec = [int(x) for x in spec.reshape(-1)]
    copy = None if node.attributes.get_int("allowzero", 0) else 0  # 0 copies the input dim
    a, size = dim.axis, dim.size
    if len(spec) <= a:
        return "Reshape merges the channel axis into a leading axis"
    lead_inferred = False
    for i in range(a):
        if spec[i] == -1:
            lead_inferred = True
        elif spec[i] != copy and spec[i] != shape[i]:
            return "Reshape changes the dims before the channel axis"
    entry, tail, rest = spec[a], spec[a + 1:], shape[a + 1:]
    out = node.outputs[0]
    if entry == copy and copy is not None:
        t.dims[out] = Dim(a, len(spec), dim.pieces)
        return None
    if entry == size:
        t.dims[out] = Dim(a, len(spec), dim.pieces)
        t.sites.append(Site("reshape", node, 1, a, dim.pieces))
        return None
    merged = None if None in rest else math.prod(rest)
    if merged is not None and not tail and entry in (size * merged, -1) and not (entry == -1 and lead_inferred):
        pieces = scaled(dim.pieces, merged)
        t.dims[out] = Dim(a, len(spec), pieces)
        if entry != -1:
            t.sites.append(Site("reshape", node, 1, a, pieces))
        return None
    if entry == -1 and not lead_inferred and tail == rest:
        t.dims[out] = Dim(a, len(spec), dim.pieces)
        return None
    return "Reshape splits or reorders the channel axis"


def split_rule(t: Tracker, node: ir.Node, dim: Dim) -> str | None:
    axis = node.attributes.get_int("axis", 0) % dim.rank
    if axis != dim.axis:
        for out in node.outputs:
            t.dims[out] = dim
        return None
    index, sizes = -1, None
    if len(node.inputs) > 1 and node.inputs[1] is not None:
        index, array = 1, const_array(node.inputs[1])
        sizes = None if array is None else [int(s) for s in array.reshape(-1)]
        if sizes is None:
            return "split sizes are not constant"
    elif node.attributes.get_ints("split", None) is not None:
        sizes = list(node.attributes.get_ints("split"))
    elif dim.size % len(node.outputs) == 0:
        sizes = [dim.size // len(node.outputs)] * len(node.outputs)
    else:
        return "uneven implicit split"
    parts, pos = [], 0
    for out, size in zip(node.outputs, sizes):
        part = cut(dim.pieces, pos, pos + size)
        if part is None:
            return "split falls inside one channel's positions"
        parts.append(part)
        t.dims[out] = Dim(axis, dim.rank, part)
        pos += size
    t.sites.append(Site("split", node, index, axis, dim.pieces, parts=tuple(parts)))
    return None


def slice_rule(t: Tracker, node: ir.Node, dim: Dim) -> str | None:
    if t.opset < 10:
        return "Slice before opset 10"
    arrays = [const_array(v) if v is not None else None for v in list(node.inputs[1:]) + [None] * 4][:4]
    starts, ends, axes, steps = arrays
    if starts is None or ends is None:
        return "slice bounds are not constant"
    axes = list(range(len(starts))) if axes is None else [int(x) % dim.rank for x in axes.reshape(-1)]
    if dim.axis in axes:
        i = axes.index(dim.axis)
        step = 1 if steps is None else int(steps.reshape(-1)[i])
        if step != 1 or int(starts.reshape(-1)[i]) != 0 or int(ends.reshape(-1)[i]) < dim.size:
            return "slices the channel axis"
    t.dims[node.outputs[0]] = dim
    return None


def squeeze_rule(t: Tracker, node: ir.Node, dim: Dim) -> str | None:
    axes = _axes(t, node, 13)
    if axes is None:
        shape = _static(node.inputs[0])
        if shape is None:
            return "squeezed axes are unknown"
        axes = [i for i, d in enumerate(shape) if d == 1]
    axes = [a % dim.rank for a in axes]
    if dim.axis in axes:
        return "squeezes the channel axis"
    new = dim.axis - sum(a < dim.axis for a in axes)
    t.dims[node.outputs[0]] = Dim(new, dim.rank - len(axes), dim.pieces)
    return None


def unsqueeze_rule(t: Tracker, node: ir.Node, dim: Dim) -> str | None:
    axes = _axes(t, node, 13)
    if axes is None:
        return "unsqueezed axes are not constant"
    out_rank = dim.rank + len(axes)
    inserted = {a % out_rank for a in axes}
    kept = [p for p in range(out_rank) if p not in inserted]
    t.dims[node.outputs[0]] = Dim(kept[dim.axis], out_rank, dim.pieces)
    return None


def reduce_rule(t: Tracker, node: ir.Node, dim: Dim) -> str | None:
    axes = _axes(t, node, 13 if node.op_type == "ReduceSum" else 18)
    if not axes:
        if node.attributes.get_int("noop_with_empty_axes", 0):
            t.dims[node.outputs[0]] = dim
            return None
        return "reduces over every axis"
    axes = [a % dim.rank for a in axes]
    if dim.axis in axes:
        return "reduces over the channel axis"
    if node.attributes.get_int("keepdims", 1):
        t.dims[node.outputs[0]] = dim
    else:
        t.dims[node.outputs[0]] = Dim(dim.axis - sum(a < dim.axis for a in axes), dim.rank - len(axes), dim.pieces)
    return None


def shape_rule(t: Tracker, node: ir.Node, dim: Dim) -> str | None:
    """Shape of a pruned tensor: fine unless something reads the channel entry."""
    start = node.attributes.get_int("start", 0)
    end = node.attributes.get_int("end", dim.rank)
    start, end = (max(0, min(dim.rank, x + dim.rank if x < 0 else x)) for x in (start, end))
    if not start <= dim.axis < end:
        return None
    out = node.outputs[0]
    if out.is_graph_output():
        return "the shape of a pruned tensor is a graph output"
    entry = dim.axis - start
    for user, _ in out.uses():
        if not _reads_other_entries(user, entry, end - start):
            return f"the shape of a pruned tensor is read by {user.op_type}"
    return None


def _reads_other_entries(user: ir.Node, entry: int, length: int) -> bool:
    """Does a Gather/Slice on a shape vector pick only entries other than `entry`?"""
    if user.op_type == "Gather" and user.inputs[0] is not None:
        indices = const_array(user.inputs[1])
        return indices is not None and all(int(i) % length != entry for i in indices.reshape(-1))
    if user.op_type == "Slice" and len(user.inputs) >= 3:
        starts, ends = const_array(user.inputs[1]), const_array(user.inputs[2])
        steps = const_array(user.inputs[4]) if len(user.inputs) > 4 and user.inputs[4] is not None else None
        if starts is None or ends is None or (steps is not None and int(steps.reshape(-1)[0]) != 1):
            return False
        lo, hi = (int(x.reshape(-1)[0]) for x in (starts, ends))
        lo, hi = (max(0, min(length, x + length if x < 0 else x)) for x in (lo, hi))
        return not lo <= entry < hi
    return False
