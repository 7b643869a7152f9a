"""Neutral constant operands (simplify): x+0, x-0, x·1, x/1, x∧true, x∨false, x⊕false and Where with
a constant condition go when the constant equals the neutral value exactly and its broadcast keeps
the kept operand's shape; the rest stays, with its reason."""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import onnx_ir as ir
import pytest

from conftest import parse, run_ort
from graphopt.pass_api import PassContext
from graphopt.registry import get_pass

RNG = np.random.default_rng(0)


def simplified(proto: onnx.ModelProto) -> tuple[ir.Model, dict]:
    model = ir.serde.deserialize_model(proto)
    stats = get_pass("simplify")().run(model, PassContext()).stats
    for name in ("eliminate-identity", "remove-unused"):
        model = get_pass(name)().run(model, PassContext()).model
    return model, stats


def model_of(body: str, x_type: str = "float[N, 3, 4]", consts: str = "") -> onnx.ModelProto:
    return parse("""
    <ir_version: 8, opset_import: ["" : 13]>
    g (%s x) => (%s y) <%s> {
        %s
    }""" % (x_type, x_type, consts, body))


FLOAT_CASES = [
    ("y = Add(e, c)", "float[1, 1, 4] c = {0.0, 0.0, 0.0, 0.0}", "add_0.1"),
    ("y = Add(c, e)", "float c = {0.0}", "add_0.0"),
    ("y = Sub(e, c)", "float[4] c = {0.0, 0.0, 0.0, 0.0}", "sub_0"),
    ("y = Mul(e, c)", "float[1] c = {1.0}", "mul_1.1"),  # PP-OCR rec's form: shape [1], not a scalar
    ("y = Mul(c, e)", "float[3, 1] c = {1.0, 1.0, 1.0}", "mul_1.0"),
    ("y = Div(e, c)", "float c = {1.0}", "div_1"),
]


@pytest.mark.parametrize("body, consts, rule", FLOAT_CASES)
def test_neutral_float_operand_goes(body, consts, rule):
    proto = model_of("e = Exp(x)\n" + body, consts=consts)
    model, stats = simplified(proto)
    assert stats["rewrites"] == {rule: 1}
    assert Counter(n.op_type for n in model.graph) == Counter({"Exp": 1})
    data = {"x": RNG.standard_normal((2, 3, 4)).astype(np.float32)}
    (ref,), (got,) = run_ort(proto, data), run_ort(ir.serde.serialize_model(model), data)
    assert np.array_equal(ref, got)


@pytest.mark.parametrize("body, consts, rule", [
    ("y = And(n, c)", "bool c = {1}", "and_true.1"),
    ("y = Or(c, n)", "bool[1, 4] c = {0, 0, 0, 0}", "or_false.0"),
    ("y = Xor(n, c)", "bool c = {0}", "xor_false.1"),
])
def test_neutral_boolean_operand_goes(body, consts, rule):
    proto = model_of("n = Not(x)\n" + body, x_type="bool[N, 3, 4]", consts=consts)
    model, stats = simplified(proto)
    assert stats["rewrites"] == {rule: 1}
    assert Counter(n.op_type for n in model.graph) == Counter({"Not": 1})
    data = {"x": RNG.integers(0, 2, (2, 3, 4)).astype(bool)}
    (ref,), (got,) = run_ort(proto, data), run_ort(ir.serde.serialize_model(model), data)
    assert np.array_equal(ref, got)


@pytest.mark.parametrize("consts, kept", [("bool c = {1}", "e"), ("bool[4] c = {0, 0, 0, 0}", "x")])
def test_where_with_constant_condition_takes_one_side(consts, kept):
    proto = model_of("e = Exp(x)\n y = Where(c, e, x)", consts=consts)
    model, stats = simplified(proto)
    assert stats["rewrites"] == {"constant_where": 1}
    assert Counter(n.op_type for n in model.graph) == (Counter({"Exp": 1}) if kept == "e" else Counter({"Identity": 1}))
    data = {"x": RNG.standard_normal((2, 3, 4)).astype(np.float32)}
    (ref,), (got,) = run_ort(proto, data), run_ort(ir.serde.serialize_model(model), data)
    assert np.array_equal(ref, got)


@pytest.mark.parametrize("body, consts, x_type, out_type, reason", [
    ("y = Mul(e, c)", "float c = {1.000001}", "float[N, 3, 4]", "float[N, 3, 4]", "the constant is not 1 everywhere"),
    ("y = Add(e, c)", "float[1, 4] c = {0.0, 0.0, 0.0, 0.0}", "float[4]", "float[1, 4]",
     "may change the result's shape"),
    ("y = Add(e, c)", "float[2, 4] c = {0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0}", "float[1, 4]", "float[2, 4]",
     "may change the result's shape"),
    ("y = Sub(c, e)", "float c = {0.0}", "float[N, 3, 4]", "float[N, 3, 4]", "the operand is not constant"),
])
def test_non_neutral_or_growing_operand_stays(body, consts, x_type, out_type, reason, caplog):
    proto = parse("""
    <ir_version: 8, opset_import: ["" : 13]>
    g (%s x) => (%s y) <%s> {
        e = Exp(x)
        %s
    }""" % (x_type, out_type, consts, body))
    with caplog.at_level("DEBUG", logger="graphopt"):
        model, stats = simplified(proto)
    assert stats["rewrites"] == {}
    assert len(list(model.graph)) == 2
    assert reason in caplog.text


def test_where_with_mixed_condition_stays(caplog):
    proto = model_of("e = Exp(x)\n y = Where(c, e, x)", consts="bool[4] c = {1, 0, 1, 1}")
    with caplog.at_level("DEBUG", logger="graphopt"):
        model, _ = simplified(proto)
    assert Counter(n.op_type for n in model.graph)["Where"] == 1
    assert "the condition mixes true and false" in caplog.text
