"""The pass library. `PASSES` is THE table: every built-in pass name and the class that runs it.

One family per folder (fusion/, prune/, lowrank/, quantize/, dynamic/, weights/, precision/, cluster/),
single-module passes beside them.
User passes registered with `graphopt.register` join these in `graphopt.registry`.
"""

from graphopt.passes.cleanup import (Cleanup, CommonSubexpressions, DedupInitializers, EliminateIdentity,
                                     InitializersNotInputs, LiftConstants, RemoveUnused, TopologicalSort)
from graphopt.passes.folding import FoldConstants
from graphopt.passes.dynamic import QuantizeDynamic
from graphopt.passes.fusion import (FuseActivations, FuseBn, FuseConvAffine, FuseGelu, FuseLayerNorm, FusePadConv,
                                    FuseRmsNorm, MatmulToGemm, OrtFusions, Simplify)
from graphopt.passes.lowrank import SvdPass, TuckerPass
from graphopt.passes.opset import RaiseOpset
from graphopt.passes.cluster import ClusterWeights
from graphopt.passes.precision import Float16
from graphopt.passes.prune import Prune, PruneChannels, PruneNM
from graphopt.passes.quantize import Quantize
from graphopt.passes.weights import QuantizeWeights

PASSES = {
    # cleanup.py: exact structural passes
    "initializers-not-inputs": InitializersNotInputs,
    "lift-constants": LiftConstants,
    "remove-unused": RemoveUnused,
    "dedup-initializers": DedupInitializers,
    "eliminate-identity": EliminateIdentity,
    "cse": CommonSubexpressions,
    "topo-sort": TopologicalSort,
    "cleanup": Cleanup,
    # folding.py, opset.py
    "fold-constants": FoldConstants,
    "opset": RaiseOpset,
    # fusion/
    "simplify": Simplify,
    "fuse-bn": FuseBn,
    "fuse-conv-affine": FuseConvAffine,
    "fuse-pad-conv": FusePadConv,
    "fuse-activations": FuseActivations,
    "matmul-to-gemm": MatmulToGemm,
    "fuse-layernorm": FuseLayerNorm,
    "fuse-rmsnorm": FuseRmsNorm,
    "fuse-gelu": FuseGelu,
    "ort-fusions": OrtFusions,
    # prune/
    "prune": Prune,
    "prune-nm": PruneNM,
    "prune-channels": PruneChannels,
    # lowrank/
    "svd": SvdPass,
    "tucker": TuckerPass,
    # quantize/
    "quantize": Quantize,
    # dynamic/
    "quantize-dynamic": QuantizeDynamic,
    # weights/
    "quantize-weights": QuantizeWeights,
    # precision/
    "float16": Float16,
    # cluster/
    "cluster": ClusterWeights,
}

__all__ = ["PASSES"]
