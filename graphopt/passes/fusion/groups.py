"""Operator fusion and local simplification, as verified groups of onnxscript rewrite rules.

The algebra each group relies on:

- fuse-bn: BatchNormalization after Conv / ConvTranspose / Gemm / 2-D MatMul with constant
  parameters, s = γ/√(σ²+ε): W' = W·s (per output channel), B' = (B−μ)·s + β (bn_fold.py).
- fuse-conv-affine: Conv followed by a per-channel Mul/Add with constants (conv_affine.py),
  (W∗x + B)·a + b = (W·a)∗x + (B·a + b); a scalar affine before an unpadded Conv (onnxscript).
- fuse-pad-conv: a constant zero Pad before Conv folds into the Conv's `pads`.
- fuse-activations: Relu∘Relu = Relu, Clip∘Clip = Clip(max lo, min hi), Relu∘Clip and
  Clip∘Relu = Clip with lo ≥ 0; Min/Max with scalar constants = Clip; x·HardSigmoid(x) and
  the decomposed forms = HardSwish.
- simplify: no-op Reshape/Pad/Cast/Expand/Transpose/Dropout removal; an exactly neutral constant
  operand (x+0, x-0, x·1, x/1, x∧true, x∨false, x⊕false, Where with a constant condition) whose
  broadcast keeps the shape (neutral.py); a provably zero LSTM/GRU/RNN initial state dropped
  (recurrent_state.py); a Reshape target or Expand shape computed at run time that symbolic dims
  prove constant or the input's own (shape_rules.py, symbolic.py); and chains that compose:
  Transpose∘Transpose (perm composition, identity removed), Reshape∘Reshape (zeros resolved
  first), Reshape∘Transpose of size-1 axes, Unsqueeze∘Unsqueeze, Cast∘Cast where the middle type
  loses nothing, Slice chains, a Slice of a Slice over other axes (slice_rules.py).
- matmul-to-gemm: a 2-D MatMul + bias Add = Gemm (TensorRT prefers MatMul; target-dependent).

Every rewrite computes in float re-association at most, hence `reassoc` tolerance.
"""

from __future__ import annotations

from typing import ClassVar

import onnx_ir as ir
from onnxscript.rewriter.rules import common as rules

from graphopt.declared_shapes import repair_exposed
from graphopt.pass_api import Pass, PassContext, PassResult, default_opset
from graphopt.tolerance import Reassoc
from graphopt.passes.fusion.bn_fold import bn_fold_rules
from graphopt.passes.fusion.conv_affine import conv_channel_rules
from graphopt.passes.fusion.neutral import constant_where_rule, neutral_rules
from graphopt.passes.fusion.recurrent_state import zero_state_rules
from graphopt.passes.fusion.rules import RuleGroup, RuleOptions, apply_rule_group
from graphopt.passes.fusion.slice_rules import slice_of_slice_rule
from graphopt.passes.fusion.safe_rules import (clip_then_clip_rule, clip_then_relu_rule, dropout_inference_rule,
                                               pad_noop_rule, relu_then_clip_rule, reshape_noop_rule)
from graphopt.passes.fusion.shape_rules import (expand_own_shape_rule, reshape_reshape_exact_rule, reshape_target_rule,
                                                reshape_unit_transpose_rule, unsqueeze_unsqueeze_rule)

FUSION_TOLERANCE = Reassoc(rtol=1e-4, atol=1e-5)


class RuleGroupPass(Pass):
    """A pass that applies one group of rewrite rules (`group`) to a fixed point."""

    Options = RuleOptions
    tolerance = FUSION_TOLERANCE
    group: ClassVar[RuleGroup]

    def requires(self, model: ir.Model, ctx: PassContext) -> str | None:
        return self.group.opset_refusal(default_opset(model))

    def run(self, model: ir.Model, ctx: PassContext) -> PassResult:
        return apply_rule_group(self.name, self.group, model, ctx, self.options.max_rounds)


class FuseBn(RuleGroupPass):
    name = "fuse-bn"
    summary = "fold BatchNormalization into the preceding Conv / ConvTranspose / Gemm"
    group = RuleGroup.of(needs_shapes=True, **bn_fold_rules())


class FuseConvAffine(RuleGroupPass):
    name = "fuse-conv-affine"
    summary = "fold per-channel Mul/Add with constants into an adjacent Conv"
    group = RuleGroup.of(conv_channel=conv_channel_rules(), affine_then_conv=rules.affine_conv_fusion_rule)


class FusePadConv(RuleGroupPass):
    name = "fuse-pad-conv"
    summary = "fold a constant zero Pad into the following Conv's pads"
    group = RuleGroup.of(normalize_pads=rules.normalize_pad_format_conv_rule,
                         pad_into_conv=rules.fuse_pad_into_conv_rule)


class FuseActivations(RuleGroupPass):
    name = "fuse-activations"
    summary = "merge Relu/Clip chains, Min/Max into Clip, decomposed HardSwish"
    group = RuleGroup.of(
        rule_min_opsets={"hardswish": 14},  # HardSwish exists from opset 14
        relu_relu=rules.successive_relu_rule, clip_clip=clip_then_clip_rule,
        relu_clip=relu_then_clip_rule, clip_relu=clip_then_relu_rule,
        min_min=rules.min_min_rule, max_max=rules.max_max_rule, min_max=rules.min_max_rule,
        max_min=rules.max_min_rule, hardswish=rules.fuse_hardswish_rules())


class Simplify(RuleGroupPass):
    name = "simplify"
    summary = ("remove no-op Cast/Expand/Transpose/Dropout/+0/*1, constant And/Or/Where, zero recurrent "
               "states; resolve run-time Reshape targets; collapse Transpose/Reshape/Unsqueeze/Cast/Slice chains")
    group = RuleGroup.of(
        needs_shapes=True, reshape_target=reshape_target_rule, expand_own_shape=expand_own_shape_rule,
        **zero_state_rules(), reshape_noop=reshape_noop_rule, pad_noop=pad_noop_rule,
        cast_noop=rules.no_op_cast_rule, expand_noop=rules.no_op_expand_rule,
        transpose_noop=rules.no_op_transpose_rule, dropout_inference=dropout_inference_rule,
        dropout_zero=rules.dropout_zero_rule, **neutral_rules(), constant_where=constant_where_rule,
        transpose_transpose=rules.transpose_transpose_rule, reshape_unit_transpose=reshape_unit_transpose_rule,
        reshape_reshape_exact=reshape_reshape_exact_rule, reshape_reshape=rules.reshape_reshape_rule,
        unsqueeze_unsqueeze=unsqueeze_unsqueeze_rule, cast_cast=rules.cast_cast_rule,
        squeeze_reshape_1d=rules.squeeze_reshape_1d_rule, collapse_slice=rules.collapse_slice_rule,
        collapse_slice2=rules.collapse_slice2_rule, slice_split=rules.slice_split_rule,
        slice_of_slice=slice_of_slice_rule)

    def run(self, model: ir.Model, ctx: PassContext) -> PassResult:
        result = super().run(model, ctx)
        if result.modified:
            repaired = repair_exposed(result.model)  # a resolved Reshape target may expose them
            if repaired:
                result.stats["declarations_repaired"] = repaired
        return result


class MatmulToGemm(RuleGroupPass):
    name = "matmul-to-gemm"
    summary = "2-D MatMul + bias Add into Gemm (not for TensorRT targets)"
    group = RuleGroup.of(
        matmul_add=rules.matmul_add_to_gemm_rule, transpose_a=rules.transpose_a_matmul_add_to_gemm_rule,
        transpose_b=rules.transpose_b_matmul_add_to_gemm_rule,
        transpose_ab=rules.transpose_ab_matmul_add_to_gemm_rule)
