"""ONNX Runtime contrib fusions (target `ort` only), wrapping onnxscript's `optimize_for_ort`.

Fuses transformer subgraphs into com.microsoft ops that ONNX Runtime's kernels implement in
one pass: SkipLayerNormalization (x + residual, then LayerNorm), BiasGelu, FastGelu (the tanh
approximation of GELU), Attention / MultiHeadAttention, rotary embeddings, RMS norms. FastGelu
differs from erf-GELU by up to ~1e-3 in absolute terms, so the tolerance is looser than the
standard fusions'. Other runtimes (TensorRT, OpenVINO except some) cannot parse these ops;
`graphopt inspect --target` says which.
"""

from __future__ import annotations

import onnx_ir as ir
from onnxscript.rewriter.ort_fusions import optimize_for_ort

from graphopt.pass_api import Pass, PassContext, PassResult, quiet_libraries, register
from graphopt.tolerance import Reassoc


@register
class OrtFusions(Pass):
    name = "ort-fusions"
    summary = "ONNX Runtime contrib fusions (Attention, SkipLayerNorm, BiasGelu, ...): target ort only"
    tolerance = Reassoc(rtol=2e-3, atol=1e-3)

    def run(self, model: ir.Model, ctx: PassContext) -> PassResult:
        before = sum(1 for _ in model.graph)
        with quiet_libraries():
            model, counts = optimize_for_ort(model)
        fused = {name: n for name, n in counts.items() if n}
        for name in counts:
            if not counts[name]:
                ctx.no_match(self.name, "model", f"{name}: no match")
        after = sum(1 for _ in model.graph)
        return PassResult(model, bool(fused) or after != before, {"fusions": fused})
