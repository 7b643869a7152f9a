"""FP8 E4M3FN Q/DQ (activation_type / weight_type = float8e4m3fn): opset 19, scale = amax / 448,
zero point 0, what ONNX Runtime's QuantizeLinear computes."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import onnx
import pytest

from graphopt.errors import InputError
from graphopt.passes.quantize.options import QuantizeOptions, resolve_profile
from graphopt.passes.quantize.profiles import TensorType
from graphopt.passes.quantize.qdq import activation_params, fake_quantize, weight_params
from graphopt.recipes import parse_pass_spec
from tests.passes.quantize.test_quantize import _conv_and_gemm_model, _feeds, quantize
from tests.passes.quantize.test_types import _worst_error

FP8 = TensorType("float8e4m3fn", symmetric=True)


def test_float8_params_scale_the_largest_value_to_448():
    qp = activation_params(-2.0, 7.0, FP8)
    assert np.isclose(qp.scale, 7.0 / 448) and qp.zero_point.dtype == np.dtype(ml_dtypes.float8_e4m3fn)
    x = np.array([-2.0, 0.0, 0.3, 7.0, 70.0], np.float32)
    restored = fake_quantize(x, qp)
    assert restored[-1] == pytest.approx(7.0) and restored[1] == 0  # saturates at the range, 0 exact
    assert np.all(np.abs(restored[:4] - x[:4]) <= np.abs(x[:4]) / 16 + 1e-6)  # 3 mantissa bits: <= 1/16
    w = np.array([[0.5, -1.0], [2.0, 0.25]], np.float32)
    wp, q = weight_params(w, 0, FP8)
    assert q.dtype == np.dtype(ml_dtypes.float8_e4m3fn) and np.allclose(wp.scale, [1.0 / 448, 2.0 / 448])
    assert np.allclose(q.astype(np.float32) * wp.scale[:, None], w)  # powers of two are exact in float8


def test_float8_models_run_in_ort_with_float8_initializers():
    proto = _conv_and_gemm_model()
    calib, held = _feeds(proto, 4, scale=0.5, seed=1), _feeds(proto, 3, scale=0.5, seed=2)
    out, result = quantize(proto, calib, method="minmax", profile="tensorrt", activation_type="float8e4m3fn",
                           weight_type="float8e4m3fn")
    assert next(o.version for o in out.opset_import if o.domain in ("", "ai.onnx")) >= 19
    fp8 = [t for t in out.graph.initializer if t.data_type == onnx.TensorProto.FLOAT8E4M3FN]
    assert any("zero_point" in t.name for t in fp8) and any("quantized" in t.name for t in fp8)
    assert not any(t.data_type in (onnx.TensorProto.INT8, onnx.TensorProto.UINT8) for t in out.graph.initializer)
    assert result.stats["quantized_by_op"].get("Conv", 0) > 0
    int8, _ = quantize(proto, calib, method="minmax", profile="tensorrt")
    # ORT 1.32's ReluQuantRewrite drops a Relu before a float8 QuantizeLinear as if the Q clipped at
    # 0 (it does for uint8); with that rule off ORT computes the graph as written
    error = _worst_error(proto, out, held, disabled=("ReluQuantRewrite",))
    assert 0 < error < 4 * _worst_error(proto, int8, held)  # same order as symmetric int8 here
    assert any("ReluQuantRewrite" in note for note in result.stats["notes"])


def test_float8_rules_and_refusals():
    profile = resolve_profile(QuantizeOptions(profile="tensorrt", activation_type="float8e4m3fn",
                                              weight_type="float8e4m3fn"))
    assert profile.min_opset == 19 and not profile.bias_int32 and not profile.latency_check
    assert all(rule.role != "embedding" for rule in profile.ops.values())
    with pytest.raises(InputError, match="method=entropy models 8-bit integer activations; with float8e4m3fn"):
        parse_pass_spec("quantize:activation_type=float8e4m3fn;method=entropy")
    with pytest.raises(InputError, match="weight_bits applies to integer weights, not float8e4m3fn"):
        parse_pass_spec("quantize:weight_type=float8e4m3fn;weight_bits=7")
