"""Write the low-precision form of a set of nodes into a model, with Casts only at the boundaries.

Rule: a node in the set computes in the low type: its slot outputs (slots.py) are retyped, a
Cast to float32 becomes a Cast to the low type. Then every read of a value that was float32
gets the type its reader wants: the low type in a converted node's slot, float32 elsewhere
(a subgraph's read, a float32 node, a fixed float32 input), anything for Shape/Size/Cast. Where
the value's type differs:
- a float32 constant (initializer or Constant node) is read through a new low-precision
  initializer under a fresh name (the original tensor is never written); the float32 form stays
  while a float32 node still reads it, so a weight shared by both kinds gets both forms;
- anything else through one Cast per (value, type), placed right after the value's producer. If
  that producer is itself a Cast, the new Cast reads the producer's input (or the reader takes
  the input directly when it already has the wanted type): no Cast->Cast chain is written.
Graph inputs and outputs keep float32 with `keep_io_types` (an output computed in the low type is
renamed and a Cast under the output's name restores float32); without it they take the low type.
Float32 constants and Casts nobody reads any more, and converted Casts that cast nothing (their
input already low), are removed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import onnx_ir as ir

from graphopt.io import release_tensor

from graphopt.passes.precision.lowtypes import LowType
from graphopt.passes.precision.select import is_constant, node_keys
from graphopt.passes.precision.slots import DEFAULT_DOMAINS, Slots, reads_any_type

FLOAT = ir.DataType.FLOAT


@dataclass
class Rewritten:
    casts: int = 0  # Cast nodes inserted
    constants: int = 0  # low-precision copies of float32 constants written
    dual_bytes: int = 0  # bytes of low copies whose float32 original is still read too
    removed: int = 0  # float32 constants and Casts left unread or casting nothing, removed


@dataclass
class _Writer:
    graph: ir.Graph
    low: LowType
    fresh: Callable[[str], str]
    arrays: dict[str, np.ndarray]  # constant name -> its low-precision array (shared by candidates)
    done: dict[tuple[int, ir.DataType], ir.Value] = field(default_factory=dict)
    counts: Rewritten = field(default_factory=Rewritten)
    copies: list[tuple[ir.Value, ir.Value]] = field(default_factory=list)  # (float32 constant, its low copy)

    def convert(self, value: ir.Value, want: ir.DataType) -> ir.Value:
        key = (id(value), want)
        if key not in self.done:
            self.done[key] = self._make(value, want)
        return self.done[key]

    def _make(self, value: ir.Value, want: ir.DataType) -> ir.Value:
        source = value
        producer = value.producer()
        if producer is not None and producer.op_type == "Cast" and producer.domain in DEFAULT_DOMAINS \
                and producer.inputs[0] is not None:
            source = producer.inputs[0]  # Cast(Cast(x)) -> Cast(x)
        if source.dtype == want:
            return source
        if want == self.low.dtype and source.dtype == FLOAT and is_constant(source):
            return self.constant(source)
        return self.cast(source, want, value)

    def constant(self, value: ir.Value) -> ir.Value:
        if value.name not in self.arrays:
            tensor = ir.convenience.get_const_tensor(value)
            self.arrays[value.name] = self.low.convert(tensor.numpy())
            release_tensor(tensor)  # an external weight's pages, read once, need not stay resident
        name = self.fresh(f"{value.name}_{self.low.name}")
        copy = ir.Value(name=name, shape=_copy(value.shape), type=ir.TensorType(self.low.dtype),
                        const_value=ir.Tensor(self.arrays[value.name], name=name))
        self.graph.register_initializer(copy)
        self.copies.append((value, copy))
        self.counts.constants += 1
        return copy

    def cast(self, source: ir.Value, want: ir.DataType, like: ir.Value, name: str | None = None) -> ir.Value:
        suffix = "float32" if want == FLOAT else self.low.name
        node = ir.node("Cast", [source], {"to": want}, name=self.fresh(f"{like.name}_cast_{suffix}"))
        out = node.outputs[0]
        out.name = name or self.fresh(f"{like.name}_{suffix}")
        out.type, out.shape = ir.TensorType(want), _copy(like.shape)
        producer = source.producer()
        if producer is not None and producer.graph is self.graph:
            self.graph.insert_after(producer, node)
        else:
            self.graph.insert_before(next(iter(self.graph)), node)
        self.counts.casts += 1
        return out


def convert(model: ir.Model, low: LowType, chosen: dict[str, Slots], keep_io_types: bool,
            arrays: dict[str, np.ndarray], fresh: Callable[[str], str]) -> Rewritten:
    """Rewrite `model` (a typed clone) in place so the nodes keyed in `chosen` compute in `low`."""
    graph = model.graph
    nodes = node_keys(graph)
    originally_float = _float_values(graph)
    read_before = {id(v) for v in originally_float if v.uses() or v.is_graph_output()}
    converting = {id(nodes[key]): slots for key, slots in chosen.items()}
    _retype(nodes, chosen, low)
    if not keep_io_types:
        for value in graph.inputs:
            if value.dtype == FLOAT and value.name not in graph.initializers:  # IR-3 weights stay as they are
                value.type = ir.TensorType(low.dtype)  # a new type: clones share type objects
    writer = _Writer(graph, low, fresh, arrays)
    for value in originally_float:
        for use in list(value.uses()):
            want = _wanted(graph, use, converting, low)
            if want is not None and want != value.dtype:
                use.node.replace_input_with(use.idx, writer.convert(value, want))
    _outputs(writer, originally_float, FLOAT if keep_io_types else low.dtype)
    _drop_identity_casts(graph, [nodes[key] for key in chosen if nodes[key].op_type == "Cast"], writer.counts)
    _remove_unread(graph, [v for v in originally_float if id(v) in read_before], writer.counts)
    writer.counts.dual_bytes = sum(copy.const_value.nbytes for original, copy in writer.copies if original.uses())
    return writer.counts


def _copy(shape: ir.Shape | None) -> ir.Shape | None:
    return None if shape is None else ir.Shape(list(shape))


def _float_values(graph: ir.Graph) -> list[ir.Value]:
    values = [*graph.inputs, *graph.initializers.values(), *(v for node in graph for v in node.outputs)]
    seen, out = set(), []
    for value in values:
        if value.dtype == FLOAT and id(value) not in seen:
            seen.add(id(value))
            out.append(value)
    return out


def _retype(nodes: dict[str, ir.Node], chosen: dict[str, Slots], low: LowType) -> None:
    for key, slots in chosen.items():
        node = nodes[key]
        for index in slots.outputs:
            node.outputs[index].type = ir.TensorType(low.dtype)  # never `.dtype =`: clones share types
        if node.op_type == "Cast":
            node.attributes["to"] = ir.AttrInt64("to", low.dtype)


def _wanted(graph: ir.Graph, use, converting: dict[int, Slots], low: LowType) -> ir.DataType | None:
    node, index = use.node, use.idx
    if node.graph is not graph:
        return FLOAT  # subgraphs are left float32 as a whole
    slots = converting.get(id(node))
    if slots is not None and index in slots.inputs:
        return low.dtype
    return None if reads_any_type(node, index) else FLOAT


def _outputs(writer: _Writer, originally_float: list[ir.Value], target: ir.DataType) -> None:
    """Graph outputs that were float32 get `target`, under their own names."""
    graph, was_float = writer.graph, {id(v) for v in originally_float}
    for i, value in enumerate(list(graph.outputs)):
        if id(value) not in was_float or value.dtype == target or value.producer() is None:
            continue
        name = value.name
        value.name = writer.fresh(f"{name}_{writer.low.name if value.dtype != FLOAT else 'float32'}")
        source = value
        producer = value.producer()
        if producer.op_type == "Cast" and producer.domain in DEFAULT_DOMAINS and producer.inputs[0] is not None:
            source = producer.inputs[0]
        graph.outputs[i] = writer.cast(source, target, value, name=name)


def _drop_identity_casts(graph: ir.Graph, casts: list[ir.Node], counts: Rewritten) -> None:
    """A converted Cast whose input already has the low type (a mixed-precision model's own
    float16 value cast to float32) casts nothing any more: its readers take the input."""
    for node in casts:
        source, out = node.inputs[0], node.outputs[0]
        if source is None or source.dtype != out.dtype or out.is_graph_output() or node.graph is not graph:
            continue
        out.replace_all_uses_with(source)
        graph.remove(node, safe=True)
        counts.removed += 1


def _remove_unread(graph: ir.Graph, were_read: list[ir.Value], counts: Rewritten) -> None:
    """Float32 constants and Casts that were read before the rewrite and are not any more."""
    for value in were_read:
        if value.uses() or value.is_graph_output() or value.is_graph_input():
            continue
        producer = value.producer()
        if producer is None and value.name in graph.initializers:
            graph.initializers.pop(value.name)
            counts.removed += 1
        elif producer is not None and producer.graph is graph and producer.op_type in ("Constant", "Cast") \
                and not any(out.uses() or out.is_graph_output() for out in producer.outputs):
            graph.remove(producer, safe=True)
            counts.removed += 1


__all__ = ["Rewritten", "convert"]
