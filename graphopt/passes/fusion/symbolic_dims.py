"""Symbolic dims as values (graphopt.passes.fusion.symbolic): a dim is a monomial c·a₁·a₂·… written
`(c, atoms)`, with the arithmetic shape computations need, and readers of constant integer
inputs and attributes. No graph walking here: symbolic.py's ShapeEval does that."""

from __future__ import annotations

from typing import Optional, Protocol, Sequence

import numpy as np
import onnx_ir as ir

Dim = tuple  # (coefficient: int, atoms: tuple[(value id, axis), ...] sorted)
DEPTH_LIMIT = 64  # shape-tensor chains followed per query (they are short; dims are computed without recursion)
MAX_ELEMENTS = 64  # a shape tensor is small; larger integer tensors are not tracked

UNARY = frozenset({
    "Abs", "Acos", "Acosh", "Asin", "Asinh", "Atan", "Atanh", "BatchNormalization", "Cast", "CastLike", "Ceil",
    "Celu", "Clip", "Cos", "Cosh", "CumSum", "DequantizeLinear", "Dropout", "Elu", "Erf", "Exp", "Floor", "Gelu",
    "HardSigmoid", "HardSwish", "Hardmax", "Identity", "InstanceNormalization", "IsInf", "IsNaN",
    "LayerNormalization", "LeakyRelu", "Log", "LogSoftmax", "LpNormalization", "LRN",
    "MeanVarianceNormalization", "Mish", "Neg", "Not", "PRelu", "QuantizeLinear", "Reciprocal", "Relu", "Round",
    "Selu", "Shrink", "Sigmoid", "Sign", "Sin", "Sinh", "Softmax", "Softplus", "Softsign", "Sqrt", "Tan", "Tanh",
    "ThresholdedRelu", "Trilu",
})
BROADCAST = frozenset({
    "Add", "And", "BitShift", "BitwiseAnd", "BitwiseOr", "BitwiseXor", "Div", "Equal", "Greater",
    "GreaterOrEqual", "Less", "LessOrEqual", "Max", "Mean", "Min", "Mod", "Mul", "Or", "Pow", "Sub", "Sum",
    "Where", "Xor",
})
REDUCE = frozenset({
    "ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceMax", "ReduceMean", "ReduceMin",
    "ReduceProd", "ReduceSum", "ReduceSumSquare",
})
RECURRENT = frozenset({"LSTM", "GRU", "RNN"})
INT_TYPES = frozenset({ir.DataType.INT64, ir.DataType.INT32, ir.DataType.INT16, ir.DataType.INT8,
                        ir.DataType.UINT8, ir.DataType.UINT16, ir.DataType.UINT32, ir.DataType.BOOL})


def const(n: int) -> Dim:
    return (int(n), ())


def is_const(d: Optional[Dim]) -> bool:
    return d is not None and not d[1]


def mul(a: Optional[Dim], b: Optional[Dim]) -> Optional[Dim]:
    if a is None or b is None:
        return None
    if a[0] == 0 or b[0] == 0:
        return const(0)
    return (a[0] * b[0], tuple(sorted(a[1] + b[1])))


def div(a: Optional[Dim], b: Optional[Dim]) -> Optional[Dim]:
    """a / b when it divides exactly (so integer division and exact division agree), else None."""
    if a is None or b is None or b[0] == 0 or a[0] % b[0]:
        return None
    rest = list(a[1])
    for atom in b[1]:
        if atom not in rest:
            return None
        rest.remove(atom)
    return (a[0] // b[0], tuple(rest))


def add(a: Optional[Dim], b: Optional[Dim]) -> Optional[Dim]:
    if a is None or b is None:
        return None
    if a[0] == 0 and not a[1]:
        return b
    if b[0] == 0 and not b[1]:
        return a
    if a[1] != b[1]:
        return None
    return const(0) if a[0] + b[0] == 0 else (a[0] + b[0], a[1])


def same(a: Optional[Dim], b: Optional[Dim]) -> bool:
    """a and b are provably equal (an unknown dim equals nothing, not even another unknown)."""
    return a is not None and a == b


def product(dims: Sequence[Optional[Dim]]) -> Optional[Dim]:
    out = const(1)
    for d in dims:
        out = mul(out, d)
    return out


def non_negative(d: Optional[Dim]) -> bool:
    """A dim or a product of dims with a positive coefficient is >= 0 (dims are never negative)."""
    return d is not None and (d[0] >= 0 if not d[1] else d[0] > 0)


def attr_ints(node: ir.Node, name: str) -> Optional[list[int]]:
    attr = node.attributes.get(name)
    return None if attr is None else [int(i) for i in attr.as_ints()]


def const_array(value: Optional[ir.Value]) -> Optional[np.ndarray]:
    """The constant a value holds (initializer or folded), never an overridable graph input."""
    if value is None or value.const_value is None or value.is_graph_input():
        return None
    try:
        return value.const_value.numpy()
    except Exception:  # noqa: BLE001  (external data that cannot be read is no constant here)
        return None


def const_ints(value: Optional[ir.Value]) -> Optional[list[int]]:
    array = const_array(value)
    if array is None or array.dtype.kind not in "iub" or array.size > MAX_ELEMENTS:
        return None
    return [int(v) for v in array.reshape(-1)]


class Evaluator(Protocol):
    """What the per-op rules (symbolic_ops.py) ask of symbolic.py's ShapeEval."""

    def dims(self, value: Optional[ir.Value]) -> Optional[list]: ...

    def elements(self, value: Optional[ir.Value]) -> Optional[list]: ...

    def broadcast(self, shapes: Sequence[Optional[list]]) -> Optional[list]: ...
