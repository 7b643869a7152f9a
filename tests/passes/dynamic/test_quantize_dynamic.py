"""The `quantize-dynamic` pass: eligibility and reasons, exclusions, the budget fallback, the speed
decision, options, the recipe and its `--target ort` form, external data, If subgraphs, the manager."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from conftest import run_ort
from graphopt import optimize
from graphopt.errors import InputError
from graphopt.pass_api import PassContext
from graphopt.passes.dynamic import quantize_dynamic as pass_module
from graphopt.passes.dynamic.quantize_dynamic import resolve_form
from graphopt.recipes import passes_from_recipe
from graphopt.registry import get_pass
from graphopt.tolerance import Budget
from models.builders import if_model, mlp

RNG = np.random.default_rng(3)


def chain(names: list[str], k: int = 16, opset: int = 17, outlier: str | None = None) -> onnx.ModelProto:
    """x [4, k] -> MatMul named names[0] -> ... -> y, each weight [k, k]. The input of `outlier`
    is scaled by a constant with one channel x50 whose weight row is x0.02: the product hardly
    changes, but that activation's dynamic range (so its rounding step) is about 50 times wider."""
    nodes, inits, current = [], [], "x"
    for i, name in enumerate(names):
        w = (RNG.standard_normal((k, k)) / np.sqrt(k)).astype(np.float32)
        if name == outlier:
            boost = np.ones(k, np.float32)
            boost[0] = 50.0
            w[0] /= 50.0
            inits.append(numpy_helper.from_array(boost, f"boost{i}"))
            nodes.append(helper.make_node("Mul", [current, f"boost{i}"], [f"boosted{i}"]))
            current = f"boosted{i}"
        inits.append(numpy_helper.from_array(w, f"w{i}"))
        out = "y" if i == len(names) - 1 else f"h{i}"
        nodes.append(helper.make_node("MatMul", [current, f"w{i}"], [out], name=name))
        current = out
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, k])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, k])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def feeds(count: int = 4, k: int = 16) -> list[dict]:
    return [{"x": RNG.standard_normal((4, k)).astype(np.float32)} for _ in range(count)]


def run_pass(proto: onnx.ModelProto, holdout=(), budget: Budget | None = None, **options):
    options.setdefault("speed_check", False)
    model = ir.serde.deserialize_model(proto)
    ctx = PassContext(holdout=list(holdout), budget=budget or Budget())
    result = get_pass("quantize-dynamic")(**options).run(model, ctx)
    out = ir.serde.serialize_model(result.model)
    onnx.checker.check_model(out, full_check=True)
    return out, result


def test_exclusions_by_name_op_and_regex_keep_those_nodes_float_with_reasons():
    proto = chain(["keep", "skip_me", "also", "last"])
    out, result = run_pass(proto, exclude_nodes=("keep",), exclude_regex="^skip", fallback=False)
    kept = result.stats["kept_float"]
    assert kept == {"keep": "excluded by name", "skip_me": "name matches exclude_regex '^skip'"}
    assert set(result.stats["quantized"]) == {"also", "last"}
    assert [n.op_type for n in out.graph.node].count("MatMul") == 2
    _, by_op = run_pass(proto, exclude_ops=("MatMul",), fallback=False)
    assert not by_op.modified and by_op.stats["kept_float"]["keep"] == "op type MatMul excluded"


def test_a_model_without_an_eligible_matmul_says_why():
    nodes = [helper.make_node("Transpose", ["x"], ["t"], perm=[1, 0]), helper.make_node("MatMul", ["x", "t"], ["y"],
                                                                                       name="self")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 4])])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    _, result = run_pass(proto)
    assert not result.modified
    assert result.stats["skipped"].startswith("no eligible MatMul/Gemm")
    assert "not constant (computed at run time)" in result.stats["kept_float"]["self"]


def test_opset_below_11_is_skipped_with_a_reason():
    _, result = run_pass(chain(["a"], opset=10))
    assert not result.modified and "has no DynamicQuantizeLinear" in result.stats["skipped"]


def test_budget_fallback_puts_the_most_sensitive_node_back_in_float():
    proto = chain(["a", "sensitive", "c"], outlier="sensitive")
    held = feeds(6)
    _, loose = run_pass(proto, held, Budget({"cosine": 0.9}), smooth=False)
    assert loose.stats["budget"]["fallbacks"] == [] and loose.stats["quantized_nodes"] == 3
    all_int8 = loose.stats["budget"]["all_int8"]["cosine"]
    assert all_int8 < 0.999
    out, result = run_pass(proto, held, Budget({"cosine": 0.999}), smooth=False)
    report = result.stats["budget"]
    assert report["fits"] and [f["node"] for f in report["fallbacks"]] == ["sensitive"]
    assert report["unit_sqnr_db"]["sensitive"] == min(report["unit_sqnr_db"].values())
    effect = report["fallbacks"][0]
    assert effect["int8"] < 0.999 <= effect["float"]
    assert "kept float by the accuracy budget" in result.stats["kept_float"]["sensitive"]
    assert set(result.stats["quantized"]) == {"a", "c"}
    ref = run_ort(proto, held[0])[0]
    got = run_ort(out, held[0])[0]
    assert float(np.sum(ref * got) / np.linalg.norm(ref) / np.linalg.norm(got)) >= 0.999


@pytest.mark.parametrize("form", ["standard", "ort"])
def test_smoothing_moves_the_outlier_into_the_weight_where_it_helps(form):
    proto = chain(["a", "sensitive", "c"], outlier="sensitive")
    held = feeds(6)
    out, result = run_pass(proto, held, Budget({"cosine": 0.999}), form=form)
    gains = {k: v["sqnr_db"]["after"] - v["sqnr_db"]["before"] for k, v in result.stats["smoothed"].items()}
    assert gains["sensitive"] > 10 and max(gains, key=gains.get) == "sensitive"
    assert all(gain >= 1.0 for gain in gains.values())  # smoothed only where the estimate gains
    assert result.stats["budget"]["fallbacks"] == [] and result.stats["quantized_nodes"] == 3
    assert result.stats["quantized"]["sensitive"] == "MatMul of boosted1, smoothed"
    ref, got = run_ort(proto, held[0])[0], run_ort(out, held[0])[0]
    assert float(np.sum(ref * got) / np.linalg.norm(ref) / np.linalg.norm(got)) >= 0.999


def test_smoothing_goes_only_as_far_as_the_budget_needs():
    proto = chain(["a", "sensitive", "c"], outlier="sensitive")
    held = feeds(6)
    _, loose = run_pass(proto, held, Budget({"cosine": 0.9}))
    assert loose.stats["smoothed"] == {} and loose.stats["budget"]["smoothing"]["groups"] == 0
    _, tight = run_pass(proto, held, Budget({"cosine": 0.999}))
    assert list(tight.stats["smoothed"]) == ["sensitive"] and tight.stats["budget"]["fallbacks"] == []
    assert tight.stats["budget"]["smoothing"]["fits"]
    _, strict = run_pass(proto, held, Budget({"cosine": 0.9999999}))
    assert not strict.modified and "every node in float" in strict.stats["skipped"]


def test_a_budget_no_fallback_can_meet_keeps_the_model_float():
    proto = chain(["a", "sensitive"], outlier="sensitive")
    _, result = run_pass(proto, feeds(3), Budget({"cosine": 0.999}), max_fallback=0, smooth=False)
    assert not result.modified and "max_fallback" in result.stats["skipped"]


def test_int8_slower_than_float_keeps_the_model_float(monkeypatch):
    def slower(*args, **kwargs):
        return {"measured": True, "latency_ms": {"float": 1.0, "int8": 2.0}, "faster": False}

    monkeypatch.setattr(pass_module, "compare_latency", slower)
    _, result = run_pass(chain(["a"]), feeds(1), speed_check=True)
    assert not result.modified and result.stats["skipped"].startswith("int8 measured slower than float here")


def test_the_speed_check_times_both_models():
    proto = mlp(batch=8, in_features=256, hidden=512)
    _, result = run_pass(proto, [{"x": RNG.standard_normal((8, 256)).astype(np.float32)}], speed_check=True,
                         speed_runs=2, fallback=False)
    assert set(result.stats["speed"]["latency_ms"]) == {"float", "int8"}


@pytest.mark.parametrize("bad", [{"form": "fast"}, {"ops": ("Relu",)}, {"weight_bits": 6}, {"budget_share": 0},
                                 {"exclude_regex": "("}, {"speed_runs": 0}])
def test_bad_options_are_refused(bad):
    with pytest.raises(InputError):
        get_pass("quantize-dynamic")(**bad)


def test_the_int8_dynamic_recipe_and_its_ort_target_form():
    portable = passes_from_recipe("int8-dynamic")
    assert [p.name for p in portable[-1:]] == ["quantize-dynamic"] and portable[-1].options.form == "auto"
    assert portable[0].name == "opset"
    ort = passes_from_recipe("int8-dynamic", "ort")
    dynamic = next(p for p in ort if p.name == "quantize-dynamic")
    assert dynamic.options.form == "ort"


def test_form_auto_follows_the_models_domains():
    model = ir.serde.deserialize_model(chain(["a"]))
    assert resolve_form("auto", model) == "standard"
    model.opset_imports["com.microsoft"] = 1
    assert resolve_form("auto", model) == "ort" and resolve_form("standard", model) == "standard"


def test_units_sharing_a_weight_share_one_int8_copy():
    w = RNG.standard_normal((8, 8)).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"], name="first"),
             helper.make_node("MatMul", ["h", "w"], ["y"], name="second")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 8])],
                              [numpy_helper.from_array(w, "w")])
    out, result = run_pass(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), fallback=False)
    int8 = [i for i in out.graph.initializer if i.data_type == TensorProto.INT8]
    assert result.stats["quantized_nodes"] == 2 and len(int8) == 1
    assert all(int8[0].name in n.input for n in out.graph.node if n.op_type == "MatMulInteger")
    assert "w" not in {i.name for i in out.graph.initializer}  # the float weight is gone


def test_a_model_with_external_data_is_read_in_place_and_left_unchanged(tmp_path):
    proto = mlp(batch=2, in_features=64, hidden=128)
    source = tmp_path / "mlp.onnx"
    onnx.save(proto, source, save_as_external_data=True, all_tensors_to_one_file=True, location="mlp.data",
              size_threshold=0)
    before = (tmp_path / "mlp.data").read_bytes()
    model = ir.load(source)
    result = get_pass("quantize-dynamic")(speed_check=False, fallback=False).run(model, PassContext())
    assert result.modified and result.stats["quantized_nodes"] == 3
    target = tmp_path / "out" / "mlp_int8.onnx"
    target.parent.mkdir()
    ir.save(result.model, target, external_data="mlp_int8.data")
    feed = {"x": RNG.standard_normal((2, 64)).astype(np.float32)}
    ref, got = run_ort(source, feed)[0], run_ort(target, feed)[0]
    assert np.abs(ref - got).max() < 0.05 * np.abs(ref).max()
    assert (tmp_path / "mlp.data").read_bytes() == before


def test_matmuls_read_from_if_branches_are_rewritten_safely():
    proto = if_model()
    out, result = run_pass(proto, fallback=False)
    assert result.modified
    for sign in (1.0, -1.0):
        feed = {"x": sign * np.abs(RNG.standard_normal((1, 8))).astype(np.float32)}
        ref, got = run_ort(proto, feed)[0], run_ort(out, feed)[0]
        assert np.abs(ref - got).max() < 0.05 * np.abs(ref).max() + 1e-3


def test_through_the_manager_with_a_budget():
    proto = mlp(batch=4, in_features=64, hidden=128)
    data = [{"x": RNG.standard_normal((4, 64)).astype(np.float32)} for _ in range(4)]
    result = optimize(proto, passes="quantize-dynamic:speed_check=false", data=data, budget=["cosine=0.99"])
    record = result.report["passes"][0]
    assert record["applied"] and not record.get("rolled_back")
    assert record["stats"]["quantized_by_op"] == {"Gemm": 1, "MatMul": 2}
    assert record["stats"]["budget"]["fits"]
