"""The `quantize-weights` pass: both output forms run in ONNX Runtime and compute exactly the model
with dequantized weights (bits 4 and 8, symmetric and asymmetric, K and D not multiples of the
block); embeddings; shared and already-quantized weights; the refusals; the budget fallback;
the data-aware algorithms; the accuracy-level choice; the `int4` recipe per target."""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from conftest import run_ort
from graphopt.cli import main
from graphopt.errors import InputError
from graphopt.pass_api import PassContext, default_opset
from graphopt.passes.weights.blocks import BlockFormat, quantize_rtn
from graphopt.recipes import passes_from_recipe
from graphopt.registry import get_pass
from graphopt.tolerance import Budget

RNG = np.random.default_rng(0)
K, N, M, V, D = 80, 96, 40, 50, 72  # K and D are not multiples of the 32-wide blocks


def _weights(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"w1": (rng.standard_normal((K, N)) / np.sqrt(K)).astype(np.float32),
            "w2": (rng.standard_normal((M, N)) / np.sqrt(N)).astype(np.float32),
            "b2": (rng.standard_normal(M) * 0.1).astype(np.float32),
            "table": rng.standard_normal((V, D)).astype(np.float32)}


def _model(weights: dict[str, np.ndarray], bias_shape=(M,)) -> onnx.ModelProto:
    """x @ w1 -> Relu -> Gemm(w2, transB=1, b2) = y;  table[ids] = e."""
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"], name="mm"),
             helper.make_node("Relu", ["h"], ["r"], name="relu"),
             helper.make_node("Gemm", ["r", "w2", "b2"], ["y"], name="gemm", transB=1),
             helper.make_node("Gather", ["table", "ids"], ["e"], name="embed")]
    inits = [numpy_helper.from_array(weights[k], k) for k in ("w1", "w2", "table")]
    inits.append(numpy_helper.from_array(weights["b2"].reshape(bias_shape), "b2"))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", K]),
                                           helper.make_tensor_value_info("ids", TensorProto.INT64, ["B", 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", M]),
                               helper.make_tensor_value_info("e", TensorProto.FLOAT, ["B", 3, D])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    onnx.checker.check_model(model, full_check=True)
    return model


def _feeds(count: int, seed: int = 1, mix: np.ndarray | None = None, rows: int = 4) -> list[dict]:
    rng = np.random.default_rng(seed)
    feeds = []
    for _ in range(count):
        x = rng.standard_normal((rows, K)).astype(np.float32)
        feeds.append({"x": x @ mix if mix is not None else x, "ids": rng.integers(0, V, (rows, 3)).astype(np.int64)})
    return feeds


def run_pass(proto: onnx.ModelProto, feeds=None, holdout=None, budget=None, **options):
    options.setdefault("min_elements", 0)
    model = ir.serde.deserialize_model(proto)
    calibration = (lambda: iter(feeds)) if feeds is not None else None
    ctx = PassContext(calibration=calibration, holdout=holdout or [], budget=budget or Budget())
    result = get_pass("quantize-weights")(**options).run(model, ctx)
    out = ir.serde.serialize_model(result.model)
    onnx.checker.check_model(out, full_check=True)
    return out, result


def _dequantized_reference(weights: dict, fmt: BlockFormat, bias_shape=(M,)) -> onnx.ModelProto:
    ref = dict(weights)
    ref["w1"] = quantize_rtn(weights["w1"], fmt).dequantize()
    ref["w2"] = quantize_rtn(weights["w2"].T, fmt).dequantize().T
    ref["table"] = quantize_rtn(weights["table"].T, fmt).dequantize().T
    return _model(ref, bias_shape)


@pytest.mark.parametrize("form", ["matmulnbits", "dq"])
@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("symmetric", [True, False])
def test_each_form_computes_the_model_with_dequantized_weights(form, bits, symmetric):
    weights = _weights()
    out, result = run_pass(_model(weights), form=form, bits=bits, symmetric=symmetric, fallback=False,
                           accuracy_level=0)
    assert result.modified and result.stats["by_bits"] == {f"int{bits}": 3}
    ops = Counter(n.op_type for n in out.graph.node)
    if form == "matmulnbits":
        assert ops["MatMulNBits"] == 2 and ops["GatherBlockQuantized"] == 1 and not ops["MatMul"]
        assert all(r.get("k_padded") for r in result.stats["layers"] if r["layer"] == "w1")
    else:
        assert ops["DequantizeLinear"] == 3 and default_opset(ir.serde.deserialize_model(out)) == 21
        types = {t.data_type for t in out.graph.initializer}
        assert ({TensorProto.INT4, TensorProto.UINT4} if bits == 4 else {TensorProto.INT8, TensorProto.UINT8}) & types
    assert not {"w1", "w2", "table"} & {t.name for t in out.graph.initializer}  # float weights dropped
    reference = _dequantized_reference(weights, BlockFormat(bits, 32, symmetric))
    for feed in _feeds(2):
        for got, want in zip(run_ort(out, feed), run_ort(reference, feed)):
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_gemm_bias_that_is_not_a_vector_becomes_an_add():
    weights = _weights()
    out, _ = run_pass(_model(weights, bias_shape=(1, M)), form="matmulnbits", fallback=False, accuracy_level=0)
    assert Counter(n.op_type for n in out.graph.node)["Add"] == 1
    reference = _dequantized_reference(weights, BlockFormat(4, 32, False), bias_shape=(1, M))
    feed = _feeds(1)[0]
    np.testing.assert_allclose(run_ort(out, feed)[0], run_ort(reference, feed)[0], rtol=1e-4, atol=1e-4)


def _shared_model(extra_use: str | None = None) -> onnx.ModelProto:
    w = RNG.standard_normal((64, 64)).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["a", "w"], ["p"], name="first"),
             helper.make_node("MatMul", ["p", "w"], ["q"], name="second")]
    outputs = [helper.make_tensor_value_info("q", TensorProto.FLOAT, [2, 64])]
    if extra_use:  # the weight itself also feeds a float computation
        nodes.append(helper.make_node(extra_use, ["w", "w"], ["z"], name="float_use"))
        outputs.append(helper.make_tensor_value_info("z", TensorProto.FLOAT, [64, 64]))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("a", TensorProto.FLOAT, [2, 64])],
                              outputs, [numpy_helper.from_array(w, "w")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)


@pytest.mark.parametrize("form", ["matmulnbits", "dq"])
def test_a_shared_weight_is_quantized_once(form):
    out, result = run_pass(_shared_model(), form=form, fallback=False, accuracy_level=0)
    (layer,) = result.stats["layers"]
    assert layer["uses"] == 2
    ops = Counter(n.op_type for n in out.graph.node)
    if form == "matmulnbits":
        b_inputs = {n.input[1] for n in out.graph.node if n.op_type == "MatMulNBits"}
        assert ops["MatMulNBits"] == 2 and len(b_inputs) == 1
    else:
        assert ops["DequantizeLinear"] == 1 and ops["MatMul"] == 2
    assert len(out.graph.initializer) == (2 if form == "matmulnbits" else 2) + 1  # q, scales, zero points


def test_a_weight_also_read_by_a_float_node_stays_float():
    _, result = run_pass(_shared_model(extra_use="Add"), fallback=False)
    assert not result.modified and result.stats["skipped"].startswith("nothing to quantize")
    assert "keeps it float" in result.stats["kept_float"]["w"]


def test_nothing_to_quantize_says_so():
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4])])
    _, result = run_pass(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    assert not result.modified and result.stats["skipped"].startswith("nothing to quantize")


def test_already_quantized_weights_are_skipped_with_the_reason():
    weights = _weights()
    once, _ = run_pass(_model(weights), form="matmulnbits", fallback=False, accuracy_level=0)
    _, again = run_pass(once, form="matmulnbits", fallback=False)
    assert not again.modified and again.stats["already_quantized"] == 3
    dq_once, _ = run_pass(_model(weights), form="dq", fallback=False)
    _, dq_again = run_pass(dq_once, form="dq", fallback=False)
    assert not dq_again.modified
    assert all("already quantized" in r for r in dq_again.stats["kept_float"].values())


def test_small_weights_and_excluded_nodes_stay_float():
    _, result = run_pass(_model(_weights()), min_elements=4000, exclude_nodes=("embed",), fallback=False)
    assert [r["layer"] for r in result.stats["layers"]] == ["w1"]  # w2 has 3840 elements
    assert result.stats["kept_float"]["embed"] == "excluded by name"
    assert "min_elements" in result.stats["kept_float"]["w2"]


def test_dq_form_without_raising_the_opset_does_not_apply():
    model = ir.serde.deserialize_model(_model(_weights()))
    reason = get_pass("quantize-weights")(form="dq", raise_opset=False).requires(model, PassContext())
    assert "opset 17 < 21" in reason


def test_data_aware_algorithm_without_calibration_is_an_input_error(tmp_path, capsys):
    with pytest.raises(InputError, match="needs calibration data"):
        run_pass(_model(_weights()), holdout=_feeds(2), algorithm="gptq")
    path = tmp_path / "in.onnx"
    onnx.save(_model(_weights()), path)
    code = main(["optimize", str(path), "-o", str(tmp_path / "out.onnx"), "--passes", "quantize-weights:algorithm=awq"])
    assert code == 2 and "needs calibration data" in capsys.readouterr().err
    assert not (tmp_path / "out.onnx").exists()


def test_budget_fallback_moves_the_most_sensitive_layers_up_until_it_fits():
    feeds = _feeds(6)
    budget = Budget({"cosine": 0.99995})
    out, result = run_pass(_model(_weights()), feeds=feeds[:4], holdout=feeds[4:], budget=budget, accuracy_level=0)
    fit = result.stats["budget"]
    assert fit["fits"] and fit["fallbacks"] and set(fit["measured_gain"]) == {"w1", "w2", "table"}
    assert set(result.stats["by_bits"]) - {"int4"}
    for fallback in fit["fallbacks"]:
        assert fallback["without"] < fallback["with_fallback"]
    bits = {r["layer"]: r["bits"] for r in result.stats["layers"]}
    assert sorted(bits.values()) != [4, 4, 4]
    for feed in feeds[4:]:
        for got, want in zip(run_ort(out, feed), run_ort(_model(_weights()), feed)):
            cos = np.dot(got.ravel(), want.ravel()) / (np.linalg.norm(got) * np.linalg.norm(want))
            assert cos >= 0.9999


@pytest.mark.parametrize("algorithm", ["gptq", "awq"])
@pytest.mark.parametrize("form", ["matmulnbits", "dq"])
def test_data_aware_algorithms_beat_rtn_on_correlated_inputs(algorithm, form):
    rng = np.random.default_rng(5)
    mix = (rng.standard_normal((K, K)) * 0.4 + np.eye(K)).astype(np.float32)
    mix[:, :3] *= 6  # outlier channels
    proto, calib, held = _model(_weights()), _feeds(8, 1, mix, rows=64), _feeds(4, 2, mix, rows=16)
    errors = {}
    for alg in ("rtn", algorithm):
        out, result = run_pass(proto, feeds=calib, algorithm=alg, form=form, fallback=False, accuracy_level=0)
        assert {r["layer"]: r["algorithm"] for r in result.stats["layers"]}["w1"] == alg
        errors[alg] = sum(np.square(run_ort(out, f)[0] - run_ort(proto, f)[0]).sum() for f in held)
    assert errors[algorithm] < errors["rtn"]


def test_accuracy_level_is_chosen_by_measurement():
    feeds = _feeds(4)
    out, result = run_pass(_model(_weights()), feeds=feeds[:2], holdout=feeds[2:], budget=Budget({"cosine": 0.9}),
                           form="matmulnbits", speed_runs=3)
    speed = result.stats["accuracy_level"]
    assert speed["accuracy_level"] in (0, 4) and set(speed["latency_ms"]) == {"0", "4"}
    levels = {a.i for n in out.graph.node if n.op_type == "MatMulNBits" for a in n.attribute
              if a.name == "accuracy_level"}
    assert levels == ({4} if speed["accuracy_level"] == 4 else set())


def test_int4_recipe_picks_the_form_from_the_target():
    forms = {}
    for target in ("portable", "ort", "tensorrt", "openvino"):
        (weights_pass,) = [p for p in passes_from_recipe("int4", target) if p.name == "quantize-weights"]
        forms[target] = weights_pass.options.form
    assert forms == {"portable": "dq", "ort": "matmulnbits", "tensorrt": "dq", "openvino": "dq"}


def test_auto_algorithm_is_gptq_with_calibration_data_and_rtn_without():
    feeds = _feeds(4, rows=32)
    _, with_data = run_pass(_model(_weights()), feeds=feeds, fallback=False, accuracy_level=0)
    _, without = run_pass(_model(_weights()), holdout=feeds, fallback=False, accuracy_level=0)
    assert with_data.stats["algorithm"] == "gptq" and without.stats["algorithm"] == "rtn"
    assert {r["layer"]: r["algorithm"] for r in with_data.stats["layers"]} == {"w1": "gptq", "w2": "gptq",
                                                                             "table": "rtn"}
