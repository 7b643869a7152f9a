"""Constant folding to a fixed point, wrapping onnxscript's FoldConstantsPass.

A node whose inputs are all constant is evaluated once (ONNX reference evaluator) and
replaced by its result, y = f(c1, ..., cn) ⇒ y := const; shape ops on static shapes fold
the same way. Results match ONNX Runtime's kernels up to float re-association, hence the
`reassoc` tolerance.

onnxscript writes small folded values as Constant nodes with `value_ints`/`value_floats`
attributes, which only exist from opset 12 (PP-OCR's cls model is opset 11), so folded
values are lifted to initializers afterwards.

Folding must never blow up the file: a generator op (ConstantOfShape, Expand, Tile, Range)
turns a few bytes into a large tensor, so it folds only when its output has at most
`generator_limit` elements. Any other op can grow data too (a broadcasting Add of a [1000, 1]
and a [1, 1000] constant writes 10^6 elements from 2000: 8 KB became 4 MB before this rule), so
it folds only when its output has at most max(generator_limit, elements of its inputs)
elements, its inputs at most `input_size_limit` and its output at most `output_size_limit`.

onnxscript's folder rewrites ConcatFromSequence and SplitToSequence into Unsqueeze/Split/
Squeeze with axes or split as *inputs*, a form that exists from opset 13 only; below 13
those two ops are left alone (the rewrite gave a model the checker rejects). And it drops an
initializer that is also a graph input once its uses are folded away, turning an optional input
into a required one: such initializers are kept.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Iterator

import onnx_ir as ir
from onnx_ir.passes.common import LiftConstantsToInitializersPass, RemoveUnusedNodesPass

from graphopt.pass_api import Pass, PassContext, PassResult, quiet_libraries
from graphopt.size import data_bytes, model_size
from graphopt.tolerance import Reassoc
from graphopt.upstream import FoldConstantsPass

GENERATORS = frozenset({"ConstantOfShape", "Expand", "Tile", "Range"})


@dataclass(frozen=True)
class FoldOptions:
    input_size_limit: int = 1 << 20
    output_size_limit: int = 1 << 20
    generator_limit: int = 4096
    max_iterations: int = 4

    def validate(self) -> None:
        for name in ("input_size_limit", "output_size_limit", "generator_limit"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")
        if self.max_iterations < 1:
            raise ValueError("max_iterations must be >= 1")


def generator_output_size(node: ir.Node) -> int | None:
    """Elements a generator op would produce, when it can be known before evaluating it."""
    shape = node.outputs[0].shape
    if shape is not None and shape.is_static():
        return math.prod(shape.numpy())
    if node.op_type == "ConstantOfShape" and node.inputs[0] is not None:
        dims = node.inputs[0].const_value
        if dims is not None:
            return int(math.prod(int(d) for d in dims.numpy().reshape(-1)))
    return None


# Ops onnxscript's folder rewrites into opset-13 forms (axes/split as inputs).
NEEDS_OPSET_13 = frozenset({"ConcatFromSequence", "SplitToSequence"})


def _elements(values) -> int | None:
    """Total elements of static-shaped values (None if any is unknown)."""
    total = 0
    for value in values:
        if value is None:
            continue
        shape = value.const_value.shape if value.const_value is not None else value.shape
        if shape is None or not shape.is_static():
            return None
        total += math.prod(shape.numpy())
    return total


def growth_refusal(node: ir.Node, generator_limit: int) -> str | None:
    """Why folding `node` would grow the constant data beyond the cap (None: it would not)."""
    out = _elements(node.outputs)
    if out is None:
        return "its output size is unknown before evaluating it"
    cap = max(generator_limit, _elements(node.inputs) or 0)
    if out > cap:
        return (f"{node.op_type} would turn {_elements(node.inputs)} constant elements into {out} "
                f"(cap max(generator_limit={generator_limit}, input elements))")
    return None


@contextlib.contextmanager
def initializer_inputs_kept(model: ir.Model) -> Iterator[None]:
    """onnxscript's folder drops an initializer once its last use is folded away even when it is
    also a graph input (an IR-3 style overridable initializer): the input loses its default and
    becomes required (ORT: "Required inputs (['w']) are missing"). Such initializers are put back."""
    graph = model.graph
    saved = [(v, v.const_value) for v in graph.inputs if v.name in graph.initializers]
    yield
    inputs = set(graph.inputs)
    for value, tensor in saved:
        if value in inputs and value.name not in graph.initializers:
            value.const_value = tensor
            graph.register_initializer(value)


class _OpsetSafeFolder(FoldConstantsPass):
    """onnxscript's folder, minus the rewrites that are invalid in the model's opset."""

    def process_node(self, node: ir.Node, is_function: bool):
        opset = self._opset_imports.get(node.domain, 0)
        if node.domain in ("", "ai.onnx") and node.op_type in NEEDS_OPSET_13 and opset < 13:
            return None
        return super().process_node(node, is_function)


class FoldConstants(Pass):
    name = "fold-constants"
    summary = "evaluate constant subgraphs and static shape computations (size-capped)"
    Options = FoldOptions
    tolerance = Reassoc(rtol=1e-5, atol=1e-6)

    def run(self, model: ir.Model, ctx: PassContext) -> PassResult:
        before, bytes_before = model_size(model), data_bytes(model)
        opts = self.options
        should_fold = self._should_fold(ctx)
        modified, rounds = False, 0
        for rounds in range(1, opts.max_iterations + 1):
            folder = _OpsetSafeFolder(shape_inference=True, input_size_limit=opts.input_size_limit,
                                      output_size_limit=opts.output_size_limit, should_fold=should_fold)
            with quiet_libraries(), initializer_inputs_kept(model):
                changed = folder(model).modified
            modified |= changed
            if not changed:
                break
        if modified:  # folded values as initializers: valid in every opset, unlike value_ints
            with quiet_libraries():
                LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0)(model)
                RemoveUnusedNodesPass()(model)  # inputs that folding made dead
        after = model_size(model)
        return PassResult(model, modified, {"rounds": rounds, "nodes_removed": before.nodes - after.nodes,
                                            "bytes_added": data_bytes(model) - bytes_before})

    def _should_fold(self, ctx: PassContext):
        limit = self.options.generator_limit

        def should_fold(node: ir.Node) -> bool | None:
            if node.domain not in ("", "ai.onnx"):
                return None
            if node.op_type in GENERATORS:
                size = generator_output_size(node)
                if size is None or size > limit:
                    ctx.no_match(self.name, node.name, f"{node.op_type} would materialize "
                                 f"{size if size is not None else 'an unknown number of'} elements "
                                 f"(generator_limit={limit})")
                    return False
                return True  # onnxscript never folds ConstantOfShape; small ones are worth it
            reason = growth_refusal(node, limit)
            if reason:
                ctx.no_match(self.name, node.name, reason)
                return False
            return None

        return should_fold
