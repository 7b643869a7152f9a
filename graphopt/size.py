"""Cheap size summary of a model (node count, parameters, weight bytes), read without data, and
the manager's check against silent growth.

Growth: a pass may add constant data only as far as it declares (`Pass.declared_growth`, the
`bytes_added` it reports: a BN folded into a weight shared by two Convs gives each its own
copy). Measured as the change of `data_bytes`, a pass's output may exceed its input by the
declared bytes plus a slack of max(4 KiB, 1% of the input) for the small constants that
rewrites write beside weights (Q/DQ scales and zero points, shapes, X/s vectors); beyond that
the manager treats the pass like a failed verification.
"""

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


GROWTH_SLACK_BYTES = 4096
GROWTH_SLACK_FRACTION = 0.01


def growth_problem(before: int, after: int, declared: int) -> str | None:
    """Why going from `before` to `after` bytes of constant data (`data_bytes`) is more than
    `declared` allows, or None."""
    grown = after - before
    if grown <= max(declared, 0) + max(GROWTH_SLACK_BYTES, GROWTH_SLACK_FRACTION * before):
        return None
    return f"grew the weights by {_megabytes(grown)}, declared {_megabytes(max(declared, 0))}"


def _megabytes(count: int) -> str:
    return f"{count / 1e6:.2f} MB" if count >= 10_000 else f"{count / 1e6:.3g} MB"
