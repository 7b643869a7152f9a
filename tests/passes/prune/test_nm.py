"""prune-nm: the N:M pattern along each layer's reduction axis, exclusions, budget mode."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest
from onnx import helper, numpy_helper

from graphopt.errors import InputError
from graphopt.pass_api import PassContext
from graphopt.registry import get_pass
from graphopt.passes.prune.nm import nm_mask, satisfies_nm
from graphopt.tolerance import Budget
from models.builders import mlp
from tests.conftest import run_ort

RNG = np.random.default_rng(0)


def layers_model() -> "onnx.ModelProto":
    """Conv (8->16, 3x3) -> Flatten -> Gemm(transB) -> MatMul: three reduction-axis conventions."""
    inits = [numpy_helper.from_array(RNG.standard_normal(shape).astype(np.float32) * 0.2, name) for name, shape in
             [("wc", (16, 8, 3, 3)), ("wg", (32, 16 * 16)), ("wm", (32, 8))]]
    nodes = [helper.make_node("Conv", ["x", "wc"], ["c"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("Flatten", ["r"], ["f"], axis=1),
             helper.make_node("Gemm", ["f", "wg"], ["g"], transB=1),
             helper.make_node("MatMul", ["g", "wm"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", 1, [1, 8, 4, 4])],
                              [helper.make_tensor_value_info("y", 1, [1, 8])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)


def run(proto, ctx=None, **options):
    result = get_pass("prune-nm")(**options).run(ir.serde.deserialize_model(proto), ctx or PassContext())
    return result, result.model


def test_two_of_four_along_each_reduction_axis():
    result, model = run(layers_model(), min_elements=0)
    w = {n.op_type: n.inputs[1].const_value.numpy() for n in model.graph if n.op_type in ("Conv", "Gemm", "MatMul")}
    assert satisfies_nm(w["Conv"], 1, 2, 4) and not satisfies_nm(w["Conv"], 0, 2, 4)
    assert satisfies_nm(w["Gemm"], 1, 2, 4) and not satisfies_nm(w["Gemm"], 0, 2, 4)
    assert satisfies_nm(w["MatMul"], 0, 2, 4) and not satisfies_nm(w["MatMul"], 1, 2, 4)
    for array in w.values():
        assert np.count_nonzero(array) == array.size // 2
    assert [(r["axis"], r["pattern_ok"]) for r in result.stats["layers"]] == [(1, True), (1, True), (0, True)]


def test_mask_keeps_the_largest_in_each_group():
    score = np.array([[1.0, 4.0, 2.0, 3.0, 8.0, 5.0, 7.0, 6.0]])
    assert nm_mask(score, 1, 2, 4).astype(int).tolist() == [[0, 1, 0, 1, 1, 0, 1, 0]]
    assert nm_mask(score, 1, 1, 8).astype(int).tolist() == [[0, 0, 0, 0, 1, 0, 0, 0]]


def test_axis_not_a_multiple_of_m_is_skipped_with_a_reason(caplog):
    proto = mlp(batch=2, in_features=30, hidden=64, layers=2)  # first weight reduces over 30
    with caplog.at_level("DEBUG", logger="graphopt"):
        result, _ = run(proto, min_elements=0)
    assert "30 elements, not a multiple of 4" in caplog.text
    assert all(r["pattern_ok"] for r in result.stats["layers"]) and len(result.stats["layers"]) == 2


def test_activation_saliency_and_numerics_stay_valid():
    proto = mlp(batch=4, in_features=64, hidden=64, layers=2)
    feeds = [{"x": RNG.standard_normal((4, 64)).astype(np.float32)} for _ in range(3)]
    result, model = run(proto, PassContext(holdout=feeds), saliency="activation", n=1, m=2, min_elements=0)
    out = ir.serde.serialize_model(model)
    y = run_ort(out, feeds[0])[0]
    assert y.shape == (4, 10) and np.all(np.isfinite(y))
    assert 0 < result.stats["fidelity"]["cosine"] < 1


def test_budget_mode_takes_least_sensitive_layers_first():
    proto = mlp(batch=4, in_features=64, hidden=128, layers=4)
    feeds = [{"x": RNG.standard_normal((4, 64)).astype(np.float32)} for _ in range(3)]
    ctx = PassContext(holdout=feeds, budget=Budget({"cosine": 0.8}))  # worst-sample cosine
    result, _ = run(proto, ctx, mode="budget", min_elements=0)
    rows = result.stats["layers"]
    assert result.stats["fidelity"]["cosine"] >= 0.8
    applied = [r for r in rows if r["applied"]]
    skipped = [r for r in rows if not r["applied"]]
    assert applied and all("alone" in r for r in rows)
    if skipped:  # every applied layer was less sensitive alone than every skipped one
        assert max(r["alone"]["cosine"] for r in skipped) <= min(r["alone"]["cosine"] for r in applied)


@pytest.mark.parametrize("options, message", [({"n": 4, "m": 4}, "n must be in"), ({"m": 1}, "m must be in"),
                                              ({"n": 0}, "n must be in")])
def test_bad_patterns_are_rejected(options, message):
    with pytest.raises(InputError, match=f"prune-nm.*{message}"):
        get_pass("prune-nm")(**options)
