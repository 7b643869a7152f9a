"""Which nodes of the main graph may compute in the low-precision type, and why the others stay.

A node is a *candidate* when its schema gives it slots (slots.py) and nothing below keeps it:
- excluded by the options (exclude_nodes / exclude_ops / exclude_regex);
- a shape computation: every input derives from a Shape or Size output or a small constant (at
  most SMALL_CONSTANT elements: factors, axes, not weight tables), at least one from a shape
  (Shape -> Cast -> Mul -> Floor -> Cast -> Resize sizes stays float32: the sizes it computes
  must not move by a rounding);
- a node of a subgraph: If / Loop / Scan bodies are left float32 as a whole (the control-flow
  node is kept by its slots' rule), and main-graph values they read are handed float32.
Nodes are keyed by name, or `op_index` when the name is empty or repeated (stable across clones).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import onnx_ir as ir

from graphopt.pass_api import default_opset
from graphopt.passes.precision.lowtypes import LowType
from graphopt.passes.precision.slots import Slots, node_slots


SMALL_CONSTANT = 64


@dataclass
class Selection:
    candidates: dict[str, Slots] = field(default_factory=dict)
    kept: dict[str, str] = field(default_factory=dict)  # node key -> why it stays float32
    ops: dict[str, str] = field(default_factory=dict)  # node key -> op type
    control_flow: int = 0  # If / Loop / Scan nodes in the main graph


def node_keys(graph: ir.Graph) -> dict[str, ir.Node]:
    names = Counter(node.name for node in graph)
    return {(node.name if node.name and names[node.name] == 1 else f"{node.op_type}_{i}"): node
            for i, node in enumerate(graph)}


def is_constant(value: ir.Value | None) -> bool:
    return value is not None and not value.is_graph_input() and ir.convenience.get_const_tensor(value) is not None


def select(model: ir.Model, low: LowType, excluded) -> Selection:
    """Candidates and kept nodes of `model`'s main graph (types must be inferred first)."""
    found, opset = Selection(), default_opset(model)
    shapes = _shape_computations(model.graph)
    for key, node in node_keys(model.graph).items():
        found.ops[key] = node.op_type
        if any(a.type in (ir.AttributeType.GRAPH, ir.AttributeType.GRAPHS) for a in node.attributes.values()):
            found.control_flow += 1
        slots = node_slots(node, opset, low)
        if slots is None:
            continue
        reason = slots if isinstance(slots, str) else excluded(node)
        if reason is None and id(node) in shapes:
            reason = "shape computation: its inputs derive from Shape/Size outputs and small constants only"
        if reason is None:
            found.candidates[key] = slots
        else:
            found.kept[key] = reason
    return found


def _shape_computations(graph: ir.Graph) -> set[int]:
    """ids of the nodes whose inputs all derive from shapes or small constants, one at least from
    a shape (a Gather of a weight table by positions from Range(Shape) reads data: not one)."""
    derived: set[int] = set()  # ids of values derived from Shape/Size outputs
    nodes: set[int] = set()
    for node in graph:
        if node.domain in ("", "ai.onnx") and node.op_type in ("Shape", "Size"):
            derived.update(id(v) for v in node.outputs)
            continue
        inputs = [v for v in node.inputs if v is not None]
        from_shape = [v for v in inputs if id(v) in derived]
        if from_shape and all(id(v) in derived or _small_constant(v) for v in inputs):
            nodes.add(id(node))
            derived.update(id(v) for v in node.outputs)
    return nodes


def _small_constant(value: ir.Value) -> bool:
    if not is_constant(value):
        return False
    return ir.convenience.get_const_tensor(value).size <= SMALL_CONSTANT


__all__ = ["Selection", "is_constant", "node_keys", "select"]
