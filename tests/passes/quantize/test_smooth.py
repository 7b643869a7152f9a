"""SmoothQuant and shared weights (issue 19): a weight read by the MatMuls of many inputs (an
unrolled RNN's W, one use per time step) is refused with its reason instead of being copied per
use; a weight whose uses all read the same input gets one smoothed copy; both stay exact in float
and neither grows the weights when quantized."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from conftest import run_ort
from graphopt import optimize
from graphopt.pass_api import PassContext
from graphopt.exclusion import exclusion
from graphopt.passes.quantize.plan import build_plan
from graphopt.passes.quantize.profiles import get_profile
from graphopt.passes.quantize.smooth import smooth
from graphopt.registry import get_pass
from graphopt.size import data_bytes

STEPS, K, BATCH, OUTLIER = 12, 64, 8, 300.0


def unrolled_rnn(shared_input: bool) -> onnx.ModelProto:
    """h_t = Tanh(x_t·W + h_{t-1}) over STEPS steps, one W [K, K] read by every step's MatMul;
    each step reads its own x_t, or every step reads one x (`shared_input`). W's row 0 is
    divided by OUTLIER, the feeds' channel 0 multiplied by it: an outlier input channel in a
    well-behaved float model."""
    rng = np.random.default_rng(0)
    w = (rng.standard_normal((K, K)) / np.sqrt(K)).astype(np.float32)
    w[0] /= OUTLIER
    xs = ["x"] if shared_input else [f"x{t}" for t in range(STEPS)]
    nodes, h = [], "h0"
    for t in range(STEPS):
        x = xs[0] if shared_input else xs[t]
        nodes += [helper.make_node("MatMul", [x, "W"], [f"m{t}"], name=f"step{t}_matmul"),
                  helper.make_node("Add", [f"m{t}", h], [f"a{t}"], name=f"step{t}_add"),
                  helper.make_node("Tanh", [f"a{t}"], [f"h{t + 1}"], name=f"step{t}_tanh")]
        h = f"h{t + 1}"
    inputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [BATCH, K]) for n in [*xs, "h0"]]
    output = helper.make_tensor_value_info(h, TensorProto.FLOAT, [BATCH, K])
    graph = helper.make_graph(nodes, "unrolled", inputs, [output], [numpy_helper.from_array(w, "W")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model, full_check=True)
    return model


def feeds_for(proto: onnx.ModelProto, count: int, seed: int = 1) -> list[dict]:
    rng = np.random.default_rng(seed)
    feeds = []
    for _ in range(count):
        feed = {v.name: rng.standard_normal((BATCH, K)).astype(np.float32) for v in proto.graph.input}
        for name, array in feed.items():
            if name != "h0":
                array[:, 0] *= OUTLIER
        feeds.append(feed)
    return feeds


def smoothed_in_float(proto: onnx.ModelProto, feeds: list[dict]) -> tuple[ir.Model, dict]:
    model = ir.serde.deserialize_model(onnx.shape_inference.infer_shapes(proto))
    plan = build_plan(model.graph, get_profile("ort-cpu", frozenset({"avx2"})), exclusion((), (), ""))
    counter = iter(range(10**6))
    report = smooth(model, plan, lambda: iter(feeds), lambda base: f"{base}_{next(counter)}", 2**26, 7)
    return model, report


def quantized(proto: onnx.ModelProto, feeds: list[dict]):
    model = ir.serde.deserialize_model(proto)
    ctx = PassContext(calibration=lambda: iter(feeds))
    result = get_pass("quantize")(cache_dir="off", speed_check=False, smooth=True).run(model, ctx)
    onnx.checker.check_model(ir.serde.serialize_model(result.model), full_check=True)
    return result


def smoothed_weights(model: ir.Model) -> list[str]:
    return [name for name in model.graph.initializers if name.startswith("W_smoothed")]


def test_weight_shared_by_every_time_step_is_refused_not_copied():
    proto = unrolled_rnn(shared_input=False)
    feeds = feeds_for(proto, 3)
    model, report = smoothed_in_float(proto, feeds)
    assert set(report) == {f"x{t}" for t in range(STEPS)}
    for entry in report.values():
        assert entry["alpha"] == "none" and entry["ratio"] >= 8
        assert entry["not_smoothed"] == (f"weight 'W' is shared by {STEPS} nodes, not all reading this input; "
                                         "smoothing would copy it per use")
    assert smoothed_weights(model) == [] and not any(n.op_type == "Mul" for n in model.graph)
    assert data_bytes(model) == data_bytes(ir.serde.deserialize_model(proto))


def test_quantizing_the_unrolled_rnn_does_not_grow_the_weights():
    proto = unrolled_rnn(shared_input=False)
    feeds = feeds_for(proto, 3)
    result = quantized(proto, feeds)
    assert result.modified
    assert data_bytes(result.model) <= data_bytes(ir.serde.deserialize_model(proto))
    assert "copy it per use" in result.stats["smoothed"]["x0"]["not_smoothed"]
    assert len([n for n in result.model.graph if n.op_type == "DequantizeLinear"
                and n.inputs[0].const_value is not None and n.inputs[0].const_value.size == K * K]) == 1


def test_uses_that_read_the_same_input_share_one_smoothed_copy():
    proto = unrolled_rnn(shared_input=True)
    feeds = feeds_for(proto, 3)
    model, report = smoothed_in_float(proto, feeds)
    assert report["x"]["alpha"] != "none" and "not_smoothed" not in report["x"]
    assert len(smoothed_weights(model)) == 1 and "W" not in model.graph.initializers
    readers = {use.node.name for use in model.graph.initializers[smoothed_weights(model)[0]].uses()}
    assert readers == {f"step{t}_matmul" for t in range(STEPS)}
    assert data_bytes(model) == data_bytes(ir.serde.deserialize_model(proto)) + 4 * K  # W·s, and 1/s
    out = ir.serde.serialize_model(model)
    np.testing.assert_allclose(run_ort(out, feeds[0])[0], run_ort(proto, feeds[0])[0], rtol=1e-4, atol=1e-4)


def test_quantizing_the_shared_input_model_smooths_once_and_shrinks():
    proto = unrolled_rnn(shared_input=True)
    result = quantized(proto, feeds_for(proto, 3))
    assert result.stats["smoothed"]["x"]["alpha"] != "none"
    assert data_bytes(result.model) < data_bytes(ir.serde.deserialize_model(proto))
    assert len([n for n in result.model.graph if n.op_type == "Mul"]) == 1  # X/s, once


@pytest.mark.parametrize("shared_input", [False, True])
def test_the_manager_keeps_quantize_on_shared_weights(shared_input):
    """Through the pass manager, whose growth check runs even with --verify off: applied, not
    rolled back, no larger than float (every unit quantized: no budget fallback keeps W float)."""
    proto = unrolled_rnn(shared_input)
    feeds = feeds_for(proto, 3)
    result = optimize(proto, passes="quantize:speed_check=false;cache_dir=off;fallback=false", data=feeds,
                      calib=feeds, verify="off")
    record = result.report["passes"][0]
    assert record["applied"] and not record["rolled_back"], record["error"]
    assert record["size"]["bytes"] <= result.report["model"]["before"]["bytes"]


def test_a_shared_weight_with_float_readers_declares_its_int8_copy():
    """One reader of W kept float (excluded; the budget fallback does the same): W stays beside
    its int8 copy, quantize declares that copy as `bytes_added`, and the manager keeps the pass."""
    proto = unrolled_rnn(shared_input=False)
    feeds = feeds_for(proto, 3)
    result = optimize(proto, passes="quantize:speed_check=false;cache_dir=off;fallback=false;"
                      "exclude_nodes=step0_matmul", data=feeds, calib=feeds, verify="off")
    record = result.report["passes"][0]
    assert record["applied"] and not record["rolled_back"], record["error"]
    assert record["stats"]["bytes_added"] >= K * K  # the int8 copy of W (and its scales)
    grown = record["size"]["bytes"] - result.report["model"]["before"]["bytes"]
    assert grown <= record["stats"]["bytes_added"] + 1024  # + activation scales and zero points
