"""Rules that resolve shape computations with symbolic dims (symbolic.py) and collapse reshapes.

- Reshape target computed at run time: Reshape(x, s) where every element of s is provably a
  constant k or x's own dim at that position. s becomes a constant: k as is, x's own dim as 0
  ("copy", allowzero=0). The target tensor then holds, element by element, a value Reshape
  reads the same way as the computed one (a dim d at position i and a 0 at position i both give
  d), so the output is the same tensor; no -1 is introduced (with an empty tensor -1 cannot be
  inferred and ORT refuses it). The Shape/Gather/Concat chain that computed s is left dead.
- Expand to its input's own shape: Expand(x, s) where each element of s is 1 or x's dim at that
  (right-aligned) position and s is not longer than x's rank = x.
- Reshape of a Reshape, both targets constant: Reshape(Reshape(x, s1), s2) = Reshape(x, s2'), s2'
  = s2 with each 0 ("copy the middle dim") replaced by what that middle dim is: s1's own positive
  value, s1's 0 (x's dim at that position, still a 0), the middle dim when it is static, or a 0
  when the middle dim provably is x's dim there. Listed before onnxscript's rule, which turns such
  a 0 into -1 (an empty tensor then fails).
- Reshape of a Transpose that moves only axes of size 1 (the other axes keep their order: the
  data order is unchanged, so the Transpose is a reshape): Reshape(Transpose(x), s) = Reshape(x, s'),
  s' = s with each 0 at position i replaced by the transposed dim when it is not x's dim i.
- Unsqueeze of an Unsqueeze with constant axes (any number, negative ones when the rank is known):
  one Unsqueeze with the union of axes in the output's numbering (onnxscript's rule takes one axis
  each and writes a Constant node, which cleanup then keeps).
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
from onnxscript.rewriter import MatchResult, pattern

from graphopt.passes.fusion.symbolic import ShapeEval, const, const_array, dims_text, is_const, same


def fresh_name(model: ir.Model, base: str) -> str:
    """A value name unused in every graph of the model (onnxscript overwrites an initializer of
    the same name, and an earlier rewrite may have made one; a subgraph may not shadow a name)."""
    used = set()
    for graph in model.graphs():
        used.update(graph.initializers.keys())
        used.update(v.name for v in graph.inputs)
        used.update(v.name for node in graph for v in node.outputs)
    name, n = base, 1
    while name in used:
        name, n = f"{base}_{n}", n + 1
    return name


class SymbolicRule(pattern.RewriteRuleClassBase):
    """A rule that reads symbolic dims, with one evaluator per sweep over a graph: a rewrite leaves
    every value it does not replace computing what it computed, so what was proven of it stays
    true, and the evaluator holds the values it read (their ids are not reused meanwhile)."""

    _evaluator: ShapeEval | None = None
    _model: ir.Model | None = None  # the model of the last match (for fresh initializer names)

    def setup(self):
        self._evaluator = ShapeEval()

    def cleanup(self):
        self._evaluator, self._model = None, None

    def evaluator(self) -> ShapeEval:
        return self._evaluator if self._evaluator is not None else ShapeEval()

    def int64_initializer(self, op, values, base: str):
        """A new int64 initializer under a name unused in the model (call after a check)."""
        return op.initializer(ir.tensor(np.asarray(values, dtype=np.int64)), fresh_name(self._model, base))


def _reshape_attributes(node: ir.Node) -> dict:
    return {"allowzero": node.attributes.get_int("allowzero")} if "allowzero" in node.attributes else {}


class ReshapeTarget(SymbolicRule):
    """Reshape whose run-time target is provably constant-or-own-dims gets a constant target."""

    def pattern(self, op, x, shape):
        return op.Reshape(x, shape, _allow_other_attributes=True, _outputs=["out"])

    def check(self, context, x, shape, out) -> MatchResult:
        result = MatchResult()
        self._model = context.model
        if const_array(shape) is not None:
            return result.fail("target is already constant")
        ev = self.evaluator()
        elements = ev.elements(shape)
        if elements is None:
            return result.fail("target is not a shape computation this rule can read")
        allowzero = out.producer().attributes.get_int("allowzero", 0)
        mine = ev.dims(x) or []
        target = []
        for axis, e in enumerate(elements):
            if is_const(e):
                target.append(e[0])
            elif not allowzero and axis < len(mine) and same(mine[axis], e):
                target.append(0)
            else:
                return result.fail(f"target element {axis} ({ev.describe(e)}) is neither constant nor the "
                                   f"input's dim {axis} (input dims {dims_text(ev, mine)})")
        self._target = target
        return result

    def rewrite(self, op, x, shape, out):
        node = out.producer()
        target = self.int64_initializer(op, self._target, f"{out.name}_shape")
        return op.Reshape(x, target, **_reshape_attributes(node))


class ExpandToOwnShape(SymbolicRule):
    """Expand(x, s) with s elementwise 1 or x's dim (right-aligned) is x."""

    def pattern(self, op, x, shape):
        return op.Expand(x, shape, _outputs=["out"])

    def check(self, context, x, shape, out) -> MatchResult:
        result = MatchResult()
        self._model = context.model
        ev = self.evaluator()
        elements, mine = ev.elements(shape), ev.dims(x)
        if elements is None or mine is None:
            return result.fail("target shape or input rank unknown")
        if len(elements) > len(mine):
            return result.fail("Expand raises the rank")
        for e, d in zip(reversed(elements), reversed(mine)):
            if e is None or not (e == const(1) or e == d):
                return result.fail(f"target {dims_text(ev, elements)} may grow input {dims_text(ev, mine)}")
        return result

    def rewrite(self, op, x, shape, out):
        return op.Identity(x)


class ReshapeReshapeExact(SymbolicRule):
    """Reshape(Reshape(x, s1), s2) = Reshape(x, s2') with the middle dims s2's zeros copy made explicit."""

    def pattern(self, op, x, s1, s2):
        middle = op.Reshape(x, s1, _allow_other_attributes=True, _outputs=["middle"])
        return op.Reshape(middle, s2, _allow_other_attributes=True, _outputs=["out"])

    def check(self, context, x, s1, s2, middle, out) -> MatchResult:
        result = MatchResult()
        self._model = context.model
        first, second = const_array(s1), const_array(s2)
        if first is None or second is None:
            return result.fail("a target is not constant")
        first, second = [int(v) for v in first.reshape(-1)], [int(v) for v in second.reshape(-1)]
        zero1 = middle.producer().attributes.get_int("allowzero", 0)
        zero2 = out.producer().attributes.get_int("allowzero", 0)
        if zero2 or 0 not in second:
            self._target = second  # s2 reads no middle dim: it applies to x as well
            return result
        ev = self.evaluator()
        middle_dims, x_dims = ev.dims(middle) or [], ev.dims(x) or []
        target = []
        for axis, e in enumerate(second):
            known = middle_dims[axis] if axis < len(middle_dims) else None
            if e != 0:
                target.append(e)
            elif axis < len(first) and first[axis] > 0:
                target.append(first[axis])
            elif axis < len(first) and first[axis] == 0 and not zero1:
                target.append(0)  # the middle dim copied x's dim at this position: copy it again
            elif is_const(known) and known[0] > 0:
                target.append(known[0])
            elif known is not None and axis < len(x_dims) and known == x_dims[axis]:
                target.append(0)
            else:
                return result.fail(f"the middle dim {axis} that the outer target copies "
                                   f"({ev.describe(known)}) is neither static nor x's dim {axis}")
        self._target = target
        return result

    def rewrite(self, op, x, s1, s2, middle, out):
        target = self.int64_initializer(op, self._target, f"{out.name}_shape")
        return op.Reshape(x, target, **_reshape_attributes(out.producer()))


class ReshapeOfUnitTranspose(SymbolicRule):
    """Reshape(Transpose(x, perm), s) = Reshape(x, s') when perm moves only axes of size 1."""

    def pattern(self, op, x, shape):
        moved = op.Transpose(x, _allow_other_attributes=True, _outputs=["moved"])
        return op.Reshape(moved, shape, _allow_other_attributes=True, _outputs=["out"])

    def check(self, context, x, shape, moved, out) -> MatchResult:
        result = MatchResult()
        self._model = context.model
        target = const_array(shape)
        if target is None:
            return result.fail("target is not constant")
        ev = self.evaluator()
        mine = ev.dims(x)
        if mine is None:
            return result.fail("input rank unknown")
        perm_attr = moved.producer().attributes.get("perm")
        perm = list(perm_attr.as_ints()) if perm_attr is not None else list(reversed(range(len(mine))))
        if sorted(perm) != list(range(len(mine))):
            return result.fail("perm does not match the input rank")
        kept = [p for p in perm if mine[p] != const(1)]
        if kept != sorted(kept):
            return result.fail(f"Transpose moves axes that may be larger than 1 (input {dims_text(ev, mine)})")
        allowzero = out.producer().attributes.get_int("allowzero", 0)
        new = [int(v) for v in target.reshape(-1)]
        for axis, e in enumerate(new):
            if e != 0 or allowzero:
                continue
            if axis >= len(perm):
                return result.fail("target copies a dim the input lacks")
            moved_dim = mine[perm[axis]]
            if same(moved_dim, mine[axis]):
                continue
            if not is_const(moved_dim):
                return result.fail(f"target copies dim {axis} ({ev.describe(moved_dim)}), not the input's")
            new[axis] = moved_dim[0]
        self._target = new
        return result

    def rewrite(self, op, x, shape, moved, out):
        target = self.int64_initializer(op, self._target, f"{out.name}_shape")
        return op.Reshape(x, target, **_reshape_attributes(out.producer()))


class UnsqueezeUnsqueeze(SymbolicRule):
    """Unsqueeze(Unsqueeze(x, a1), a2) = Unsqueeze(x, a) (axes as inputs: opset >= 13)."""

    def pattern(self, op, x, axes1, axes2):
        return op.Unsqueeze(op.Unsqueeze(x, axes1, _outputs=["middle"]), axes2, _outputs=["out"])

    def check(self, context, x, axes1, axes2, middle, out) -> MatchResult:
        result = MatchResult()
        self._model = context.model
        a1, a2 = const_array(axes1), const_array(axes2)
        if a1 is None or a2 is None:
            return result.fail("axes are not constant")
        a1, a2 = [int(v) for v in a1.reshape(-1)], [int(v) for v in a2.reshape(-1)]
        if min(a1 + a2) < 0:
            dims = ShapeEval().dims(x)
            if dims is None:
                return result.fail("negative axes and the input rank is unknown")
            rank = len(dims)
            a1 = [a + rank + len(a1) if a < 0 else a for a in a1]
            a2 = [a + rank + len(a1) + len(a2) if a < 0 else a for a in a2]
        if len(set(a1)) != len(a1) or len(set(a2)) != len(a2) or min(a1 + a2) < 0:
            return result.fail("axes repeat or are out of range")
        # the middle tensor's axes fill, in order, the output positions a2 leaves free
        free = [p for p in range(max(a1 + a2) + len(a1) + len(a2) + 1) if p not in set(a2)]
        self._axes = sorted(set(a2) | {free[j] for j in a1})
        return result

    def rewrite(self, op, x, axes1, axes2, middle, out):
        axes = self.int64_initializer(op, self._axes, f"{out.name}_axes")
        return op.Unsqueeze(x, axes)


reshape_target_rule = ReshapeTarget.rule()
expand_own_shape_rule = ExpandToOwnShape.rule()
reshape_reshape_exact_rule = ReshapeReshapeExact.rule()
reshape_unit_transpose_rule = ReshapeOfUnitTranspose.rule()
unsqueeze_unsqueeze_rule = UnsqueezeUnsqueeze.rule()

__all__ = ["SymbolicRule", "expand_own_shape_rule", "fresh_name", "reshape_reshape_exact_rule",
           "reshape_target_rule", "reshape_unit_transpose_rule", "unsqueeze_unsqueeze_rule"]
