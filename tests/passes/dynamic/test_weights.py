"""Dynamic INT8 arithmetic (weights.py), the sensitivity estimate (sensitivity.py) and the
int32-overflow refusal, against ONNX Runtime and exact numpy products."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from graphopt.pass_api import PassContext
from graphopt.passes.dynamic.build import quantize_units
from graphopt.exclusion import exclusion
from graphopt.passes.dynamic.select import select
from graphopt.passes.dynamic.sensitivity import unit_sqnr
from graphopt.passes.dynamic.weights import dynamic_matmul, dynamic_quantize, max_depth, quantize_weight, weight_bits
from graphopt.registry import get_pass

RNG = np.random.default_rng(11)


@pytest.mark.parametrize("bits", [7, 8])
def test_weights_are_symmetric_per_output_channel(bits):
    w = RNG.standard_normal((32, 6)).astype(np.float32) * np.array([1, 2, 4, 8, 0, 1], np.float32)
    made = quantize_weight(w, 1, bits)
    qmax = 2 ** (bits - 1) - 1
    assert made.q.dtype == np.int8 and made.scale.shape == (6,)
    np.testing.assert_allclose(made.scale[:4], np.abs(w[:, :4]).max(axis=0) / qmax, rtol=1e-6)
    assert made.scale[4] == 1.0 and not made.q[:, 4].any()  # an all-zero channel: scale 1, never 0
    assert np.abs(made.q).max() == qmax
    assert np.abs(made.q * made.scale - w).max() <= made.scale.max() / 2 + 1e-6
    per_tensor = quantize_weight(w, None, bits)
    assert per_tensor.scale.shape == () and per_tensor.sqnr_db < made.sqnr_db


def test_dynamic_quantize_matches_onnx_runtime():
    node = helper.make_node("DynamicQuantizeLinear", ["x"], ["q", "s", "z"])
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 50])],
                              [helper.make_tensor_value_info(n, t, s) for n, t, s in
                               (("q", TensorProto.UINT8, [3, 50]), ("s", TensorProto.FLOAT, []),
                                ("z", TensorProto.UINT8, []))])
    session = ort.InferenceSession(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
                                   .SerializeToString(), providers=["CPUExecutionProvider"])
    for shift in (-3.0, 0.0, 2.0):  # ranges that straddle 0, are all negative, all positive
        x = (RNG.standard_normal((3, 50)) + shift).astype(np.float32)
        q, s, z = session.run(None, {"x": x})
        mine = dynamic_quantize(x)
        assert mine[1] == pytest.approx(float(s), rel=1e-6) and mine[2] == z
        assert np.abs(mine[0].astype(int) - q.astype(int)).max() <= 1 and np.mean(mine[0] == q) > 0.99


def test_dynamic_matmul_is_the_integer_product_rescaled():
    x = RNG.standard_normal((2, 5, 24)).astype(np.float32)
    w = RNG.standard_normal((24, 7)).astype(np.float32)
    made = quantize_weight(w, 1, 8)
    q, s, z = dynamic_quantize(x)
    expected = ((q.astype(np.int64) - int(z)) @ made.q.astype(np.int64)) * (np.float64(s) * made.scale)
    np.testing.assert_allclose(dynamic_matmul(x, made), expected, rtol=1e-6, atol=1e-6)
    assert np.abs(dynamic_matmul(x, made) - x @ w).max() < 0.05 * np.abs(x @ w).max()


def test_weight_bits_follow_the_cpu():
    assert weight_bits(frozenset({"avx2"})) == 7
    assert weight_bits(frozenset({"avx2", "avx512_vnni"})) == 8
    assert weight_bits(frozenset({"avx2", "avx_vnni"})) == 8
    assert weight_bits(frozenset()) == 8
    assert max_depth(8) == (2**31 - 1) // (255 * 127) and max_depth(7) > max_depth(8)


def test_a_reduction_too_long_for_int32_stays_float():
    k = max_depth(8) + 1
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"], name="long")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, k])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])],
                              [numpy_helper.from_array(np.ones((k, 2), np.float32), "w")])
    model = ir.serde.deserialize_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    result = get_pass("quantize-dynamic")(weight_bits=8, speed_check=False).run(model, PassContext())
    assert not result.modified and "overflow the int32 accumulator" in result.stats["kept_float"]["long"]


def test_the_sensitivity_estimate_matches_the_exact_output_sqnr():
    k, n = 64, 32
    x_scale = np.ones(k, np.float32)
    x_scale[:2] = 30.0  # outlier channels
    nodes = [helper.make_node("Mul", ["x", "boost"], ["xb"]), helper.make_node("MatMul", ["xb", "w"], ["y"], name="mm"),
             helper.make_node("Gemm", ["y", "w2"], ["z"], name="gemm", transB=1, alpha=2.0)]
    w, w2 = RNG.standard_normal((k, n)).astype(np.float32), RNG.standard_normal((n, n)).astype(np.float32)
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [8, k])],
                              [helper.make_tensor_value_info("z", TensorProto.FLOAT, [8, n])],
                              [numpy_helper.from_array(a, name)
                               for name, a in (("boost", x_scale), ("w", w), ("w2", w2))])
    proto = onnx.shape_inference.infer_shapes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    model = ir.serde.deserialize_model(proto)
    found = select(model.graph, ("MatMul", "Gemm"), exclusion((), (), ""), 8)
    weights = quantize_units(model.graph, found.units, True, 8)
    feeds = [{"x": RNG.standard_normal((8, k)).astype(np.float32)} for _ in range(6)]
    estimate = {key: v["none"] for key, v in unit_sqnr(model, found.units, feeds, True, 8).items()}
    exact = {"mm": [0.0, 0.0], "gemm": [0.0, 0.0]}
    for feed in feeds:
        xb = feed["x"] * x_scale
        y = xb @ w
        for key, inp, ref in (("mm", xb, y), ("gemm", y, 2 * y @ w2.T)):
            got = dynamic_matmul(inp, weights[key]) * (2 if key == "gemm" else 1)
            exact[key][0] += float(np.sum(ref.astype(np.float64) ** 2))
            exact[key][1] += float(np.sum((ref - got).astype(np.float64) ** 2))
    for key, (signal, noise) in exact.items():
        assert estimate[key] == pytest.approx(10 * np.log10(signal / noise), abs=1.0), key
    assert estimate["mm"] < estimate["gemm"]  # the outlier channels make mm the sensitive one
