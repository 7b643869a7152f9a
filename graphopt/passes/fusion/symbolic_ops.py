"""Per-op rules of the symbolic shape evaluator (graphopt.passes.fusion.symbolic): each op's
output dims from its inputs' dims (`DIM_RULES`), and the values of the small integer tensors a
shape computation passes through (`ELEMENT_RULES`). The assumptions are symbolic.py's."""

from __future__ import annotations

from typing import Optional

import numpy as np
import onnx_ir as ir

from graphopt.passes.fusion.symbolic_dims import (RECURRENT, REDUCE, Dim, Evaluator, add, attr_ints, const, const_ints,
                                                  div, is_const, mul, non_negative, product)


def broadcast_dim(column: list) -> Optional[Dim]:
    fixed = {d[0] for d in column if is_const(d) and d[0] != 1}
    if len(fixed) == 1:
        return const(fixed.pop())  # every other side is that size or 1
    if fixed or any(d is None for d in column):
        return None
    symbolic = [d for d in column if not is_const(d)]
    if not symbolic:
        return const(1)
    return symbolic[0] if all(d == symbolic[0] for d in symbolic) else None


def _axes(ev: Evaluator, node: ir.Node, input_index: int = 1) -> Optional[list[int]]:
    attr = attr_ints(node, "axes")
    if attr is not None:
        return attr
    if len(node.inputs) > input_index and node.inputs[input_index] is not None:
        return const_ints(node.inputs[input_index])
    return []


def _dims_transpose(ev: Evaluator, node: ir.Node, index: int) -> Optional[list]:
    x = ev.dims(node.inputs[0])
    if x is None:
        return None
    perm = attr_ints(node, "perm") or list(reversed(range(len(x))))
    return [x[p] for p in perm] if sorted(perm) == list(range(len(x))) else None


def _dims_reshape(ev: Evaluator, node: ir.Node, index: int) -> Optional[list]:
    x = ev.dims(node.inputs[0])
    target = ev.elements(node.inputs[1]) if len(node.inputs) > 1 else None
    if target is None:
        return None
    allowzero = node.attributes.get_int("allowzero", 0)
    out: list = []
    infer = None
    for axis, e in enumerate(target):
        mine = x[axis] if x is not None and axis < len(x) else None
        if e is None:
            out.append(None)
        elif is_const(e) and e[0] == -1:
            infer = axis
            out.append(None)
        elif is_const(e) and e[0] == 0 and not allowzero:
            out.append(mine)
        elif is_const(e) or allowzero or e == mine:
            out.append(e)
        else:
            out.append(None)  # a run-time 0 would copy the input dim instead
    if infer is not None and x is not None:
        others = out[:infer] + out[infer + 1:]
        out[infer] = div(product(x), product(others))
    return out


def _dims_matmul(ev: Evaluator, node: ir.Node, index: int) -> Optional[list]:
    a, b = ev.dims(node.inputs[0]), ev.dims(node.inputs[1])
    if a is None or b is None:
        return None
    if len(a) >= 2 and len(b) >= 2:
        batch = ev.broadcast([a[:-2], b[:-2]])
        return None if batch is None else batch + [a[-2], b[-1]]
    if len(a) == 1 and len(b) >= 2:
        return b[:-2] + [b[-1]]
    if len(b) == 1 and len(a) >= 2:
        return a[:-1]
    return []


def _dims_dynamic_quantize(ev: Evaluator, node: ir.Node, index: int) -> Optional[list]:
    """DynamicQuantizeLinear: y has x's shape; y_scale and y_zero_point are scalars."""
    return ev.dims(node.inputs[0]) if index == 0 else []


def _dims_gemm(ev: Evaluator, node: ir.Node, index: int) -> Optional[list]:
    a, b = ev.dims(node.inputs[0]), ev.dims(node.inputs[1])
    if a is None or b is None or len(a) != 2 or len(b) != 2:
        return None
    return [a[1] if node.attributes.get_int("transA", 0) else a[0],
            b[0] if node.attributes.get_int("transB", 0) else b[1]]


def _dims_conv(ev: Evaluator, node: ir.Node, index: int) -> Optional[list]:
    x = ev.dims(node.inputs[0])
    w = ev.dims(node.inputs[1]) if len(node.inputs) > 1 else None
    if x is None:
        return None
    if node.op_type in ("Conv", "ConvInteger"):
        channels = w[0] if w else None
    elif node.op_type == "ConvTranspose":
        channels = mul(w[1], const(node.attributes.get_int("group", 1))) if w else None
    else:  # pooling keeps the channels
        channels = x[1] if len(x) > 1 else None
    if node.op_type.startswith("Global"):
        return [x[0], channels] + [const(1)] * (len(x) - 2)
    return [x[0], channels] + [None] * (len(x) - 2)


def _dims_recurrent(ev: Evaluator, node: ir.Node, index: int) -> Optional[list]:
    x = ev.dims(node.inputs[0])
    hidden = node.attributes.get_int("hidden_size", 0)
    if x is None or len(x) != 3 or hidden <= 0:
        return None
    directions = const(2 if node.attributes.get_string("direction", "forward") == "bidirectional" else 1)
    if node.attributes.get_int("layout", 0):
        batch, seq = x[0], x[1]
        return [batch, seq, directions, const(hidden)] if index == 0 else [batch, directions, const(hidden)]
    seq, batch = x[0], x[1]
    return [seq, directions, batch, const(hidden)] if index == 0 else [directions, batch, const(hidden)]


def _dims_unsqueeze(ev: Evaluator, node: ir.Node, index: int) -> Optional[list]:
    x, axes = ev.dims(node.inputs[0]), _axes(ev, node)
    if x is None or not axes:
        return None
    rank = len(x) + len(axes)
    unique = {a + rank if a < 0 else a for a in axes}
    if len(unique) != len(axes) or not all(0 <= a < rank for a in unique):
        return None
    rest = iter(x)
    return [const(1) if axis in unique else next(rest) for axis in range(rank)]


def _dims_squeeze(ev: Evaluator, node: ir.Node, index: int) -> Optional[list]:
    x, axes = ev.dims(node.inputs[0]), _axes(ev, node)
    if x is None or axes is None:
        return None
    if not axes:  # every dim of size 1 goes: only known when no dim is symbolic
        return [d for d in x if d != const(1)] if all(is_const(d) for d in x) else None
    axes = {a + len(x) if a < 0 else a for a in axes}
    return [d for axis, d in enumerate(x) if axis not in axes]


def _dims_flatten(ev: Evaluator, node: ir.Node, index: int) -> Optional[list]:
    x = ev.dims(node.inputs[0])
    if x is None:
        return None
    axis = node.attributes.get_int("axis", 1)
    axis = axis + len(x) if axis < 0 else axis
    return [product(x[:axis]), product(x[axis:])]


def _dims_concat(ev: Evaluator, node: ir.Node, index: int) -> Optional[list]:
    parts = [ev.dims(v) for v in node.inputs]
    if not parts or any(p is None for p in parts) or len({len(p) for p in parts}) != 1:
        return None
    rank = len(parts[0])
    axis = node.attributes.get_int("axis", 0)
    axis = axis + rank if axis < 0 else axis
    out = []
    for i in range(rank):
        column = [p[i] for p in parts]
        if i == axis:
            total = const(0)
            for d in column:
                total = add(total, d)
            out.append(total)
        else:
            out.append(next((d for d in column if d is not None), None))
    return out


def _dims_gather(ev: Evaluator, node: ir.Node, index: int) -> Optional[list]:
    data, indices = ev.dims(node.inputs[0]), ev.dims(node.inputs[1])
    if data is None or indices is None:
        return None
    axis = node.attributes.get_int("axis", 0)
    axis = axis + len(data) if axis < 0 else axis
    return data[:axis] + indices + data[axis + 1:]


def _dims_expand(ev: Evaluator, node: ir.Node, index: int) -> Optional[list]:
    return ev.broadcast([ev.dims(node.inputs[0]), ev.elements(node.inputs[1])])


def _dims_constant_of_shape(ev: Evaluator, node: ir.Node, index: int) -> Optional[list]:
    return ev.elements(node.inputs[0])


def _dims_shape(ev: Evaluator, node: ir.Node, index: int) -> Optional[list]:
    x = ev.dims(node.inputs[0])
    if x is None:
        return None
    start, end = node.attributes.get_int("start", 0), node.attributes.get_int("end", len(x))
    return [const(len(x[start:end]))]


def _slice_params(ev: Evaluator, node: ir.Node) -> Optional[tuple]:
    if "starts" in node.attributes:  # opset < 10
        starts, ends = attr_ints(node, "starts"), attr_ints(node, "ends")
        axes, steps = attr_ints(node, "axes"), None
    else:
        ins = list(node.inputs) + [None] * 5
        starts, ends = const_ints(ins[1]), const_ints(ins[2])
        axes = const_ints(ins[3]) if ins[3] is not None else None
        steps = const_ints(ins[4]) if ins[4] is not None else None
        if (ins[3] is not None and axes is None) or (ins[4] is not None and steps is None):
            return None
    if starts is None or ends is None:
        return None
    axes = axes if axes is not None else list(range(len(starts)))
    steps = steps if steps is not None else [1] * len(starts)
    return starts, ends, axes, steps


def _dims_slice(ev: Evaluator, node: ir.Node, index: int) -> Optional[list]:
    x, params = ev.dims(node.inputs[0]), _slice_params(ev, node)
    if x is None or params is None:
        return None
    out = list(x)
    for start, end, axis, step in zip(*params):
        axis = axis + len(x) if axis < 0 else axis
        d = x[axis]
        if is_const(d) and step > 0:
            out[axis] = const(len(range(d[0])[slice(start, end, step)]))
        elif start == 0 and step == 1 and end >= 2 ** 31 - 1:
            out[axis] = d
        else:
            out[axis] = None
    return out


def _dims_reduce(ev: Evaluator, node: ir.Node, index: int) -> Optional[list]:
    x = ev.dims(node.inputs[0])
    if x is None:
        return None
    keep = node.attributes.get_int("keepdims", 1)
    if node.op_type in ("ArgMax", "ArgMin"):
        axes = [node.attributes.get_int("axis", 0)]
    else:
        axes = _axes(ev, node)
        if axes is None:
            return None
        if not axes:
            if node.attributes.get_int("noop_with_empty_axes", 0):
                return list(x)
            axes = list(range(len(x)))
    axes = {a + len(x) if a < 0 else a for a in axes}
    if keep:
        return [const(1) if axis in axes else d for axis, d in enumerate(x)]
    return [d for axis, d in enumerate(x) if axis not in axes]


DIM_RULES = {
    "Transpose": _dims_transpose, "Reshape": _dims_reshape, "MatMul": _dims_matmul, "Gemm": _dims_gemm,
    "MatMulInteger": _dims_matmul, "DynamicQuantizeLinear": _dims_dynamic_quantize,
    "Conv": _dims_conv, "ConvInteger": _dims_conv, "ConvTranspose": _dims_conv, "MaxPool": _dims_conv, "AveragePool": _dims_conv,
    "LpPool": _dims_conv, "GlobalAveragePool": _dims_conv, "GlobalMaxPool": _dims_conv,
    "GlobalLpPool": _dims_conv, "Unsqueeze": _dims_unsqueeze, "Squeeze": _dims_squeeze,
    "Flatten": _dims_flatten, "Concat": _dims_concat, "Gather": _dims_gather, "Expand": _dims_expand,
    "ConstantOfShape": _dims_constant_of_shape, "Shape": _dims_shape, "Slice": _dims_slice,
    "ArgMax": _dims_reduce, "ArgMin": _dims_reduce,
    **{op: _dims_recurrent for op in RECURRENT}, **{op: _dims_reduce for op in REDUCE},
}


# -- element rules (rank-0/1 integer tensors) ---------------------------------------------------

def _elements_shape(ev: Evaluator, node: ir.Node) -> Optional[list]:
    x = ev.dims(node.inputs[0])
    if x is None:
        return None
    start, end = node.attributes.get_int("start", 0), node.attributes.get_int("end", len(x))
    return list(x[start:end])  # Python slicing clamps negative and out-of-range bounds as ONNX does


def _elements_gather(ev: Evaluator, node: ir.Node) -> Optional[list]:
    data, indices = ev.elements(node.inputs[0]), const_ints(node.inputs[1])
    if data is None or indices is None or node.attributes.get_int("axis", 0) not in (0, -1):
        return None
    if any(not -len(data) <= i < len(data) for i in indices):
        return None
    return [data[i] for i in indices]


def _elements_same(ev: Evaluator, node: ir.Node) -> Optional[list]:
    return ev.elements(node.inputs[0])


def _elements_cast(ev: Evaluator, node: ir.Node) -> Optional[list]:
    to = node.attributes.get_int("to", 0)
    source = node.inputs[0]
    if to not in (ir.DataType.INT64, ir.DataType.INT32) or source is None or source.dtype not in (
            ir.DataType.INT64, ir.DataType.INT32):
        return None
    values = ev.elements(source)
    if values is None or to == ir.DataType.INT64:
        return values
    # to int32: constants wrap as ORT wraps them; a run-time dim is assumed < 2**31 (module docstring)
    return [const(int(np.array(e[0], dtype=np.int64).astype(np.int32))) if is_const(e) else e for e in values]


def _elements_concat(ev: Evaluator, node: ir.Node) -> Optional[list]:
    parts = [ev.elements(v) for v in node.inputs]
    if any(p is None for p in parts):
        return None
    return [e for p in parts for e in p]


def _elements_slice(ev: Evaluator, node: ir.Node) -> Optional[list]:
    data, params = ev.elements(node.inputs[0]), _slice_params(ev, node)
    if data is None or params is None or len(params[0]) != 1:
        return None
    (start,), (end,), (axis,), (step,) = params
    if axis not in (0, -1) or step <= 0:
        return None
    return data[slice(start, end, step)]


def _pairs(ev: Evaluator, node: ir.Node) -> Optional[list[tuple]]:
    parts = [ev.elements(v) for v in node.inputs]
    if len(parts) != 2 or any(p is None for p in parts):
        return None
    a, b = parts
    if len(a) == len(b):
        return list(zip(a, b))
    if len(a) == 1:
        return [(a[0], e) for e in b]
    if len(b) == 1:
        return [(e, b[0]) for e in a]
    return None


def _elements_arith(ev: Evaluator, node: ir.Node) -> Optional[list]:
    pairs = _pairs(ev, node)
    if pairs is None:
        return None
    op = node.op_type
    if op == "Mul":
        return [mul(a, b) for a, b in pairs]
    if op == "Div":
        return [div(a, b) for a, b in pairs]
    if op == "Add":
        return [add(a, b) for a, b in pairs]
    return [add(a, mul(b, const(-1))) for a, b in pairs]  # Sub


def _elements_equal(ev: Evaluator, node: ir.Node) -> Optional[list]:
    pairs = _pairs(ev, node)
    if pairs is None:
        return None
    out = []
    for a, b in pairs:
        if a is None or b is None:
            out.append(None)
        elif a == b:
            out.append(const(1))
        elif is_const(a) and is_const(b):
            out.append(const(0))
        elif (is_const(b) and b[0] < 0 and non_negative(a)) or (is_const(a) and a[0] < 0 and non_negative(b)):
            out.append(const(0))  # a dim (or product of dims) is never negative
        else:
            out.append(None)
    return out


def _elements_where(ev: Evaluator, node: ir.Node) -> Optional[list]:
    cond, a, b = (ev.elements(v) for v in node.inputs)
    if cond is None or a is None or b is None:
        return None
    n = max(len(cond), len(a), len(b))
    if any(len(p) not in (1, n) for p in (cond, a, b)):
        return None
    pick = lambda p, i: p[i if len(p) == n else 0]  # noqa: E731
    out = []
    for i in range(n):
        c = pick(cond, i)
        out.append(None if not is_const(c) else (pick(a, i) if c[0] else pick(b, i)))
    return out


ELEMENT_RULES = {
    "Shape": _elements_shape, "Gather": _elements_gather, "Unsqueeze": _elements_same,
    "Squeeze": _elements_same, "Identity": _elements_same, "Reshape": _elements_same,
    "Flatten": _elements_same, "Cast": _elements_cast, "Concat": _elements_concat, "Slice": _elements_slice,
    "Mul": _elements_arith, "Div": _elements_arith, "Add": _elements_arith, "Sub": _elements_arith,
    "Equal": _elements_equal, "Where": _elements_where,
}
