"""Extra guards around library rules, and small rules the library lacks.

- Relu and Clip compose into one Clip (constant scalar bounds, written in the input's element
  type): Clip(Relu(x), lo, hi) =
  Clip(x, max(lo,0), hi) and Relu(Clip(x, lo, hi)) = Clip(x, max(lo,0), max(hi,0)).
  Clip(Clip(x, a, b), c, d) = Clip(x, max(a,c), min(b,d)) when the intervals overlap.
  onnxscript 0.7.2's successive Relu/Clip and Clip/Clip rules miss Relu→Clip and crash on it
  and on Clip→Clip (their bound extraction reads a None const_value).
- Dropout in inference is the identity: Dropout(x) with no training_mode input (or a constant
  false one) and an unused mask output is replaced by x (opset >= 12 takes ratio and
  training_mode as inputs, a form onnxscript's attribute-based rules do not match).
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
from onnxscript.rewriter import MatchResult, pattern

from graphopt.passes.fusion.shape_rules import SymbolicRule
from graphopt.passes.fusion.symbolic import const_array, is_const


class DropoutInference(pattern.RewriteRuleClassBase):
    def pattern(self, op, x):
        return op.Dropout(x, _allow_other_inputs=True, _allow_other_attributes=True, _outputs=["y"])

    def check(self, context, x, y) -> MatchResult:
        result = MatchResult()
        node = y.producer()
        if len(node.outputs) > 1 and (node.outputs[1].uses() or node.outputs[1].is_graph_output()):
            return result.fail("Dropout's mask output is used")
        training = node.inputs[2] if len(node.inputs) > 2 else None
        if training is not None:
            value = training.const_value
            if value is None or bool(value.numpy()):
                return result.fail("training_mode is not a constant false")
        if node.attributes.get_int("training_mode", 0):
            return result.fail("training_mode attribute is set")
        return result

    def rewrite(self, op, x, y):
        return op.Identity(x)


dropout_inference_rule = DropoutInference.rule()


def _scalar(value) -> float | None:
    if value is None:
        return None
    tensor = value.const_value
    if tensor is None or tensor.size != 1:
        return None
    return float(tensor.numpy().reshape(()))


def _clip_bounds(node) -> tuple[float | None, float | None, bool]:
    """(lo, hi, ok): constant scalar bounds of a Clip (None = unbounded); ok=False if dynamic."""
    lo_v = node.inputs[1] if len(node.inputs) > 1 else None
    hi_v = node.inputs[2] if len(node.inputs) > 2 else None
    lo, hi = _scalar(lo_v), _scalar(hi_v)
    ok = (lo_v is None or lo is not None) and (hi_v is None or hi is not None)
    return lo, hi, ok


def bound_dtype(x, *clips) -> np.dtype | None:
    """The element type new Clip bounds must have: x's, or, when x is untyped (no shape
    inference ran), that of an existing constant bound (Clip's inputs share one type). A bound
    written as float64 into a float32 Clip made a model the checker rejects."""
    if x.dtype is not None:
        return x.dtype.numpy()
    for clip in clips:
        for bound in clip.inputs[1:3]:
            if bound is not None and bound.const_value is not None:
                return bound.const_value.dtype.numpy()
    return None


class _ReluClipBase(pattern.RewriteRuleClassBase):
    """Clip(Relu(x), lo, hi) = Clip(x, max(lo, 0), hi); Relu(Clip(x, lo, hi)) = Clip(x, max(lo, 0), max(hi, 0))."""

    def check(self, context, x, out, **_) -> MatchResult:
        clip = self._clip_node(out)
        _, _, ok = _clip_bounds(clip)
        if not ok:
            return MatchResult().fail("Clip bounds are not constant scalars")
        if bound_dtype(x, clip) is None:
            return MatchResult().fail("the element type of the Clip input is unknown")
        return MatchResult()

    def rewrite(self, op, x, out, **_):
        lo, hi, _ = _clip_bounds(self._clip_node(out))
        dtype = bound_dtype(x, self._clip_node(out))
        new_lo = max(lo if lo is not None else 0.0, 0.0)
        new_hi = hi if self.clip_outside else (max(hi, 0.0) if hi is not None else None)
        bounds = [op.initializer(ir.tensor(np.array(new_lo, dtype=dtype)), f"{out.name}_lo")]
        if new_hi is not None:
            bounds.append(op.initializer(ir.tensor(np.array(new_hi, dtype=dtype)), f"{out.name}_hi"))
        return op.Clip(x, *bounds)


class ReluThenClip(_ReluClipBase):
    clip_outside = True

    def pattern(self, op, x):
        return op.Clip(op.Relu(x), _allow_other_inputs=True, _outputs=["out"])

    def _clip_node(self, out):
        return out.producer()


class ClipThenRelu(_ReluClipBase):
    clip_outside = False

    def pattern(self, op, x):
        return op.Relu(op.Clip(x, _allow_other_inputs=True, _outputs=["clip_out"]), _outputs=["out"])

    def _clip_node(self, out):
        return out.producer().inputs[0].producer()


relu_then_clip_rule = ReluThenClip.rule()
clip_then_relu_rule = ClipThenRelu.rule()


class ClipThenClip(pattern.RewriteRuleClassBase):
    """Clip(Clip(x, a, b), c, d) = Clip(x, max(a, c), min(b, d)) while that interval is non-empty."""

    def pattern(self, op, x):
        inner = op.Clip(x, _allow_other_inputs=True, _outputs=["inner"])
        return op.Clip(inner, _allow_other_inputs=True, _outputs=["out"])

    def _bounds(self, inner, out):
        (a, b, ok1), (c, d, ok2) = _clip_bounds(inner.producer()), _clip_bounds(out.producer())
        lo = max((v for v in (a, c) if v is not None), default=None)
        hi = min((v for v in (b, d) if v is not None), default=None)
        return lo, hi, ok1 and ok2

    def check(self, context, x, inner, out) -> MatchResult:
        lo, hi, ok = self._bounds(inner, out)
        if not ok:
            return MatchResult().fail("Clip bounds are not constant scalars")
        if lo is not None and hi is not None and lo > hi:
            return MatchResult().fail("the two Clip intervals do not overlap")
        if bound_dtype(x, inner.producer(), out.producer()) is None:
            return MatchResult().fail("the element type of the Clip input is unknown")
        return MatchResult()

    def rewrite(self, op, x, inner, out):
        lo, hi, _ = self._bounds(inner, out)
        dtype = bound_dtype(x, inner.producer(), out.producer())
        bound = lambda v, tag: op.initializer(ir.tensor(np.array(v, dtype=dtype)), f"{out.name}_{tag}")  # noqa: E731
        args = [bound(lo, "lo") if lo is not None else None] + ([bound(hi, "hi")] if hi is not None else [])
        return op.Clip(x, *args)


clip_then_clip_rule = ClipThenClip.rule()


def resolved_reshape(input_dims: tuple[int, ...], target: np.ndarray, allowzero: int) -> tuple[int, ...] | None:
    """The output shape of Reshape(input, target) by the ONNX rules (0 copies, -1 infers)."""
    dims = [int(d) for d in target.reshape(-1)]
    out = [input_dims[i] if d == 0 and not allowzero and i < len(input_dims) else d for i, d in enumerate(dims)]
    if out.count(-1) > 1:
        return None
    if -1 in out:
        known = int(np.prod([d for d in out if d != -1]))
        total = int(np.prod(input_dims))
        if known == 0 or total % known:
            return None
        out[out.index(-1)] = total // known
    return tuple(out)


class ReshapeNoop(SymbolicRule):
    """Reshape(x, s) where s resolves to x's own shape is the identity. With symbolic dims: same
    rank, and each element of s a 0 ("copy", allowzero=0), x's static dim, or the one -1 (which
    then infers the one dim left, x's own)."""

    def pattern(self, op, x, shape):
        return op.Reshape(x, shape, _allow_other_attributes=True, _outputs=["out"])

    def check(self, context, x, shape, out) -> MatchResult:
        result = MatchResult()
        target = const_array(shape)
        if target is None:
            return result.fail("target shape is not constant")
        target = target.reshape(-1)
        allowzero = out.producer().attributes.get_int("allowzero", 0)
        if x.shape is not None and x.shape.is_static():
            dims = tuple(int(d) for d in x.shape.numpy())
            if resolved_reshape(dims, target, allowzero) != dims:
                return result.fail("Reshape changes the shape")
            return result
        ev = self.evaluator()
        dims = ev.dims(x)
        if dims is None:
            return result.fail("input rank unknown")
        if len(target) != len(dims) or int(np.sum(target == -1)) > 1:
            return result.fail("Reshape changes the rank" if len(target) != len(dims) else "more than one -1")
        for axis, (t, d) in enumerate(zip(target.tolist(), dims)):
            if t == -1 or (t == 0 and not allowzero) or (is_const(d) and d[0] == t):
                continue
            return result.fail(f"Reshape may change dim {axis} ({ev.describe(d)} -> {t})")
        return result

    def rewrite(self, op, x, shape, out):
        return op.Identity(x)


reshape_noop_rule = ReshapeNoop.rule()


class PadNoop(pattern.RewriteRuleClassBase):
    """Pad with constant all-zero pads is the identity (whatever the mode and fill value)."""

    def pattern(self, op, x, pads):
        return op.Pad(x, pads, _allow_other_inputs=True, _allow_other_attributes=True, _outputs=["out"])

    def check(self, context, x, pads, out) -> MatchResult:
        if pads.const_value is None:
            return MatchResult().fail("pads are not constant")
        if np.any(pads.const_value.numpy() != 0):
            return MatchResult().fail("Pad adds padding")
        return MatchResult()

    def rewrite(self, op, x, pads, out):
        return op.Identity(x)


pad_noop_rule = PadNoop.rule()
