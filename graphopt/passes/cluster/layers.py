"""Which weights `cluster` shares, and why the others stay as they are.

A layer is one constant float32 tensor (an initializer or a Constant node's output) read as a
weight by at least one of: MatMul's B, Gemm's B, Conv's / ConvTranspose's W, and, with
`embeddings`, Gather's data (a table of rank >= 2). Every reader of the tensor is rewired to the
one expansion, so a weight read by several nodes is clustered once (its readers listed).
Refused, with the reason: a weight read by an excluded node or inside a subgraph, a graph input
or output, not float32, or with fewer than `min_elements` elements. A weight computed by Gather
on a constant 1-D float tensor (a codebook), directly or through a Reshape, is already clustered
and counted as such. Only the main graph is searched (read by metadata: no weight data is loaded here).

The channel axis (granularity=channel: one palette per output channel) is the axis of the
output features: MatMul's last axis, Gemm's 1 (0 with transB), Conv's 0, ConvTranspose's 1, and a
Gather table's last axis (one palette per embedding feature: a few hundred palettes instead of
one per vocabulary row).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx_ir as ir

from graphopt.exclusion import exclusion
from graphopt.passes.cluster.options import ClusterOptions

WEIGHT_OPERAND = {"MatMul": 1, "Gemm": 1, "Conv": 1, "ConvTranspose": 1, "Gather": 0}


@dataclass
class Layer:
    key: str  # the weight's name: the unit of the budget search
    shape: tuple[int, ...]
    axis: int  # the output-channel axis (granularity=channel)
    readers: list[str]  # the nodes that read it (op:name)

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    def rows(self, array: np.ndarray, granularity: str) -> np.ndarray:
        """[R, m]: one row per palette (the whole tensor, or one per output channel)."""
        if granularity == "tensor" or len(self.shape) < 2:
            return array.reshape(1, -1)
        return np.moveaxis(array, self.axis, 0).reshape(self.shape[self.axis], -1)

    def from_rows(self, rows: np.ndarray, granularity: str) -> np.ndarray:
        """The inverse of `rows`: an array of the weight's shape."""
        if granularity == "tensor" or len(self.shape) < 2:
            return rows.reshape(self.shape)
        moved = (self.shape[self.axis], *(d for i, d in enumerate(self.shape) if i != self.axis))
        return np.moveaxis(rows.reshape(moved), 0, self.axis)

    def channel_axis(self, granularity: str) -> int | None:
        return None if granularity == "tensor" or len(self.shape) < 2 else self.axis


@dataclass
class Found:
    layers: list[Layer] = field(default_factory=list)
    kept: dict[str, str] = field(default_factory=dict)  # weight or node -> why it is not clustered
    already_clustered: list[str] = field(default_factory=list)


def find_layers(graph: ir.Graph, options: ClusterOptions) -> Found:
    found = Found()
    excluded = exclusion(options.exclude_nodes, options.exclude_ops, options.exclude_regex)
    weights: dict[int, tuple[ir.Value, list[ir.Node]]] = {}
    for node in graph:
        operand = _operand(node, options)
        if operand is None or operand >= len(node.inputs) or node.inputs[operand] is None:
            continue
        value = node.inputs[operand]
        if clustered(value):
            if value.name not in found.already_clustered:
                found.already_clustered.append(value.name)
            continue
        if ir.convenience.get_const_tensor(value) is None or not _is_table(node, value):
            continue
        weights.setdefault(id(value), (value, []))[1].append(node)
    for value, nodes in weights.values():
        reason = refusal(graph, value, options.min_elements, excluded)
        if reason is not None:
            found.kept[value.name] = reason
            continue
        shape = tuple(int(d) for d in ir.convenience.get_const_tensor(value).shape)
        found.layers.append(Layer(value.name, shape, _channel_axis(nodes[0], len(shape)),
                                  [f"{n.op_type}:{n.name}" for n in _readers(value)]))
    return found


def _operand(node: ir.Node, options: ClusterOptions) -> int | None:
    if node.domain not in ("", "ai.onnx") or node.op_type not in WEIGHT_OPERAND:
        return None
    if node.op_type == "Gather" and not options.embeddings:
        return None
    return WEIGHT_OPERAND[node.op_type]


def _is_table(node: ir.Node, value: ir.Value) -> bool:
    """A Gather reads a weight only from a table of rank >= 2 (a 1-D one is a lookup of constants)."""
    if node.op_type != "Gather":
        return True
    return len(ir.convenience.get_const_tensor(value).shape) >= 2


def _readers(value: ir.Value) -> list[ir.Node]:
    return list(dict.fromkeys(node for node, _ in value.uses()))


def refusal(graph: ir.Graph, value: ir.Value, min_elements: int, excluded) -> str | None:
    """Why this weight is not clustered, or None."""
    for node in _readers(value):
        if node.graph is not graph:
            return f"also read inside a subgraph (by {node.op_type} '{node.name}')"
        why = excluded(node)
        if why is not None:
            return f"read by {node.op_type} '{node.name}': {why}"
    if value.is_graph_input() or value.is_graph_output():
        return "a graph input or output"
    tensor = ir.convenience.get_const_tensor(value)
    if tensor.dtype != ir.DataType.FLOAT:
        return f"dtype {tensor.dtype.name} (float32 weights only)"
    size = int(np.prod(tensor.shape.numpy(), dtype=np.int64))
    if size < min_elements:
        return f"{size} elements < min_elements={min_elements}"
    return None


def clustered(value: ir.Value) -> bool:
    """Computed by Gather on a constant 1-D float codebook (directly or through one Reshape)."""
    producer = value.producer()
    if producer is not None and producer.op_type == "Reshape" and producer.inputs[0] is not None:
        producer = producer.inputs[0].producer()
    if producer is None or producer.op_type != "Gather" or producer.inputs[0] is None:
        return False
    book = ir.convenience.get_const_tensor(producer.inputs[0])
    return book is not None and len(book.shape) == 1 and book.dtype.is_floating_point()


def _channel_axis(node: ir.Node, rank: int) -> int:
    if rank < 2:
        return 0
    if node.op_type == "Gemm":
        return 0 if node.attributes.get_int("transB", 0) else 1
    if node.op_type == "Conv":
        return 0
    if node.op_type == "ConvTranspose":
        return 1
    return rank - 1  # MatMul's N, a Gather table's features


def weight_array(value: ir.Value) -> np.ndarray:
    return ir.convenience.get_const_tensor(value).numpy()


__all__ = ["Found", "Layer", "clustered", "find_layers", "weight_array"]
