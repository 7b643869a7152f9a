"""Which nodes `quantize-dynamic` rewrites, and why the others stay float.

A unit is a MatMul, Gemm or Conv (as `ops` allows) whose activation input is float32 (what
DynamicQuantizeLinear takes) and whose weight is a constant float32 tensor:
- MatMul: a 2-D B [K, N] (a batched B has no MatMulInteger form); a MatMul whose only consumer
  is an Add of a constant [N] bias absorbs that Add (the bias joins the rewritten product, so
  ONNX Runtime fuses it into its int8 kernel's epilogue);
- Gemm: transA = 0 (A' = A), B' = B or Bᵀ (transB) taken as [K, N]; alpha folds into the weight
  scale, beta·C into a new bias constant (a computed C is added as is when beta = 1);
- Conv: any weight [M, C/g, k...] (ConvInteger takes the Conv's attributes).
The reduction length K (Conv: C/g·Πk) must keep the int32 accumulator exact (weights.max_depth).
Units are keyed by node name, or `op_index` for an unnamed node (stable across clones).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx_ir as ir

from graphopt.passes.dynamic.weights import max_depth


@dataclass(frozen=True)
class Unit:
    key: str
    op: str  # MatMul, Gemm or Conv
    weight: str  # the weight value's name
    k: int  # reduction length
    trans_b: bool = False
    alpha: float = 1.0
    beta: float = 1.0
    bias_add: bool = False  # MatMul: absorbs its consumer Add of a constant [N] bias


@dataclass
class Selection:
    units: dict[str, Unit] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)  # node key -> why it stays float


def node_keys(graph: ir.Graph) -> dict[str, ir.Node]:
    """Key -> node of the main graph (the keys `select` gives)."""
    return {node.name or f"{node.op_type}_{i}": node for i, node in enumerate(graph)}


def constant_tensor(value: ir.Value | None) -> ir.TensorProtocol | None:
    """An initializer's or a Constant node's tensor (not decoded), else None."""
    if value is None or value.is_graph_input():
        return None
    return ir.convenience.get_const_tensor(value)


def select(graph: ir.Graph, ops: tuple[str, ...], excluded, bits: int) -> Selection:
    """Units of the main graph, with a reason for every MatMul/Gemm/Conv left float."""
    found = Selection()
    for key, node in node_keys(graph).items():
        if node.domain not in ("", "ai.onnx") or node.op_type not in ("MatMul", "Gemm", "Conv"):
            continue
        reason = excluded(node)
        if reason is None and node.op_type not in ops:
            reason = f"op type {node.op_type} not in ops ({'|'.join(ops)})"
        made = _unit(key, node, bits) if reason is None else reason
        if isinstance(made, Unit):
            found.units[key] = made
        else:
            found.skipped[key] = made
    return found


def _unit(key: str, node: ir.Node, bits: int) -> Unit | str:
    x, w = node.inputs[0], node.inputs[1] if len(node.inputs) > 1 else None
    if x is None or x.dtype != ir.DataType.FLOAT:
        kind = "unknown" if x is None or x.dtype is None else x.dtype.name.lower()
        return f"activation is {kind}: DynamicQuantizeLinear takes float32 only"
    tensor = constant_tensor(w)
    if tensor is None:
        where = "a graph input" if w is not None and w.is_graph_input() else "computed at run time"
        return (f"weight {getattr(w, 'name', '')!r} is not constant ({where}): an activation x activation "
                "product stays float")
    if tensor.dtype != ir.DataType.FLOAT:
        return f"weight is {tensor.dtype.name.lower()}, not float32"
    shape = tuple(tensor.shape.numpy())
    made = {"MatMul": _matmul, "Gemm": _gemm, "Conv": _conv}[node.op_type](key, node, shape)
    if isinstance(made, Unit) and made.k > max_depth(bits):
        return f"reduction length {made.k} could overflow the int32 accumulator (max {max_depth(bits)})"
    return made


def _matmul(key: str, node: ir.Node, shape: tuple[int, ...]) -> Unit | str:
    if len(shape) != 2:
        return f"weight has rank {len(shape)}: MatMulInteger takes a 2-D B only"
    x = node.inputs[0]
    if x.shape is not None and len(x.shape) < 2:
        return "1-D activation: kept float"
    return Unit(key, "MatMul", node.inputs[1].name, shape[0], bias_add=bias_add(node, shape[1]) is not None)


def bias_add(node: ir.Node, n: int) -> tuple[ir.Node, ir.Value] | None:
    """(Add, bias) when the node's only consumer adds a constant float32 [N] (or [1.., N]) bias."""
    out = node.outputs[0]
    uses = out.uses()
    if len(uses) != 1 or out.is_graph_output() or uses[0].node.op_type != "Add":
        return None
    add = uses[0].node
    if add.domain not in ("", "ai.onnx") or len(add.inputs) != 2:
        return None
    bias = add.inputs[1 - uses[0].idx]
    tensor = constant_tensor(bias)
    if tensor is None or tensor.dtype != ir.DataType.FLOAT:
        return None
    dims = tuple(tensor.shape.numpy())
    if not dims or dims[-1] != n or any(d != 1 for d in dims[:-1]) or n < 2:
        return None
    if len(dims) > (len(out.shape) if out.shape is not None else 1):
        return None  # the bias would add leading dims
    return add, bias


def _gemm(key: str, node: ir.Node, shape: tuple[int, ...]) -> Unit | str:
    if node.attributes.get_int("transA", 0):
        return "Gemm transA=1: its activation would need a Transpose first"
    trans_b = bool(node.attributes.get_int("transB", 0))
    beta = node.attributes.get_float("beta", 1.0)
    c = node.inputs[2] if len(node.inputs) > 2 else None
    if c is not None and beta != 1.0 and constant_tensor(c) is None:
        return "Gemm with a computed C and beta != 1"
    if c is not None and c.dtype not in (ir.DataType.FLOAT, None):
        return "Gemm C is not float32"
    k = shape[1] if trans_b else shape[0]
    return Unit(key, "Gemm", node.inputs[1].name, k, trans_b, node.attributes.get_float("alpha", 1.0), beta)


def _conv(key: str, node: ir.Node, shape: tuple[int, ...]) -> Unit | str:
    if len(shape) < 3:
        return "Conv weight of rank < 3"
    if len(node.inputs) > 2 and node.inputs[2] is not None and constant_tensor(node.inputs[2]) is None:
        return "Conv bias is not constant"
    return Unit(key, "Conv", node.inputs[1].name, int(np.prod(shape[1:])))


__all__ = ["Selection", "Unit", "bias_add", "constant_tensor", "node_keys", "select"]
