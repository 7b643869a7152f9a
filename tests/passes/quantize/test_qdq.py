"""Quantization arithmetic (scales, zero points, per-channel weights, INT32 bias) and the Q/DQ
writer, checked against the formulas and against ONNX Runtime's QuantizeLinear/DequantizeLinear."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest

from conftest import parse, run_ort
from graphopt.passes.quantize.profiles import S8_SYM, U8_ASYM, TensorType, cpu_int8_class, get_profile
from graphopt.passes.quantize.qdq import (INT32_MAX, QdqWriter, QParams, activation_params, bias_params,
                                       fake_quantize, weight_params, weight_sqnr)

RNG = np.random.default_rng(0)
S7 = TensorType("int8", symmetric=True, bits=7)
U8_WEIGHTS = TensorType("uint8", symmetric=True)


def test_asymmetric_uint8_range_keeps_zero_exact():
    qp = activation_params(-1.0, 3.0, U8_ASYM)
    assert qp.scale == pytest.approx(4.0 / 255)
    assert qp.zero_point.dtype == np.uint8 and int(qp.zero_point) == 64
    x = np.array([-1.0, 0.0, 3.0], np.float32)
    restored = fake_quantize(x, qp)
    assert restored[1] == 0.0
    np.testing.assert_allclose(restored, x, atol=float(qp.scale) / 2 + 1e-7)


def test_positive_range_is_widened_to_contain_zero():
    qp = activation_params(2.0, 6.0, U8_ASYM)  # e.g. after a Relu: [0, 6]
    assert int(qp.zero_point) == 0 and qp.scale == pytest.approx(6.0 / 255)


def test_symmetric_int8_has_zero_point_zero():
    qp = activation_params(-2.0, 5.0, S8_SYM)
    assert qp.zero_point.dtype == np.int8 and int(qp.zero_point) == 0
    assert qp.scale == pytest.approx(5.0 / 127)


@pytest.mark.parametrize("lo, hi", [(0.0, 0.0), (np.nan, 1.0), (-np.inf, np.inf), (np.nan, np.nan)])
def test_degenerate_ranges_give_a_safe_scale(lo, hi):
    for qtype in (U8_ASYM, S8_SYM):
        qp = activation_params(lo, hi, qtype)
        assert np.isfinite(qp.scale) and qp.scale > 0
        assert np.all(np.isfinite(fake_quantize(np.array([0.0, 1.0], np.float32), qp)))


def test_per_channel_weight_scales_use_the_channel_max():
    w = RNG.standard_normal((4, 3, 3, 3)).astype(np.float32)
    w[2] = 0.0  # an all-zero output channel
    qp, q = weight_params(w, 0, S8_SYM)
    amax = np.abs(w).reshape(4, -1).max(axis=1)
    np.testing.assert_allclose(qp.scale[[0, 1, 3]], amax[[0, 1, 3]] / 127, rtol=1e-6)
    assert qp.scale[2] == 1.0 and not np.any(q[2])
    assert q.dtype == np.int8 and np.abs(q).max() == 127 and qp.axis == 0
    assert weight_sqnr(w, qp, q) > 35


def test_seven_bit_weights_stay_within_63():
    w = RNG.standard_normal((8, 16)).astype(np.float32)
    qp, q = weight_params(w, 1, S7)
    assert np.abs(q).max() == 63 and qp.scale.shape == (16,)


def test_uint8_weights_are_symmetric_around_128():
    w = RNG.standard_normal((8, 16)).astype(np.float32)
    qp, q = weight_params(w, 1, U8_WEIGHTS)
    assert q.dtype == np.uint8 and np.all(qp.zero_point == 128)
    restored = (q.astype(np.float32) - 128) * qp.scale
    np.testing.assert_allclose(restored, w, atol=float(qp.scale.max()) / 2 + 1e-7)


def test_nonfinite_weights_are_zeroed_not_propagated():
    w = np.array([[1.0, np.nan], [np.inf, -2.0]], np.float32)
    qp, q = weight_params(w, 0, S8_SYM)
    assert np.all(np.isfinite(qp.scale)) and q[0, 1] == 0 and q[1, 0] == 0


def test_int32_bias_uses_input_times_weight_scale():
    w = RNG.standard_normal((4, 8)).astype(np.float32)
    qp, _ = weight_params(w, 0, S8_SYM)
    bias = np.array([0.5, -1.0, 0.0, 2.0], np.float32)
    bp, bq, grown, _ = bias_params(bias, 0.02, qp, w, S8_SYM)
    assert grown is None and bq.dtype == np.int32
    np.testing.assert_allclose(bp.scale, 0.02 * qp.scale, rtol=1e-6)
    np.testing.assert_allclose(bq * bp.scale, bias, atol=float(bp.scale.max()))


def test_bias_that_would_overflow_int32_grows_the_weight_scale():
    w = np.full((2, 4), 1e-6, np.float32)
    qp, _ = weight_params(w, 0, S8_SYM)
    bias = np.array([1e6, 0.0], np.float32)
    bp, bq, grown, grown_q = bias_params(bias, 1e-3, qp, w, S8_SYM)
    assert grown is not None and grown.scale[0] > qp.scale[0] and grown.scale[1] == qp.scale[1]
    assert np.abs(bq.astype(np.int64)).max() < INT32_MAX
    np.testing.assert_allclose(bq * bp.scale, bias, rtol=1e-6)


def test_writer_output_matches_onnx_runtime():
    model = ir.serde.deserialize_model(parse("""
        <ir_version: 9, opset_import: ["" : 13]>
        g (float[2, 4] x) => (float[2, 4] y) { y = Relu(x) }"""))
    relu = model.graph.node(0)
    qp = activation_params(-1.0, 2.0, U8_ASYM)
    used = set()

    def fresh(base: str) -> str:
        name, i = base, 0
        while name in used:
            i += 1
            name = f"{base}_{i}"
        used.add(name)
        return name

    writer = QdqWriter(model.graph, fresh)
    dq = writer.quantize_dequantize(model.graph.inputs[0], qp)
    relu.replace_input_with(0, dq)
    model.graph.sort()
    proto = ir.serde.serialize_model(model)
    onnx.checker.check_model(proto, full_check=True)
    x = np.array([[-3.0, -0.01, 0.5, 1.0], [1.99, 2.5, 0.0071, -0.7]], np.float32)
    (got,) = run_ort(proto, {"x": x})
    np.testing.assert_array_equal(got, np.maximum(fake_quantize(x, qp), 0))
    assert writer.added_nodes == 2


def test_per_channel_dequantized_constant_matches_onnx_runtime():
    w = RNG.standard_normal((4, 5)).astype(np.float32)
    model = ir.serde.deserialize_model(parse("""
        <ir_version: 9, opset_import: ["" : 13]>
        g (float[3, 4] x, float[4, 5] w) => (float[3, 5] y) { y = MatMul(x, w) }"""))
    qp, q = weight_params(w, 1, S8_SYM)
    writer = QdqWriter(model.graph, lambda base: base)
    restored = writer.dequantized_constant("w", q, qp, ir.DataType.FLOAT)
    model.graph.node(0).replace_input_with(1, restored)
    model.graph.inputs.pop()
    model.graph.sort()
    x = RNG.standard_normal((3, 4)).astype(np.float32)
    (got,) = run_ort(ir.serde.serialize_model(model), {"x": x})
    np.testing.assert_allclose(got, x @ (q.astype(np.float32) * qp.scale), rtol=1e-5, atol=1e-6)


def test_qparams_dtype_follows_zero_point():
    assert QParams(np.float32(1.0), np.array(0, np.uint8)).dtype == np.uint8


@pytest.mark.parametrize("flags, expected", [
    ({"avx2", "fma"}, "avx2"), ({"avx2", "avx512_vnni"}, "vnni"), ({"avx2", "avx_vnni"}, "vnni"),
    ({"avx2", "amx_int8", "amx_tile"}, "amx"), (set(), "other")])
def test_cpu_class_picks_the_exact_fast_weight_type(flags, expected):
    assert cpu_int8_class(frozenset(flags)) == expected
    profile = get_profile("ort-cpu", frozenset(flags))
    bits = profile.weight.bits
    assert (bits == 7) == (expected == "avx2")  # reduce_range only where vpmaddubsw saturates
    assert profile.weight.dtype == ("uint8" if expected == "other" else "int8")
