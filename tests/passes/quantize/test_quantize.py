"""The `quantize` pass: placement per profile, what ONNX Runtime makes of it, TensorRT's QDQ rules,
Relu folding and scale sharing, exclusions/overrides, the budget fallback and bad calibration data."""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from conftest import parse, run_ort
from graphopt import optimize
from graphopt.errors import InputError
from graphopt.pass_api import PassContext, default_opset
from graphopt.registry import get_pass
from graphopt.tolerance import Budget
from models.builders import cnn, dynamic_batch_mlp, if_model, mlp
from models.transformer import transformer_block

RNG = np.random.default_rng(0)


def _feeds(proto: onnx.ModelProto, count: int, batch: int = 2, scale: float = 1.0, seed: int | None = None) -> list[dict]:
    rng = RNG if seed is None else np.random.default_rng(seed)
    feeds = []
    for _ in range(count):
        feed = {}
        for value in proto.graph.input:
            shape = [d.dim_value or batch for d in value.type.tensor_type.shape.dim]
            feed[value.name] = (scale * rng.standard_normal(shape)).astype(np.float32)
        feeds.append(feed)
    return feeds


def _model(text: str, **initializers: np.ndarray) -> onnx.ModelProto:
    """Parse `text` and add the given initializers (the text format cannot hold large ones)."""
    proto = onnx.parser.parse_model(text)
    proto.graph.initializer.extend(numpy_helper.from_array(a, n) for n, a in initializers.items())
    onnx.checker.check_model(proto, full_check=True)
    return proto


def _lossless(proto: onnx.ModelProto) -> onnx.ModelProto:
    return optimize(proto, recipe="lossless", data=_feeds(proto, 1)).model


def quantize(proto: onnx.ModelProto, feeds: list[dict], holdout: list[dict] | None = None,
             budget: Budget | None = None, **options):
    model = ir.serde.deserialize_model(proto)
    ctx = PassContext(calibration=lambda: iter(feeds), holdout=holdout or [], budget=budget or Budget())
    options.setdefault("speed_check", False)  # timing: only where a test asks for it
    result = get_pass("quantize")(cache_dir="off", **options).run(model, ctx)
    out = ir.serde.serialize_model(result.model)
    onnx.checker.check_model(out, full_check=True)
    return out, result


def ort_optimized_ops(proto: onnx.ModelProto, tmp_path) -> Counter:
    """Op types of the graph ORT actually runs (ORT_ENABLE_ALL, saved via optimized_model_filepath)."""
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.optimized_model_filepath = str(tmp_path / "ort_optimized.onnx")
    so.log_severity_level = 3
    ort.InferenceSession(proto.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return Counter(n.op_type for n in onnx.load(str(tmp_path / "ort_optimized.onnx")).graph.node)


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.dot(a.ravel(), b.ravel()) / (np.linalg.norm(a) * np.linalg.norm(b)))


def _initializers(proto: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}


# --- ort-cpu: ONNX Runtime really runs integer kernels ------------------------------------

def test_ort_cpu_mlp_runs_integer_gemm_kernels(tmp_path):
    proto = mlp(batch="batch")
    feeds = _feeds(proto, 8)
    out, result = quantize(proto, feeds)
    assert result.stats["quantized_by_op"] == {"Gemm": 1, "MatMul": 2}
    ops = ort_optimized_ops(out, tmp_path)
    assert ops["QGemm"] + ops["MatMulIntegerToFloat"] + ops["QLinearMatMul"] == 3
    assert "MatMul" not in ops
    ref, got = run_ort(proto, feeds[0])[0], run_ort(out, feeds[0])[0]
    assert cosine(ref, got) > 0.999


def test_ort_cpu_cnn_runs_qlinearconv_and_folds_relu(tmp_path):
    proto = _lossless(cnn())
    out, result = quantize(proto, _feeds(proto, 6, scale=0.5))
    stats = result.stats
    assert stats["quantized_by_op"]["Conv"] == 4  # the grouped conv stays float on ort-cpu
    assert "grouped/depthwise" in " ".join(stats["kept_float"].values())
    assert stats["relu_folded"] == 4  # the float grouped conv keeps its Relu
    assert Counter(n.op_type for n in out.graph.node)["Relu"] == 1
    ops = ort_optimized_ops(out, tmp_path)
    assert ops["QLinearConv"] == 4 and ops["QLinearAdd"] == 1  # residual Add between quantized convs
    feed = _feeds(proto, 1, scale=0.5)[0]
    assert cosine(run_ort(proto, feed)[0], run_ort(out, feed)[0]) > 0.99


def test_relu_folded_into_a_zero_point_zero_quantizer():
    proto = _lossless(cnn())
    out, _ = quantize(proto, _feeds(proto, 4, scale=0.5))
    zero_points = _initializers(out)
    for node in out.graph.node:
        if node.op_type == "QuantizeLinear" and node.input[0].startswith("stem"):
            assert int(zero_points[node.input[2]]) == 0  # u8 range [0, hi]: saturation is the Relu


def test_scale_shared_across_maxpool_and_reshape():
    text = """
    <ir_version: 9, opset_import: ["" : 13]>
    g (float[1, 4, 8, 8] x) => (float[1, 6] y) {
        c = Conv <pads = [1, 1, 1, 1]> (x, w)
        p = MaxPool <kernel_shape = [2, 2], strides = [2, 2]> (c)
        f = Reshape(p, shape)
        y = Gemm <transB = 1> (f, wg)
    }"""
    proto = _model(text, w=RNG.standard_normal((4, 4, 3, 3)).astype(np.float32),
                   wg=RNG.standard_normal((6, 64)).astype(np.float32), shape=np.array([1, 64], np.int64))
    out, result = quantize(proto, _feeds(proto, 4))
    assert result.stats["scale_groups"] == 1
    inits = _initializers(out)
    scales = {n.input[0]: float(inits[n.input[1]]) for n in out.graph.node if n.op_type == "QuantizeLinear"}
    assert scales["c"] == scales["p"] == scales["f"]  # one group: ORT drops the Q/DQ around them


def test_a_shared_weight_is_stored_once():
    text = """
    <ir_version: 9, opset_import: ["" : 13]>
    g (float[2, 8] a, float[2, 8] b) => (float[2, 4] y) {
        p = MatMul(a, w)
        q = MatMul(b, w)
        y = Add(p, q)
    }"""
    proto = _model(text, w=RNG.standard_normal((8, 4)).astype(np.float32))
    out, result = quantize(proto, _feeds(proto, 3))
    assert result.stats["quantized_by_op"] == {"MatMul": 2}
    inits = _initializers(out)
    assert [k for k in inits if k.endswith("_quantized")] == ["w_quantized"]
    assert "w" not in inits
    assert Counter(n.op_type for n in out.graph.node)["DequantizeLinear"] == 3  # w once, a, b


def test_weight_axes_per_op(tmp_path):
    text = """
    <ir_version: 9, opset_import: ["" : 13]>
    g (float[1, 3, 6, 6] x, float[2, 5] a) => (float[1, 4, 12, 12] y, float[2, 7] g0, float[2, 7] g1, float[2, 7] m) {
        c = Conv <pads = [1, 1, 1, 1]> (x, wc)
        y = ConvTranspose <strides = [2, 2], output_shape = [12, 12]> (c, wt)
        g0 = Gemm <transB = 0> (a, wg0)
        g1 = Gemm <transB = 1> (a, wg1)
        m = MatMul(a, wm)
    }"""
    shapes = {"wc": (8, 3, 3, 3), "wt": (8, 4, 2, 2), "wg0": (5, 7), "wg1": (7, 5), "wm": (5, 7)}
    proto = _model(text, **{n: RNG.standard_normal(s).astype(np.float32) for n, s in shapes.items()})
    out, _ = quantize(proto, _feeds(proto, 3), profile="tensorrt")
    inits = _initializers(out)
    expected = {"wc": (0, 8), "wt": (1, 4), "wg0": (1, 7), "wg1": (0, 7), "wm": (1, 7)}
    for node in out.graph.node:
        if node.op_type == "DequantizeLinear" and node.input[0].endswith("_quantized") and node.input[0] in inits:
            base = node.input[0][: -len("_quantized")]
            axis = next(a.i for a in node.attribute if a.name == "axis")
            assert (axis, inits[node.input[1]].shape[0]) == expected.pop(base)
    assert not expected


# --- tensorrt: the structural rules of TensorRT's explicit quantization -------------------

def check_tensorrt_qdq_rules(proto: onnx.ModelProto) -> list[str]:
    """TensorRT explicit quantization: INT8 Q/DQ with zero points 0, per-channel weight scales on
    the output-channel axis, no Q on a Conv/MatMul/Gemm output (TensorRT fuses it), and every
    Conv/MatMul/Gemm with a constant weight fed by DQs on both data and weight."""
    inits = _initializers(proto)
    producers = {o: n for n in proto.graph.node for o in n.output}
    problems = []
    for node in proto.graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            zero = inits[node.input[2]]
            if zero.dtype != np.int8 or np.any(zero != 0):
                problems.append(f"{node.name}: zero point {zero.dtype} {zero.ravel()[:3]}")
            if node.op_type == "QuantizeLinear" and producers.get(node.input[0]) is not None \
                    and producers[node.input[0]].op_type in ("Conv", "MatMul", "Gemm", "ConvTranspose"):
                problems.append(f"{node.name}: Q on a {producers[node.input[0]].op_type} output")
        if node.op_type in ("Conv", "ConvTranspose", "Gemm", "MatMul"):
            sources = [producers.get(i) for i in node.input[:2]]
            if any(s is None or s.op_type != "DequantizeLinear" for s in sources):
                problems.append(f"{node.name}: inputs not both from DequantizeLinear")
                continue
            weight_dq = sources[1]
            axis = next((a.i for a in weight_dq.attribute if a.name == "axis"), 1)
            want = {"Conv": 0, "ConvTranspose": 1, "MatMul": 1}.get(node.op_type)
            if node.op_type == "Gemm":
                want = 0 if any(a.name == "transB" and a.i for a in node.attribute) else 1
            if inits[weight_dq.input[1]].size > 1 and axis != want:
                problems.append(f"{node.name}: weight scale axis {axis}, expected {want}")
    return problems


@pytest.mark.parametrize("builder", [lambda: _lossless(cnn()), lambda: _lossless(transformer_block()),
                                     lambda: mlp(batch="batch")])
def test_tensorrt_profile_follows_tensorrt_qdq_rules(builder):
    proto = builder()
    out, result = quantize(proto, _feeds(proto, 4, scale=0.5), profile="tensorrt")
    assert check_tensorrt_qdq_rules(out) == []
    assert result.stats["activation"] == "int8 symmetric"
    feed = _feeds(proto, 1, scale=0.5)[0]
    assert cosine(run_ort(proto, feed)[0], run_ort(out, feed)[0]) > 0.99


def test_tensorrt_residual_add_quantizes_the_skip_input_only():
    proto = _lossless(cnn())
    out, result = quantize(proto, _feeds(proto, 4, scale=0.5), profile="tensorrt")
    producers = {o: n for n in out.graph.node for o in n.output}
    adds = [n for n in out.graph.node if n.op_type == "Add"]
    assert result.stats["quantized_by_op"]["Add"] == 1
    # the Conv side is fused by TensorRT (conv + residual add), the skip side arrives as int8
    assert sorted(producers[i].op_type for i in adds[0].input) == ["Conv", "DequantizeLinear"]
    assert "Relu" in Counter(n.op_type for n in out.graph.node)  # TensorRT fuses it; not folded


def test_tensorrt_checker_catches_violations():
    proto = _lossless(cnn())
    out, _ = quantize(proto, _feeds(proto, 3, scale=0.5))  # ort-cpu: uint8, output Qs
    problems = check_tensorrt_qdq_rules(out)
    assert any("zero point uint8" in p for p in problems) and any("Q on a Conv output" in p for p in problems)


# --- coverage: transformer, embeddings, opset, subgraphs, dynamic shapes ------------------

def test_transformer_block_keeps_layernorm_softmax_and_attention_float_on_ort_cpu():
    proto = _lossless(transformer_block())
    out, result = quantize(proto, _feeds(proto, 4))
    # the projections; QK^T and P·V stay float. Q/K/V (MatMul + bias + Reshape) became Gemms
    # on the flattened input, so ORT adds their bias inside QGemm
    assert result.stats["quantized_by_op"] == {"Gemm": 3, "MatMul": 3}
    assert result.stats["matmul_bias_to_gemm"] == 3
    assert sum("is not constant" in r for r in result.stats["kept_float"].values()) == 2
    ops = Counter(n.op_type for n in out.graph.node)
    assert ops["Softmax"] == 1 and ops["QuantizeLinear"] == 4  # Q/K/V share one input quantizer
    feed = _feeds(proto, 1)[0]
    assert cosine(run_ort(proto, feed)[0], run_ort(out, feed)[0]) > 0.99


def test_matmul_bias_reshape_becomes_gemm_exactly():
    from graphopt.passes.quantize.gemm import matmul_bias_to_gemm

    proto = _lossless(transformer_block())
    model = ir.serde.deserialize_model(onnx.shape_inference.infer_shapes(proto))
    counter = iter(range(10**6))
    assert matmul_bias_to_gemm(model.graph, lambda base: f"{base}_{next(counter)}") == 3
    out = ir.serde.serialize_model(model)
    onnx.checker.check_model(out, full_check=True)
    feed = _feeds(proto, 1)[0]
    np.testing.assert_allclose(run_ort(out, feed)[0], run_ort(proto, feed)[0], rtol=1e-5, atol=1e-5)


# Reshape targets after MatMul + bias: a 0 entry copies the input's dim, which the flattened
# [-1, K] input no longer has (PP-OCR rec's SVTR attention: Concat([0], Shape(x)[1:2], [3, 8, 15]))
PROJECT_RESHAPE = """
<ir_version: 9, opset_import: ["" : 17]>
g (float[N, L, 8] x) => (float[N, L, 3, 4] y) {
    mm = MatMul(x, w)
    h = Add(mm, b)
    dims = Shape <start = 1, end = 2> (x)
    target = Concat <axis = 0> (lead, dims, heads)
    y = Reshape(h, target)
}"""


@pytest.mark.parametrize("lead, rewritten", [([0], 0), ([-1], 1)])
def test_matmul_bias_to_gemm_skips_reshape_targets_that_copy_an_input_dim(lead, rewritten):
    from graphopt.passes.quantize.gemm import matmul_bias_to_gemm

    proto = _model(PROJECT_RESHAPE, w=RNG.standard_normal((8, 12)).astype(np.float32),
                   b=RNG.standard_normal(12).astype(np.float32), lead=np.array(lead, np.int64),
                   heads=np.array([3, 4], np.int64))
    model = ir.serde.deserialize_model(onnx.shape_inference.infer_shapes(proto))
    counter = iter(range(10**6))
    assert matmul_bias_to_gemm(model.graph, lambda base: f"{base}_{next(counter)}") == rewritten
    out = ir.serde.serialize_model(model)
    feed = {"x": RNG.standard_normal((2, 5, 8)).astype(np.float32)}
    np.testing.assert_allclose(run_ort(out, feed)[0], run_ort(proto, feed)[0], rtol=1e-5, atol=1e-5)


def test_softmax_output_takes_its_own_range():
    proto = _lossless(transformer_block())
    out, result = quantize(proto, _feeds(proto, 4), profile="tensorrt")  # quantizes P·V's inputs
    assert result.stats["quantized_by_op"]["MatMul"] == 8
    inits = _initializers(out)
    softmax_out = next(n.output[0] for n in out.graph.node if n.op_type == "Softmax")
    q = next(n for n in out.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == softmax_out)
    assert float(inits[q.input[1]]) == pytest.approx(1 / 127)  # [0, 1] symmetric int8


def test_embedding_gather_reads_an_int8_table():
    text = """
    <ir_version: 9, opset_import: ["" : 13]>
    g (int64[2, 5] ids) => (float[2, 5, 8] y) {
        rows = Gather(table, ids)
        y = Neg(rows)
    }"""
    table = RNG.standard_normal((50, 8)).astype(np.float32)
    proto = _model(text, table=table)
    model = ir.serde.deserialize_model(proto)
    ids = np.array([[1, 7, 0, 49, 3], [2, 2, 9, 10, 11]], np.int64)
    result = get_pass("quantize")(cache_dir="off", speed_check=False).run(
        model, PassContext(calibration=lambda: iter([{"ids": ids}])))
    out = ir.serde.serialize_model(result.model)
    inits = _initializers(out)
    assert inits["table_quantized"].dtype == np.int8 and "table" not in inits
    got = run_ort(out, {"ids": ids})[0]
    np.testing.assert_allclose(-got, table[ids], atol=np.abs(table).max(axis=0).max() / 127)


def test_opset_raised_for_per_channel_weights():
    proto = mlp()
    proto.opset_import[0].version = 12
    out, result = quantize(proto, _feeds(proto, 3))
    assert out.opset_import[0].version == 13
    assert any("opset raised 12 -> 13" in note for note in result.stats["notes"])


def test_per_tensor_weights_keep_the_opset():
    proto = mlp()
    proto.opset_import[0].version = 12
    out, result = quantize(proto, _feeds(proto, 3), per_channel=False)
    assert out.opset_import[0].version == 12
    assert all(not any(a.name == "axis" for a in n.attribute) for n in out.graph.node
               if n.op_type == "DequantizeLinear")
    assert result.stats["quantized_nodes"] == 3 and not result.stats["notes"][1:]


def test_if_branches_stay_float_and_main_graph_is_quantized():
    proto = if_model()
    feeds = _feeds(proto, 16)
    out, result = quantize(proto, feeds)
    assert result.stats["quantized_by_op"] == {"MatMul": 1}
    for feed in feeds[:4]:  # inside the calibrated range: only rounding error
        np.testing.assert_allclose(run_ort(out, feed)[0], run_ort(proto, feed)[0], atol=0.05)


def test_dynamic_batch_calibrates_on_mixed_batch_sizes():
    proto = dynamic_batch_mlp()
    feeds = _feeds(proto, 3, batch=1) + _feeds(proto, 3, batch=5)
    out, _ = quantize(proto, feeds)
    for batch in (1, 7):
        feed = _feeds(proto, 1, batch=batch)[0]
        got = run_ort(out, feed)[0]
        assert got.shape == (batch, 10) and cosine(run_ort(proto, feed)[0], got) > 0.999


def test_weights_in_constant_nodes_are_quantized_alone_or_after_lift_constants():
    text = """
    <ir_version: 9, opset_import: ["" : 13]>
    g (float[2, 4] x) => (float[2, 3] y) {
        w = Constant <value = float[4, 3] {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12}> ()
        y = MatMul(x, w)
    }"""
    proto = parse(text)
    feeds = _feeds(proto, 2)
    alone, result = quantize(proto, feeds)
    assert result.stats["quantized_by_op"] == {"MatMul": 1}
    assert "Constant" not in Counter(n.op_type for n in alone.graph.node)  # the float copy is gone
    lifted = optimize(proto, passes="lift-constants", data=feeds).model
    after_lift, result = quantize(lifted, feeds)
    assert result.stats["quantized_by_op"] == {"MatMul": 1}
    np.testing.assert_array_equal(run_ort(alone, feeds[0])[0], run_ort(after_lift, feeds[0])[0])


def test_weight_computed_at_run_time_is_refused_with_a_reason():
    text = """
    <ir_version: 9, opset_import: ["" : 13]>
    g (float[2, 4] x, float[4, 3] w) => (float[2, 3] y) { y = MatMul(x, w) }"""
    proto = parse(text)
    feed = {"x": RNG.standard_normal((2, 4)).astype(np.float32), "w": RNG.standard_normal((4, 3)).astype(np.float32)}
    _, result = quantize(proto, [feed], profile="tensorrt")
    assert result.stats["quantized_by_op"] == {"MatMul": 1}  # tensorrt: activation x activation is fine


# --- options: exclusions, overrides -------------------------------------------------------

def test_exclusions_by_name_op_and_regex():
    proto = _lossless(cnn())
    feeds = _feeds(proto, 3, scale=0.5)
    convs = [n.name for n in proto.graph.node if n.op_type == "Conv"]
    _, by_name = quantize(proto, feeds, exclude_nodes=(convs[0],))
    assert by_name.stats["kept_float"][convs[0]] == "excluded by name"
    _, by_op = quantize(proto, feeds, exclude_ops=("Conv",))
    assert "Conv" not in by_op.stats["quantized_by_op"]
    _, by_regex = quantize(proto, feeds, exclude_regex="^" + convs[1] + "$")
    assert "matches exclude_regex" in by_regex.stats["kept_float"][convs[1]]


def test_overrides_keep_a_tensor_float_or_fix_its_range():
    proto = mlp()
    feeds = _feeds(proto, 3)
    first = next(n for n in proto.graph.node if n.op_type == "MatMul")
    _, floated = quantize(proto, feeds, overrides=(f"{first.input[0]}=float",))
    assert floated.stats["kept_float"][first.name] == "an input is kept float by an override"
    out, fixed = quantize(proto, feeds, overrides=(f"{first.input[0]}=-2..2",))
    q = next(n for n in out.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == first.input[0])
    assert float(_initializers(out)[q.input[1]]) == pytest.approx(4 / 255)


@pytest.mark.parametrize("options, message", [
    ({"overrides": ("x=1..0",)}, "LO <= HI"), ({"overrides": ("x",)}, "NAME=float"),
    ({"weight_bits": 6}, "weight_bits"), ({"exclude_regex": "("}, "exclude_regex"),
    ({"budget_share": 0.0}, "budget_share"), ({"percentile": 20.0}, "percentile")])
def test_bad_options_are_named(options, message):
    with pytest.raises(InputError, match=message):
        get_pass("quantize")(**options)


# --- accuracy budget ----------------------------------------------------------------------

def _sensitive_mlp() -> onnx.ModelProto:
    """Three MatMuls; the middle one's input has one huge channel, so per-tensor 8-bit
    quantization of that input wipes out the other channels' information."""
    proto = mlp(in_features=16, hidden=32, layers=2)
    for init in proto.graph.initializer:
        data = numpy_helper.to_array(init).copy()
        if data.shape == (16, 32):
            data[:, 0] *= 400.0  # fc0's channel 0: huge, so fc1's input range is set by it
            init.CopyFrom(numpy_helper.from_array(data, init.name))
        if data.shape == (32, 32):
            data[0, :] /= 400.0  # fc1 undoes it: the float model is well behaved
            init.CopyFrom(numpy_helper.from_array(data, init.name))
    return proto


def _node_reading(proto: onnx.ModelProto, weight: str) -> onnx.NodeProto:
    return next(n for n in proto.graph.node if weight in n.input)


def test_budget_fallback_puts_the_fewest_sensitive_nodes_back_to_float():
    proto = _sensitive_mlp()
    feeds, holdout = _feeds(proto, 6, batch=8, seed=1), _feeds(proto, 3, batch=8, seed=2)
    out, result = quantize(proto, feeds, holdout, Budget({"cosine": 0.999}), smooth=False)
    budget = result.stats["budget"]
    assert budget["fits"] and budget["all_quantized"]["cosine"] < 0.999
    fc1 = _node_reading(proto, "fc1.weight")
    assert budget["fallbacks"][0]["node"] == fc1.name  # the largest measured effect comes first
    for effect in budget["fallbacks"]:  # each one is needed: quantizing it again breaks the budget
        assert effect["float"] >= 0.999 > effect["quantized"]
    assert len(budget["fallbacks"]) < result.stats["quantized_nodes"] + len(budget["fallbacks"])
    assert result.stats["kept_float"][fc1.name] == "kept float by the accuracy budget"
    ref = np.concatenate([run_ort(proto, f)[0] for f in holdout])
    got = np.concatenate([run_ort(out, f)[0] for f in holdout])
    assert cosine(ref, got) >= 0.999


def test_smoothquant_evens_out_the_outlier_channel_instead_of_a_fallback():
    proto = _sensitive_mlp()
    feeds, holdout = _feeds(proto, 6, batch=8, seed=1), _feeds(proto, 3, batch=8, seed=2)
    _, plain = quantize(proto, feeds, holdout, Budget({"cosine": 0.999}), smooth=False)
    out, result = quantize(proto, feeds, holdout, Budget({"cosine": 0.999}), smooth=True)
    fc1 = _node_reading(proto, "fc1.weight")
    chosen = result.stats["smoothed"][fc1.input[0]]  # max/median channel ratio ~400
    assert chosen["alpha"] != "none" and chosen["error"][str(chosen["alpha"])] < chosen["error"]["none"]
    before, after = plain.stats["budget"]["all_quantized"]["cosine"], result.stats["budget"]["all_quantized"]["cosine"]
    assert before < 0.7 < 0.8 < after  # (worst-sample cosine) the outlier no longer sets everyone's scale
    assert len(result.stats["budget"]["fallbacks"]) <= len(plain.stats["budget"]["fallbacks"])
    muls = [n for n in out.graph.node if n.op_type == "Mul" and n.input[0] == fc1.input[0]]
    assert len(muls) == 1  # X/s, once


def test_smoothing_alone_is_exact_in_float():
    from graphopt.exclusion import exclusion
    from graphopt.passes.quantize.plan import build_plan
    from graphopt.passes.quantize.profiles import get_profile
    from graphopt.passes.quantize.smooth import smooth

    proto = _sensitive_mlp()
    feeds = _feeds(proto, 3, batch=8)
    model = ir.serde.deserialize_model(onnx.shape_inference.infer_shapes(proto))
    plan = build_plan(model.graph, get_profile("ort-cpu", frozenset({"avx2"})), exclusion((), (), ""))
    counter = iter(range(10**6))
    done = smooth(model, plan, lambda: iter(feeds), lambda base: f"{base}_{next(counter)}", 2**26, 7)
    assert any(entry["alpha"] != "none" for entry in done.values())
    smoothed = ir.serde.serialize_model(model)
    np.testing.assert_allclose(run_ort(smoothed, feeds[0])[0], run_ort(proto, feeds[0])[0], rtol=1e-4, atol=1e-4)


def test_sqnr_report_ranks_the_outlier_tensor_worst():
    proto = _sensitive_mlp()
    _, result = quantize(proto, _feeds(proto, 4, batch=8), fallback=False, smooth=False)
    sqnr = result.stats["tensor_sqnr_db"]
    values = list(sqnr.values())
    assert values == sorted(values) and all(np.isfinite(values))
    assert next(iter(sqnr)) == _node_reading(proto, "fc1.weight").input[0]


# --- latency check (timings faked: tests never assert wall-clock speed) ---------------------

def _fake_timings(monkeypatch, by_variant: dict[str, float | list[float]]):
    """Make speed.py's timer return fixed block medians: [float, int8, variants...] in order; a
    number is 10 equal blocks, a list is the blocks themselves."""
    import graphopt.passes.quantize.speed as quant_speed

    def timing(value) -> dict:
        blocks = [float(value)] * 10 if np.isscalar(value) else [float(v) for v in value]
        return {"p50_ms": float(np.median(blocks)), "blocks": blocks}

    def fake(sessions, feed, runs, block, settled=None):
        return [timing(v) for v in list(by_variant.values())[: len(sessions)]]

    monkeypatch.setattr(quant_speed, "interleaved_timings", fake)


def _conv_and_gemm_model() -> onnx.ModelProto:
    return _lossless(cnn())


def test_speed_check_keeps_the_fastest_families(monkeypatch):
    proto = _conv_and_gemm_model()
    feeds = _feeds(proto, 3, scale=0.5)
    # float 10 ms, all int8 14 ms, int8 without conv 8 ms, int8 without matmul 15 ms
    _fake_timings(monkeypatch, {"float": 10.0, "int8": 14.0, "no conv": 8.0, "no matmul": 15.0})
    out, result = quantize(proto, feeds, holdout=feeds[:1], speed_check=True)
    speed = result.stats["speed"]
    assert speed["chosen"] == "int8 without conv" and speed["latency_ms"]["float"] == 10.0
    assert result.stats["quantized_by_op"] == {"Gemm": 1}
    assert any("int8 measured slower here" in r for r in result.stats["kept_float"].values())


def test_openvino_profile_times_on_the_openvino_ep_or_says_why_not(monkeypatch):
    """The openvino profile's speed check runs on the OpenVINO EP; without that EP in this
    onnxruntime build the int8 model is kept and the stats say the check was not made."""
    import graphopt.passes.quantize.speed as quant_speed

    proto = _conv_and_gemm_model()
    feeds = _feeds(proto, 3, scale=0.5)
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CPUExecutionProvider"])
    _, result = quantize(proto, feeds, holdout=feeds[:1], profile="openvino", speed_check=True)
    assert result.modified and result.stats["speed"]["measured"] is False
    assert "OpenVINOExecutionProvider not in this onnxruntime build" in result.stats["speed"]["reason"]

    used = []
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["OpenVINOExecutionProvider", "CPUExecutionProvider"])
    monkeypatch.setattr(quant_speed, "create_session", lambda model, provider, *a: used.append(provider) or provider)
    _fake_timings(monkeypatch, {"float": 10.0, "int8": 14.0, "no conv": 12.0, "no matmul": 15.0})
    _, result = quantize(proto, feeds, holdout=feeds[:1], profile="openvino", speed_check=True)
    assert set(used) == {"openvino"} and not result.modified
    assert "int8 measured slower than float" in result.stats["skipped"]


def test_speed_check_leaves_the_model_float_when_int8_is_slower(monkeypatch):
    proto = _conv_and_gemm_model()
    feeds = _feeds(proto, 3, scale=0.5)
    _fake_timings(monkeypatch, {"float": 10.0, "int8": 14.0, "no conv": 12.0, "no matmul": 15.0})
    model = ir.serde.deserialize_model(proto)
    ctx = PassContext(calibration=lambda: iter(feeds), holdout=feeds[:1])
    result = get_pass("quantize")(cache_dir="off").run(model, ctx)
    assert not result.modified and "int8 measured slower than float" in result.stats["skipped"]
    assert result.model is model and default_opset(model) == 17


def test_speed_check_keeps_int8_within_noise_and_says_it_is_not_faster(monkeypatch):
    """Medians that swap order from block to block (a shared machine) are noise: int8 is kept,
    not dropped on a coin flip, and the stats say it was not measured faster."""
    proto = _conv_and_gemm_model()
    feeds = _feeds(proto, 3, scale=0.5)
    _fake_timings(monkeypatch, {"float": [10, 20] * 5, "int8": [20, 10] * 5, "no conv": [21, 11] * 5,
                                "no matmul": [22, 12] * 5})
    _, result = quantize(proto, feeds, holdout=feeds[:1], speed_check=True)
    speed = result.stats["speed"]
    assert result.modified and speed["chosen"] == "int8"
    assert speed["vs_float"]["int8"]["verdict"] == "within noise" and "not called faster" in speed["note"]
    assert {"Conv", "Gemm"} <= set(result.stats["quantized_by_op"])  # no family dropped


def _calibration_methods(monkeypatch) -> list[str]:
    import graphopt.passes.quantize.job as quant_calib  # where candidates are calibrated

    methods, real = [], quant_calib.calibrate_ranges
    monkeypatch.setattr(quant_calib, "calibrate_ranges",
                        lambda model, plan, feeds, opts, *a: methods.append(opts.method) or
                        real(model, plan, feeds, opts, *a))
    return methods


def test_latency_precheck_runs_on_minmax_summaries_before_the_histogram_calibration(monkeypatch):
    proto = _conv_and_gemm_model()
    feeds = _feeds(proto, 3, scale=0.5)
    methods = _calibration_methods(monkeypatch)
    _fake_timings(monkeypatch, {"float": 10.0, "int8": 14.0, "no conv": 12.0, "no matmul": 15.0})
    _, slower = quantize(proto, feeds, holdout=feeds[:1], speed_check=True)
    assert methods == ["minmax"] and not slower.modified  # int8 lost: no percentile pass at all
    assert "no percentile calibration needed" in slower.stats["calibration"]["note"]
    methods.clear()
    _fake_timings(monkeypatch, {"float": 10.0, "int8": 14.0, "no conv": 8.0, "no matmul": 15.0})
    _, faster = quantize(proto, feeds, holdout=feeds[:1], speed_check=True)
    assert methods == ["minmax", "percentile"] and faster.stats["calibration"]["method"] == "percentile"
    assert faster.stats["speed"]["chosen"] == "int8 without conv" and faster.stats["quantized_by_op"] == {"Gemm": 1}
    methods.clear()
    quantize(proto, feeds, holdout=feeds[:1], speed_check=False)
    assert methods == ["percentile"]  # no latency check: calibrated once, by the configured method


def test_int8_winning_outright_builds_each_candidate_once_and_quantizes_each_weight_once(monkeypatch):
    import graphopt.passes.quantize.apply as quant_apply
    import graphopt.passes.quantize.job as job_module  # QuantJob.candidate builds every candidate

    proto = _conv_and_gemm_model()
    feeds = _feeds(proto, 3, scale=0.5)
    builds, weights = [], []
    real_apply, real_weight = job_module.apply_plan, quant_apply.weight_params
    monkeypatch.setattr(job_module, "apply_plan", lambda model, plan, *a, **k:
                        builds.append(len(plan.units)) or real_apply(model, plan, *a, **k))
    monkeypatch.setattr(quant_apply, "weight_params", lambda weight, *a:
                        weights.append(weight.shape) or real_weight(weight, *a))
    _fake_timings(monkeypatch, {"float": 10.0, "int8": 6.0, "no conv": 8.0, "no matmul": 9.0})
    _, result = quantize(proto, feeds, holdout=feeds[:1], speed_check=True, fallback=False)
    assert result.stats["speed"]["chosen"] == "int8"
    full = max(builds)
    # minmax: the full candidate and the two speed-check variants; percentile: the full one, once
    assert builds.count(full) == 2 and len(builds) == 4
    two_calibrations = len(weights)
    quantize(proto, feeds, holdout=feeds[:1], speed_check=False, fallback=False)  # one calibration
    assert len(weights) - two_calibrations == two_calibrations > 0  # each weight quantized once per run


# --- bad calibration data -----------------------------------------------------------------

def test_nan_and_inf_in_activations_give_finite_scales():
    text = """
    <ir_version: 9, opset_import: ["" : 13]>
    g (float[2, 4] x) => (float[2, 3] y) {
        l = Log(x)
        y = MatMul(l, w)
    }"""
    proto = _model(text, w=RNG.standard_normal((4, 3)).astype(np.float32))
    feeds = _feeds(proto, 3)  # Log of negatives is NaN, of 0 is -inf
    feeds[0]["x"][0, 0] = 0.0
    out, result = quantize(proto, feeds)
    assert result.stats["calibration"]["nonfinite_values"]["l"] > 0
    for name, array in _initializers(out).items():
        if name.endswith("_scale"):
            assert np.all(np.isfinite(array)) and np.all(array > 0)
    feed = {"x": np.abs(RNG.standard_normal((2, 4))).astype(np.float32) + 0.1}
    assert np.all(np.isfinite(run_ort(out, feed)[0]))


def test_constant_activation_gets_a_safe_scale():
    text = """
    <ir_version: 9, opset_import: ["" : 13]>
    g (float[2, 4] x) => (float[2, 3] y) {
        z = Mul(x, zero)
        y = MatMul(z, w)
    }"""
    proto = _model(text, zero=np.zeros(1, np.float32), w=RNG.standard_normal((4, 3)).astype(np.float32))
    out, _ = quantize(proto, _feeds(proto, 2))
    inits = _initializers(out)
    assert all(np.isfinite(inits[k]).all() and (inits[k] > 0).all() for k in inits if k.endswith("_scale"))
    np.testing.assert_array_equal(run_ort(out, _feeds(proto, 1)[0])[0], np.zeros((2, 3), np.float32))


def test_empty_or_mismatched_calibration_data_is_a_clear_error():
    proto = mlp()
    with pytest.raises(InputError):
        quantize(proto, [])
    with pytest.raises(InputError):
        quantize(proto, [{"wrong_name": np.zeros((1, 64), np.float32)}])


def test_through_optimize_with_budget_is_applied_not_rolled_back():
    proto = mlp(batch="batch")
    feeds = _feeds(proto, 4)
    result = optimize(proto, passes="quantize:cache_dir=off;speed_check=false", data=feeds, budget=["cosine=0.99"])
    record = result.report["passes"][0]
    assert record["applied"] and not record["rolled_back"]
    assert record["stats"]["budget"]["fits"]


def test_top1_budget_covers_sequence_softmax_outputs():
    """A CTC recognizer's [N, T, C] softmax output: top-1 agreement per position, so
    `--budget top1=...` means "decoded characters agree" (graphopt/metrics.py)."""
    from graphopt.metrics import compare_outputs

    probs = np.random.default_rng(0).random((2, 5, 4))
    probs /= probs.sum(axis=-1, keepdims=True)
    flipped = probs.copy()
    flipped[0, 0] = np.eye(4)[(np.argmax(probs[0, 0]) + 1) % 4]  # one position decodes another class
    metrics = compare_outputs([{"y": probs}, {"y": probs}], [{"y": flipped}, {"y": probs}])
    assert metrics["y"].top1 == pytest.approx(19 / 20)
    hidden = np.random.default_rng(1).standard_normal((2, 5, 4)).astype(np.float32)  # not probabilities
    assert compare_outputs([{"y": hidden}], [{"y": hidden}])["y"].top1 is None


def test_a_budget_retry_reuses_the_first_tries_ranges_and_latency_check(monkeypatch):
    """Neither depends on the budget: a retry (same PassContext.retry_memo) calibrates and times
    nothing again, and its report says what it reused."""
    import graphopt.passes.quantize.job as quant_job

    proto = _conv_and_gemm_model()
    feeds = _feeds(proto, 3, scale=0.5)
    _fake_timings(monkeypatch, {"float": 10.0, "int8": 6.0, "no conv": 8.0, "no matmul": 9.0})
    calls = []
    real = quant_job.calibrate_ranges
    monkeypatch.setattr(quant_job, "calibrate_ranges", lambda *a, **k: calls.append(a[3].method) or real(*a, **k))
    ctx = PassContext(calibration=lambda: iter(feeds), holdout=feeds[:1], retry_memo={})
    quantize_pass = get_pass("quantize")(cache_dir="off", speed_check=True, fallback=False)
    first = quantize_pass.run(ir.serde.deserialize_model(proto), ctx)
    assert calls == ["minmax", "percentile"] and "reused" not in first.stats["calibration"]
    again = quantize_pass.run(ir.serde.deserialize_model(proto), ctx)
    assert calls == ["minmax", "percentile"]  # no calibration pass in the retry
    assert "first try" in again.stats["calibration"]["reused"] and "first try" in again.stats["speed"]["reused"]
    assert again.stats["speed"]["chosen"] == first.stats["speed"]["chosen"] == "int8"
    out_first, out_again = (ir.serde.serialize_model(r.model) for r in (first, again))
    assert [n.op_type for n in out_first.graph.node] == [n.op_type for n in out_again.graph.node]
