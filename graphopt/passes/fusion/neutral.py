"""Operations with a constant neutral operand are their other operand.

x + 0 = 0 + x = x - 0 = x·1 = 1·x = x/1 = x, x ∧ true = x ∨ false = x ⊕ false = x, and
Where(c, a, b) = a when c is constant true everywhere (b when false everywhere). The constant must
equal the neutral value exactly (onnxscript's add_0 / mul_by_1 rules match within rel 1e-5 / abs
1e-8, so x·1.000001 went too) and may have any shape whose broadcast leaves the kept operand's
shape as it is (symbolic.fits_without_growing): a constant [1, 1, C] of ones on an [N, T, C]
tensor goes, a [1, 1] zero added to a vector stays (it raises the rank). ONNX types both operands
alike, so the dtype never changes. x + (+0) turns -0 into +0 (equal as numbers), as x - (-0) does.
"""

from __future__ import annotations

import numpy as np
from onnxscript.rewriter import MatchResult

from graphopt.passes.fusion.shape_rules import SymbolicRule
from graphopt.passes.fusion.symbolic import ShapeEval, const_array, dims_text, fits_without_growing

# op -> (neutral value, positions of the constant operand it is neutral in, rule name)
NEUTRAL = {"Add": (0, (0, 1), "add_0"), "Sub": (0, (1,), "sub_0"), "Mul": (1, (0, 1), "mul_1"),
           "Div": (1, (1,), "div_1"), "And": (True, (0, 1), "and_true"), "Or": (False, (0, 1), "or_false"),
           "Xor": (False, (0, 1), "xor_false")}


def _broadcast_refusal(ev: ShapeEval, kept, others) -> str | None:
    others = [v for v in others if not _surely_fits(v, kept)]
    if not others:
        return None
    mine = ev.dims(kept)
    for other in others:
        theirs = ev.dims(other)
        if not fits_without_growing(ev, theirs, mine):
            return f"broadcasting {dims_text(ev, theirs)} may change the result's shape {dims_text(ev, mine)}"
    return None


def _surely_fits(other, kept) -> bool:
    """Fast path: a constant of only 1-dims, rank not above the kept operand's declared rank."""
    array = const_array(other)
    if array is None or any(d != 1 for d in array.shape):
        return False
    return array.ndim == 0 or (kept.shape is not None and array.ndim <= len(kept.shape))


class NeutralOperand(SymbolicRule):
    def __init__(self, op_type: str, position: int):
        super().__init__(name=f"{op_type}_neutral_{position}")
        self._op_type, self._position = op_type, position
        self._neutral = NEUTRAL[op_type][0]

    def pattern(self, op, x, c):
        args = (c, x) if self._position == 0 else (x, c)
        return getattr(op, self._op_type)(*args, _outputs=["out"])

    def check(self, context, x, c, out) -> MatchResult:
        result = MatchResult()
        array = const_array(c)
        if array is None:
            return result.fail("the operand is not constant")
        if array.size == 0 or not np.all(array == self._neutral):
            return result.fail(f"the constant is not {self._neutral!r} everywhere")
        reason = _broadcast_refusal(self.evaluator(), x, [c])
        return result.fail(reason) if reason else result

    def rewrite(self, op, x, c, out):
        return op.Identity(x)


class ConstantWhere(SymbolicRule):
    """Where(c, a, b) with c constant all true = a, all false = b (shapes permitting)."""

    def pattern(self, op, cond, a, b):
        return op.Where(cond, a, b, _outputs=["out"])

    def check(self, context, cond, a, b, out) -> MatchResult:
        result = MatchResult()
        array = const_array(cond)
        if array is None:
            return result.fail("the condition is not constant")
        if array.size and np.all(array):
            self._take_a, kept, others = True, a, [cond, b]
        elif array.size and not np.any(array):
            self._take_a, kept, others = False, b, [cond, a]
        else:
            return result.fail("the condition mixes true and false")
        reason = _broadcast_refusal(self.evaluator(), kept, others)
        return result.fail(reason) if reason else result

    def rewrite(self, op, cond, a, b, out):
        return op.Identity(a if self._take_a else b)


def neutral_rules() -> dict:
    """{rule name: [its rules]}, e.g. "add_0": x + 0 and 0 + x."""
    return {name: [NeutralOperand.rule(op_type, position) for position in positions]
            for op_type, (_, positions, name) in NEUTRAL.items()}


constant_where_rule = ConstantWhere.rule()

__all__ = ["constant_where_rule", "neutral_rules"]
