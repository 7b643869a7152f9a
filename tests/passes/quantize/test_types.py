"""Activation types: 16-bit activations with 8-bit weights (activation_type=uint16|int16: opset 21
Q/DQ that ONNX Runtime runs, 256x finer activation steps than 8 bits), symmetric activations and
Relu folding, and what quantize says about a model that is quantized already."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from graphopt.errors import InputError
from graphopt.passes.quantize.options import QuantizeOptions, resolve_profile
from graphopt.passes.quantize.profiles import TensorType
from graphopt.passes.quantize.qdq import activation_params
from graphopt.recipes import parse_pass_spec
from tests.passes.quantize.test_quantize import _conv_and_gemm_model, _feeds, _model, quantize


def _worst_error(reference: onnx.ModelProto, candidate: onnx.ModelProto, feeds: list[dict],
                 disabled: tuple[str, ...] = ()) -> float:
    """Largest |difference| of any output on `feeds`, ORT CPU with its default optimizations
    (less `disabled`)."""
    a = ort.InferenceSession(reference.SerializeToString(), providers=["CPUExecutionProvider"])
    b = ort.InferenceSession(candidate.SerializeToString(), providers=["CPUExecutionProvider"],
                             disabled_optimizers=list(disabled))
    return max(float(np.abs(x - y).max()) for f in feeds for x, y in zip(a.run(None, f), b.run(None, f)))


@pytest.mark.parametrize("dtype, symmetric, zero, steps", [("uint16", False, None, 65535), ("int16", True, 0, 32767),
                                                           ("uint8", True, 128, 127)])
def test_activation_params_use_the_whole_16_bit_range(dtype, symmetric, zero, steps):
    qp = activation_params(-1.0, 3.0, TensorType(dtype, symmetric))
    assert qp.zero_point.dtype == np.dtype(dtype)
    if symmetric:
        assert qp.zero_point == zero and np.isclose(qp.scale, 3.0 / steps)
    else:
        assert np.isclose(qp.scale, 4.0 / steps) and qp.zero_point == round(1.0 / qp.scale)


@pytest.mark.parametrize("activation", ["uint16", "int16"])
def test_sixteen_bit_activations_run_in_ort_and_are_finer_than_eight(activation):
    proto = _conv_and_gemm_model()
    calib, held = _feeds(proto, 4, scale=0.5, seed=1), _feeds(proto, 3, scale=0.5, seed=2)
    out16, result = quantize(proto, calib, method="minmax", activation_type=activation)
    out8, result8 = quantize(proto, calib, method="minmax")
    assert next(o.version for o in out16.opset_import if o.domain in ("", "ai.onnx")) >= 21
    types = {onnx.numpy_helper.to_array(t).dtype.name for t in out16.graph.initializer if "zero_point" in t.name}
    assert activation in types and "int8" in types  # 16-bit activations, 8-bit weights
    assert not any(t.data_type == onnx.TensorProto.INT32 for t in out16.graph.initializer)  # bias stays float
    assert result.stats["activation"].startswith(activation)
    # each activation's quantization SQNR gains ~48 dB (256x finer); the 8-bit weights' error stays
    assert min(result.stats["tensor_sqnr_db"].values()) > min(result8.stats["tensor_sqnr_db"].values()) + 40
    assert _worst_error(proto, out16, held) <= 1.1 * _worst_error(proto, out8, held)


def test_symmetric_activations_keep_the_relu_they_cannot_clip():
    """A Relu folds into the Q after it only for an asymmetric Q (z = qmin clips below 0): with
    int8 symmetric activations on ort-cpu it once was folded, and negatives went through."""
    proto = _conv_and_gemm_model()
    calib, held = _feeds(proto, 4, scale=0.5, seed=1), _feeds(proto, 3, scale=0.5, seed=2)
    symmetric, result = quantize(proto, calib, method="minmax", activation_type="int8")
    asymmetric, _ = quantize(proto, calib, method="minmax")
    assert result.stats["relu_folded"] == 0 and sum(n.op_type == "Relu" for n in symmetric.graph.node) > 0
    assert _worst_error(proto, symmetric, held) < 2 * _worst_error(proto, asymmetric, held)


def test_sixteen_bit_rules_and_refusals():
    profile = resolve_profile(QuantizeOptions(activation_type="uint16"))
    assert profile.min_opset == 21 and not profile.latency_check and not profile.bias_int32
    with pytest.raises(InputError, match="method=entropy models 8-bit integer activations; with int16 activations"):
        parse_pass_spec("quantize:activation_type=int16;method=entropy")


def test_an_already_quantized_model_says_so():
    proto = _model("""
<ir_version: 8, opset_import: ["" : 13]>
g (float[1, 4] x) => (float[1, 3] y) {
    q, s, z = DynamicQuantizeLinear(x)
    acc = MatMulInteger(q, w, z)
    f = Cast <to = 1> (acc)
    y = Mul(f, s)
}
""", w=np.ones((4, 3), np.uint8))
    out, result = quantize(proto, _feeds(proto, 2))
    assert not result.modified
    assert result.stats["skipped"] == ("nothing to quantize: the model is quantized already "
                                       "(1 DynamicQuantizeLinear, 1 MatMulInteger)")
