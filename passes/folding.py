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
`generator_limit` elements; any other op folds when its inputs are at most
`input_size_limit` and its output at most `output_size_limit` elements.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import onnx_ir as ir
from onnx_ir.passes.common import LiftConstantsToInitializersPass, RemoveUnusedNodesPass
from onnxscript.optimizer._constant_folding import FoldConstantsPass

from graphopt.pass_api import Pass, PassContext, PassResult, quiet_libraries, register
from graphopt.size import model_size
from graphopt.tolerance import Reassoc

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


@register
class FoldConstants(Pass):
    name = "fold-constants"
    summary = "evaluate constant subgraphs and static shape computations (size-capped)"
    Options = FoldOptions
    tolerance = Reassoc(rtol=1e-5, atol=1e-6)

    def run(self, model: ir.Model, ctx: PassContext) -> PassResult:
        before = model_size(model)
        opts = self.options

        def should_fold(node: ir.Node) -> bool | None:
            if node.domain in ("", "ai.onnx") and node.op_type in GENERATORS:
                size = generator_output_size(node)
                if size is None or size > opts.generator_limit:
                    ctx.no_match(self.name, node.name, f"{node.op_type} would materialize "
                                 f"{size if size is not None else 'an unknown number of'} elements "
                                 f"(generator_limit={opts.generator_limit})")
                    return False
                return True  # onnxscript never folds ConstantOfShape; small ones are worth it
            return None

        modified, rounds = False, 0
        for rounds in range(1, opts.max_iterations + 1):
            folder = FoldConstantsPass(shape_inference=True, input_size_limit=opts.input_size_limit,
                                       output_size_limit=opts.output_size_limit, should_fold=should_fold)
            with quiet_libraries():
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
                                            "bytes_added": after.bytes - before.bytes})
