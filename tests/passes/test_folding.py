"""Constant folding: folds constant subgraphs, never materializes huge generated tensors."""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import onnx_ir as ir
import pytest

import models
from conftest import parse, run_ort
from graphopt.pass_api import PassContext
from graphopt.registry import get_pass
from graphopt.size import model_size


def fold(proto: onnx.ModelProto, **options) -> tuple[ir.Model, bool, dict]:
    model = ir.serde.deserialize_model(proto)
    result = get_pass("fold-constants")(**options).run(model, PassContext())
    return result.model, result.modified, result.stats


def ops(model: ir.Model) -> Counter:
    return Counter(n.op_type for n in ir.traversal.RecursiveGraphIterator(model.graph))


def test_folds_constant_arithmetic_and_static_shape_chain():
    proto = models.redundant_model()
    model, modified, stats = fold(proto)
    assert modified and stats["nodes_removed"] > 0
    assert ops(model)["Shape"] == 0 and ops(model)["Concat"] == 0
    feed = {"x": np.random.default_rng(0).standard_normal((1, 16)).astype(np.float32)}
    out = ir.serde.serialize_model(model)
    np.testing.assert_allclose(run_ort(out, feed)[0], run_ort(proto, feed)[0], rtol=1e-5, atol=1e-6)


GENERATOR = """
<ir_version: 9, opset_import: ["" : 17]>
g (float[%(n)d] x) => (float[%(n)d] y) {
    shape = Constant <value = int64[1] {%(n)d}> ()
    w = ConstantOfShape <value = float[1] {0.5}> (shape)
    y = Mul(x, w)
}
"""


@pytest.mark.parametrize("n, folded", [(16, True), (100_000, False)])
def test_generators_fold_only_when_small(n, folded):
    proto = parse(GENERATOR % {"n": n})
    model, _, _ = fold(proto)
    assert (ops(model)["ConstantOfShape"] == 0) == folded
    assert model_size(model).bytes <= (n * 4 if folded else 64)


def test_generator_limit_option_is_honoured(caplog):
    proto = parse(GENERATOR % {"n": 16})
    with caplog.at_level("DEBUG", logger="graphopt"):
        model, _, _ = fold(proto, generator_limit=8)
    assert ops(model)["ConstantOfShape"] == 1
    assert "would materialize 16 elements (generator_limit=8)" in caplog.text


def test_dynamic_dims_stay_symbolic():
    proto = models.dynamic_batch_mlp()
    model, _, _ = fold(proto)
    dim = model.graph.inputs[0].shape[0]
    assert isinstance(dim, ir.SymbolicDim) and dim.value == "batch"
    assert isinstance(model.graph.outputs[0].shape[0], ir.SymbolicDim)


def test_folded_values_are_valid_in_old_opsets():
    """A folded Shape result must not become Constant(value_ints), which opset 11 lacks."""
    proto = parse("""
    <ir_version: 6, opset_import: ["" : 11]>
    g (float[2, 3] x) => (float[3, 2] y) <float[3, 2] w = {1, 2, 3, 4, 5, 6}> {
        s = Shape(w)
        y = Reshape(x, s)
    }""")
    model, modified, _ = fold(proto)
    assert modified and ops(model) == Counter({"Reshape": 1})
    out = ir.serde.serialize_model(model)
    onnx.checker.check_model(out, full_check=True)
    feed = {"x": np.arange(6, dtype=np.float32).reshape(2, 3)}
    np.testing.assert_array_equal(run_ort(out, feed)[0], run_ort(proto, feed)[0])


# --- regressions found by the robustness sweep (tests/robustness) --------------------------

def test_broadcasting_constants_are_not_folded_into_a_larger_tensor(caplog):
    """[1000, 1] + [1, 1000] constants: 8 KB of inputs became a 4 MB initializer before the
    growth cap (the file grew 500x)."""
    a, b = np.ones((1000, 1), np.float32), np.ones((1, 1000), np.float32)
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Add", ["a", "b"], ["c"]), onnx.helper.make_node("Add", ["x", "c"], ["y"])], "g",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1000, 1000])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1000, 1000])],
        [onnx.numpy_helper.from_array(a, "a"), onnx.numpy_helper.from_array(b, "b")])
    proto = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)], ir_version=9)
    with caplog.at_level("DEBUG", logger="graphopt"):
        model, modified, _ = fold(proto)
    assert not modified and model_size(model).bytes == 8000
    assert "Add would turn 2000 constant elements into 1000000" in caplog.text


def test_small_broadcast_still_folds():
    model, modified, stats = fold(parse("""
    <ir_version: 9, opset_import: ["" : 17]>
    g (float[4, 4] x) => (float[4, 4] y) <float[4, 1] a = {1, 2, 3, 4}, float[1, 4] b = {1, 1, 1, 1}> {
        c = Add(a, b)
        y = Mul(x, c)
    }
    """))
    assert modified and stats["bytes_added"] == 64 - 32 and ops(model) == Counter({"Mul": 1})


def test_sequence_ops_below_opset_13_are_not_rewritten_into_opset_13_forms():
    """onnxscript rewrote ConcatFromSequence(new_axis=1) into Unsqueeze with an axes *input*
    in an opset-12 model (simple/test_sequence_model5): the checker rejected it."""
    from graphopt.verify import structural_problems

    model, _, _ = fold(parse("""
    <ir_version: 7, opset_import: ["" : 12]>
    g (float[2, 3] x, float[2, 3] y) => (float[2, 3, 2] out) {
        seq = SequenceConstruct(x, y)
        out = ConcatFromSequence <axis = -1, new_axis = 1> (seq)
    }
    """))
    assert structural_problems(model) == []
    assert "Unsqueeze" not in ops(model)


def test_initializer_listed_as_input_survives_folding_of_its_last_use():
    """An overridable initializer (also a graph input) whose only use was folded away lost its
    initializer but stayed an input: ORT then required it ("Required inputs (['r']) are missing")."""
    model, modified, _ = fold(parse("""
    <ir_version: 8, opset_import: ["" : 13]>
    g (float[1, 2] x, float r) => (float[1, 2] y, float[2] k) <float r = {0.25}> {
        d = Dropout(x, r)
        y = Relu(x)
        c = Constant <value = float[2] {1.0, 2.0}> ()
        k = Identity(c)
    }
    """))
    assert modified and "r" in model.graph.initializers and [v.name for v in model.graph.inputs] == ["x", "r"]
