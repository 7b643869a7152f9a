"""Cheap size summary of a model (node count, parameters, weight bytes), read without data."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import onnx_ir as ir

from graphopt.io import weight_bytes


@dataclass(frozen=True)
class ModelSize:
    nodes: int
    initializers: int
    params: int
    bytes: int

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


def model_size(model: ir.Model) -> ModelSize:
    nodes = sum(1 for _ in ir.traversal.RecursiveGraphIterator(model.graph))
    inits = [v for v in model.graph.initializers.values() if v.const_value is not None]
    params = sum(v.const_value.size for v in inits)
    return ModelSize(nodes, len(inits), params, weight_bytes(model))


def data_bytes(model: ir.Model) -> int:
    """Bytes of constant data: initializers plus tensors held in Constant nodes (every graph).

    What a pass reports as `bytes_added` (the change of this): lifting a Constant node to an
    initializer moves bytes without adding any, a folded or fused weight adds its size."""
    total = weight_bytes(model)
    for node in ir.traversal.RecursiveGraphIterator(model.graph):
        if node.op_type != "Constant" or node.domain not in ("", "ai.onnx"):
            continue
        for attr in node.attributes.values():
            if attr.type == ir.AttributeType.TENSOR:
                total += attr.as_tensor().nbytes
            elif attr.type in (ir.AttributeType.FLOATS, ir.AttributeType.INTS):
                total += 8 * len(attr.value)
    return total
