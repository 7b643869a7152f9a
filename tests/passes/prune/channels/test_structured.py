"""prune-channels: tensors really shrink, the graph stays valid, dead channels go exactly,
compensation recovers fidelity, budget mode fits, bad input is refused with a reason."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnx_ir as ir
import pytest

from graphopt import optimize
from graphopt.errors import InputError
from graphopt.model_stats import model_stats
from graphopt.pass_api import PassContext
from graphopt.registry import get_pass
from graphopt.tolerance import Budget
from tests.conftest import run_ort
from tests.passes.prune import prune_models as pm

BUILDERS = {"residual": pm.residual, "concat": pm.concat, "split": pm.split, "grouped": pm.grouped,
            "flatten_gemm": pm.flatten_gemm, "ffn": pm.ffn}


def prune(proto, ctx=None, **options):
    options.setdefault("round_to", 1)  # the default (8) would leave these 4..10-channel layers whole
    model = ir.serde.deserialize_model(proto)
    result = get_pass("prune-channels")(**options).run(model, ctx or PassContext())
    return result, ir.serde.serialize_model(result.model)


def context(proto, budget=None, feeds=4) -> PassContext:
    holdout = [pm.feed(proto, seed=i) for i in range(feeds)]
    calib = [pm.feed(proto, seed=100 + i) for i in range(feeds)]
    return PassContext(holdout=holdout, calibration=lambda: iter(calib), budget=budget or Budget())


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_removing_dead_channels_changes_no_output(name):
    proto = BUILDERS[name]()
    result, out = prune(proto, ratio=0.25, importance="l1", compensation="none")
    onnx.checker.check_model(out, full_check=True)
    feed = pm.feed(proto)
    for ref, got in zip(run_ort(proto, feed), run_ort(out, feed)):
        np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5)
    shrunk = [g for g in result.stats["groups"] if g["channels_after"] < g["channels_before"]]
    assert shrunk and all(g["params_after"] < g["params_before"] for g in shrunk)
    model = result.stats["model"]
    assert model["params_after"] < model["params_before"] and model["macs_after"] < model["macs_before"]


def test_residual_partners_lose_the_same_channels():
    proto = pm.residual()
    result, out = prune(proto, ratio=0.25, importance="l1", compensation="none")
    shapes = {t.name: list(t.dims) for t in out.graph.initializer}
    conv_weights = sorted((s for s in shapes.values() if len(s) == 4), key=lambda s: s[0] * 100 + s[1])
    assert conv_weights == [[6, 4, 3, 3], [6, 6, 3, 3], [6, 6, 3, 3]]
    tied = next(g for g in result.stats["groups"] if "+" in g["layers"])
    assert (tied["channels_before"], tied["channels_after"]) == (8, 6)


def test_grouped_conv_keeps_equal_blocks_and_depthwise_group_shrinks():
    result, out = prune(pm.grouped(), ratio=0.25, importance="l1", compensation="none")
    convs = [n for n in out.graph.node if n.op_type == "Conv"]
    groups = [next((a.i for a in n.attribute if a.name == "group"), 1) for n in convs]
    assert groups == [1, 2, 6, 1]  # the depthwise conv follows the grouped conv's 8 -> 6 channels
    weights = {t.name: list(t.dims) for t in out.graph.initializer}
    assert weights[convs[1].input[1]] == [6, 3, 3, 3]  # 6 outputs, 3 kept inputs per block of 2


def test_concat_consumer_loses_inputs_at_both_offsets():
    _, out = prune(pm.concat(), ratio=0.25, importance="l1", compensation="none")
    last = [n for n in out.graph.node if n.op_type == "Conv"][-1]
    weights = {t.name: list(t.dims) for t in out.graph.initializer}
    assert weights[last.input[1]] == [5, 8, 3, 3]  # 10 inputs -> 5 + 3


def test_split_sizes_follow_the_pruned_channels():
    _, out = prune(pm.split(), ratio=0.25, importance="l1", compensation="none")
    split = next(n for n in out.graph.node if n.op_type == "Split")
    sizes = next(t for t in out.graph.initializer if t.name == split.input[1])
    assert onnx.numpy_helper.to_array(sizes).tolist() == [2, 4]


def test_ffn_hidden_dim_shrinks_and_compensation_recovers_fidelity():
    proto = pm.ffn(dead=())
    ctx = context(proto)
    result, out = prune(proto, ctx, ratio=0.5, compensation="bias")
    weights = sorted(list(t.dims) for t in out.graph.initializer if len(t.dims) == 2)
    assert weights == [[16, 16], [16, 16]]
    with_c, without = result.stats["fidelity"], result.stats["fidelity_without_compensation"]
    assert with_c["snr_db"] > without["snr_db"]
    refit, _ = prune(proto, context(proto), ratio=0.5, compensation="refit")
    assert refit.stats["fidelity"]["snr_db"] > with_c["snr_db"]


def test_compensation_adds_a_bias_where_the_consumer_had_none():
    net = pm.Net(pm.X)
    h = net.op("Relu", [net.conv("x", 4, 8)])
    y = net.conv(h, 8, 3, bias=False)
    proto = net.model(y, [1, 3, 8, 8])
    _, out = prune(proto, context(proto), ratio=0.5, compensation="bias")
    onnx.checker.check_model(out, full_check=True)
    assert len([n for n in out.graph.node if n.op_type == "Conv"][-1].input) == 3


def test_budget_mode_fits_the_budget_with_bounded_evaluations():
    proto = pm.ffn(dead=())
    ctx = context(proto, Budget({"cosine": 0.98}))
    result, _ = prune(proto, ctx, ratio=0.75, mode="budget", scope="global", max_evals=10)
    assert result.stats["fidelity"]["cosine"] >= 0.98
    assert result.stats["evaluations"] <= 11  # + the starting measurement
    assert all(row["fits"] == (row["cosine"] >= 0.98) for row in result.stats["search"])


def test_global_scope_prunes_unevenly_by_importance():
    proto = pm.concat()
    result, _ = prune(proto, context(proto), ratio=0.3, scope="global", importance="l2", compensation="none")
    removed = [g["channels_before"] - g["channels_after"] for g in result.stats["groups"]]
    assert sum(removed) == 3  # 30% of the 10 channels


def test_round_to_keeps_multiples():
    result, _ = prune(pm.residual(), ratio=0.4, importance="l1", compensation="none", round_to=4)
    tied = next(g for g in result.stats["groups"] if "+" in g["layers"])
    assert tied["channels_after"] == 8  # 8 - 3 = 5, rounded up to 8: nothing pruned there
    result, _ = prune(pm.residual(), ratio=0.6, importance="l1", compensation="none", round_to=4)
    tied = next(g for g in result.stats["groups"] if "+" in g["layers"])
    assert tied["channels_after"] == 4


@pytest.mark.parametrize("ratio", [-0.1, 1.0, 1.5])
def test_ratio_outside_range_is_rejected(ratio):
    with pytest.raises(InputError, match=r"prune-channels.*ratio must be in \[0, 1\)"):
        get_pass("prune-channels")(ratio=ratio)


def test_unprunable_model_is_left_alone_with_reasons(caplog):
    net = pm.Net(pm.X)
    y = net.op("Add", ["x", net.conv("x", 4, 4)])  # tied to the graph input
    proto = net.model(net.conv(y, 4, 2), [1, 2, 8, 8])
    with caplog.at_level("DEBUG", logger="graphopt"):
        result, out = prune(proto, ratio=0.5, importance="l1")
    assert not result.modified
    assert "prune-channels: no match" in caplog.text and "no prunable layer produces" in caplog.text
    reasons = sorted(r["reason"] for r in result.stats["refused"])
    assert len(reasons) == 2 and "operand 'x'" in reasons[0] and "graph output" in reasons[1]
    assert out.graph.initializer[0].dims == proto.graph.initializer[0].dims


def test_manager_verifies_a_pruned_model_end_to_end():
    proto = pm.residual()
    feeds = [pm.feed(proto, 1, seed=i) for i in range(4)]
    res = optimize(proto, passes="prune-channels:ratio=0.5;mode=budget;scope=global;round_to=1", data=feeds,
                   budget={"cosine": 0.95})
    record = res.report["passes"][0]
    assert record["applied"] and not record["rolled_back"] and record["verify"]["cosine"] >= 0.95
    json.dumps(res.report)  # the stats are plain JSON
    assert model_stats(ir.serde.deserialize_model(res.model)).param_count < \
        model_stats(ir.serde.deserialize_model(proto)).param_count


def test_constant_node_weights_are_pruned_too():
    proto = pm.residual()
    inits = {t.name: t for t in proto.graph.initializer}
    for name in [n.input[1] for n in proto.graph.node if n.op_type == "Conv"]:
        proto.graph.initializer.remove(inits[name])
        proto.graph.node.insert(0, onnx.helper.make_node("Constant", [], [name], value=inits[name]))
    result, out = prune(proto, ratio=0.25, importance="l1", compensation="none")
    assert result.modified and not [n for n in out.graph.node if n.op_type == "Constant" and
                                    list(n.attribute[0].t.dims)[:1] == [8]]
    feed = pm.feed(proto)
    np.testing.assert_allclose(run_ort(out, feed)[0], run_ort(proto, feed)[0], rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_minilm_ffn_hidden_dims_shrink_within_budget(minilm_path):
    from models.real import MINILM_SENTENCES, minilm_tokenize

    calib = [minilm_tokenize(MINILM_SENTENCES[i:i + 8], 64) for i in range(0, 48, 8)]
    held_out = [minilm_tokenize(MINILM_SENTENCES[48:72], 64)]
    res = optimize(str(minilm_path), passes="lift-constants,prune-channels:ratio=0.1", calib=calib,
                   data=held_out, budget={"cosine": 0.98})
    record = res.report["passes"][-1]
    assert record["applied"] and record["verify"]["cosine"] >= 0.98
    groups = record["stats"]["groups"]
    assert len(groups) == 6 and {(g["channels_before"], g["channels_after"]) for g in groups} == {(1536, 1384)}


@pytest.mark.slow
def test_ppocr_rec_convs_and_ffns_shrink():
    pytest.importorskip("rapidocr_onnxruntime")
    from models.real import ppocr_inputs, ppocr_models

    calib = [ppocr_inputs("rec", 4, seed=s) for s in range(2)]
    held_out = [ppocr_inputs("rec", 4, seed=100)]
    res = optimize(str(ppocr_models()["rec"]), passes="lift-constants,prune-channels:ratio=0.2;scope=global",
                   calib=calib, data=held_out, budget={"cosine": 0.9})
    record = res.report["passes"][-1]
    assert record["applied"] and not record["rolled_back"]
    model = record["stats"]["model"]
    assert model["params_after"] < 0.9 * model["params_before"]
    assert any("MatMul" in g["layers"] for g in record["stats"]["groups"] if g["channels_after"] < g["channels_before"])
    onnx.checker.check_model(ir.serde.serialize_model(res.model), full_check=True)


def test_budget_levels_start_at_one_percent_and_stop_at_the_cap():
    from graphopt.passes.prune.channels.structured import budget_levels

    assert budget_levels(0.25) == [0.01, 0.02, 0.03, 0.04, 0.05, 0.1, 0.15, 0.2, 0.25]
    assert budget_levels(0.02) == [0.01, 0.02] and budget_levels(0.005) == [0.005]
