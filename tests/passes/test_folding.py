"""Constant folding: folds constant subgraphs, never materializes huge generated tensors."""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import onnx_ir as ir
import pytest

import models
from conftest import parse, run_ort
from graphopt.pass_api import PassContext, get_pass
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
