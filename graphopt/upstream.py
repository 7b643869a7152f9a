"""The private onnxscript / onnx_ir / onnxruntime names graphopt depends on, imported in one place.

onnxscript and onnx_ir keep their implementation in underscore modules and may move or rename
them in any minor release. graphopt imports such a name only here, so an upgrade that moves
one breaks this module alone (and tests/test_upstream.py says which name), and the fix is one
import line. Names the libraries export publicly are imported from their public path where
they are used, never from here. Each import below says what would retire it.
"""

from __future__ import annotations

# no public equivalent in onnx_ir 1.1.0 (onnx_ir.passes.common exports the passes only);
# retire when onnx_ir exports call_onnx_api publicly.
from onnx_ir.passes.common._c_api_utils import call_onnx_api

# no public equivalent in onnxscript 0.7.2: onnxscript.optimizer exports fold_constants_ir,
# a function, but graphopt subclasses the pass (folding._OpsetSafeFolder); retire when
# onnxscript.optimizer exports FoldConstantsPass.
from onnxscript.optimizer._constant_folding import FoldConstantsPass

# no public equivalent in onnxscript 0.7.2 (onnxscript.rewriter.rules.fusion exports
# nothing); graphopt subclasses these rule classes (fusion.normalization). Retire when
# onnxscript.rewriter.rules.fusion exports them.
from onnxscript.rewriter.rules.fusion._layer_norm import LayerNormBiasFusion, LayerNormFusion
from onnxscript.rewriter.rules.fusion._rms_normalization import RmsNormFusion

# no public equivalent in onnxscript 0.7.2: onnxscript.version_converter exports
# convert_version and ConvertVersionPass, but not SUPPORTED_MIN/MAX_ONNX_OPSET nor the
# logger that reports unconverted nodes (passes.opset needs all three). Retire when the
# supported range is public.
from onnxscript.version_converter import _version_converter as onnxscript_version_converter



def ort_kernel_definitions() -> list:
    """Every kernel the installed ONNX Runtime registers (provider, domain, op, version range,
    type constraints), from its compiled module: no public API lists them in onnxruntime 1.32
    (ORT's own tools read the same call). Retire when onnxruntime exposes the kernel registry.
    Imported on call: the module is large and only the float16 pass needs it."""
    from onnxruntime.capi import onnxruntime_pybind11_state

    return onnxruntime_pybind11_state.get_all_opkernel_def()


__all__ = [
    "ort_kernel_definitions",
    "FoldConstantsPass",
    "LayerNormBiasFusion",
    "LayerNormFusion",
    "RmsNormFusion",
    "call_onnx_api",
    "onnxscript_version_converter",
]
