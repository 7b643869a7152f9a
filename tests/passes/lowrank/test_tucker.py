"""`tucker`: Conv (group 1) as 1x1 → core → 1x1 (or two 1x1s for 1x1 kernels); numerics in ORT
over strides/pads/dilations/bias, ranks, refusals, the FLOP rule and the budget mode."""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from conftest import run_ort
from graphopt import optimize
from graphopt.errors import InputError
from graphopt.pass_api import PassContext
from graphopt.registry import get_pass

RNG = np.random.default_rng(1)
QUIET = {"speed_check": False, "latency_runs": 0, "min_size": 0}
CIN, COUT = 24, 32


def _kernel(k: int, r_out: int = 8, r_in: int = 6, noise: float = 0.0) -> np.ndarray:
    core = RNG.standard_normal((r_out, r_in, k, k))
    w = np.einsum("abhw,oa,ib->oihw", core, RNG.standard_normal((COUT, r_out)), RNG.standard_normal((CIN, r_in)))
    return (w + noise * RNG.standard_normal(w.shape)).astype(np.float32)


def conv_model(weight: np.ndarray, bias: bool = True, group: int = 1, **attrs) -> onnx.ModelProto:
    inits = [numpy_helper.from_array(weight, "w")]
    inputs = ["x", "w"]
    if bias:
        inits.append(numpy_helper.from_array(RNG.standard_normal(weight.shape[0]).astype(np.float32), "b"))
        inputs.append("b")
    node = helper.make_node("Conv", inputs, ["y"], name="conv", group=group, **attrs)
    cin = weight.shape[1] * group
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", cin, 17, 15])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", weight.shape[0], "h", "w"])],
                              inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    onnx.checker.check_model(model, full_check=True)
    return model


def _feed(cin: int = CIN) -> dict:
    return {"x": RNG.standard_normal((2, cin, 17, 15)).astype(np.float32)}


def apply(proto, feeds, calibration=None, **options) -> tuple[ir.Model, dict]:
    model = ir.serde.deserialize_model(proto)
    result = get_pass("tucker")(**{**QUIET, **options}).run(model, PassContext(holdout=feeds, calibration=calibration))
    return result.model, result.stats


def _relative(proto, model, feed) -> float:
    ref = run_ort(proto, feed)[0]
    got = run_ort(ir.serde.serialize_model(model), feed)[0]
    assert got.shape == ref.shape
    return float(np.linalg.norm(got - ref) / np.linalg.norm(ref))


def _convs(model: ir.Model) -> list[list[int]]:
    return [list(n.inputs[1].const_value.shape) for n in model.graph if n.op_type == "Conv"]


@pytest.mark.parametrize("k, attrs, bias", [
    (3, {"pads": [1, 1, 1, 1]}, True),
    (3, {"strides": [2, 2], "pads": [0, 1, 1, 0]}, True),
    (5, {"dilations": [2, 2], "pads": [4, 4, 4, 4]}, False),
    (3, {"auto_pad": "SAME_UPPER", "strides": [2, 1]}, True),
])
def test_kxk_conv_becomes_pointwise_core_pointwise(k, attrs, bias):
    proto = conv_model(_kernel(k), bias=bias, **attrs)
    feed = _feed()
    model, stats = apply(proto, [feed], energy=0.99999)
    assert _convs(model) == [[6, CIN, 1, 1], [8, 6, k, k], [COUT, 8, 1, 1]]
    assert (len(model.graph.node(-1).inputs) == 3) == bias  # the bias sits on the last conv
    assert model.graph.node(-1).outputs[0].name == "y"
    (row,) = stats["layers"]
    assert row["rank"] == [8, 6] and row["flops_after"] < row["flops_before"]
    assert _relative(proto, model, feed) < 1e-4


def test_pointwise_conv_becomes_two_pointwise_convs_with_the_stride_first():
    w = (RNG.standard_normal((COUT, 5)) @ RNG.standard_normal((5, CIN))).astype(np.float32)[:, :, None, None]
    proto = conv_model(w, strides=[2, 2])
    feed = _feed()
    model, stats = apply(proto, [feed], energy=0.99999)
    assert _convs(model) == [[5, CIN, 1, 1], [COUT, 5, 1, 1]]
    assert list(model.graph.node(0).attributes.get_ints("strides")) == [2, 2]
    assert stats["layers"][0]["rank"] == [5]
    assert _relative(proto, model, feed) < 1e-4


def test_full_rank_input_mode_has_no_first_pointwise_conv():
    proto = conv_model(_kernel(3, r_out=4, r_in=CIN), pads=[1, 1, 1, 1])
    feed = _feed()
    model, stats = apply(proto, [feed], energy=0.99999)
    assert _convs(model) == [[4, CIN, 3, 3], [COUT, 4, 1, 1]]
    assert _relative(proto, model, feed) < 1e-4


def test_lossy_ranks_report_the_real_weight_error():
    proto = conv_model(_kernel(3, noise=2.0), pads=[1, 1, 1, 1])
    model, stats = apply(proto, [_feed()], energy=0.8)
    err = stats["layers"][0]["error"]["plain"]
    assert 0 < err["weight"] == pytest.approx(err["factored_space"], abs=1e-5)


def test_no_flop_saving_is_refused():
    proto = conv_model(RNG.standard_normal((COUT, CIN, 3, 3)).astype(np.float32), pads=[1, 1, 1, 1])
    model, stats = apply(proto, [_feed()], energy=1.0)
    assert _convs(model) == [[COUT, CIN, 3, 3]]
    assert "would not reduce FLOPs" in stats["skipped"][0]["reason"]


def test_grouped_conv_is_skipped_with_reason():
    proto = conv_model(RNG.standard_normal((COUT, CIN // 2, 3, 3)).astype(np.float32), group=2)
    _, stats = apply(proto, [_feed()], energy=0.9)
    assert stats["skipped"] == [{"node": "conv", "reason": "grouped convolution (group=2); Tucker-2 here needs group=1"}]


def test_shared_kernel_is_skipped_with_reason():
    w = numpy_helper.from_array(_kernel(3), "w")
    nodes = [helper.make_node("Conv", ["x", "w"], ["y1"], name="c1", pads=[1, 1, 1, 1]),
             helper.make_node("Conv", ["x", "w"], ["y2"], name="c2", pads=[1, 1, 1, 1])]
    vi = lambda n, s: helper.make_tensor_value_info(n, TensorProto.FLOAT, s)  # noqa: E731
    graph = helper.make_graph(nodes, "g", [vi("x", [1, CIN, 8, 8])], [vi("y1", [1, COUT, 8, 8]),
                                                                        vi("y2", [1, COUT, 8, 8])], [w])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    _, stats = apply(proto, [{"x": np.ones((1, CIN, 8, 8), np.float32)}], energy=0.9)
    assert [s["node"] for s in stats["skipped"]] == ["c1", "c2"]
    assert all("shared by 2 nodes" in s["reason"] for s in stats["skipped"])


def test_rank_options_are_not_tucker_options():
    with pytest.raises(InputError, match="pass 'tucker'"):
        get_pass("tucker")(rank=4)
    with pytest.raises(InputError, match="energy must be in"):
        get_pass("tucker")(energy=0.0)


def test_data_aware_pointwise_is_closer_on_held_out_data():
    mix = np.linalg.qr(RNG.standard_normal((CIN, CIN)))[0] * np.geomspace(10, 0.001, CIN)

    def feed():
        z = RNG.standard_normal((2, 17, 15, CIN)) @ mix.T
        return {"x": np.moveaxis(z, -1, 1).astype(np.float32)}

    proto = conv_model(RNG.standard_normal((COUT, CIN, 1, 1)).astype(np.float32))
    calib, held = [feed() for _ in range(3)], [feed()]
    plain, _ = apply(proto, held, energy=0.8)
    rank = _convs(plain)[0][0]
    aware, stats = apply(proto, held, calibration=lambda: iter(calib), energy=0.8)
    assert stats["data_aware"] is True
    assert _convs(aware)[0][0] == rank  # the rank comes from the weight; data changes the factors
    assert _relative(proto, aware, held[0]) < _relative(proto, plain, held[0])


def _cnn() -> onnx.ModelProto:
    """c0 is nearly rank (8, 6), c1 is random (incompressible)."""
    inits = [numpy_helper.from_array(_kernel(3, noise=0.05), "w0"),
             numpy_helper.from_array(RNG.standard_normal((CIN, COUT, 3, 3)).astype(np.float32), "w1")]
    nodes = [helper.make_node("Conv", ["x", "w0"], ["h"], name="c0", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("Conv", ["r", "w1"], ["y"], name="c1", pads=[1, 1, 1, 1])]
    vi = lambda n, s: helper.make_tensor_value_info(n, TensorProto.FLOAT, s)  # noqa: E731
    graph = helper.make_graph(nodes, "g", [vi("x", ["n", CIN, 17, 15])], [vi("y", ["n", CIN, 17, 15])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)


def test_budget_mode_fits_and_cuts_the_compressible_conv():
    feeds = [_feed() for _ in range(3)]
    result = optimize(_cnn(), passes="tucker:speed_check=false;latency_runs=0;min_size=0;max_evals=10",
                      calib=feeds[:2], data=feeds[2:], budget={"cosine": 0.995})
    record = result.report["passes"][0]
    stats = record["stats"]
    assert record["applied"] and record["verify"]["cosine"] >= 0.995
    factored = {row["node"]: row for row in stats["layers"]}
    assert "c0" in factored  # nearly rank (8, 6): cheap to cut
    assert stats["flops_after"] < stats["flops_before"]
    assert stats["budget"]["evaluations"] <= 10
