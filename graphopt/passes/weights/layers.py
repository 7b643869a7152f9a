"""Which weights `quantize-weights` can quantize, and why the others stay float.

A layer is one constant float32 2-D weight and every node that reads it:
- linear: MatMul's second input (W [K, N]), Gemm's B with transA = 0 and alpha = beta = 1
  (W, or Wᵀ stored when transB = 1); K is the reduction axis, the blocks run along it;
- embedding: Gather on axis 0 of a table [V, D] (its rows are quantized along D), when
  `embeddings` is on.
A weight read by several eligible nodes the same way is one layer (quantized once, its
quantized tensors shared); a weight also read by a node that keeps it float (or the other way
round, or by an embedding and a linear node) is refused: quantizing it would keep both copies.
A layer reads its weight from the IR tensor each time it is used (an external tensor is a file
mapping, unmapped again by `release`), so no float copy of the model's weights is held.
Weights computed by DequantizeLinear are already quantized; existing MatMulNBits /
GatherBlockQuantized nodes are counted as such. Only the main graph is searched.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx_ir as ir

from graphopt.exclusion import exclusion
from graphopt.io import release_tensor
from graphopt.passes.weights.options import QuantizeWeightsOptions

QUANTIZED_OPS = frozenset({"MatMulNBits", "GatherBlockQuantized"})


@dataclass(frozen=True)
class Use:
    node: ir.Node
    operand: int  # which input of `node` is the weight
    transposed: bool  # stored [N, K] (Gemm transB = 1, an embedding table [V, D])


@dataclass
class Layer:
    key: str  # the weight's name: the unit of the budget search
    kind: str  # "linear" | "embedding"
    value: ir.Value  # the constant weight (float32, 2-D)
    uses: list[Use]
    inputs: tuple[str, ...] = ()  # a linear layer's activations (distinct names, as found)
    scale: np.ndarray | None = None  # AWQ's s [K] (the matrix is then diag(s)·W)

    @property
    def stored(self) -> np.ndarray:
        """The weight as stored, read from its tensor (no copy of a float32 array)."""
        return constant_array(self.value)

    @property
    def shape(self) -> tuple[int, int]:
        """The stored shape, known without reading the data."""
        return tuple(int(d) for d in ir.convenience.get_const_tensor(self.value).shape)

    @property
    def size(self) -> int:
        rows, cols = self.shape
        return rows * cols

    @property
    def reduction(self) -> int:
        """K: the length of the reduction axis (rows of `matrix`)."""
        return self.shape[1] if self.transposed else self.shape[0]

    def release(self) -> None:
        """Unmap an external weight's file pages read so far (mapped again on the next read)."""
        release_tensor(ir.convenience.get_const_tensor(self.value))

    @property
    def transposed(self) -> bool:
        return self.uses[0].transposed

    @property
    def matrix(self) -> np.ndarray:
        """[K, N] with the reduction axis first (AWQ's diag(s) applied)."""
        m = self.stored.T if self.transposed else self.stored
        return m if self.scale is None else m * self.scale[:, None]


@dataclass
class Found:
    layers: list[Layer] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # node or weight -> why it stays float
    already_quantized: int = 0


def find_layers(graph: ir.Graph, options: QuantizeWeightsOptions) -> Found:
    found, excluded = Found(), exclusion(options.exclude_nodes, options.exclude_ops, options.exclude_regex)
    groups: dict[int, tuple[ir.Value, list[Use]]] = {}
    for node in graph:
        if node.domain == "com.microsoft" and node.op_type in QUANTIZED_OPS:
            found.already_quantized += 1
            continue
        use = _use(node, options)
        if use is None:
            continue
        where = node.name or node.op_type
        reason = excluded(node) if not isinstance(use, str) else use
        if reason is not None:
            found.skipped[where] = reason
            continue
        weight = node.inputs[use.operand]
        groups.setdefault(id(weight), (weight, []))[1].append(use)
    for weight, uses in groups.values():
        reason = weight_refusal(weight, uses, options.min_elements)
        if reason is not None:
            found.skipped[weight.name or uses[0].node.name] = reason
            continue
        kind = "embedding" if uses[0].node.op_type == "Gather" else "linear"
        inputs = tuple(dict.fromkeys(u.node.inputs[0].name for u in uses)) if kind == "linear" else ()
        found.layers.append(Layer(weight.name, kind, weight, uses, inputs))
    return found


def _use(node: ir.Node, options: QuantizeWeightsOptions) -> Use | str | None:
    """The node's weight operand, a reason it cannot be quantized, or None (not a candidate)."""
    if node.domain not in ("", "ai.onnx") or node.op_type not in ("MatMul", "Gemm", "Gather"):
        return None
    if node.op_type == "Gather":
        if not options.embeddings or not _is_weight(node.inputs[0]):
            return None
        axis = node.attributes.get_int("axis", 0)
        return Use(node, 0, True) if axis in (0, -2) else f"Gather on axis {axis} (only axis 0 is an embedding lookup)"
    if len(node.inputs) < 2 or not _is_weight(node.inputs[1]):
        return None
    if node.op_type == "Gemm":
        attrs = node.attributes
        if attrs.get_int("transA", 0) or attrs.get_float("alpha", 1.0) != 1.0 or (
                len(node.inputs) > 2 and node.inputs[2] is not None and attrs.get_float("beta", 1.0) != 1.0):
            return "Gemm with transA, alpha != 1 or beta != 1"
        return Use(node, 1, bool(attrs.get_int("transB", 0)))
    return Use(node, 1, False)


def _is_weight(value: ir.Value | None) -> bool:
    """A constant or a DequantizeLinear output (the latter is refused with its reason)."""
    if value is None:
        return False
    producer = value.producer()
    if producer is not None and producer.op_type == "DequantizeLinear":
        return True
    return value.const_value is not None or (producer is not None and producer.op_type == "Constant")


def weight_refusal(weight: ir.Value, uses: list[Use], min_elements: int) -> str | None:
    producer = weight.producer()
    if producer is not None and producer.op_type == "DequantizeLinear":
        return "already quantized (the weight comes from DequantizeLinear)"
    if weight.is_graph_input() or weight.is_graph_output():
        return f"weight '{weight.name}' is a graph input or output"
    tensor = ir.convenience.get_const_tensor(weight)
    if tensor is None:
        return f"weight '{weight.name}' is not a constant tensor"
    if tensor.dtype != ir.DataType.FLOAT:
        return f"weight '{weight.name}' has dtype {tensor.dtype.name.lower()} (float32 weights only)"
    if len(tensor.shape) != 2:
        return f"weight '{weight.name}' has rank {len(tensor.shape)} (2-D weights only)"
    size = int(np.prod([int(d) for d in tensor.shape]))
    if size < min_elements:
        return f"{size} elements < min_elements={min_elements}"
    readers = {id(use.node) for use in weight.uses()}
    if readers != {id(u.node) for u in uses} or len(weight.uses()) != len(uses):
        return "shared with a node that keeps it float (quantizing would keep both copies)"
    kinds = {(u.node.op_type == "Gather", u.transposed) for u in uses}
    if len(kinds) > 1:
        return "read both as an embedding and as a matrix, or in both orientations"
    return None


def constant_array(value: ir.Value) -> np.ndarray | None:
    tensor = ir.convenience.get_const_tensor(value)
    return tensor.numpy() if tensor is not None else None
