"""Underflow where it matters: the denominators of normalisations and softmax.

Elsewhere a value too small for the low type (float16: below 2^-14 ≈ 6.1e-5 it loses precision,
below 2^-25 it becomes 0) is negligible next to the values it is added to, and the budget judges
the rest. A divisor is different: x / d with d flushed or coarsened moves every element. So:

A *divisor path* starts at the divisor of a Div (input B) or the input of a Reciprocal and goes
back through elementwise ops whose other inputs are constants (Add of an epsilon, Sqrt, Pow,
Mul by a constant, Max/Clip, Abs) to a reduction (ReduceMean, ReduceSum, ReduceSumSquare,
ReduceL1, ReduceL2): the variance of a decomposed LayerNorm (ReduceMean(Pow(x - mean, 2)) + eps,
Sqrt) or the sum of a decomposed softmax (ReduceSum(Exp(x))). When the reduction reads a square
(Pow(d, 2) or Mul(d, d)), that op stays with the path (a variance too small for the type is a sum
of squares that are smaller still), but its own values are not judged: some deviations are
always near 0, and their squares add nothing to the sum. Rule: the path's ops stay float32 when
  (a) a constant on the path has a nonzero element that rounds to 0 in the low type (float16
      epsilon 1e-12: Sqrt(var + eps) is 0 for a constant row, and x / 0 is inf), or
  (b) a value from the reduction to the divisor has a measured smallest nonzero |x| below the
      type's smallest normal (any row's variance, on any calibration feed);
and the divisor op itself stays float32 too when the divisor value itself is below it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from graphopt.passes.precision.lowtypes import LowType
from graphopt.passes.precision.ranges import Ranges
from graphopt.passes.precision.select import is_constant, node_keys

PATH_OPS = frozenset({"Sqrt", "Add", "Mul", "Pow", "Max", "Clip", "Abs", "Identity"})
REDUCTIONS = frozenset({"ReduceMean", "ReduceSum", "ReduceSumSquare", "ReduceL1", "ReduceL2"})
MAX_STEPS = 8


@dataclass(frozen=True)
class DivisorPath:
    divisor: str  # key of the Div / Reciprocal
    keys: tuple[str, ...]  # the path's ops, divisor side first (with the square, if any)
    values: tuple[str, ...]  # the outputs judged by (b): the divisor back to the reduction
    constants: tuple[ir.Value, ...]


def divisor_paths(graph: ir.Graph) -> list[DivisorPath]:
    keys = {id(node): key for key, node in node_keys(graph).items()}
    paths = []
    for node in graph:
        if node.domain not in ("", "ai.onnx"):
            continue
        start = {"Div": 1, "Reciprocal": 0}.get(node.op_type)
        if start is None or len(node.inputs) <= start or node.inputs[start] is None:
            continue
        chain = _walk(graph, node.inputs[start])
        if chain:
            reduced = chain[:next(i for i, n in enumerate(chain) if n.op_type in REDUCTIONS) + 1]
            constants = tuple(v for n in reduced for v in n.inputs if is_constant(v))
            paths.append(DivisorPath(keys[id(node)], tuple(keys[id(n)] for n in chain),
                                     tuple(n.outputs[0].name for n in reduced), constants))
    return paths


def _walk(graph: ir.Graph, value: ir.Value) -> list[ir.Node] | None:
    chain = []
    for _ in range(MAX_STEPS):
        producer = value.producer()
        if producer is None or producer.graph is not graph or producer.domain not in ("", "ai.onnx"):
            return None
        chain.append(producer)
        if producer.op_type in REDUCTIONS:
            square = _square(producer.inputs[0])
            return chain + ([square] if square is not None else [])
        data = [v for v in producer.inputs if v is not None and not is_constant(v)]
        if producer.op_type not in PATH_OPS or len(data) != 1:
            return None
        value = data[0]
    return None


def _square(value: ir.Value | None) -> ir.Node | None:
    producer = value.producer() if value is not None else None
    if producer is None or producer.domain not in ("", "ai.onnx"):
        return None
    if producer.op_type == "Mul" and len(producer.inputs) == 2 and producer.inputs[0] is producer.inputs[1]:
        return producer
    if producer.op_type == "Pow" and is_constant(producer.inputs[1]):
        exponent = ir.convenience.get_const_tensor(producer.inputs[1]).numpy()
        return producer if exponent.size == 1 and float(exponent.reshape(-1)[0]) == 2.0 else None
    return None


def underflowing(paths: list[DivisorPath], ranges: Ranges, low: LowType, candidates) -> dict[str, str]:
    """Candidates to keep float32 by the divisor-path rule, each with its reason."""
    kept = {}
    for path in paths:
        why = _path_reason(path, ranges, low)
        if why is None:
            continue
        reason = f"divisor path of '{path.divisor}': {why}"
        for key in path.keys:
            if key in candidates:
                kept.setdefault(key, reason)
        if ranges.min_abs.get(path.values[0], np.inf) < low.tiny and path.divisor in candidates:
            kept.setdefault(path.divisor, reason)
    return kept


def _path_reason(path: DivisorPath, ranges: Ranges, low: LowType) -> str | None:
    for constant in path.constants:
        array = ir.convenience.get_const_tensor(constant).numpy()
        flushed = low.flushed(array)
        if flushed.any():
            return f"constant '{constant.name}' {float(np.abs(array[flushed]).min()):.3g} rounds to 0 in {low.name}"
    for name in path.values:
        smallest = ranges.min_abs.get(name, np.inf)
        if smallest < low.tiny:
            return f"min |x| {smallest:.3g} of '{name}' < {low.name} smallest normal {low.tiny:.3g} (underflow)"
    return None


def path_values(paths: list[DivisorPath]) -> set[str]:
    return {name for path in paths for name in path.values}


__all__ = ["DivisorPath", "divisor_paths", "path_values", "underflowing"]
