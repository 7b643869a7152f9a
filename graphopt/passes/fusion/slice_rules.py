"""Slice of a Slice on other axes is one Slice.

Slice indexes each listed axis independently (x[..., s:e:t, ...] per axis) and leaves the other
axes whole, so two Slices over disjoint axes compose into one over both:

    Slice(Slice(x, s1, e1, a1, t1), s2, e2, a2, t2) = Slice(x, s1++s2, e1++e2, a1++a2, t1++t2)

when every one of those inputs is constant and a1 and a2 share no axis (negative axes are read
against x's rank, so that rank must be known when any axis is negative). Absent axes mean
0..len(starts)-1, absent steps 1. Each consumer of the inner Slice is merged on its own: the
inner Slice goes away once nothing reads it (YOLOv5's Focus block: a row-parity Slice feeding
two column-parity Slices becomes two Slices of the input, 6 nodes -> 4). onnxscript's slice
rules merge a Slice only into a whole-range neighbour, and its pattern matcher refuses an inner
value that has other consumers.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
from onnxscript.rewriter import MatchResult

from graphopt.passes.fusion.shape_rules import SymbolicRule
from graphopt.passes.fusion.symbolic import const_array


def slice_parts(node: ir.Node, rank: int | None) -> tuple[np.ndarray, ...] | str:
    """(starts, ends, axes, steps) as int64 with axes made non-negative, or why not."""
    inputs = list(node.inputs) + [None] * (5 - len(node.inputs))
    if len(node.inputs) < 3:
        return "Slice has no starts/ends inputs (opset < 10 form)"
    starts, ends = const_array(inputs[1]), const_array(inputs[2])
    if starts is None or ends is None:
        return "starts or ends are not constant"
    count = starts.size
    axes = const_array(inputs[3]) if inputs[3] is not None else np.arange(count)
    steps = const_array(inputs[4]) if inputs[4] is not None else np.ones(count)
    if axes is None or steps is None:
        return "axes or steps are not constant"
    axes = axes.reshape(-1).astype(np.int64)
    if np.any(axes < 0):
        if rank is None:
            return "a negative axis and the input's rank is unknown"
        axes = np.where(axes < 0, axes + rank, axes)
    return (starts.reshape(-1).astype(np.int64), ends.reshape(-1).astype(np.int64), axes,
            steps.reshape(-1).astype(np.int64))


def _rank(value: ir.Value) -> int | None:
    return len(value.shape) if value.shape is not None else None


class SliceOfSlice(SymbolicRule):
    """Slice(Slice(x, ...), ...) over disjoint axes = one Slice of x (module docstring)."""

    def pattern(self, op, inner):
        return op.Slice(inner, _allow_other_inputs=True, _outputs=["out"])

    def check(self, context, inner, out) -> MatchResult:
        result = MatchResult()
        self._model = context.model
        producer = inner.producer()
        if producer is None or producer.op_type != "Slice" or producer.domain not in ("", "ai.onnx"):
            return result.fail("the input is not made by a Slice")
        x = producer.inputs[0]
        rank = _rank(x) if _rank(x) is not None else _rank(inner)
        first, second = slice_parts(producer, rank), slice_parts(out.producer(), rank)
        for why in (first, second):
            if isinstance(why, str):
                return result.fail(why)
        if set(first[2].tolist()) & set(second[2].tolist()):
            return result.fail("the two Slices share an axis")
        self._merged = [np.concatenate([a, b]) for a, b in zip(first, second)]
        return result

    def rewrite(self, op, inner, out):
        x = inner.producer().inputs[0]
        names = ("starts", "ends", "axes", "steps")
        args = [self.int64_initializer(op, values, f"{out.name}_{name}") for values, name in zip(self._merged, names)]
        return op.Slice(x, *args)


slice_of_slice_rule = SliceOfSlice.rule()
