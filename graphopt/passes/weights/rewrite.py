"""Write a quantized layer into the graph, in the form the target runtime has kernels for.

- `matmulnbits` (ONNX Runtime): each MatMul becomes com.microsoft::MatMulNBits(A, B, scales
  [, zero_points]) with K, N, bits, block_size (and accuracy_level when > 0); a Gemm's bias C
  becomes the bias input when it is a vector [N], else an Add after the node; each Gather becomes
  com.microsoft::GatherBlockQuantized(data, indices, scales [, zero_points]) with gather_axis 0,
  quantize_axis 1, block_size, bits. Layouts: blocks.py.
- `dq` (standard ONNX, opset 21): the weight becomes DequantizeLinear(q, scales [, zero_points];
  axis = the stored reduction axis, block_size) with INT4/UINT4 (or INT8/UINT8) codes, in front
  of the unchanged MatMul / Gemm / Gather. A partial last block needs no padding in this form.
Every tensor is new, under a fresh name (its arrays, `Encoded`, made once per layer and bit width
and shared by the candidates of the budget search); the float weight is dropped once nothing
reads it.
AWQ's input scaling is one Mul by 1/s on the shared input x (`scale_input`); a layer kept float
after AWQ reads diag(s)·W (a new tensor), which is exact.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import onnx_ir as ir

from graphopt.passes.weights.blocks import (BlockQuantized, gather_arrays, matmulnbits_arrays, onnx_int_array,
                                            onnx_int_tensor_of)
from graphopt.passes.weights.layers import Layer

MS_DOMAIN = "com.microsoft"
Fresh = Callable[[str], str]


def add_initializer(graph: ir.Graph, fresh: Fresh, base: str, tensor) -> ir.Value:
    if isinstance(tensor, np.ndarray):
        tensor = ir.tensor(np.ascontiguousarray(tensor))
    name = fresh(base)
    tensor.name = name
    value = ir.Value(name=name, shape=ir.Shape(tensor.shape), type=ir.TensorType(tensor.dtype), const_value=tensor)
    graph.register_initializer(value)
    return value


def drop_if_unused(graph: ir.Graph, value: ir.Value | None) -> None:
    if value is None or value.uses() or value.is_graph_output() or value.is_graph_input():
        return
    producer = value.producer()
    if producer is not None:
        if producer.op_type == "Constant" and producer.graph is graph:
            graph.remove(producer, safe=True)
    elif value.name in graph.initializers:
        graph.initializers.pop(value.name)


@dataclass(frozen=True)
class Encoded:
    """A quantized layer's arrays in the written form ("dq", "nbits" or "gather"), made once and
    shared by every candidate: each candidate wraps them in new tensors under fresh names (no
    copy), and nothing writes into them."""

    form: str
    bits: int
    block_size: int
    data: np.ndarray  # codes: packed nibbles for 4 bits
    scales: np.ndarray
    zeros: np.ndarray | None
    shape: tuple[int, ...] = ()  # dq: the codes' shape (stored orientation)
    axis: int = 0  # dq: the blocked axis
    signed: bool = False
    k: int = 0  # nbits
    n: int = 0

    @property
    def nbytes(self) -> int:
        return self.data.nbytes + self.scales.nbytes + (0 if self.zeros is None else self.zeros.nbytes)


def encode(layer: Layer, bq: BlockQuantized, form: str) -> Encoded:
    """`bq` in the arrays of `form` ("dq" or "matmulnbits"; an embedding's matmulnbits form is
    GatherBlockQuantized's)."""
    fmt = bq.fmt
    if form == "dq":
        codes, scales, zeros, axis = _stored(layer, bq)
        packed_zeros = None if zeros is None else onnx_int_array(zeros, fmt.bits, False)
        return Encoded("dq", fmt.bits, fmt.block_size, onnx_int_array(codes, fmt.bits, fmt.symmetric),
                       np.ascontiguousarray(scales), packed_zeros, tuple(codes.shape), axis, fmt.symmetric)
    if layer.kind == "embedding":
        return Encoded("gather", fmt.bits, fmt.block_size, *gather_arrays(bq))
    arrays = matmulnbits_arrays(bq)
    return Encoded("nbits", fmt.bits, fmt.block_size, arrays.b, arrays.scales, arrays.zero_points,
                   k=arrays.k, n=arrays.n)


def _stored(layer: Layer, bq: BlockQuantized) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, int]:
    """Codes, scales, zero points in the weight's stored orientation, and the blocked axis."""
    if layer.transposed:
        zeros = None if bq.zero_points is None else bq.zero_points.T
        return bq.q.T, bq.scales.T, zeros, 1
    return bq.q, bq.scales, bq.zero_points, 0


def write_dq(graph: ir.Graph, fresh: Fresh, layer: Layer, enc: Encoded, nodes: list[ir.Node]) -> None:
    """DequantizeLinear(block_size) in front of every node of the layer (one DQ, shared)."""
    base = layer.key
    codes = onnx_int_tensor_of(enc.data, enc.bits, enc.signed, enc.shape)
    inputs = [add_initializer(graph, fresh, f"{base}_q{enc.bits}", codes),
              add_initializer(graph, fresh, f"{base}_scale", ir.Tensor(enc.scales))]
    if enc.zeros is not None:
        inputs.append(add_initializer(graph, fresh, f"{base}_zero",
                                      onnx_int_tensor_of(enc.zeros, enc.bits, False, enc.scales.shape)))
    dq = ir.node("DequantizeLinear", inputs, {"axis": enc.axis, "block_size": enc.block_size},
                 name=fresh(f"{base}_dq"))
    out = dq.outputs[0]
    out.name, out.shape = fresh(f"{base}_dequantized"), ir.Shape(enc.shape)
    out.type = ir.TensorType(ir.DataType.FLOAT)
    graph.insert_before(nodes[0], dq)
    old = None
    for node, use in zip(nodes, layer.uses):
        old = node.inputs[use.operand]
        node.replace_input_with(use.operand, out)
    drop_if_unused(graph, old)


def write_matmulnbits(graph: ir.Graph, fresh: Fresh, layer: Layer, enc: Encoded, nodes: list[ir.Node],
                      accuracy_level: int) -> None:
    """MatMulNBits for each linear node of the layer, GatherBlockQuantized for each Gather."""
    old = nodes[0].inputs[layer.uses[0].operand]
    shared = _shared(graph, fresh, layer.key, enc.data, enc.scales, enc.zeros)
    if enc.form == "gather":
        attrs = {"gather_axis": 0, "quantize_axis": 1, "block_size": enc.block_size, "bits": enc.bits}
        for node in nodes:
            _replace(graph, fresh, node, [ir.node("GatherBlockQuantized", [shared[0], node.inputs[1], *shared[1:]],
                                                  attrs, domain=MS_DOMAIN, name=fresh(f"{node.name}_q"))])
    else:
        attrs = {"K": enc.k, "N": enc.n, "bits": enc.bits, "block_size": enc.block_size}
        if accuracy_level > 0:
            attrs["accuracy_level"] = accuracy_level
        for node in nodes:
            _replace(graph, fresh, node, _nbits_chain(fresh, node, shared, attrs, enc.n))
    graph.opset_imports.setdefault(MS_DOMAIN, 1)
    drop_if_unused(graph, old)


def _shared(graph, fresh, base, data, scales, zeros) -> list[ir.Value]:
    arrays = [(f"{base}_q", data), (f"{base}_scale", scales)] + ([] if zeros is None else [(f"{base}_zero", zeros)])
    return [add_initializer(graph, fresh, name, ir.Tensor(array)) for name, array in arrays]


def _nbits_chain(fresh: Fresh, node: ir.Node, shared: list[ir.Value], attrs: dict, n: int) -> list[ir.Node]:
    """MatMulNBits for a MatMul, or for a Gemm with its bias (as the bias input when it is [N])."""
    bias = node.inputs[2] if node.op_type == "Gemm" and len(node.inputs) > 2 else None
    inputs = [node.inputs[0], *shared] + [None] * (3 - len(shared))  # A, B, scales, zero_points
    bias_array = None if bias is None or bias.const_value is None else bias.const_value.numpy()
    as_input = bias_array is not None and bias_array.dtype == np.float32 and bias_array.shape == (n,)
    if as_input:
        inputs += [None, bias]  # input 4 (g_idx) absent, 5 = bias
    while inputs[-1] is None:
        inputs.pop()
    chain = [ir.node("MatMulNBits", inputs, attrs, domain=MS_DOMAIN, name=fresh(f"{node.name}_q"))]
    if bias is not None and not as_input:
        chain[0].outputs[0].name = fresh(f"{node.name}_nobias")
        chain.append(ir.node("Add", [chain[0].outputs[0], bias], name=fresh(f"{node.name}_bias")))
    return chain


def _replace(graph: ir.Graph, fresh: Fresh, node: ir.Node, chain: list[ir.Node]) -> None:
    old_out, new_out = node.outputs[0], chain[-1].outputs[0]
    ir.convenience.replace_nodes_and_values(graph, node, [node], chain, [old_out], [new_out])


def write_float(graph: ir.Graph, fresh: Fresh, layer: Layer, nodes: list[ir.Node]) -> None:
    """A layer kept float after AWQ scaling reads diag(s)·W (stored orientation)."""
    if layer.scale is None:
        return
    matrix = layer.matrix
    value = add_initializer(graph, fresh, f"{layer.key}_awq", matrix.T if layer.transposed else matrix)
    old = None
    for node, use in zip(nodes, layer.uses):
        old = node.inputs[use.operand]
        node.replace_input_with(use.operand, value)
    drop_if_unused(graph, old)


def scale_input(graph: ir.Graph, fresh: Fresh, x: ir.Value, inv_scale: np.ndarray, readers: list[ir.Node]) -> None:
    """x' = x · (1/s), read by `readers` (graph-ordered: the Mul goes in front of the first)."""
    factor = add_initializer(graph, fresh, f"{x.name}_awq_inv", inv_scale.astype(np.float32))
    mul = ir.node("Mul", [x, factor], name=fresh(f"{x.name}_awq"))
    out = mul.outputs[0]
    out.name, out.type, out.shape = fresh(f"{x.name}_awq"), x.type, x.shape
    graph.insert_before(readers[0], mul)
    for node in readers:
        node.replace_input_with(0, out)
