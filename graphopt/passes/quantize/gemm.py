"""MatMul + bias Add before a Reshape, rewritten as a 2-D Gemm so the bias rides in the int8 kernel.

ONNX Runtime turns DQ→MatMul into MatMulIntegerToFloat without a bias, so a bias Add stays a
separate pass over the output (attention's Q/K/V projections in BERT-like models: 18 Adds of
[1, 128, 384] in MiniLM). DQ→Gemm with an INT32 bias becomes QGemm, which adds the bias in
its epilogue. For X of shape [..., K], constant W [K, N] and constant b [N]:
    Reshape(Add(MatMul(X, W), b), shape) = Reshape(Gemm(Reshape(X, [-1, K]), W, b), shape)
exactly, because a Reshape only needs the element count, which both sides share, as long as
`shape` has no 0 entry: a 0 copies the input's dim at that position (allowzero=0), and the
flattened input has other dims (PP-OCR rec's attention reshapes to [0, L, 3, 8, 15] at run time).
So `shape` must be provably free of 0s: a constant, or a Concat of constants and dims read by
Shape (a read dim is 0 only for an empty tensor). The rewrite applies only when the Add's sole
consumer is that Reshape (so no reshape back is needed); X is flattened once for all the
projections that read it.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from graphopt.passes.quantize.plan import constant_array


def _candidate(node: ir.Node) -> tuple[ir.Node, ir.Node] | None:
    """(Add, Reshape) after a MatMul with a constant 2-D weight and a constant [N] bias."""
    if node.op_type != "MatMul" or node.domain not in ("", "ai.onnx"):
        return None
    weight = constant_array(node.inputs[1])
    x = node.inputs[0]
    if weight is None or weight.ndim != 2 or x.shape is None or len(x.shape) < 3:
        return None
    uses = node.outputs[0].uses()
    if len(uses) != 1 or uses[0].node.op_type != "Add" or node.outputs[0].is_graph_output():
        return None
    add = uses[0].node
    bias = add.inputs[1 - uses[0].idx]
    data = constant_array(bias)
    if data is None or data.shape != (weight.shape[1],) or add.outputs[0].is_graph_output():
        return None
    after = add.outputs[0].uses()
    if len(after) != 1 or after[0].node.op_type != "Reshape" or after[0].idx != 0:
        return None
    if not _never_copies_a_dim(after[0].node):
        return None
    return add, after[0].node


# ops that carry dims read by Shape through to a Reshape target without making new values
_SHAPE_CARRIERS = ("Cast", "Gather", "Slice", "Squeeze", "Unsqueeze", "Identity")


def _never_copies_a_dim(reshape: ir.Node) -> bool:
    """True when the Reshape's target provably holds no 0 entry (or allowzero=1 makes a 0 a 0)."""
    if reshape.attributes.get_int("allowzero", 0):
        return True
    return _no_zero_entries(reshape.inputs[1])


def _no_zero_entries(value: ir.Value | None, depth: int = 0) -> bool:
    if value is None or depth > 8:
        return False
    data = constant_array(value)
    if data is not None:
        return bool(np.all(data.astype(np.int64) != 0))  # as a Cast to int64 would read it
    producer = value.producer()
    if producer is None:
        return False
    if producer.op_type == "Shape":
        return True
    if producer.op_type == "Concat":
        return all(_no_zero_entries(v, depth + 1) for v in producer.inputs)
    return producer.op_type in _SHAPE_CARRIERS and _no_zero_entries(producer.inputs[0], depth + 1)


def matmul_bias_to_gemm(graph: ir.Graph, fresh) -> int:
    """Rewrite every candidate in place; returns how many."""
    flat: dict[ir.Value, ir.Value] = {}
    count = 0
    for node in list(graph):
        found = _candidate(node)
        if found is None:
            continue
        add, reshape = found
        x, weight = node.inputs[0], node.inputs[1]
        bias = add.inputs[1] if add.inputs[0] is node.outputs[0] else add.inputs[0]
        if x not in flat:
            flat[x] = _flatten(graph, x, constant_array(weight).shape[0], fresh)
        gemm = ir.node("Gemm", [flat[x], weight, bias], name=fresh(f"{node.name or 'matmul'}_gemm"),
                       num_outputs=1)
        out = gemm.outputs[0]
        out.name, out.dtype = fresh(f"{add.outputs[0].name}_2d"), add.outputs[0].dtype
        graph.append(gemm)
        reshape.replace_input_with(0, out)
        graph.remove([add, node], safe=True)
        count += 1
    if count:
        graph.sort()
    return count


def _flatten(graph: ir.Graph, x: ir.Value, k: int, fresh) -> ir.Value:
    shape_name = fresh(f"{x.name}_2d_shape")
    shape = ir.Value(name=shape_name, shape=ir.Shape([2]), type=ir.TensorType(ir.DataType.INT64),
                     const_value=ir.tensor(np.array([-1, k], np.int64), name=shape_name))
    graph.register_initializer(shape)
    node = ir.node("Reshape", [x, shape], name=fresh(f"{x.name}_2d"), num_outputs=1)
    out = node.outputs[0]
    out.name, out.dtype = fresh(f"{x.name}_2d"), x.dtype
    graph.append(node)
    return out
