"""Fusion: rewrite-rule groups (onnxscript's rules and our own) run to a fixed point, verified."""

from graphopt.passes.fusion.groups import (FuseActivations, FuseBn, FuseConvAffine, FusePadConv, MatmulToGemm,
                                           RuleGroupPass, Simplify)
from graphopt.passes.fusion.normalization import FuseGelu, FuseLayerNorm, FuseRmsNorm
from graphopt.passes.fusion.ort_fusions import OrtFusions

__all__ = ["FuseActivations", "FuseBn", "FuseConvAffine", "FuseGelu", "FuseLayerNorm", "FusePadConv", "FuseRmsNorm",
           "MatmulToGemm", "OrtFusions", "RuleGroupPass", "Simplify"]
