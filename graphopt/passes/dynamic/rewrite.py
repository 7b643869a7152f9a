"""Write the dynamic INT8 form of each unit into a model (the math: weights.py).

Standard ONNX (every runtime):
    xq, s_x, z_x = DynamicQuantizeLinear(x)                         one per activation
    y = Mul(Cast<float>(MatMulInteger(xq, Wq, z_x)), Mul(s_x, s_w))   [+ Add(y, b)]
(Conv: ConvInteger with the Conv's attributes, s_w and b shaped [M, 1, ...] for the channel
axis.) Units that read one activation share its quantization (Q, K and V: one pass over x, not
three); each has its own Mul(s_x, s_w) and its bias as the Add's second input: the shape ONNX
Runtime's optimizer fuses into MatMulIntegerToFloat (DynamicQuantizeMatMul for a lone reader).
`ort` form (ONNX Runtime only), com.microsoft ops: a lone reader of x becomes
DynamicQuantizeMatMul(x, Wq, s_w, , b); several share a DynamicQuantizeLinear and each becomes
MatMulIntegerToFloat(xq, Wq, s_x, s_w, z_x, , b); b as [N] (another shape: a separate Add).
Conv units keep the standard form.
Gemm: Y = alpha·A·B' + beta·C becomes s_w' = alpha·s_w and b = beta·C. Smoothed units
(smooth.py) read Mul(x, 1/s) (shared by the units of one s) instead of x, their weight being
diag(s)·W. A MatMul that absorbed its bias Add (select.py) loses that Add. Shared nodes go
right after x's producer; every new tensor gets a fresh name; the last node of a unit's chain
takes over the original output value (name, type, shape), so consumers and graph outputs are
unchanged; units reading one weight share its INT8 initializer, and a float weight nobody reads
any more is dropped.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import onnx_ir as ir

from graphopt.passes.dynamic.select import Unit, bias_add, constant_tensor, node_keys
from graphopt.passes.dynamic.weights import QuantizedWeight

MS_DOMAIN = "com.microsoft"
Source = tuple[str, int]  # (activation name, id of its smoothing factors or 0)


@dataclass
class Writer:
    """Rewrites units of one model; `fresh(base)` hands out unused names."""

    model: ir.Model
    fresh: Callable[[str], str]
    form: str  # "standard" or "ort"
    readers: Counter = field(default_factory=Counter)  # source -> rewritten units that read it
    nodes_added: int = 0
    int8: dict[int, ir.Value] = field(default_factory=dict)  # one initializer per quantized weight
    shared: dict[tuple[str, Source], ir.Node] = field(default_factory=dict)  # (op, source) -> node

    def constant(self, base: str, array: np.ndarray) -> ir.Value:
        name = self.fresh(base)
        dtype = ir.TensorType(ir.DataType.from_numpy(array.dtype))
        value = ir.Value(name=name, shape=ir.Shape(array.shape), type=dtype, const_value=ir.tensor(array, name=name))
        self.model.graph.register_initializer(value)
        return value

    def node(self, op: str, inputs: list, base: str, outputs: int = 1, domain: str = "",
             dtype: ir.DataType = ir.DataType.FLOAT, **attrs) -> ir.Node:
        made = ir.node(op, inputs, attrs, domain=domain, name=self.fresh(f"{base}_{op}"), num_outputs=outputs)
        for i, out in enumerate(made.outputs):
            out.name = self.fresh(f"{base}_{op.lower()}" + (f"_{i}" if outputs > 1 else ""))
            out.dtype = dtype
        self.nodes_added += 1
        return made

    def weight(self, base: str, qw: QuantizedWeight) -> ir.Value:
        """The INT8 weight's initializer, one for all the units that read it."""
        if id(qw.q) not in self.int8:
            self.int8[id(qw.q)] = self.constant(f"{base}_weight_int8", qw.q)
        return self.int8[id(qw.q)]

    def source(self, x: ir.Value, smooth: np.ndarray | None) -> ir.Value:
        """x, or the shared Mul(x, 1/s) of a smoothed unit."""
        if smooth is None:
            return x
        key = ("Mul", source_of(x, smooth))
        if key not in self.shared:
            inverse = self.constant(f"{x.name}_smooth", (1 / smooth).astype(np.float32))
            self.shared[key] = self._place(x, self.node("Mul", [x, inverse], f"{x.name}_smooth"))
            self.shared[key].outputs[0].shape = x.shape
        return self.shared[key].outputs[0]

    def dynamic_quantize(self, x: ir.Value, smooth: np.ndarray | None) -> ir.Node:
        """The shared DynamicQuantizeLinear of the unit's source: xq, s_x, z_x."""
        key = ("DynamicQuantizeLinear", source_of(x, smooth))
        if key not in self.shared:
            source = self.source(x, smooth)
            dql = self.node("DynamicQuantizeLinear", [source], source.name, outputs=3)
            for out, dtype in zip(dql.outputs, (ir.DataType.UINT8, ir.DataType.FLOAT, ir.DataType.UINT8)):
                out.dtype = dtype
            dql.outputs[0].shape = source.shape
            self.shared[key] = self._place(source, dql)
        return self.shared[key]

    def _place(self, value: ir.Value, node: ir.Node) -> ir.Node:
        """Insert `node` right after `value`'s producer (first in the graph for an input)."""
        producer = value.producer()
        if producer is not None:
            self.model.graph.insert_after(producer, node)
        else:
            self.model.graph.insert_before(next(iter(self.model.graph)), node)
        return node


def source_of(x: ir.Value, smooth: np.ndarray | None) -> Source:
    return x.name, id(smooth) if smooth is not None else 0


def rewrite(model: ir.Model, units: list[Unit], weights: dict[str, QuantizedWeight], form: str,
            fresh: Callable[[str], str]) -> int:
    """Rewrite `units` (in graph order) in place; returns the number of nodes added."""
    writer = Writer(model, fresh, form)
    nodes = node_keys(model.graph)
    writer.readers.update(source_of(nodes[u.key].inputs[0], weights[u.key].smooth) for u in units)
    if form == "ort" and any(u.op != "Conv" for u in units):
        model.opset_imports.setdefault(MS_DOMAIN, 1)
    for unit in units:
        _rewrite_unit(writer, nodes[unit.key], unit, weights[unit.key])
    return writer.nodes_added


def _rewrite_unit(w: Writer, node: ir.Node, unit: Unit, qw: QuantizedWeight) -> None:
    base = node.name or unit.op.lower()
    scale = np.asarray(qw.scale * np.float32(unit.alpha), np.float32)
    bias, replaced = _bias(node, unit), [node]
    if unit.bias_add:
        add, bias = bias_add(node, qw.q.shape[1])
        replaced.append(add)
    old_inputs = [v for n in replaced for v in n.inputs if v is not None]
    if unit.op == "Conv":
        channels = [-1] + [1] * (qw.q.ndim - 2)
        scale = scale.reshape(channels) if scale.ndim else scale
        bias = None if bias is None else w.constant(f"{base}_bias", np.asarray(bias, np.float32).reshape(channels))
    weight, scale = w.weight(base, qw), w.constant(f"{base}_weight_scale", scale)
    if w.form == "ort" and unit.op != "Conv":
        chain = _ort_chain(w, node, base, weight, scale, qw.smooth, bias)
    else:
        chain = _standard_chain(w, node, unit, base, weight, scale, qw.smooth, bias)
    old_out = replaced[-1].outputs[0]
    ir.convenience.replace_nodes_and_values(w.model.graph, replaced[-1], replaced, chain, [old_out],
                                            [chain[-1].outputs[0]])
    for value in old_inputs:
        _drop_if_unused(w.model.graph, value)


def _bias(node: ir.Node, unit: Unit) -> ir.Value | np.ndarray | None:
    """Gemm's beta·C or Conv's B (an array when constant, the value itself when computed)."""
    if unit.op == "MatMul" or len(node.inputs) < 3 or node.inputs[2] is None:
        return None
    tensor = constant_tensor(node.inputs[2])
    if tensor is None:
        return node.inputs[2]  # select.py: computed C only with beta = 1
    return (tensor.numpy() * np.float32(unit.beta if unit.op == "Gemm" else 1.0)).astype(np.float32)


def _standard_chain(w: Writer, node: ir.Node, unit: Unit, base: str, weight: ir.Value, scale: ir.Value,
                    smooth: np.ndarray | None, bias) -> list[ir.Node]:
    xq, x_scale, x_zero = w.dynamic_quantize(node.inputs[0], smooth).outputs
    if unit.op == "Conv":
        attrs = {k: a.value for k, a in node.attributes.items()}
        integer = w.node("ConvInteger", [xq, weight, x_zero], base, dtype=ir.DataType.INT32, **attrs)
    else:
        integer = w.node("MatMulInteger", [xq, weight, x_zero], base, dtype=ir.DataType.INT32)
    cast = w.node("Cast", [integer.outputs[0]], base, to=ir.DataType.FLOAT)
    scales = w.node("Mul", [x_scale, scale], f"{base}_scales")
    product = w.node("Mul", [cast.outputs[0], scales.outputs[0]], base)
    chain = [integer, cast, scales, product]
    if bias is not None:
        value = bias if isinstance(bias, ir.Value) else w.constant(f"{base}_bias", bias)
        chain.append(w.node("Add", [product.outputs[0], value], base))
    return chain


def _ort_chain(w: Writer, node: ir.Node, base: str, weight: ir.Value, scale: ir.Value, smooth: np.ndarray | None,
               bias) -> list[ir.Node]:
    inline, rest = _inline_bias(w, base, weight.shape[1], bias)
    x = node.inputs[0]
    if w.readers[source_of(x, smooth)] > 1:  # the quantized activation is shared
        xq, x_scale, x_zero = w.dynamic_quantize(x, smooth).outputs
        fused = w.node("MatMulIntegerToFloat", [xq, weight, x_scale, scale, x_zero, None, inline], base,
                       domain=MS_DOMAIN)
    else:
        fused = w.node("DynamicQuantizeMatMul", [w.source(x, smooth), weight, scale, None, inline], base,
                       domain=MS_DOMAIN)
    if rest is None:
        return [fused]
    return [fused, w.node("Add", [fused.outputs[0], rest], base)]


def _inline_bias(w: Writer, base: str, n: int, bias) -> tuple[ir.Value | None, ir.Value | None]:
    """(the [N] bias the ort kernels take, or None; a bias of another shape for a separate Add)."""
    if bias is None:
        return None, None
    tensor = constant_tensor(bias) if isinstance(bias, ir.Value) else None
    if tensor is not None and tuple(tensor.shape.numpy()) == (n,):
        return bias, None  # already the [N] vector the kernels take
    array = tensor.numpy() if tensor is not None else bias if isinstance(bias, np.ndarray) else None
    if array is not None and array.size == n and array.ndim >= 1 and array.shape[-1] == n:
        return w.constant(f"{base}_bias", array.reshape(n).astype(np.float32)), None
    return None, bias if isinstance(bias, ir.Value) else w.constant(f"{base}_bias", bias)


def _drop_if_unused(graph: ir.Graph, value: ir.Value) -> None:
    """Remove a float weight or bias nobody reads any more (initializer or Constant node)."""
    if value.uses() or value.is_graph_output() or value.is_graph_input():
        return
    producer = value.producer()
    if producer is not None:
        if producer.op_type == "Constant" and producer.graph is graph and not producer.outputs[0].uses():
            graph.remove(producer, safe=True)
    elif value.name in graph.initializers:
        graph.initializers.pop(value.name)


__all__ = ["MS_DOMAIN", "Writer", "rewrite", "source_of"]
