"""IR helpers of the low-rank passes: constant weights, factor nodes, layer inputs' statistics.

A factorized layer replaces one node by a chain of nodes whose last output takes over the
original output value's name, type and shape (`replace_nodes_and_values`), so graph outputs and
consumers are unchanged. The factors are new initializers under fresh names; the dense weight
(an initializer or a Constant node's output) is removed once nothing reads it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable

import numpy as np
import onnx_ir as ir

from graphopt.activations import stream_activations
from graphopt.pass_api import PassContext
from graphopt.passes.lowrank.factor import SecondMoment, rows_of

FLOAT_TYPES = (ir.DataType.FLOAT, ir.DataType.FLOAT16, ir.DataType.DOUBLE)


def constant_array(value: ir.Value | None) -> np.ndarray | None:
    """The value's data if it is an initializer or a Constant node's tensor output."""
    if value is None:
        return None
    if value.const_value is not None:
        return value.const_value.numpy()
    producer = value.producer()
    if producer is not None and producer.op_type == "Constant" and producer.domain in ("", "ai.onnx"):
        attr = producer.attributes.get("value")
        if attr is not None and attr.type == ir.AttributeType.TENSOR:
            return attr.as_tensor().numpy()
    return None


def weight_refusal(value: ir.Value | None, role: str = "weight") -> str | None:
    """Why this operand cannot be factored (None when it can)."""
    if value is None:
        return f"no {role}"
    if value.is_graph_input():
        return f"{role} '{value.name}' is a graph input (it can be overridden at run time)"
    if constant_array(value) is None:
        return f"{role} '{value.name}' is not constant (computed at run time; run lift-constants / fold-constants first)"
    users = {use.node for use in value.uses()}
    if len(users) > 1:
        return (f"{role} '{value.name}' is shared by {len(users)} nodes (factoring one use would keep "
                "the dense copy for the others)")
    if value.is_graph_output():
        return f"{role} '{value.name}' is also a graph output"
    dtype = value.dtype if value.dtype is not None else ir.DataType.from_numpy(constant_array(value).dtype)
    if dtype not in FLOAT_TYPES:
        return f"{role} '{value.name}' has dtype {dtype} (only float16/float/double are factored)"
    return None


def add_initializer(model: ir.Model, ctx: PassContext, base: str, array: np.ndarray) -> ir.Value:
    name = ctx.names(model).fresh(base)
    value = ir.Value(name=name, shape=ir.Shape(array.shape),
                     type=ir.TensorType(ir.DataType.from_numpy(array.dtype)),
                     const_value=ir.tensor(array, name=name))
    model.graph.register_initializer(value)
    return value


def replace_with_chain(model: ir.Model, ctx: PassContext, node: ir.Node, chain: list[ir.Node]) -> None:
    """Put `chain` where `node` was; its last output becomes the node's (only) output."""
    for i, new in enumerate(chain[:-1]):
        new.outputs[0].name = ctx.names(model).fresh(f"{node.name or node.op_type}_lowrank_{i}")
    old_out, new_out = node.outputs[0], chain[-1].outputs[0]
    old_inputs = [v for v in node.inputs if v is not None]
    ir.convenience.replace_nodes_and_values(model.graph, node, [node], chain, [old_out], [new_out])
    for value in old_inputs:
        drop_if_unused(model.graph, value)


def drop_if_unused(graph: ir.Graph, value: ir.Value) -> None:
    """Remove a dense weight nobody reads any more (initializer or Constant node)."""
    if value.uses() or value.is_graph_output() or value.is_graph_input():
        return
    producer = value.producer()
    if producer is not None:
        if producer.op_type == "Constant" and producer.graph is graph:
            graph.remove(producer, safe=True)
    elif value.name in graph.initializers and value.const_value is not None:
        graph.initializers.pop(value.name)


def fresh_node(model: ir.Model, ctx: PassContext, op_type: str, inputs: list, attributes: dict | None = None,
               base: str = "lowrank") -> ir.Node:
    return ir.node(op_type, inputs, attributes or {}, name=ctx.names(model).fresh(base), num_outputs=1)


# --- statistics of layer inputs ---------------------------------------------------------

@dataclass
class InputStats:
    """Per streamed input value: second moment (if asked) and the shape seen in the first feed."""

    moments: dict[str, SecondMoment] = field(default_factory=dict)
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    batches: int = 0

    def moment(self, name: str) -> np.ndarray | None:
        return self.moments[name].matrix() if name in self.moments else None


def collect_input_stats(model: ir.Model, channel_axes: dict[str, int], feeds: Callable[[], Iterable],
                        with_moments: bool, ctx: PassContext) -> InputStats:
    """Stream the layer inputs named in `channel_axes` over `feeds`; keep only running sums."""
    stats = InputStats()

    def consume(index: int, arrays: dict[str, np.ndarray]) -> None:
        for name, array in arrays.items():
            stats.shapes.setdefault(name, tuple(int(d) for d in array.shape))
            if with_moments and array.dtype.kind == "f" and array.size:
                rows = rows_of(array, channel_axes[name])
                stats.moments.setdefault(name, SecondMoment(rows.shape[1])).add(rows)

    if channel_axes:
        stats.batches = stream_activations(model, list(channel_axes), feeds, consume, progress=ctx.progress).batches
    return stats
