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

from graphopt.pass_api import (Pass, PassContext, PassResult, default_opset, quiet_libraries,
                               structure_fingerprint)
from graphopt.passes.folding import NEEDS_OPSET_13, initializer_inputs_kept
from graphopt.size import data_bytes
from graphopt.tolerance import Reassoc


class OrtFusions(Pass):
    name = "ort-fusions"
    summary = "ONNX Runtime contrib fusions (Attention, SkipLayerNorm, BiasGelu, ...): target ort only"
    tolerance = Reassoc(rtol=2e-3, atol=1e-3)

    def requires(self, model: ir.Model, ctx: PassContext) -> str | None:
        return _refusal(model)

    def run(self, model: ir.Model, ctx: PassContext) -> PassResult:
        if (skipped := self.skip_result(model, ctx)) is not None:
            return skipped
        before, bytes_before = structure_fingerprint(model), data_bytes(model)
        with quiet_libraries(), initializer_inputs_kept(model):
            model, counts = optimize_for_ort(model)
        fused = {name: n for name, n in counts.items() if n}
        for name in counts:
            if not counts[name]:
                ctx.no_match(self.name, "model", f"{name}: no match")
        # optimize_for_ort also cleans up (e.g. drops IR-3 initializer inputs) without counting it
        return PassResult(model, bool(fused) or structure_fingerprint(model) != before,
                          {"fusions": fused, "bytes_added": data_bytes(model) - bytes_before})


def _refusal(model: ir.Model) -> str | None:
    """optimize_for_ort constant-folds with onnxscript's folder, which rewrites these sequence ops
    into opset-13 forms (axes/split as inputs) whatever the model's opset (see folding.py)."""
    opset = default_opset(model)
    if opset >= 13:
        return None
    found = sorted({n.op_type for n in ir.traversal.RecursiveGraphIterator(model.graph)
                    if n.domain in ("", "ai.onnx") and n.op_type in NEEDS_OPSET_13})
    if found:
        return (f"{', '.join(found)} at opset {opset}: onnxscript's optimize_for_ort would rewrite it "
                "into an opset-13 form (raise the opset first)")
    return None
