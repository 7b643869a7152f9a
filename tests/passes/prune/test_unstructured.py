"""prune (unstructured): exact sparsity, scopes, saliencies, exclusions, sparse storage that
ORT loads and that equals the dense pruned model, budget mode, bad input."""

from __future__ import annotations

import zlib

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import helper, numpy_helper

from graphopt.errors import InputError
from graphopt.io import load_path, save_model
from graphopt.pass_api import PassContext
from graphopt.registry import get_pass
from graphopt.tolerance import Budget
from models.builders import mlp
from tests.conftest import run_ort

RNG = np.random.default_rng(0)


def feeds(count: int = 4, width: int = 64, batch: int = 4) -> list[dict]:
    return [{"x": RNG.standard_normal((batch, width)).astype(np.float32)} for _ in range(count)]


def prune(proto, ctx=None, **options):
    model = ir.serde.deserialize_model(proto)
    result = get_pass("prune")(**options).run(model, ctx or PassContext())
    return result, result.model


def weights(model: ir.Model) -> dict[str, np.ndarray]:
    return {n.name: n.inputs[1].const_value.numpy() for n in model.graph if n.op_type in ("MatMul", "Gemm")}


def test_layer_scope_zeroes_exactly_the_requested_fraction():
    result, model = prune(mlp(batch=4, hidden=128, layers=3), sparsity=0.5, skip_first_last=False,
                          min_elements=0, report_sizes=False)
    for name, w in weights(model).items():
        assert np.count_nonzero(w == 0) == int(0.5 * w.size), name
    assert [row["sparsity"] for row in result.stats["layers"]] == [0.5] * 4


def test_first_last_and_small_tensors_stay_dense(caplog):
    proto = mlp(batch=4, hidden=128, layers=3)
    before = weights(ir.serde.deserialize_model(proto))
    with caplog.at_level("DEBUG", logger="graphopt"):
        result, model = prune(proto, sparsity=0.5, min_elements=10_000, report_sizes=False)
    after = weights(model)
    names = list(before)
    assert np.array_equal(after[names[0]], before[names[0]])  # first layer
    assert np.array_equal(after[names[-1]], before[names[-1]])  # last layer (the Gemm head)
    assert [row["layer"] for row in result.stats["layers"]] == names[1:-1]
    assert "first/last layer kept dense" in caplog.text
    with caplog.at_level("DEBUG", logger="graphopt"):
        small, _ = prune(proto, sparsity=0.5, min_elements=20_000, report_sizes=False)
    assert not small.modified and "16384 elements < min_elements=20000" in caplog.text


def test_global_scope_hits_the_total_and_varies_per_layer():
    proto = mlp(batch=4, in_features=64, hidden=256, layers=3)
    result, model = prune(proto, sparsity=0.6, scope="global", skip_first_last=False, min_elements=0,
                          saliency="l2", report_sizes=False)
    rows = result.stats["layers"]
    total = sum(r["params"] for r in rows)
    zeros = sum(r["params"] - r["nonzero_after"] for r in rows)
    assert abs(zeros - 0.6 * total) <= 1
    assert len({r["sparsity"] for r in rows}) > 1


def test_activation_saliency_keeps_weights_that_read_large_inputs():
    proto = mlp(batch=4, in_features=64, hidden=128, layers=1)
    loud = [{"x": f["x"] * np.r_[np.full(32, 10.0), np.full(32, 0.1)].astype(np.float32)} for f in feeds()]
    ctx = PassContext(holdout=loud)
    _, model = prune(proto, ctx, sparsity=0.5, saliency="activation", skip_first_last=False, min_elements=0,
                     report_sizes=False)
    first = next(iter(weights(model).values()))
    kept_loud, kept_quiet = np.count_nonzero(first[:32]), np.count_nonzero(first[32:])
    assert kept_loud > 3 * kept_quiet
    _, plain = prune(proto, sparsity=0.5, skip_first_last=False, min_elements=0, report_sizes=False)
    assert abs(np.count_nonzero(next(iter(weights(plain).values()))[:32]) - 2048) < 200


def test_sparse_storage_is_smaller_loads_in_ort_and_matches_dense_exactly(tmp_path):
    proto = mlp(batch=4, in_features=256, hidden=512, layers=3)
    result, model = prune(proto, sparsity=0.8, skip_first_last=False, min_elements=0, storage="sparse")
    dense_path, sparse_path = tmp_path / "dense.onnx", tmp_path / "sparse.onnx"
    onnx.save(ir.serde.serialize_model(model), dense_path)  # the dense pruned model
    save_model(model, sparse_path)
    saved = onnx.load(str(sparse_path))
    assert len(saved.graph.sparse_initializer) == 4 and not [t for t in saved.graph.initializer if t.dims == [512, 512]]
    onnx.checker.check_model(saved)
    onnx.checker.check_model(str(dense_path), full_check=True)
    x = {"x": RNG.standard_normal((4, 256)).astype(np.float32)}
    assert np.array_equal(run_ort(str(sparse_path), x)[0], run_ort(str(dense_path), x)[0])
    original = len(proto.SerializeToString())
    sizes = result.stats["file"]
    assert sparse_path.stat().st_size == sizes["sparse_bytes"] < 0.7 * original
    assert len(zlib.compress(sparse_path.read_bytes(), 6)) <= 0.5 * original
    assert sizes["dense_deflate_bytes"] <= 0.5 * original
    reloaded = load_path(sparse_path)  # onnx_ir alone would drop sparse initializers
    assert not [v for n in reloaded.graph for v in n.inputs if v is not None and v.producer() is None
                and not v.is_graph_input() and v.const_value is None]


def test_budget_mode_fits_and_reports_the_search():
    proto = mlp(batch=4, hidden=128, layers=3)
    ctx = PassContext(holdout=feeds(), budget=Budget({"cosine": 0.99}))
    result, _ = prune(proto, ctx, sparsity=0.9, mode="budget", scope="global", min_elements=0, report_sizes=False)
    assert result.stats["fidelity"]["cosine"] >= 0.99
    assert 0 < result.stats["sparsity"] <= 0.9
    assert all("alone" in row for row in result.stats["layers"])
    assert result.stats["evaluations"] <= 48


def test_non_constant_weight_is_skipped_with_a_reason(caplog):
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("MatMul", ["h", "w2"], ["y"])],
        "g", [helper.make_tensor_value_info("x", 1, [2, 64]), helper.make_tensor_value_info("w", 1, [64, 64])],
        [helper.make_tensor_value_info("y", 1, [2, 64])],
        [numpy_helper.from_array(RNG.standard_normal((64, 64)).astype(np.float32), "w2")])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    with caplog.at_level("DEBUG", logger="graphopt"):
        result, _ = prune(proto, sparsity=0.5, skip_first_last=False, min_elements=0, report_sizes=False)
    assert "weight is not constant" in caplog.text
    assert [row["weight"] for row in result.stats["layers"]] == ["w2"]


@pytest.mark.parametrize("options, message", [({"sparsity": 1.0}, "sparsity must be in"),
                                              ({"sparsity": -0.2}, "sparsity must be in"),
                                              ({"min_elements": -1}, "min_elements"),
                                              ({"budget_share": 0.0}, "budget_share")])
def test_bad_options_are_rejected(options, message):
    with pytest.raises(InputError, match=f"prune.*{message}"):
        get_pass("prune")(**options)
