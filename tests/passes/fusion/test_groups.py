"""Fusion rule groups: op counts as the algebra says, numerics within reassoc tolerance in ORT,
and the cases that must be left alone (with a reason at debug)."""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

import models
from conftest import parse, run_ort
from graphopt import optimize
from graphopt.pass_api import PassContext
from graphopt.registry import get_pass

RNG = np.random.default_rng(0)
OUT = [1, 8, 6, 6]  # output shape of the 3x3, pad-1 convolutions below


def _init(name: str, shape, positive: bool = False) -> TensorProto:
    data = RNG.standard_normal(shape).astype(np.float32)
    return numpy_helper.from_array(np.abs(data) + 0.5 if positive else data, name)


def _bn_inits(channels: int) -> list[TensorProto]:
    return [_init("gamma", [channels]), _init("beta", [channels]), _init("mean", [channels]),
            _init("var", [channels], positive=True)]


def _model(nodes, inputs, outputs, inits, opset: int = 17) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=9)
    onnx.checker.check_model(model, full_check=True)
    return model


def _vi(name, shape):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def conv_bn(groups: int = 1, bias: bool = True, transpose: bool = False) -> onnx.ModelProto:
    cin, cout = 4, 8
    op = "ConvTranspose" if transpose else "Conv"
    wshape = [cin, cout // groups, 3, 3] if transpose else [cout, cin // groups, 3, 3]
    inits = [_init("w", wshape)] + ([_init("b", [cout])] if bias else []) + _bn_inits(cout)
    conv = helper.make_node(op, ["x", "w"] + (["b"] if bias else []), ["c"], group=groups, pads=[1, 1, 1, 1])
    bn = helper.make_node("BatchNormalization", ["c", "gamma", "beta", "mean", "var"], ["y"], epsilon=1e-3)
    return _model([conv, bn], [_vi("x", [1, cin, 6, 6])], [_vi("y", OUT)], inits)


def gemm_bn(trans_b: int) -> onnx.ModelProto:
    inits = [_init("w", [8, 6] if trans_b else [6, 8]), _init("b", [8])] + _bn_inits(8)
    gemm = helper.make_node("Gemm", ["x", "w", "b"], ["c"], transB=trans_b)
    bn = helper.make_node("BatchNormalization", ["c", "gamma", "beta", "mean", "var"], ["y"])
    return _model([gemm, bn], [_vi("x", [3, 6])], [_vi("y", [3, 8])], inits)


def apply(pass_name: str, proto: onnx.ModelProto) -> tuple[ir.Model, dict]:
    model = ir.serde.deserialize_model(proto)
    result = get_pass(pass_name)().run(model, PassContext())
    return result.model, result.stats


def ops(model: ir.Model) -> Counter:
    return Counter(n.op_type for n in ir.traversal.RecursiveGraphIterator(model.graph))


def assert_close(proto: onnx.ModelProto, model: ir.Model, feed: dict, rtol=1e-4, atol=1e-5) -> None:
    out = ir.serde.serialize_model(model)
    for ref, got in zip(run_ort(proto, feed), run_ort(out, feed)):
        np.testing.assert_allclose(got, ref, rtol=rtol, atol=atol)


def _feed(shape) -> dict:
    return {"x": RNG.standard_normal(shape).astype(np.float32)}


@pytest.mark.parametrize("groups, bias, transpose", [
    (1, True, False), (1, False, False), (2, True, False), (4, False, False),
    (1, True, True), (2, False, True),
])
def test_bn_folds_into_conv_variants(groups, bias, transpose):
    proto = conv_bn(groups, bias, transpose)
    model, stats = apply("fuse-bn", proto)
    assert ops(model)["BatchNormalization"] == 0
    assert sum(stats["rewrites"].values()) == 1
    assert_close(proto, model, _feed([1, 4, 6, 6]))


@pytest.mark.parametrize("trans_b", [0, 1])
def test_bn_folds_into_gemm(trans_b):
    proto = gemm_bn(trans_b)
    model, _ = apply("fuse-bn", proto)
    assert ops(model) == Counter({"Gemm": 1})
    assert_close(proto, model, _feed([3, 6]))


def _refused(proto: onnx.ModelProto, caplog) -> tuple[ir.Model, str]:
    with caplog.at_level("DEBUG", logger="graphopt"):
        model, _ = apply("fuse-bn", proto)
    return model, caplog.text


def test_bn_with_runtime_parameter_is_left_alone(caplog):
    proto = conv_bn()
    mean = next(i for i in proto.graph.initializer if i.name == "mean")
    proto.graph.initializer.remove(mean)
    proto.graph.input.append(_vi("mean", [8]))
    model, log = _refused(proto, caplog)
    assert ops(model)["BatchNormalization"] == 1
    assert "fuse-bn: no match" in log and "conv" in log


def test_training_mode_bn_is_left_alone(caplog):
    proto = conv_bn()
    bn = proto.graph.node[1]
    bn.attribute.append(helper.make_attribute("training_mode", 1))
    bn.output.extend(["running_mean", "running_var"])
    model, log = _refused(proto, caplog)
    assert ops(model)["BatchNormalization"] == 1
    assert "training mode (uses batch statistics)" in log


def test_graph_output_inside_pattern_is_left_alone(caplog):
    proto = conv_bn()
    proto.graph.output.append(_vi("c", OUT))
    model, log = _refused(proto, caplog)
    assert ops(model)["BatchNormalization"] == 1 and "fuse-bn: no match" in log
    assert [v.name for v in model.graph.outputs] == ["y", "c"]


def test_shared_weight_gets_a_new_tensor_and_the_other_user_keeps_the_old():
    proto = conv_bn()
    proto.graph.node.append(helper.make_node("Conv", ["x", "w", "b"], ["z"], pads=[1, 1, 1, 1]))
    proto.graph.output.append(_vi("z", OUT))
    before = numpy_helper.to_array(next(i for i in proto.graph.initializer if i.name == "w")).copy()
    model, _ = apply("fuse-bn", proto)
    assert ops(model) == Counter({"Conv": 2})
    np.testing.assert_array_equal(model.graph.initializers["w"].const_value.numpy(), before)
    assert_close(proto, model, _feed([1, 4, 6, 6]))


@pytest.mark.parametrize("rank, fused", [(2, True), (3, False)])
def test_bn_after_matmul_folds_only_for_2d(rank, fused, caplog):
    x_shape = [3, 6] if rank == 2 else [3, 6, 6]
    inits = [_init("w", [6, 6])] + _bn_inits(6)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["c"]),
             helper.make_node("BatchNormalization", ["c", "gamma", "beta", "mean", "var"], ["y"])]
    proto = _model(nodes, [_vi("x", x_shape)], [_vi("y", x_shape)], inits)
    with caplog.at_level("DEBUG", logger="graphopt"):
        model, _ = apply("fuse-bn", proto)
    assert (ops(model)["BatchNormalization"] == 0) == fused
    if not fused:
        assert "only for a 2-D product" in caplog.text
    assert_close(proto, model, _feed(x_shape))


@pytest.mark.parametrize("scale, offset, order", [
    ("float[3, 1, 1] s = {0.5, -2.0, 3.0}", "float[3, 1, 1] t = {1.0, 2.0, 3.0}", "conv_first"),
    ("float[1, 3, 1, 1] s = {0.5, -2.0, 3.0}", "float t = {1.5}", "const_first"),
    ("float s = {0.25}", "float[1, 3, 1, 1] t = {1.0, 2.0, 3.0}", "conv_first"),
])
def test_conv_affine_and_pad_fusions(scale, offset, order):
    mul, add = ("m = Mul(c, s)", "y = Add(m, t)") if order == "conv_first" else ("m = Mul(s, c)", "y = Add(t, m)")
    proto = parse("""
    <ir_version: 9, opset_import: ["" : 17]>
    g (float[1, 2, 5, 5] x) => (float[1, 3, 5, 5] y)
      <float[3, 2, 3, 3] w = {%s}, %s, %s, int64[8] p = {0, 0, 1, 1, 0, 0, 1, 1}> {
        padded = Pad(x, p)
        c = Conv(padded, w)
        %s
        %s
    }""" % (",".join(str(v) for v in RNG.standard_normal(54).round(3)), scale, offset, mul, add))
    model = ir.serde.deserialize_model(proto)
    for name in ("fuse-pad-conv", "fuse-conv-affine"):
        model = get_pass(name)().run(model, PassContext()).model
    assert ops(model) == Counter({"Conv": 1})
    assert_close(proto, model, _feed([1, 2, 5, 5]))


@pytest.mark.parametrize("body, expected", [
    ("a = Relu(x)\n y = Relu(a)", {"Relu": 1}),
    ("a = Min(x, hi)\n y = Max(a, lo)", {"Clip": 1}),
    ("a = Relu(x)\n y = Clip(a, lo, hi)", {"Clip": 1}),
    ("a = Clip(x, lo, hi)\n y = Relu(a)", {"Clip": 1}),
    ("a = Clip(x, lo, hi)\n b = Clip(a, lo2, hi2)\n y = Relu(b)", {"Clip": 1}),
    ("e = Exp(x)\n t = Transpose <perm = [1, 0]> (e)\n u = Transpose <perm = [1, 0]> (t)\n y = Relu(u)",
     {"Exp": 1, "Relu": 1}),
    ("t = Cast <to = 1> (x)\n y = Relu(t)", {"Relu": 1}),
    ("d = Dropout(x)\n y = Relu(d)", {"Relu": 1}),
    ("p = Pad(x, zeros)\n y = Relu(p)", {"Relu": 1}),
    ("p = Pad(x, ones)\n y = Slice(p, starts, fours)", {"Pad": 1, "Slice": 1}),
])
def test_activation_and_simplify_rules(body, expected):
    proto = parse("""
    <ir_version: 9, opset_import: ["" : 17]>
    g (float[3, 3] x) => (float[3, 3] y) <float lo = {-0.5}, float hi = {0.5}, float lo2 = {-0.2}, float hi2 = {0.8},
        int64[4] zeros = {0, 0, 0, 0}, int64[4] ones = {1, 1, 1, 1}, int64[2] starts = {1, 1},
        int64[2] fours = {4, 4}> {
        %s
    }""" % body)
    model = ir.serde.deserialize_model(proto)
    for name in ("fuse-activations", "simplify", "eliminate-identity"):
        model = get_pass(name)().run(model, PassContext()).model
    assert ops(model) == Counter(expected)
    assert_close(proto, model, _feed([3, 3]))


@pytest.mark.parametrize("rank, fused", [(2, True), (3, False)])
def test_matmul_add_to_gemm_only_in_2d(rank, fused):
    shape = "3, 4" if rank == 2 else "2, 3, 4"
    proto = parse("""
    <ir_version: 9, opset_import: ["" : 17]>
    g (float[%s] x) => (float[%s] y) <float[4, 4] w = {%s}, float[4] b = {1, 2, 3, 4}> {
        m = MatMul(x, w)
        y = Add(m, b)
    }""" % (shape, shape, ",".join(["0.25"] * 16)))
    model, _ = apply("matmul-to-gemm", proto)
    assert (ops(model) == Counter({"Gemm": 1})) == fused
    assert_close(proto, model, _feed([3, 4] if rank == 2 else [2, 3, 4]))


def test_rules_fire_inside_if_branches():
    """Rules rewrite inside a branch (Relu∘Relu); outer-scope weights stay valid either way."""
    then_bn = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["c1"], pads=[1, 1, 1, 1]),
         helper.make_node("BatchNormalization", ["c1", "gamma", "beta", "mean", "var"], ["c2"]),
         helper.make_node("Relu", ["c2"], ["c3"]), helper.make_node("Relu", ["c3"], ["t"])],
        "then", [], [_vi("t", OUT)])
    else_id = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["e"], pads=[1, 1, 1, 1])],
                                "else", [], [_vi("e", OUT)])
    cond = helper.make_node("ReduceSum", ["x"], ["s"], keepdims=0)
    pos = helper.make_node("Greater", ["s", "zero"], ["p"])
    branch = helper.make_node("If", ["p"], ["y"], then_branch=then_bn, else_branch=else_id)
    inits = [_init("w", [8, 4, 3, 3]), numpy_helper.from_array(np.float32(0), "zero")] + _bn_inits(8)
    proto = _model([cond, pos, branch], [_vi("x", [1, 4, 6, 6])], [_vi("y", OUT)], inits)
    model = ir.serde.deserialize_model(proto)
    for name in ("fuse-bn", "fuse-activations"):
        model = get_pass(name)().run(model, PassContext()).model
    assert ops(model)["Relu"] == 1
    for sign in (1, -1):
        assert_close(proto, model, {"x": sign * np.abs(RNG.standard_normal([1, 4, 6, 6])).astype(np.float32)})


def test_fusion_keeps_symbolic_dims_and_is_verified_by_manager():
    proto = conv_bn()
    proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "batch"
    result = optimize(proto, passes="fuse-bn", shapes={"x": (2, 4, 6, 6)})
    record = result.report["passes"][0]
    assert record["applied"] and record["verify"]["ok"] and record["verify"]["max_abs"] < 1e-4
    assert result.model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"


@pytest.mark.parametrize("const", ["float[3] s = {0.5, -2.0, 3.0}", "float[1, 3, 5, 1] s = {%s}" % ",".join(["2.0"] * 15)])
def test_conv_mul_that_broadcasts_beyond_channels_is_refused(const, caplog):
    proto = parse("""
    <ir_version: 9, opset_import: ["" : 17]>
    g (float[1, 2, 5, 3] x) => (float[1, 3, 5, 3] y) <float[3, 2, 1, 1] w = {1, 2, 3, 4, 5, 6}, %s> {
        c = Conv(x, w)
        y = Mul(c, s)
    }""" % const)
    with caplog.at_level("DEBUG", logger="graphopt"):
        model, _ = apply("fuse-conv-affine", proto)
    assert ops(model) == Counter({"Conv": 1, "Mul": 1})
    assert "not a constant per-channel or scalar value" in caplog.text


def test_disjoint_clips_are_not_merged(caplog):
    proto = parse("""
    <ir_version: 9, opset_import: ["" : 17]>
    g (float[3, 3] x) => (float[3, 3] y) <float a = {-1.0}, float b = {0.0}, float c = {0.5}, float d = {2.0}> {
        t = Clip(x, a, b)
        y = Clip(t, c, d)
    }""")
    with caplog.at_level("DEBUG", logger="graphopt"):
        model, _ = apply("fuse-activations", proto)
    assert ops(model) == Counter({"Clip": 2})
    assert "do not overlap" in caplog.text


def test_crashing_library_rule_is_contained(caplog, monkeypatch):
    """A rule that raises is skipped with a reason; the group's other rules still apply."""
    from graphopt.passes.fusion import groups as fusion

    class Boom:
        name = "boom"

    group = fusion.FuseActivations.group
    crashing = fusion.RuleGroup(group.rules[:1] + (("boom", Boom()),) + group.rules[1:])
    monkeypatch.setattr(fusion.FuseActivations, "group", crashing)
    proto = parse("""
    <ir_version: 9, opset_import: ["" : 17]>
    g (float[3, 3] x) => (float[3, 3] y) {
        a = Relu(x)
        y = Relu(a)
    }""")
    with caplog.at_level("DEBUG", logger="graphopt"):
        model, stats = apply("fuse-activations", proto)
    assert stats["rewrites"] == {"relu_relu": 1}
    assert "boom: rule raised" in caplog.text


@pytest.mark.parametrize("target, noop", [("{3, 3}", True), ("{0, -1}", True), ("{-1, 3}", True),
                                          ("{9}", False), ("{1, 9}", False)])
def test_reshape_to_own_shape_is_removed(target, noop):
    rank = target.count(",") + 1
    proto = parse("""
    <ir_version: 9, opset_import: ["" : 17]>
    g (float[3, 3] x) => (float[3, 3] y) <int64[%d] s = %s, int64[2] back = {3, 3}> {
        e = Exp(x)
        r = Reshape(e, s)
        t = Relu(r)
        y = Reshape(t, back)
    }""" % (rank, target))
    model = ir.serde.deserialize_model(proto)
    for name in ("simplify", "eliminate-identity"):
        model = get_pass(name)().run(model, PassContext()).model
    assert ops(model)["Reshape"] == (0 if noop else 2)
    assert_close(proto, model, _feed([3, 3]))


def test_lossless_recipe_keeps_symbolic_dims():
    import models

    proto = models.dynamic_batch_mlp()
    name = proto.graph.input[0].name
    result = optimize(proto, shapes={name: tuple(d.dim_value or 2 for d in proto.graph.input[0].type.tensor_type.shape.dim)})
    assert not result.report["summary"]["passes_rolled_back"]
    for value in (result.model.graph.input[0], result.model.graph.output[0]):
        assert value.type.tensor_type.shape.dim[0].dim_param == "batch"


@pytest.mark.parametrize("opset, fused", [(12, False), (14, True)])
def test_hardswish_only_where_the_opset_has_it(opset, fused, caplog):
    proto = parse("""
    <ir_version: 8, opset_import: ["" : %d]>
    g (float[2, 8] x) => (float[2, 8] y) {
        h = HardSigmoid <alpha = 0.1666667, beta = 0.5> (x)
        y = Mul(x, h)
    }""" % opset)
    with caplog.at_level("DEBUG", logger="graphopt"):
        model, _ = apply("fuse-activations", proto)
    assert (ops(model) == Counter({"HardSwish": 1})) == fused
    if not fused:
        assert "hardswish: needs opset 14, model has 12" in caplog.text
    assert_close(proto, model, _feed([2, 8]))


# --- regressions found by the robustness sweep (tests/robustness) --------------------------

def test_rule_group_reports_dead_nodes_it_removed():
    """onnxscript's rewriter drops dead nodes even when no rule fires; the pass said "no change"
    (builder redundant_model through fuse-pad-conv) and the file differed from the input."""
    proto = models.redundant_model()
    model = ir.serde.deserialize_model(proto)
    before = sum(1 for _ in model.graph)
    result = get_pass("fuse-pad-conv")().run(model, PassContext())
    assert result.stats["rewrites"] == {}
    assert result.modified == (sum(1 for _ in result.model.graph) != before)


def test_fused_weights_are_declared_as_added_bytes():
    """BN folded into a weight shared by two convolutions gives each its own copy: the bytes
    the file grows by are in the pass's stats."""
    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array(rng.standard_normal((4, 4, 3, 3)).astype(np.float32), "w")
    bn_params = [numpy_helper.from_array(v.astype(np.float32), f"{name}{i}") for i in (1, 2)
                 for name, v in (("g", rng.uniform(0.5, 1.5, 4)), ("b", rng.standard_normal(4)),
                                 ("m", rng.standard_normal(4)), ("v", rng.uniform(0.5, 1.5, 4)))]
    nodes = [helper.make_node("Conv", ["x", "w"], ["c1"], pads=[1, 1, 1, 1]),
             helper.make_node("Conv", ["x", "w"], ["c2"], pads=[1, 1, 1, 1]),
             helper.make_node("BatchNormalization", ["c1", "g1", "b1", "m1", "v1"], ["y1"]),
             helper.make_node("BatchNormalization", ["c2", "g2", "b2", "m2", "v2"], ["y2"])]
    proto = _model(nodes, [_vi("x", [1, 4, 5, 5])], [_vi("y1", [1, 4, 5, 5]), _vi("y2", [1, 4, 5, 5])],
                   [weight, *bn_params])
    model, stats = apply("fuse-bn", proto)
    # + two 4x4x3x3 weights and two biases, - the shared weight and both BNs' parameters
    assert stats["rewrites"] == {"conv": 2} and stats["bytes_added"] == 4 * (144 + 8 - 32)


def test_relu_clip_bounds_take_the_input_type_when_shapes_are_not_inferred():
    """Relu(Clip(Relu(a))) with `a` untyped: the merged Clip got float64 bounds in a float32
    graph and the checker rejected it (found by the property tests)."""
    from graphopt.verify import structural_problems

    model, stats = apply("fuse-activations", parse("""
    <ir_version: 8, opset_import: ["" : 13]>
    g (float[1, 2] x) => (float[1, 2] y) {
        a = Relu(x)
        b = Relu(a)
        lo = Constant <value = float {-1.0}> ()
        hi = Constant <value = float {1.0}> ()
        c = Clip(b, lo, hi)
        y = Relu(c)
    }
    """))
    assert sum(stats["rewrites"].values()) >= 2 and structural_problems(model) == []
    clip = next(n for n in model.graph if n.op_type == "Clip")
    assert all(v.const_value.dtype == ir.DataType.FLOAT for v in clip.inputs[1:] if v is not None)
