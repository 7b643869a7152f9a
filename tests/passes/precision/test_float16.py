"""The `float16` pass: conversion of MLP/CNN nets, the range and underflow rules, keep_io_types,
Cast placement, untouched shape/index paths, shared weights, refusals, If subgraphs, the budget
fallback, bfloat16 on ORT CPU, the manager and the CLI spec."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from conftest import parse, run_ort
from graphopt import optimize
from graphopt.errors import InputError
from graphopt.pass_api import PassContext
from graphopt.recipes import passes_from_spec
from graphopt.registry import get_pass
from graphopt.tolerance import Budget
from models.builders import cnn, if_model, mlp

RNG = np.random.default_rng(7)
F16 = TensorProto.FLOAT16


def feeds_for(name: str, shape: tuple, count: int = 6, scale: float = 1.0) -> list[dict]:
    return [{name: (scale * RNG.standard_normal(shape)).astype(np.float32)} for _ in range(count)]


def run_pass(proto: onnx.ModelProto, feeds: list[dict], budget: Budget | None = None, **options):
    """The pass on `proto`: calibrated on the first half of `feeds`, judged on the second."""
    model = ir.serde.deserialize_model(proto)
    half = len(feeds) // 2
    ctx = PassContext(holdout=feeds[half:], calibration=lambda: iter(feeds[:half]), budget=budget or Budget())
    result = get_pass("float16")(**options).run(model, ctx)
    out = ir.serde.serialize_model(result.model)
    onnx.checker.check_model(out, full_check=True)
    return out, result


def graph_model(nodes, inputs, outputs, inits=(), opset: int = 17) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(inits))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 9
    onnx.checker.check_model(model, full_check=True)
    return model


def tensor(name: str, shape, dtype=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, dtype, list(shape))


def init(name: str, array) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(array), name)


def producers(proto: onnx.ModelProto) -> dict[str, onnx.NodeProto]:
    return {out: node for node in proto.graph.node for out in node.output}


def assert_no_cast_chains(proto: onnx.ModelProto) -> None:
    made_by = producers(proto)
    chains = [n.name for n in proto.graph.node if n.op_type == "Cast" and n.input[0] in made_by
              and made_by[n.input[0]].op_type == "Cast"]
    assert chains == []


def close(ref: np.ndarray, got: np.ndarray, rel: float = 1e-2) -> bool:
    return np.all(np.isfinite(got)) and np.abs(ref - got.astype(np.float32)).max() <= rel * np.abs(ref).max()


@pytest.mark.parametrize("proto, name, shape", [(mlp(batch=4, hidden=256), "x", (4, 64)),
                                                (cnn(), "input", (1, 3, 32, 32))], ids=["mlp", "cnn"])
def test_mlp_and_cnn_convert_to_half_the_bytes_within_float16_tolerance(proto, name, shape):
    feeds = feeds_for(name, shape)
    out, result = run_pass(proto, feeds)
    stats = result.stats
    assert result.modified and stats["kept_float32"] == {} and stats["budget"]["fits"]
    assert stats["bytes"]["ratio"] < 0.53 and stats["bytes"]["after"] < 0.53 * stats["bytes"]["before"]
    assert stats["casts_inserted"] == 2  # the input and the output, nothing in between
    assert {t.data_type for t in out.graph.initializer} == {F16}
    assert out.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT
    assert out.graph.output[0].type.tensor_type.elem_type == TensorProto.FLOAT
    for feed in feeds:
        assert close(run_ort(proto, feed)[0], run_ort(out, feed)[0])
    assert "MatMul" in stats["ort_cpu"]["through_ort_casts"] or "Conv" in stats["ort_cpu"]["through_ort_casts"]
    assert stats["ort_cpu"]["runs"]
    assert_no_cast_chains(out)


def overflow_model() -> onnx.ModelProto:
    """x [4, 16] (|x| ~ 4) -> MatMul (weights ~ 5000: |h| ~ 1e5) -> Div by 1000 -> Relu -> MatMul -> y."""
    w1 = np.clip(5000 * RNG.standard_normal((16, 16)), -20000, 20000).astype(np.float32)
    w2 = RNG.standard_normal((16, 8)).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"], name="big"),
             helper.make_node("Div", ["h", "k"], ["s"], name="scale_down"),
             helper.make_node("Relu", ["s"], ["r"], name="relu"),
             helper.make_node("MatMul", ["r", "w2"], ["y"], name="head")]
    return graph_model(nodes, [tensor("x", [4, 16])], [tensor("y", [4, 8])],
                       [init("w1", w1), init("k", np.float32(1000.0)), init("w2", w2)])


def test_an_intermediate_beyond_65504_keeps_its_op_float32_with_the_measured_reason():
    proto = overflow_model()
    feeds = feeds_for("x", (4, 16), scale=4.0)
    h = run_ort(proto.__class__(graph=helper.make_graph(proto.graph.node[:1], "h", proto.graph.input,
                                                      [tensor("h", [4, 16])], proto.graph.initializer),
                                opset_import=proto.opset_import, ir_version=9), feeds[0])[0]
    assert np.abs(h).max() > 65504  # the float32 intermediate leaves float16's range
    out, result = run_pass(proto, feeds)
    kept = result.stats["kept_float32"]
    assert set(kept) == {"big", "scale_down"}
    assert kept["big"].startswith("measured range: max |x| ") and "> 32752 (0.5 x float16 max 65504)" in kept["big"]
    assert "at its output 'h'" in kept["big"] and "at its input 'h'" in kept["scale_down"]
    assert result.stats["converted_by_op"] == {"MatMul": 1, "Relu": 1}
    assert result.stats["ranges"]["kept_by_range"] == 2
    for feed in feeds:
        ref, got = run_ort(proto, feed)[0], run_ort(out, feed)[0]
        assert close(ref, got)
    assert_no_cast_chains(out)


@pytest.mark.parametrize("keep", [True, False])
def test_keep_io_types(keep):
    proto = mlp(batch=4)
    feeds = feeds_for("x", (4, 64))
    out, result = run_pass(proto, feeds, keep_io_types=keep)
    io_type = TensorProto.FLOAT if keep else F16
    assert out.graph.input[0].type.tensor_type.elem_type == io_type
    assert out.graph.output[0].type.tensor_type.elem_type == io_type
    assert result.stats["casts_inserted"] == (2 if keep else 0)
    feed = feeds[0] if keep else {"x": feeds[0]["x"].astype(np.float16)}
    got = run_ort(out, feed)[0]
    assert got.dtype == (np.float32 if keep else np.float16)
    assert close(run_ort(proto, feeds[0])[0], got)


def cast_island_model() -> onnx.ModelProto:
    """ids (int64) -> Cast to float -> read by a Mul (converted) and by 'kept' (excluded, float32);
    x -> Add -> 'kept' too: the islands' boundaries need Casts, none of them chained."""
    nodes = [helper.make_node("Cast", ["ids"], ["f"], to=TensorProto.FLOAT, name="to_float"),
             helper.make_node("Mul", ["f", "x"], ["m"], name="mul"),
             helper.make_node("Add", ["m", "f"], ["a"], name="kept"),
             helper.make_node("Relu", ["a"], ["y"], name="relu")]
    return graph_model(nodes, [tensor("ids", [2, 4], TensorProto.INT64), tensor("x", [2, 4])],
                       [tensor("y", [2, 4])])


def test_cast_chains_collapse_at_float32_islands():
    proto = cast_island_model()
    feeds = [{"ids": RNG.integers(0, 50, (2, 4)), "x": RNG.standard_normal((2, 4)).astype(np.float32)}
             for _ in range(4)]
    out, result = run_pass(proto, feeds, exclude_nodes=("kept",))
    assert result.stats["kept_float32"] == {"kept": "excluded by name"}
    assert_no_cast_chains(out)
    made_by = producers(out)
    kept = next(n for n in out.graph.node if n.name == "kept")
    assert made_by[kept.input[1]].op_type == "Cast" and made_by[kept.input[1]].input[0] == "ids"  # not Cast(Cast)
    mul = next(n for n in out.graph.node if n.name == "mul")
    assert made_by[mul.input[0]].op_type == "Cast" and made_by[mul.input[0]].input[0] == "ids"
    for feed in feeds:
        assert close(run_ort(proto, feed)[0], run_ort(out, feed)[0])


def shape_model() -> onnx.ModelProto:
    """Resize to sizes computed in float from Shape (x2, Floor), a Reshape by a shape initializer,
    a Gather by constant indices and a Slice: the shape and index paths must stay as they are."""
    text = """
    <ir_version: 9, opset_import: ["" : 17]>
    g (float[1, 2, 4, 4] x) => (float[1, 2, 8, 8] y, float[2, 64] flat, float[1, 2, 2, 4] rows) {
        s = Shape(x)
        hw = Slice(s, two, four)
        fhw = Cast<to = 1>(hw)
        big = Mul(fhw, factor)
        floor = Floor(big)
        ihw = Cast<to = 7>(floor)
        sizes = Concat<axis = 0>(nc, ihw)
        r = Resize<mode = "nearest">(x, , , sizes)
        y = Relu(r)
        flat = Reshape(y, shape)
        rows = Gather<axis = 2>(x, idx)
    }
    """
    proto = onnx.parser.parse_model(text)
    proto.graph.initializer.extend([init("two", np.array([2], np.int64)), init("four", np.array([4], np.int64)),
                                    init("factor", np.array([2.0, 2.0], np.float32)),
                                    init("nc", np.array([1, 2], np.int64)), init("shape", np.array([2, -1], np.int64)),
                                    init("idx", np.array([0, 3], np.int64))])
    onnx.checker.check_model(proto, full_check=True)
    return proto


def test_shape_and_index_paths_are_untouched():
    proto = shape_model()
    feeds = feeds_for("x", (1, 2, 4, 4))
    out, result = run_pass(proto, feeds)
    kept = result.stats["kept_float32"]
    assert kept["Mul_3"].startswith("shape computation") and kept["Floor_4"].startswith("shape computation")
    assert result.stats["converted_by_op"] == {"Gather": 1, "Relu": 1, "Reshape": 1, "Resize": 1}
    before = {t.name: t for t in proto.graph.initializer}
    after = {t.name: t for t in out.graph.initializer}
    for name in ("two", "four", "nc", "shape", "idx", "factor"):
        assert after[name] == before[name]  # integer and shape constants unchanged
    made_by = producers(out)
    assert made_by["ihw"].op_type == "Cast" and made_by["ihw"].attribute[0].i == TensorProto.INT64
    assert made_by["fhw"].attribute[0].i == TensorProto.FLOAT
    resize = next(n for n in out.graph.node if n.op_type == "Resize")
    assert resize.input[3] == "sizes"
    for feed in feeds:
        for ref, got in zip(run_ort(proto, feed), run_ort(out, feed)):
            assert ref.shape == got.shape and close(ref, got)


def test_a_weight_shared_by_a_float32_and_a_float16_node_gets_both_forms():
    w = RNG.standard_normal((8, 8)).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"], name="first"),
             helper.make_node("MatMul", ["h", "w"], ["y"], name="second")]
    proto = graph_model(nodes, [tensor("x", [2, 8])], [tensor("y", [2, 8])], [init("w", w)])
    out, result = run_pass(proto, feeds_for("x", (2, 8)), exclude_nodes=("second",))
    inits = {t.name: t for t in out.graph.initializer}
    assert inits["w"].data_type == TensorProto.FLOAT and numpy_helper.to_array(inits["w"]).tobytes() == w.tobytes()
    assert inits["w_float16"].data_type == F16
    first, second = (next(n for n in out.graph.node if n.name == k) for k in ("first", "second"))
    assert first.input[1] == "w_float16" and second.input[1] == "w"
    assert result.stats["bytes_added"] == w.size * 2


def test_the_input_model_and_its_tensors_are_left_as_they_were():
    proto = mlp(batch=4)
    model = ir.serde.deserialize_model(proto)
    before = {name: v.const_value.numpy().copy() for name, v in model.graph.initializers.items()}
    feeds = feeds_for("x", (4, 64))
    ctx = PassContext(holdout=feeds[3:], calibration=lambda: iter(feeds[:3]))
    result = get_pass("float16")().run(model, ctx)
    assert result.model is not model
    assert all(v.dtype == ir.DataType.FLOAT for v in model.graph.initializers.values())
    assert model.graph.outputs[0].dtype == ir.DataType.FLOAT
    for name, array in before.items():
        assert model.graph.initializers[name].const_value.numpy().tobytes() == array.tobytes()


def test_an_already_float16_model_is_refused():
    feeds = feeds_for("x", (4, 64))
    out, _ = run_pass(mlp(batch=4), feeds)
    again = get_pass("float16")()
    reason = again.requires(ir.serde.deserialize_model(out), PassContext())
    assert reason == "already float16: nothing to convert"
    pure = parse("""
    <ir_version: 9, opset_import: ["" : 17]>
    g (float16[2, 4] x) => (float16[2, 4] y) { y = Relu(x) }
    """)
    assert again.requires(ir.serde.deserialize_model(pure), PassContext()) == "already float16: nothing to convert"
    ints = parse("""
    <ir_version: 9, opset_import: ["" : 17]>
    g (int64[2, 4] x) => (int64[2, 4] y) { y = Add(x, x) }
    """)
    assert "nothing to convert" in again.requires(ir.serde.deserialize_model(ints), PassContext())


def test_a_mixed_precision_model_converts_only_its_float32_part():
    proto = parse("""
    <ir_version: 9, opset_import: ["" : 17]>
    g (float16[2, 4] a, float[2, 4] b) => (float[2, 4] y) {
        af = Cast<to = 1>(a)
        s = Add(af, b)
        y = Relu(s)
    }
    """)
    feeds = [{"a": RNG.standard_normal((2, 4)).astype(np.float16), "b": RNG.standard_normal((2, 4)).astype(np.float32)}
             for _ in range(4)]
    out, result = run_pass(proto, feeds)
    assert result.stats["converted_by_op"] == {"Add": 1, "Cast": 1, "Relu": 1}
    add = next(n for n in out.graph.node if n.op_type == "Add")
    assert add.input[0] == "a"  # its own float16 input, read directly: the Cast casts nothing any more
    assert [n.op_type for n in out.graph.node].count("Cast") == 2  # b in, y out
    assert_no_cast_chains(out)
    for feed in feeds:
        assert close(run_ort(proto, feed)[0], run_ort(out, feed)[0])


def test_if_subgraphs_are_left_float32_as_a_whole():
    proto = if_model()
    feeds = [{"x": sign * np.abs(RNG.standard_normal((1, 8))).astype(np.float32)} for sign in (1, -1, 1, -1)]
    out, result = run_pass(proto, feeds)
    assert result.stats["subgraphs"].startswith("1 If/Loop/Scan node(s): left float32 as a whole")
    assert any(reason.startswith("control flow (If)") for reason in result.stats["kept_float32"].values())
    branch = next(n for n in out.graph.node if n.op_type == "If").attribute[0].g
    assert all(t.data_type == TensorProto.FLOAT for t in branch.initializer)
    for feed in feeds:
        assert close(run_ort(proto, feed)[0], run_ort(out, feed)[0])


def layer_norm_model(eps: float) -> onnx.ModelProto:
    """A decomposed LayerNorm: (x - mean) / Sqrt(ReduceMean((x - mean)^2) + eps)."""
    nodes = [helper.make_node("ReduceMean", ["x"], ["mean"], axes=[-1], name="mean"),
             helper.make_node("Sub", ["x", "mean"], ["d"], name="sub"),
             helper.make_node("Pow", ["d", "two"], ["sq"], name="square"),
             helper.make_node("ReduceMean", ["sq"], ["var"], axes=[-1], name="variance"),
             helper.make_node("Add", ["var", "eps"], ["ve"], name="add_eps"),
             helper.make_node("Sqrt", ["ve"], ["std"], name="sqrt"),
             helper.make_node("Div", ["d", "std"], ["y"], name="normalize")]
    return graph_model(nodes, [tensor("x", [4, 16])], [tensor("y", [4, 16])],
                       [init("two", np.float32(2.0)), init("eps", np.float32(eps))], opset=17)


def test_a_normalisation_whose_epsilon_flushes_to_zero_keeps_its_variance_path_float32():
    feeds = feeds_for("x", (4, 16))
    feeds[-1]["x"][0] = 3.0  # a constant row: variance 0, only epsilon keeps the division finite
    out, result = run_pass(layer_norm_model(1e-12), feeds)
    kept = result.stats["kept_float32"]
    assert set(kept) == {"square", "variance", "add_eps", "sqrt"}
    assert kept["variance"] == "divisor path of 'normalize': constant 'eps' 1e-12 rounds to 0 in float16"
    assert result.stats["ranges"]["kept_by_underflow"] == 4
    got = run_ort(out, feeds[-1])[0]
    assert np.all(np.isfinite(got))
    _, plain = run_pass(layer_norm_model(1e-3), feeds)
    assert plain.stats["kept_float32"] == {}  # a representable epsilon and normal variances


def test_a_tiny_variance_keeps_its_path_float32_by_measurement():
    feeds = feeds_for("x", (4, 16), scale=1e-3)  # variances ~1e-6 < 6.1e-5
    _, result = run_pass(layer_norm_model(1e-3), feeds)
    kept = result.stats["kept_float32"]
    assert "float16 smallest normal" in kept["variance"] and "(underflow)" in kept["variance"]


def cancel_model() -> onnx.ModelProto:
    """y = ((Relu(x) + 1000.3) - 1000) * 2: 1000.3 is 1000.5 in float16 (its step there is 0.5), and
    a sum near 1000 rounds to that step when handed to a float16 reader."""
    nodes = [helper.make_node("Relu", ["x"], ["r"], name="relu"),
             helper.make_node("Add", ["r", "big"], ["a"], name="add_big"),
             helper.make_node("Sub", ["a", "big2"], ["s"], name="sub_big"),
             helper.make_node("Mul", ["s", "two"], ["y"], name="double")]
    return graph_model(nodes, [tensor("x", [4, 16])], [tensor("y", [4, 16])],
                       [init("big", np.float32(1000.3)), init("big2", np.float32(1000.0)),
                        init("two", np.float32(2.0))])


def test_the_budget_fallback_puts_the_fewest_ops_back_in_float32():
    proto = cancel_model()
    feeds = feeds_for("x", (4, 16), count=8)
    _, loose = run_pass(proto, feeds, Budget({"cosine": 0.9}))
    assert loose.stats["budget"]["fits"] and loose.stats["kept_float32"] == {}
    assert loose.stats["budget"]["all_converted"]["cosine"] < 0.9999
    out, tight = run_pass(proto, feeds, Budget({"cosine": 0.9999}))
    report, kept = tight.stats["budget"], tight.stats["kept_float32"]
    # ORT CPU computes Add and Sub in float32 (no float16 kernel) and drops the Cast pair between
    # them, so the error is the constant's rounding: Add alone back in float32 meets the budget
    assert report["fits"] and set(kept) == {"add_big"}
    assert kept["add_big"].startswith("budget: cosine 0.98") and kept["add_big"].endswith(" -> 1 when kept float32")
    assert report["added_error"]["sub_big"] == max(report["added_error"].values())  # the ranking's first
    assert tight.stats["converted_by_op"] == {"Mul": 1, "Relu": 1, "Sub": 1}
    ref, got = run_ort(proto, feeds[-1])[0], run_ort(out, feeds[-1])[0]
    assert float(np.sum(ref * got) / np.linalg.norm(ref) / np.linalg.norm(got)) >= 0.9999


def test_a_budget_no_fallback_meets_leaves_the_model_unchanged():
    _, result = run_pass(cancel_model(), feeds_for("x", (4, 16)), Budget({"cosine": 0.9999}), max_fallback=1)
    assert not result.modified and "max_fallback=1" in result.stats["skipped"]


def test_bfloat16_on_ort_cpu_is_checker_valid_and_says_it_cannot_run():
    proto = mlp(batch=4)
    out, result = run_pass(proto, feeds_for("x", (4, 64)), dtype="bfloat16")
    assert {t.data_type for t in out.graph.initializer} == {TensorProto.BFLOAT16}
    cpu = result.stats["ort_cpu"]
    assert not cpu["runs"] and "MatMul" in cpu["no_bfloat16_kernel"]
    assert not result.stats["budget"]["measured"] and "cannot run the bfloat16" in result.stats["budget"]["reason"]


def test_bfloat16_through_the_manager_is_rolled_back_with_the_reason():
    proto = mlp(batch=4)
    feeds = feeds_for("x", (4, 64), count=8)
    result = optimize(proto, passes="float16:dtype=bfloat16", calib=feeds)
    record = result.report["passes"][0]
    assert record["rolled_back"] and not record["applied"]
    assert "Could not find an implementation" in record["error"]


def test_through_the_manager_with_its_verification_and_budget():
    proto = mlp(batch=4, hidden=256)
    feeds = feeds_for("x", (4, 64), count=8)
    result = optimize(proto, passes="float16", calib=feeds, budget=["cosine=0.999"])
    record = result.report["passes"][0]
    assert record["applied"] and not record["rolled_back"] and record["verify"]["ok"]
    assert record["stats"]["budget"]["fits"] and record["stats"]["converted"] == 7
    assert result.report["model"]["after"]["bytes"] < 0.53 * result.report["model"]["before"]["bytes"]


def test_without_calibration_data_the_pass_says_what_it_needs():
    with pytest.raises(InputError, match="needs calibration data"):
        optimize(mlp(batch=4), passes="float16")


def test_the_cli_spec_parses_and_bad_options_are_refused():
    (p,) = passes_from_spec("float16:dtype=bfloat16;keep_io_types=false;max_fallback=8")
    assert (p.options.dtype, p.options.keep_io_types, p.options.max_fallback) == ("bfloat16", False, 8)
    for bad in ("float16:dtype=float8", "float16:range_margin=2", "float16:budget_share=0",
                "float16:max_fallback=-1", "float16:exclude_regex=("):
        with pytest.raises(InputError):
            passes_from_spec(bad)
