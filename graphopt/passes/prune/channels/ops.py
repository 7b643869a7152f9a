"""How channel index maps pass through each op (the rules behind groups.py).

`follow(tracker, node, tracked)` gets a node some of whose inputs carry seed channels and
either records what the node's outputs carry (and the constants to slice, as `Site`s) or
returns the reason the node cannot be followed. The rules and their math are listed in
groups.py; shapes come from ONNX shape inference (ranks must be known).
"""

from __future__ import annotations

import onnx_ir as ir

from graphopt.passes.prune.channels.dims import Dim, Piece, Site, Tracker
from graphopt.passes.prune.channels.shapes import (flatten_rule, reduce_rule, reshape_rule, shape_rule,
                                            slice_rule, split_rule, squeeze_rule, unsqueeze_rule)
from graphopt.passes.prune.common import const_array

UNARY = {"Relu", "LeakyRelu", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Clip", "Gelu", "Erf",
         "Softplus", "Softsign", "Elu", "Selu", "Celu", "Mish", "Exp", "Log", "Sqrt", "Abs", "Neg",
         "Reciprocal", "Cast", "Identity", "Dropout", "Floor", "Ceil", "Round", "Sin", "Cos",
         "ThresholdedRelu", "Swish", "IsNaN", "Sign", "Not"}
BROADCAST = {"Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Sum", "Mean", "PRelu", "Where",
             "Equal", "Less", "Greater", "LessOrEqual", "GreaterOrEqual", "And", "Or", "Xor", "Mod"}
POOL = {"MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "LpPool", "GlobalLpPool"}


def follow(t: Tracker, node: ir.Node, tracked: list[tuple[int, ir.Value]]) -> str | None:
    """Record what `node`'s outputs carry, or return why the node cannot be followed."""
    if node.domain not in ("", "ai.onnx"):
        return f"op {node.domain}::{node.op_type} is not understood"
    op = node.op_type
    first = t.dims[tracked[0][1]]
    if op in UNARY:
        if any(i != 0 for i, _ in tracked):
            return "channels reach a parameter input"
        for out in node.outputs:
            t.dims[out] = first
        return None
    if op in BROADCAST:
        return broadcast_rule(t, node)
    rule = RULES.get(op)
    if rule is None:
        return f"op {op} is not understood"
    if op not in MULTI_INPUT and any(i != 0 for i, _ in tracked):
        return "channels reach a parameter input"
    return rule(t, node, first)


def broadcast_rule(t: Tracker, node: ir.Node) -> str | None:
    out_rank = t.rank(node.outputs[0])
    ranks = [t.rank(v) for v in node.inputs if v is not None]
    if out_rank is None:
        out_rank = max(ranks) if ranks and None not in ranks else None
    if out_rank is None or None in ranks:
        return "unknown rank"
    axis, layouts = None, []
    for value in node.inputs:
        if value is not None and value in t.dims:
            dim = t.dims[value]
            aligned = out_rank - dim.rank + dim.axis
            if axis is not None and aligned != axis:
                return "operands carry channels on different axes"
            axis = aligned
            layouts.append(dim.pieces)
    size = t.dims[next(v for v in node.inputs if v is not None and v in t.dims)].size
    for index, value in enumerate(node.inputs):
        if value is None or value in t.dims:
            continue
        local = axis - (out_rank - t.rank(value))
        if local < 0 or t.size(value, local) == 1:
            continue
        if const_array(value) is not None and t.size(value, local) == size:
            t.sites.append(Site("const", node, index, local, layouts[0]))
            continue
        return f"operand '{value.name}' has channels no prunable layer produces"
    for other in layouts[1:]:
        reason = t.tie(layouts[0], other)
        if reason:
            return reason
    for out in node.outputs:
        t.dims[out] = Dim(axis, out_rank, layouts[0])
    return None


def norm_rule(t: Tracker, node: ir.Node, dim: Dim) -> str | None:
    """BatchNormalization / InstanceNormalization: per-channel parameters on axis 1."""
    if dim.axis != 1:
        return "channels are not on axis 1"
    if any(out.uses() or out.is_graph_output() for out in node.outputs[1:]):
        return "running-statistics outputs are used"
    last = 5 if node.op_type == "BatchNormalization" else 3
    for index in range(1, min(last, len(node.inputs))):
        if const_array(node.inputs[index]) is None:
            return f"parameter '{node.inputs[index].name}' is not constant"
        t.sites.append(Site("const", node, index, 0, dim.pieces))
    t.dims[node.outputs[0]] = dim
    return None


def conv_rule(t: Tracker, node: ir.Node, dim: Dim) -> str | None:
    weight = const_array(node.inputs[1])
    if weight is None:
        return "weight is not constant"
    if dim.axis != 1:
        return "channels are not on axis 1"
    groups = node.attributes.get_int("group", 1)
    if node.op_type == "ConvTranspose":
        if groups != 1:
            return "grouped ConvTranspose"
        t.sites.append(Site("weight_in", node, 1, 0, dim.pieces, node.inputs[0], 1))
        return None
    if groups == 1:
        t.sites.append(Site("weight_in", node, 1, 1, dim.pieces, node.inputs[0], 1))
        return None
    if groups == dim.size and weight.shape[0] == groups and weight.shape[1] == 1:
        t.sites.append(Site("depthwise", node, 1, 0, dim.pieces))
        if len(node.inputs) > 2 and node.inputs[2] is not None:
            if const_array(node.inputs[2]) is None:
                return "bias is not constant"
            t.sites.append(Site("const", node, 2, 0, dim.pieces))
        t.dims[node.outputs[0]] = dim
        return None
    if len(dim.pieces) != 1 or dim.pieces[0].seed is None or dim.pieces[0].start != 0:
        return f"grouped Conv (group={groups}) reads a mixed channel layout"
    t.block_needs.append((dim.pieces[0].seed, groups))
    t.sites.append(Site("grouped_in", node, 1, 1, dim.pieces, node.inputs[0], 1))
    return None


def dense_rule(t: Tracker, node: ir.Node, dim: Dim) -> str | None:
    """Gemm / MatMul with a constant 2-D weight: the last axis is contracted (a sink)."""
    weight = const_array(node.inputs[1])
    if weight is None or weight.ndim != 2:
        return "weight is not a constant matrix"
    if node.op_type == "Gemm":
        if node.attributes.get_int("transA", 0) or dim.axis != 1:
            return "Gemm input channels are not on axis 1"
        t.sites.append(Site("weight_in", node, 1, 1 if node.attributes.get_int("transB", 0) else 0,
                            dim.pieces, node.inputs[0], 1))
        return None
    if dim.rank < 2:
        return "1-D MatMul input"
    if dim.axis == dim.rank - 1:
        t.sites.append(Site("weight_in", node, 1, 0, dim.pieces, node.inputs[0], dim.axis))
        return None
    t.dims[node.outputs[0]] = dim  # a row/batch axis passes through x @ W
    return None


def pool_rule(t: Tracker, node: ir.Node, dim: Dim) -> str | None:
    if dim.axis != 1:
        return "channels are not on axis 1"
    if len(node.outputs) > 1 and (node.outputs[1].uses() or node.outputs[1].is_graph_output()):
        return "pooling indices output is used"
    t.dims[node.outputs[0]] = dim
    return None


def transpose_rule(t: Tracker, node: ir.Node, dim: Dim) -> str | None:
    perm = node.attributes.get_ints("perm", None)
    perm = list(perm) if perm is not None else list(range(dim.rank))[::-1]
    t.dims[node.outputs[0]] = Dim(perm.index(dim.axis), dim.rank, dim.pieces)
    return None


def concat_rule(t: Tracker, node: ir.Node, dim: Dim) -> str | None:
    axis = node.attributes.get_int("axis", 0) % dim.rank
    layouts = []
    for value in node.inputs:
        if value in t.dims:
            if t.dims[value].axis != dim.axis:
                return "inputs carry channels on different axes"
            layouts.append(t.dims[value].pieces)
            continue
        if axis != dim.axis:
            return f"input '{value.name}' is not pruned with the others"
        size = t.size(value, axis)
        if size is None:
            return f"input '{value.name}' has an unknown size on the concat axis"
        layouts.append((Piece(None, 0, size),))
    if axis == dim.axis:
        pieces = tuple(p for layout in layouts for p in layout)
    else:
        for other in layouts[1:]:
            reason = t.tie(layouts[0], other)
            if reason:
                return reason
        pieces = layouts[0]
    t.dims[node.outputs[0]] = Dim(dim.axis, dim.rank, pieces)
    return None


def resize_rule(t: Tracker, node: ir.Node, dim: Dim) -> str | None:
    inputs = list(node.inputs) + [None] * 4
    sizes, scales = inputs[3], inputs[2] if len(node.inputs) > 2 else inputs[1]
    sizes_array = const_array(sizes)
    if sizes_array is not None and sizes_array.size:
        t.sites.append(Site("resize", node, 3, dim.axis, dim.pieces))
    else:
        scale = const_array(scales)
        if scale is None or scale.size <= dim.axis or scale.reshape(-1)[dim.axis] != 1:
            return "scales are not constant 1 on the channel axis"
    t.dims[node.outputs[0]] = dim
    return None


def pad_rule(t: Tracker, node: ir.Node, dim: Dim) -> str | None:
    pads = const_array(node.inputs[1]) if len(node.inputs) > 1 else None
    if pads is None:
        attr = node.attributes.get_ints("pads", None)
        pads = None if attr is None else list(attr)
    if pads is None or (len(node.inputs) > 3 and node.inputs[3] is not None):
        return "pads are not constant (or given per axes)"
    pads = list(pads)
    if pads[dim.axis] or pads[dim.axis + dim.rank]:
        return "pads the channel axis"
    t.dims[node.outputs[0]] = dim
    return None


def softmax_rule(t: Tracker, node: ir.Node, dim: Dim) -> str | None:
    if t.opset < 13 or node.attributes.get_int("axis", -1) % dim.rank == dim.axis:
        return "normalizes over the channel axis"
    t.dims[node.outputs[0]] = dim
    return None


def layernorm_rule(t: Tracker, node: ir.Node, dim: Dim) -> str | None:
    if dim.axis >= node.attributes.get_int("axis", -1) % dim.rank:
        return "normalizes over the channel axis"
    if any(out.uses() or out.is_graph_output() for out in node.outputs[1:]):
        return "mean / inverse-std outputs are used"
    t.dims[node.outputs[0]] = dim
    return None


RULES = {
    "BatchNormalization": norm_rule, "InstanceNormalization": norm_rule,
    "Conv": conv_rule, "ConvTranspose": conv_rule, "Gemm": dense_rule, "MatMul": dense_rule,
    "Transpose": transpose_rule, "Concat": concat_rule, "Resize": resize_rule, "Pad": pad_rule,
    "Softmax": softmax_rule, "LogSoftmax": softmax_rule, "LayerNormalization": layernorm_rule,
    "Flatten": flatten_rule, "Reshape": reshape_rule, "Split": split_rule, "Slice": slice_rule,
    "Squeeze": squeeze_rule, "Unsqueeze": unsqueeze_rule, "Shape": shape_rule,
    **{op: reduce_rule for op in ("ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd",
                                  "ReduceL1", "ReduceL2", "ReduceSumSquare", "ReduceLogSumExp")},
    **{op: pool_rule for op in POOL},
}
MULTI_INPUT = {"Concat"}
