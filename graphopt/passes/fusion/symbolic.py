"""Symbolic dims: what a shape computation provably equals, read from the graph as it stands.

A dim is a monomial c·a₁·a₂·… (an int coefficient times atoms; an atom is one unknown dim of one
value), written `(c, atoms)`; two dims are provably equal when their monomials are equal.

- `ShapeEval.dims(v)`: v's dims. A static dim from shape inference is taken as is, except on a
  graph output (ORT does not check a declared output shape: ddddocr's captcha model declares
  [1, seqlen] for a [seq, 1, classes] result); otherwise the dim the producer's shape rule gives
  (elementwise ops keep it, broadcasting takes the non-1 side, Transpose permutes, Reshape with a
  known target, MatMul/Gemm and their integer forms (MatMulInteger, ConvInteger, DynamicQuantizeLinear),
  Conv's N and C, LSTM/GRU/RNN, Concat, Gather, Unsqueeze, ...);
  otherwise a fresh atom `v[axis]`.
- `ShapeEval.elements(v)`: the values of a small integer tensor of rank <= 1 (a shape being
  computed at run time: Shape, Gather, Slice, Concat, Unsqueeze, Squeeze, Cast, Mul, Div, Add,
  Sub, Equal, Where over such values), or None.

Stated assumptions (both hold for any tensor ORT can hold in memory in practice):
- a dim read at run time is < 2**31, so a Cast of a shape element to int32 (and back) keeps it;
- a Reshape target element read at run time gives the output dim only when it provably equals the
  input dim at that position, or allowzero=1 (under allowzero=0 a run-time 0 means "copy the input
  dim", so the element and the input dim must agree for the result to be known).
"""

from __future__ import annotations

from typing import Optional, Sequence

import onnx_ir as ir

# const, const_array, div, is_const, mul, same: re-exported for the rules that import them from here
from graphopt.passes.fusion.symbolic_dims import (BROADCAST, DEPTH_LIMIT, INT_TYPES, MAX_ELEMENTS, UNARY, Dim,  # noqa: F401
                                                  const, const_array, const_ints, div, is_const, mul, product, same)
from graphopt.passes.fusion.symbolic_ops import DIM_RULES, ELEMENT_RULES, broadcast_dim


class ShapeEval:
    """Symbolic dims and shape-tensor values of one graph state; build one per question (memoized)."""

    def __init__(self) -> None:
        self._dims: dict[int, Optional[list]] = {}
        self._elements: dict[int, Optional[list]] = {}
        self._names: dict[int, str] = {}
        self._keep: list[ir.Value] = []  # ids stay unique while this evaluator lives
        self._depth = 0

    # -- naming -------------------------------------------------------------------------------
    def atom(self, value: ir.Value, axis: int) -> Dim:
        self._names[id(value)] = value.name or "?"
        self._keep.append(value)
        return (1, ((id(value), axis),))

    def describe(self, d: Optional[Dim]) -> str:
        if d is None:
            return "unknown"
        factors = [f"{self._names.get(v, '?')}[{axis}]" for v, axis in d[1]]
        if not factors:
            return str(d[0])
        return "·".join(([str(d[0])] if d[0] != 1 else []) + factors)

    # -- dims ---------------------------------------------------------------------------------
    def dims(self, value: Optional[ir.Value]) -> Optional[list]:
        """value's dims (a list of Dim or None per axis), or None when its rank is unknown."""
        if value is None:
            return None
        key = id(value)
        if key not in self._dims:
            self._warm(value)
        return self._dims[key]

    def _warm(self, value: ir.Value) -> None:
        """Compute the dims of value's whole producer cone, inputs first, without recursion (a
        500-layer network would overflow Python's stack)."""
        stack, seen = [(value, False)], set()
        while stack:
            current, inputs_done = stack.pop()
            key = id(current)
            if key in self._dims:
                continue
            if inputs_done:
                self._dims[key] = None  # a cycle reads as unknown
                self._keep.append(current)
                self._dims[key] = self._merge(current, self._derive_safely(current))
                continue
            if key in seen:
                continue
            seen.add(key)
            stack.append((current, True))
            node = current.producer()
            if node is not None:
                stack.extend((v, False) for v in node.inputs if v is not None and id(v) not in self._dims)

    def _derive_safely(self, value: ir.Value) -> Optional[list]:
        try:
            return self._derive_dims(value)
        except (ValueError, TypeError, IndexError, KeyError, AttributeError, RecursionError):
            return None  # a malformed attribute or input: nothing is known

    def _merge(self, value: ir.Value, derived: Optional[list]) -> Optional[list]:
        if value.const_value is not None and not value.is_graph_input():  # its shape, without reading the data
            return [const(int(d)) for d in value.const_value.shape]
        shape = value.shape
        if shape is None or (value.is_graph_output() and not value.is_graph_input()):
            return derived  # a declared output shape is not checked by ORT; derive or know nothing
        if derived is not None and len(derived) != len(shape):
            derived = None
        out = []
        for axis, dim in enumerate(shape):
            if isinstance(dim, int):
                out.append(const(dim))
            elif derived is not None and derived[axis] is not None:
                out.append(derived[axis])
            else:
                out.append(self.atom(value, axis))
        return out

    def _derive_dims(self, value: ir.Value) -> Optional[list]:
        node = value.producer()
        if node is None or node.domain not in ("", "ai.onnx"):
            return None
        op, index, ins = node.op_type, value.index(), node.inputs
        if op in UNARY:
            return list(self.dims(ins[0])) if index == 0 and self.dims(ins[0]) is not None else None
        if op in BROADCAST:
            return self.broadcast([self.dims(v) for v in ins if v is not None])
        handler = DIM_RULES.get(op)
        return handler(self, node, index) if handler is not None else None

    def broadcast(self, shapes: Sequence[Optional[list]]) -> Optional[list]:
        """Multidirectional (numpy) broadcasting of dims lists."""
        if any(s is None for s in shapes) or not shapes:
            return None
        rank = max(len(s) for s in shapes)
        out = []
        for axis in range(rank):
            column = [s[axis - rank + len(s)] for s in shapes if axis - rank + len(s) >= 0]
            out.append(broadcast_dim(column))
        return out

    # -- shape-tensor values ------------------------------------------------------------------
    def elements(self, value: Optional[ir.Value]) -> Optional[list]:
        """The values (Dims) of a rank-0/1 integer tensor, or None when not provable."""
        if value is None:
            return None
        key = id(value)
        if key in self._elements:
            return self._elements[key]
        self._elements[key] = None
        self._keep.append(value)
        result = None
        if self._depth < DEPTH_LIMIT:
            self._depth += 1
            try:
                result = self._derive_elements(value)
            except (ValueError, TypeError, IndexError, KeyError, AttributeError, RecursionError):
                result = None
            finally:
                self._depth -= 1
        self._elements[key] = result
        return result

    def _derive_elements(self, value: ir.Value) -> Optional[list]:
        ints = const_ints(value)
        if ints is not None:
            return [const(i) for i in ints] if const_array(value).ndim <= 1 else None
        node = value.producer()
        if node is None or node.domain not in ("", "ai.onnx"):
            return None
        if value.dtype is not None and value.dtype not in INT_TYPES:
            return None  # (untyped values pass: every leaf is a Shape or an integer constant)
        dims = self.dims(value)
        if dims is None or len(dims) > 1:
            return None  # only scalars and vectors are tracked (Gather/Concat on axis 0 then act on elements)
        handler = ELEMENT_RULES.get(node.op_type)
        out = handler(self, node) if handler is not None else None
        if out is None or len(out) > MAX_ELEMENTS:
            return None
        if dims and is_const(dims[0]) and dims[0][0] != len(out):
            return None  # the shape analysis and the element count disagree: trust neither
        return out


def fits_without_growing(ev: ShapeEval, small: Optional[list], big: Optional[list]) -> bool:
    """Broadcasting `small` onto `big` leaves `big`'s shape as it is: small's rank is not larger and
    each of its dims is 1 or provably equal to big's dim at that (right-aligned) position."""
    if small is None or big is None or len(small) > len(big):
        return False
    for d, e in zip(reversed(small), reversed(big)):
        if d is None or not (d == const(1) or d == e):
            return False
    return True


def dims_text(ev: ShapeEval, dims: Optional[list]) -> str:
    return "unknown" if dims is None else "[" + ", ".join(ev.describe(d) for d in dims) + "]"


__all__ = ["Dim", "ShapeEval", "const", "const_array", "dims_text", "div", "fits_without_growing", "is_const",
           "mul", "product", "same"]


