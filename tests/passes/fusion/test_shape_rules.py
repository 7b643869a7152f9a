"""Shape chains over symbolic dims (simplify): run-time Reshape targets and Expand shapes that are
provably constant or the input's own, Reshape∘Reshape with explicit zeros, Reshape∘Transpose of
size-1 axes, Unsqueeze∘Unsqueeze. Outputs bitwise equal in ORT (empty tensors included where the
input model runs them); what cannot be proven stays, with its reason."""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import onnx.parser
import onnx_ir as ir
import pytest

from conftest import parse, run_ort
from graphopt.pass_api import PassContext
from graphopt.passes.fusion.rules import RuleGroup, apply_rule_group
from graphopt.passes.fusion.shape_rules import reshape_reshape_exact_rule
from graphopt.passes.fusion.symbolic import ShapeEval, const, div, dims_text, mul, same
from graphopt.registry import get_pass

RNG = np.random.default_rng(0)


def simplified(proto: onnx.ModelProto) -> tuple[ir.Model, dict]:
    model = ir.serde.deserialize_model(proto)
    stats = get_pass("simplify")().run(model, PassContext()).stats
    for name in ("eliminate-identity", "remove-unused"):
        model = get_pass(name)().run(model, PassContext()).model
    return model, stats


def ops(model: ir.Model) -> Counter:
    return Counter(n.op_type for n in model.graph)


def assert_bitwise(proto: onnx.ModelProto, model: ir.Model, feeds: list[dict]) -> None:
    out = ir.serde.serialize_model(model)
    for data in feeds:
        for ref, got in zip(run_ort(proto, data), run_ort(out, data)):
            assert ref.shape == got.shape and ref.dtype == got.dtype
            assert np.array_equal(ref, got)


def x_feed(*shape) -> dict:
    return {"x": RNG.standard_normal(shape).astype(np.float32)}


FLATTEN_BY_SHAPE = """
<ir_version: 8, opset_import: ["" : 13]>
g (float[T, 1, 4, 8] x) => (float[T, 1, 32] y) <int64 i0 = {0}, int64 i1 = {1}, int64 i2 = {2}, int64 i3 = {3},
    int64[1] a0 = {0}> {
    e = Exp(x)
    s = Shape(e)
    d0 = Gather(s, i0)
    d1 = Gather(s, i1)
    d2 = Gather(s, i2)
    d3 = Gather(s, i3)
    d23 = Mul(d2, d3)
    u0 = Unsqueeze(d0, a0)
    u1 = Unsqueeze(d1, a0)
    u23 = Unsqueeze(d23, a0)
    target = Concat <axis = 0> (u0, u1, u23)
    y = Reshape(e, target)
}"""

# PP-OCR's form: Shape -> Cast(int32) -> Slice -> Cast(int64), with constant 0 ("copy") and 3/8 parts
SPLIT_HEADS_INT32 = """
<ir_version: 8, opset_import: ["" : 13]>
g (float[B, T, 24] x) => (float[B, T, 3, 8] y) <int64[1] zero = {0}, int64[1] one = {1}, int64[1] two = {2},
    int64[1] three = {3}, int64[1] eight = {8}> {
    e = Exp(x)
    s = Shape(e)
    s32 = Cast <to = 6> (s)
    t32 = Slice(s32, one, two, zero, one)
    t = Cast <to = 7> (t32)
    target = Concat <axis = 0> (zero, t, three, eight)
    y = Reshape(e, target)
}"""


@pytest.mark.parametrize("text, shapes, target", [
    (FLATTEN_BY_SHAPE, [(5, 1, 4, 8), (1, 1, 4, 8), (0, 1, 4, 8)], [0, 1, 32]),
    (SPLIT_HEADS_INT32, [(2, 5, 24), (1, 1, 24), (0, 3, 24)], [0, 0, 3, 8]),
])
def test_run_time_reshape_target_becomes_constant(text, shapes, target):
    proto = parse(text)
    model, stats = simplified(proto)
    assert stats["rewrites"] == {"reshape_target": 1}
    assert ops(model) == Counter({"Exp": 1, "Reshape": 1})
    reshape = next(n for n in model.graph if n.op_type == "Reshape")
    assert reshape.inputs[1].const_value.numpy().tolist() == target  # 0 = copy; never a new -1
    assert_bitwise(proto, model, [x_feed(*s) for s in shapes])


def test_target_read_from_another_tensor_stays(caplog):
    proto = parse("""
    <ir_version: 8, opset_import: ["" : 13]>
    g (float[T, 6] x, float[U, 2] other) => (float[T, 3, 2] y) <int64 i0 = {0}, int64[1] a0 = {0},
        int64[2] rest = {3, 2}> {
        s = Shape(other)
        d0 = Gather(s, i0)
        u0 = Unsqueeze(d0, a0)
        target = Concat <axis = 0> (u0, rest)
        y = Reshape(x, target)
    }""")
    with caplog.at_level("DEBUG", logger="graphopt"):
        model, _ = simplified(proto)
    assert ops(model)["Shape"] == 1
    assert "reshape_target: target element 0 (other[0]) is neither constant nor the input's dim 0" in caplog.text


def test_expand_to_own_shape_goes_and_a_growing_one_stays(caplog):
    proto = parse("""
    <ir_version: 8, opset_import: ["" : 13]>
    g (float[N, C] x, float[M, C] other) => (float[N, C] y, float[M, C] z) <int64[1] one = {1}, int64[1] a0 = {0},
        int64[1] e1 = {1}, int64[1] e2 = {2}> {
        e = Exp(x)
        s = Shape(e)
        tail = Slice(s, e1, e2)
        own = Concat <axis = 0> (one, tail)
        y = Expand(e, own)
        so = Shape(other)
        z = Expand(e, so)
    }""")
    with caplog.at_level("DEBUG", logger="graphopt"):
        model, stats = simplified(proto)
    assert stats["rewrites"] == {"expand_own_shape": 1}
    assert ops(model)["Expand"] == 1
    assert "may grow input" in caplog.text
    data = {**x_feed(3, 4), "other": np.zeros((3, 4), np.float32)}
    assert_bitwise(proto, model, [data])


RESHAPE_RESHAPE = """
<ir_version: 8, opset_import: ["" : 13]>
g (float[N, 2, 6] x) => (float[N, 2, 2, 3] y) <int64[%d] s1 = %s, int64[4] s2 = {0, 2, 2, 3}> {
    e = Exp(x)
    m = Reshape(e, s1)
    y = Reshape(m, s2)
}"""


@pytest.mark.parametrize("s1, merged, sizes", [
    ("{0, 12}", [0, 2, 2, 3], (3, 0)),  # zeros stay zeros: an empty batch still runs
    ("{0, 3, 4}", [0, 2, 2, 3], (3, 0)),
    ("{-1, 12}", [0, 2, 2, 3], (3,)),  # the middle dim is x's: a zero again (the input refuses N=0)
])
def test_reshape_reshape_keeps_copies_exact(s1, merged, sizes):
    proto = parse(RESHAPE_RESHAPE % (s1.count(",") + 1, s1))
    model, stats = simplified(proto)
    assert stats["rewrites"] == {"reshape_reshape_exact": 1}
    reshape = next(n for n in model.graph if n.op_type == "Reshape")
    assert reshape.inputs[1].const_value.numpy().tolist() == merged
    assert_bitwise(proto, model, [x_feed(n, 2, 6) for n in sizes])


def test_reshape_reshape_with_unknown_middle_dim_is_refused(caplog):
    proto = parse("""
    <ir_version: 8, opset_import: ["" : 13]>
    g (float[N, M, 6] x) => (float[P, 2, 3] y) <int64[2] s1 = {-1, 6}, int64[3] s2 = {0, 2, 3}> {
        m = Reshape(x, s1)
        y = Reshape(m, s2)
    }""")
    model = ir.serde.deserialize_model(proto)
    group = RuleGroup.of(needs_shapes=True, reshape_reshape_exact=reshape_reshape_exact_rule)
    with caplog.at_level("DEBUG", logger="graphopt"):
        result = apply_rule_group("simplify", group, model, PassContext(), 4)
    assert not result.modified
    assert "is neither static nor x's dim 0" in caplog.text


@pytest.mark.parametrize("perm, target, merged", [
    ([0, 2, 1, 3], "{0, 0, -1}", [0, 1, -1]),  # ddddocr: [T, 2, 1, H] -> [T, 1, 2, H] -> [T, 1, 2H]
    ([2, 0, 1, 3], "{1, -1, 4}", [1, -1, 4]),
])
def test_reshape_of_a_transpose_of_unit_axes(perm, target, merged):
    proto = parse("""
    <ir_version: 8, opset_import: ["" : 13]>
    g (float[T, 2, 1, 4] x) => (float[A, B, C] y) <int64[3] s = %s> {
        e = Exp(x)
        t = Transpose <perm = %s> (e)
        y = Reshape(t, s)
    }""" % (target, perm))
    model, stats = simplified(proto)
    assert stats["rewrites"] == {"reshape_unit_transpose": 1}
    assert ops(model) == Counter({"Exp": 1, "Reshape": 1})
    assert next(n for n in model.graph if n.op_type == "Reshape").inputs[1].const_value.numpy().tolist() == merged
    assert_bitwise(proto, model, [x_feed(5, 2, 1, 4), x_feed(1, 2, 1, 4)])


def test_transpose_of_real_axes_stays(caplog):
    proto = parse("""
    <ir_version: 8, opset_import: ["" : 13]>
    g (float[T, 2, 3] x) => (float[T, 6] y) <int64[2] s = {0, -1}> {
        t = Transpose <perm = [0, 2, 1]> (x)
        y = Reshape(t, s)
    }""")
    with caplog.at_level("DEBUG", logger="graphopt"):
        model, _ = simplified(proto)
    assert ops(model)["Transpose"] == 1
    assert "Transpose moves axes that may be larger than 1" in caplog.text


@pytest.mark.parametrize("a1, a2, axes, out_shape", [
    ("{1, 2}", "{3}", [1, 2, 3], (5, 1, 1, 1, 7)),
    ("{0}", "{0}", [0, 1], (1, 1, 5, 7)),
    ("{2}", "{0, 4}", [0, 3, 4], (1, 5, 7, 1, 1)),
    ("{-1}", "{-1}", [2, 3], (5, 7, 1, 1)),
])
def test_unsqueeze_chains_merge_with_any_axes(a1, a2, axes, out_shape):
    proto = parse("""
    <ir_version: 8, opset_import: ["" : 13]>
    g (float[5, 7] x) => (float[%s] y) <int64[%d] a1 = %s, int64[%d] a2 = %s> {
        e = Exp(x)
        m = Unsqueeze(e, a1)
        y = Unsqueeze(m, a2)
    }""" % (", ".join(map(str, out_shape)), a1.count(",") + 1, a1, a2.count(",") + 1, a2))
    model, _ = simplified(proto)
    assert ops(model) == Counter({"Exp": 1, "Unsqueeze": 1})  # no Constant node left behind
    assert next(n for n in model.graph if n.op_type == "Unsqueeze").inputs[1].const_value.numpy().tolist() == axes
    assert_bitwise(proto, model, [x_feed(5, 7)])


def test_monomials_and_broadcasting():
    ev = ShapeEval()
    value = ir.Value(name="v", shape=ir.Shape(["a", "b"]))
    a, b = ev.atom(value, 0), ev.atom(value, 1)
    assert mul(a, b) == mul(b, a)
    assert div(mul(mul(a, b), const(6)), mul(b, const(3))) == mul(a, const(2))
    assert div(a, b) is None and div(const(7), const(2)) is None
    assert ev.broadcast([[a, const(1)], [const(1), const(4)]]) == [a, const(4)]
    assert ev.broadcast([[a], [b]]) == [None]
    assert dims_text(ev, [mul(a, b), const(3)]) == "[v[0]·v[1], 3]"
    assert same(a, a) and not same(a, b) and not same(None, None)  # unknown equals nothing


def test_declared_output_shape_is_not_trusted():
    """ORT does not check a graph output's declared shape; the symbolic dims derive it instead."""
    proto = onnx.parser.parse_model("""
    <ir_version: 8, opset_import: ["" : 13]>
    g (float[T, 6] x) => (float[1, S] y) <int64[3] s = {0, 2, 3}> {
        y = Reshape(x, s)
    }""")  # the checker refuses the contradiction; ORT runs it
    model = ir.serde.deserialize_model(proto)
    ev = ShapeEval()
    out = model.graph.outputs[0]
    assert dims_text(ev, ev.dims(out)) == f"[{ev.describe(ev.dims(model.graph.inputs[0])[0])}, 2, 3]"


def test_run_time_target_inside_an_if_branch():
    """The new target is an initializer of the branch, under a name no graph of the model uses."""
    from onnx import TensorProto, helper, numpy_helper

    then = helper.make_graph(
        [helper.make_node("Shape", ["x"], ["s"], start=0, end=1), helper.make_node("Concat", ["s", "m1"], ["t"], axis=0),
         helper.make_node("Reshape", ["x", "t"], ["r"]), helper.make_node("Relu", ["r"], ["ro"])],
        "then", [], [helper.make_tensor_value_info("ro", TensorProto.FLOAT, ["N", None])],
        [numpy_helper.from_array(np.array([-1], np.int64), "m1")])
    other = helper.make_graph([helper.make_node("Flatten", ["x"], ["eo"])], "else", [],
                              [helper.make_tensor_value_info("eo", TensorProto.FLOAT, ["N", None])])
    graph = helper.make_graph(
        [helper.make_node("If", ["c"], ["y"], then_branch=then, else_branch=other)], "g",
        [helper.make_tensor_value_info("c", TensorProto.BOOL, []),
         helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", None])],
        [numpy_helper.from_array(np.array([0], np.int64), "r_shape")])  # the name the rule would pick first
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(proto, full_check=True)
    model, stats = simplified(proto)
    assert stats["rewrites"] == {"reshape_target": 1}
    branch = next(iter(model.graph)).attributes["then_branch"].as_graph()
    assert [n.op_type for n in branch] == ["Reshape", "Relu"]
    assert next(iter(branch)).inputs[1].name == "r_shape_1"
    out = ir.serde.serialize_model(model)
    onnx.checker.check_model(out, full_check=True)
    for flag in (True, False):
        data = {"c": np.array(flag), **x_feed(2, 3, 4)}
        assert np.array_equal(run_ort(proto, data)[0], run_ort(out, data)[0])


@pytest.mark.parametrize("target, noop", [("{0, 0, 512}", True), ("{-1, 1, 512}", True), ("{0, 1, -1}", True),
                                          ("{0, 512, 1}", False), ("{0, -1}", False)])
def test_reshape_to_own_symbolic_shape_is_removed(target, noop, caplog):
    rank = target.count(",") + 1
    proto = parse("""
    <ir_version: 8, opset_import: ["" : 13]>
    g (float[T, 1, 512] x) => (float[%s] y) <int64[%d] s = %s> {
        e = Exp(x)
        y = Reshape(e, s)
    }""" % (", ".join("ABC"[:rank]), rank, target))
    with caplog.at_level("DEBUG", logger="graphopt"):
        model, _ = simplified(proto)
    assert ops(model)["Reshape"] == (0 if noop else 1)
    if not noop:
        assert "reshape_noop: Reshape" in caplog.text
    empty_runs = "-1" not in target  # -1 with an empty tensor: ORT refuses the input model too
    assert_bitwise(proto, model, [x_feed(3, 1, 512)] + ([x_feed(0, 1, 512)] if empty_runs else []))


# A dynamically quantized layer (ORT's quantize_dynamic form): the Reshape target reads the batch
# from the layer's float input; the rows pass through DynamicQuantizeLinear and MatMulInteger.
INTEGER_MATMUL_TARGET = """
<ir_version: 8, opset_import: ["" : 13]>
g (float[T, 4] x) => (int32[T, 2, 3] y) <uint8[4, 6] w = {1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24},
    int64 i0 = {0}, int64[1] a0 = {0}, int64[2] rest = {2, 3}> {
    q, scale, zero = DynamicQuantizeLinear(x)
    m = MatMulInteger(q, w)
    s = Shape(x)
    d0 = Gather(s, i0)
    u0 = Unsqueeze(d0, a0)
    target = Concat <axis = 0> (u0, rest)
    y = Reshape(m, target)
}"""


def test_a_target_read_across_integer_matmul_is_resolved():
    proto = onnx.parser.parse_model(INTEGER_MATMUL_TARGET)
    model, stats = simplified(proto)
    assert stats["rewrites"]["reshape_target"] == 1 and "Shape" not in ops(model)
    (node,) = [n for n in model.graph if n.op_type == "Reshape"]
    assert node.inputs[1].const_value.numpy().tolist() == [0, 2, 3]
    assert_bitwise(proto, model, [x_feed(5, 4), x_feed(1, 4)])
