"""`svd`: MatMul/Gemm factored into two thinner products; numerics in ORT, rank rules, refusals,
data-aware error vs plain SVD, the budget mode, and the speed gate."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from conftest import run_ort
from graphopt import optimize
from graphopt.errors import InputError
from graphopt.pass_api import PassContext
from graphopt.registry import get_pass
from graphopt.passes.lowrank import run as lowrank_run
from graphopt.passes.lowrank.speed import SpeedCache

RNG = np.random.default_rng(0)
QUIET = {"speed_check": False, "latency_runs": 0, "min_size": 0}  # tiny models: timing them is noise


def _low_rank(k: int, n: int, rank: int, noise: float = 1e-4) -> np.ndarray:
    w = RNG.standard_normal((k, rank)) @ RNG.standard_normal((rank, n)) / np.sqrt(rank)
    return (w + noise * RNG.standard_normal((k, n))).astype(np.float32)


def _model(nodes, inputs, outputs, inits, opset: int = 17) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=9)
    onnx.checker.check_model(model, full_check=True)
    return model


def _vi(name, shape, elem=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, elem, shape)


def matmul_model(x_shape, k=96, n=80, rank=12, dtype=np.float32) -> onnx.ModelProto:
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    w = numpy_helper.from_array(_low_rank(k, n, rank).astype(dtype), "w")
    y_shape = list(x_shape[:-1]) + [n]
    return _model([helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], [_vi("x", x_shape, elem)],
                  [_vi("y", y_shape, elem)], [w])


def gemm_model(trans_a: int, trans_b: int, bias: bool, alpha: float = 1.0, beta: float = 1.0) -> onnx.ModelProto:
    m, k, n = 5, 96, 80
    w = _low_rank(k, n, 10)
    inits = [numpy_helper.from_array(w.T.copy() if trans_b else w, "w")]
    inputs = ["x", "w"]
    if bias:
        inits.append(numpy_helper.from_array(RNG.standard_normal(n).astype(np.float32), "c"))
        inputs.append("c")
    node = helper.make_node("Gemm", inputs, ["y"], name="gemm", transA=trans_a, transB=trans_b, alpha=alpha, beta=beta)
    return _model([node], [_vi("x", [k, m] if trans_a else [m, k])], [_vi("y", [m, n])], inits)


def apply(proto: onnx.ModelProto, feeds=None, calibration=None, **options) -> tuple[ir.Model, dict]:
    model = ir.serde.deserialize_model(proto)
    ctx = PassContext(holdout=list(feeds or []), calibration=calibration)
    result = get_pass("svd")(**{**QUIET, **options}).run(model, ctx)
    return result.model, result.stats


def ops(model: ir.Model) -> Counter:
    return Counter(n.op_type for n in model.graph)


def _x(shape) -> dict:
    return {"x": RNG.standard_normal(shape).astype(np.float32)}


def _relative(proto, model, feed) -> float:
    ref = run_ort(proto, feed)[0]
    got = run_ort(ir.serde.serialize_model(model), feed)[0]
    assert got.shape == ref.shape and got.dtype == ref.dtype
    return float(np.linalg.norm(got.astype(np.float64) - ref) / np.linalg.norm(ref))


@pytest.mark.parametrize("x_shape", [[96], [4, 96], [2, 3, 96], [2, 2, 3, 96]])
def test_matmul_any_batch_rank_factored_with_output_name_kept(x_shape):
    proto = matmul_model(x_shape)
    feed = _x(x_shape)
    model, stats = apply(proto, [feed], energy=0.9999)
    assert ops(model) == Counter({"MatMul": 2})
    assert [v.name for v in model.graph.outputs] == ["y"]
    assert "w" not in model.graph.initializers  # the dense weight is gone
    (row,) = stats["layers"]
    assert row["rank"] == 12 and row["shape"] == [96, 80]
    assert row["flops_after"] < row["flops_before"]
    assert _relative(proto, model, feed) < 1e-3


@pytest.mark.parametrize("trans_a, trans_b, bias, alpha, beta", [
    (0, 0, True, 1.0, 1.0), (0, 1, True, 0.5, 2.0), (1, 0, False, 1.0, 1.0), (1, 1, True, 1.5, 0.25),
])
def test_gemm_variants_keep_bias_and_scalars_on_the_second_factor(trans_a, trans_b, bias, alpha, beta):
    proto = gemm_model(trans_a, trans_b, bias, alpha, beta)
    feed = _x([96, 5] if trans_a else [5, 96])
    model, stats = apply(proto, [feed], rank=10)
    second = model.graph.node(-1)
    assert second.op_type == "Gemm" and second.outputs[0].name == "y"
    assert second.attributes.get_float("alpha") == alpha and second.attributes.get_float("beta") == beta
    assert (len(second.inputs) == 3) == bias
    assert stats["layers"][0]["rank"] == 10
    assert _relative(proto, model, feed) < 1e-3


def test_float16_weights_stay_float16():
    proto = matmul_model([4, 96], dtype=np.float16)
    feed = {"x": RNG.standard_normal((4, 96)).astype(np.float16)}
    model, _ = apply(proto, [feed], rank=12)
    assert {t.const_value.dtype for t in model.graph.initializers.values()} == {ir.DataType.FLOAT16}
    assert _relative(proto, model, feed) < 1e-2


@pytest.mark.parametrize("options, rank", [({"energy": 0.9999}, 12), ({"rank_ratio": 0.25}, 20), ({"rank": 7}, 7)])
def test_rank_rules(options, rank):
    model, stats = apply(matmul_model([3, 96]), [_x([3, 96])], **options)
    assert stats["layers"][0]["rank"] == rank
    assert stats["mode"] == next(iter(options))


def _skip_reason(stats) -> str:
    (entry,) = stats["skipped"]
    return entry["reason"]


def test_rank_without_flop_saving_is_refused():
    proto = matmul_model([3, 96])
    model, stats = apply(proto, [_x([3, 96])], rank=44)  # 96*80/176 = 43.6
    assert ops(model) == Counter({"MatMul": 1}) and "layers" not in stats
    assert "44 >= K·N/(K+N) = 43.6" in _skip_reason(stats)


def test_rank_larger_than_the_matrix_is_refused():
    _, stats = apply(matmul_model([3, 96]), [_x([3, 96])], rank=300)
    assert "rank 300 > min(K, N) = 80" in _skip_reason(stats)


@pytest.mark.parametrize("options, message", [
    ({"energy": 1.5}, "energy must be in (0, 1]"), ({"energy": 0.0}, "energy must be in (0, 1]"),
    ({"rank": 0}, "rank must be >= 1"), ({"rank_ratio": 2.0}, "rank_ratio must be in (0, 1]"),
    ({"rank": 4, "energy": 0.9}, "give one of energy, rank_ratio, rank"),
    ({"select": "rank"}, "select=rank needs rank="),
])
def test_bad_options_are_errors_naming_the_option(options, message):
    with pytest.raises(InputError, match="pass 'svd'") as info:
        get_pass("svd")(**options)
    assert message in str(info.value)


def test_non_constant_weight_is_skipped_with_reason(caplog):
    proto = _model([helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")],
                   [_vi("x", [3, 96]), _vi("w", [96, 80])], [_vi("y", [3, 80])], [])
    feed = {**_x([3, 96]), "w": RNG.standard_normal((96, 80)).astype(np.float32)}
    with caplog.at_level("DEBUG", logger="graphopt"):
        model, stats = apply(proto, [feed], rank=4)
    assert ops(model) == Counter({"MatMul": 1})
    assert "graph input" in _skip_reason(stats)
    assert "svd: no match at mm" in caplog.text


def test_shared_weight_is_skipped_with_reason():
    w = numpy_helper.from_array(_low_rank(96, 96, 8), "w")
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"], name="first"),
             helper.make_node("MatMul", ["h", "w"], ["y"], name="second")]
    proto = _model(nodes, [_vi("x", [3, 96])], [_vi("y", [3, 96])], [w])
    model, stats = apply(proto, [_x([3, 96])], rank=8)
    assert ops(model) == Counter({"MatMul": 2})
    assert [s["node"] for s in stats["skipped"]] == ["first", "second"]
    assert all("shared by 2 nodes" in s["reason"] for s in stats["skipped"])


def test_weight_in_a_constant_node_is_factored_and_the_constant_removed():
    tensor = numpy_helper.from_array(_low_rank(96, 80, 12), "wt")
    nodes = [helper.make_node("Constant", [], ["w"], value=tensor),
             helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")]
    proto = _model(nodes, [_vi("x", [3, 96])], [_vi("y", [3, 80])], [])
    feed = _x([3, 96])
    model, stats = apply(proto, [feed], rank=12)
    assert ops(model) == Counter({"MatMul": 2})
    assert _relative(proto, model, feed) < 1e-3


def test_small_weights_are_left_dense():
    _, stats = apply(matmul_model([3, 96]), [_x([3, 96])], rank=4, min_size=10**6)
    assert "fewer than min_size=1000000" in _skip_reason(stats)


MIX = np.linalg.qr(RNG.standard_normal((96, 96)))[0] * np.geomspace(10, 0.001, 96)  # feature scales


def _anisotropic_feeds(count: int) -> list[dict]:
    return [{"x": (RNG.standard_normal((64, 96)) @ MIX.T).astype(np.float32)} for _ in range(count)]


def test_data_aware_is_closer_on_held_out_data_at_the_same_rank():
    w = numpy_helper.from_array(RNG.standard_normal((96, 80)).astype(np.float32), "w")
    proto = _model([helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], [_vi("x", ["n", 96])],
                   [_vi("y", ["n", 80])], [w])
    calib, held = _anisotropic_feeds(4), _anisotropic_feeds(2)
    plain, _ = apply(proto, held, rank=16)
    aware, stats = apply(proto, held, calibration=lambda: iter(calib), rank=16)
    assert stats["data_aware"] is True
    err = stats["layers"][0]["error"]
    assert err["data_aware"]["output_holdout"] < 0.5 * err["plain"]["output_holdout"]
    assert err["data_aware"]["weight"] > err["plain"]["weight"]
    assert err["holdout_error_ratio"] < 0.5
    measured = [_relative(proto, m, held[0]) for m in (plain, aware)]
    assert measured[1] < 0.5 * measured[0]


def _mlp() -> onnx.ModelProto:
    """Three layers with decaying spectra: some ranks are cheap, some are not."""
    rng = np.random.default_rng(7)

    def decaying(k, n, decay):
        u, _, vt = np.linalg.svd(rng.standard_normal((k, n)), full_matrices=False)
        return (u * np.exp(-np.arange(min(k, n)) / decay) @ vt).astype(np.float32)

    inits = [numpy_helper.from_array(decaying(128, 128, d), f"w{i}") for i, d in enumerate((4.0, 30.0, 12.0))]
    nodes = [helper.make_node("MatMul", ["x", "w0"], ["h0"], name="l0"), helper.make_node("Relu", ["h0"], ["r0"]),
             helper.make_node("MatMul", ["r0", "w1"], ["h1"], name="l1"), helper.make_node("Tanh", ["h1"], ["r1"]),
             helper.make_node("MatMul", ["r1", "w2"], ["y"], name="l2")]
    return _model(nodes, [_vi("x", ["n", 128])], [_vi("y", ["n", 128])], inits)


def test_budget_mode_picks_per_layer_ranks_that_fit_the_run_budget(tmp_path):
    rng = np.random.default_rng(8)
    # more calibration samples (320) than input features (128): data-aware ranks fitted to 96
    # samples only fit their subspace; the search (on calibration feeds) then met the budget and
    # the verification (on --data) saw cosine 0.990 and rolled it back
    feeds = [{"x": rng.standard_normal((64, 128)).astype(np.float32)} for _ in range(6)]
    result = optimize(_mlp(), passes="svd:speed_check=false;latency_runs=0;max_evals=12", calib=feeds[:5],
                      data=feeds[5:], budget={"cosine": 0.995})
    record = result.report["passes"][0]
    stats = record["stats"]
    assert record["applied"] and stats["mode"] == "budget" and stats["data_aware"] is True
    assert record["verify"]["cosine"] >= 0.995
    assert stats["budget"]["evaluations"] <= 12
    ranks = {row["node"]: row["rank"] for row in stats["layers"]}
    assert ranks and stats["flops_after"] < stats["flops_before"]
    assert ranks.get("l0", 99) < ranks.get("l1", 99)  # the fast-decaying layer is cut harder
    json.dumps(stats)  # the report is JSON


def test_speed_gate_skips_layers_the_runtime_does_not_run_faster(monkeypatch):
    monkeypatch.setattr(SpeedCache, "matmul", lambda self, *args: (1.0, 0.99))
    model, stats = apply(matmul_model([3, 96]), [_x([3, 96])], rank=4, speed_check=True)
    assert ops(model) == Counter({"MatMul": 1})
    assert "not faster on ORT CPU: dense 1.000 ms, factored 0.990 ms" in _skip_reason(stats)


def test_model_not_faster_after_factoring_is_not_applied(monkeypatch):
    monkeypatch.setattr(SpeedCache, "matmul", lambda self, *args: (1.0, 0.5))
    monkeypatch.setattr(lowrank_run, "model_latency", lambda models, feed, opts: [1.0, 1.2])
    model, stats = apply(matmul_model([3, 96]), [_x([3, 96])], rank=4, speed_check=True, latency_runs=5)
    assert ops(model) == Counter({"MatMul": 1})
    assert stats["latency_ms"]["before"] == 1.0 and stats["latency_ms"]["after"] == 1.2
    assert "not faster" in stats["not_applied"]


def test_speed_gate_times_real_onnx_runtime_sessions():
    """The gate builds and times one-layer ORT models (which way it decides is the CPU's business:
    no wall-clock assert here, only that it measured and recorded both sides)."""
    model, stats = apply(matmul_model([64, 96]), [_x([64, 96])], rank=8, speed_check=True, latency_runs=3)
    assert stats["micro_benchmarks"]["count"] == 1
    if stats.get("layers"):
        timing = stats["layers"][0]["latency_ms"]
        assert timing["dense_ms"] > 0 and timing["factored_ms"] > 0
        assert stats["latency_ms"]["before"] > 0 and stats["latency_ms"]["runs"] == 3
    else:
        assert "is not faster on ORT CPU" in _skip_reason(stats)


def test_cli_svd_with_calibration_and_budget(tmp_path, capsys):
    """The issue's command line: `--passes svd --calib DATA --budget cosine=...`."""
    from graphopt.cli import main

    src, out, report = tmp_path / "mlp.onnx", tmp_path / "mlp.svd.onnx", tmp_path / "report.json"
    onnx.save(_mlp(), src)
    rng = np.random.default_rng(9)
    # more calibration rows than input features: see test_budget_mode_picks_per_layer_ranks...
    np.savez(tmp_path / "calib.npz", x=rng.standard_normal((320, 128)).astype(np.float32))
    np.savez(tmp_path / "data.npz", x=rng.standard_normal((32, 128)).astype(np.float32))
    code = main(["optimize", str(src), "-o", str(out), "--passes", "svd:speed_check=false;max_evals=12",
                 "--calib", str(tmp_path / "calib.npz"), "--data", str(tmp_path / "data.npz"),
                 "--budget", "cosine=0.99", "--report", str(report), "--quiet"])
    assert code == 0 and out.exists()
    record = json.loads(report.read_text())["passes"][0]
    assert record["applied"] and record["verify"]["cosine"] >= 0.99
    stats = record["stats"]
    assert stats["layers"] and all({"shape", "rank", "flops_before", "flops_after", "error"} <= set(row)
                                   for row in stats["layers"])
    assert stats["latency_ms"]["runs"] == 30  # the pass timed the model before/after


def test_spec_strings_parse_optional_numbers():
    from graphopt.recipes import parse_pass_spec

    options = parse_pass_spec("svd:energy=0.9;data_aware=on;min_size=0").options
    assert options.energy == 0.9 and options.data_aware == "on" and options.rank is None
    assert parse_pass_spec("tucker:energy=0.8").options.energy == 0.8


@pytest.mark.slow
def test_minilm_data_aware_beats_plain_svd_at_the_same_rank(minilm_path):
    """Real sentences: at rank 128 everywhere, whitening keeps the embeddings much closer."""
    from models.real import MINILM_SENTENCES, minilm_embeddings, minilm_tokenize

    calib = [minilm_tokenize(MINILM_SENTENCES[i:i + 16], max_len=24) for i in range(0, 48, 16)]
    held = minilm_tokenize(MINILM_SENTENCES[48:64], max_len=24)
    proto = onnx.load(str(minilm_path))
    ref = minilm_embeddings(run_ort(proto, held)[0], held["attention_mask"])
    cosines, stats = {}, {}
    for aware in (False, True):
        model, stats[aware] = apply(proto, [held], calibration=(lambda: iter(calib)) if aware else None,
                                    rank=128, min_size=16384)
        got = minilm_embeddings(run_ort(ir.serde.serialize_model(model), held)[0], held["attention_mask"])
        cosines[aware] = float(np.mean(np.sum(ref * got, axis=1)))
    assert stats[True]["layers_factored"] == stats[False]["layers_factored"] == 37  # 36 MatMuls + pooler
    assert stats[True]["flops_after"] == stats[False]["flops_after"] < 0.75 * stats[True]["flops_before"]
    assert cosines[True] > cosines[False] + 0.1
    ratios = [row["error"]["holdout_error_ratio"] for row in stats[True]["layers"]]
    assert max(ratios) < 1.0  # every layer's held-out output error is lower data-aware


def test_budget_mode_with_no_budget_left_factors_nothing():
    from graphopt.tolerance import Budget

    proto = matmul_model([3, 96])
    feed = _x([3, 96])
    wrong = [{"y": -run_ort(proto, feed)[0]}]  # the model already misses its budget before the pass
    ctx = PassContext(holdout=[feed], reference=wrong, budget=Budget({"cosine": 0.9}))
    result = get_pass("svd")(**QUIET).run(ir.serde.deserialize_model(proto), ctx)
    assert not result.modified and result.stats["mode"] == "budget"
    assert "no accuracy budget left before this pass (y: cosine -1 vs budget 0.9)" in _skip_reason(result.stats)


def test_factored_value_read_inside_if_branches_keeps_working():
    from models.builders import if_model

    proto = if_model()
    feed = {"x": np.abs(np.random.default_rng(3).standard_normal((1, 8))).astype(np.float32)}  # then-branch
    model, stats = apply(proto, [feed], rank=3)
    (row,) = stats["layers"]
    second = next(n for n in model.graph if n.op_type == "MatMul" and n.inputs[1].name.endswith("_svd_b"))
    branch_reads = {v.name for g in model.graphs() if g is not model.graph for n in g for v in n.inputs if v}
    assert second.outputs[0].name in branch_reads  # the branches read the factored product
    onnx.checker.check_model(ir.serde.serialize_model(model), full_check=True)
    assert 0 < _relative(proto, model, feed) < 2 * row["error"]["plain"]["weight"] + 1e-6
