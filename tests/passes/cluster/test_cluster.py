"""The `cluster` pass: outputs in ONNX Runtime equal the model with codebook[codes] weights and stay
within the weights' error; ops; ONNX Runtime folds the expansion (BASIC and ALL); palette sizes,
keep_zero, tiny and degenerate weights, shared weights; requires() reasons; the budget search
through graphopt.optimize."""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import graphopt
from conftest import ADD_RELU, parse, run_ort
from graphopt.errors import InputError
from graphopt.pass_api import PassContext
from graphopt.passes.cluster import ClusterWeights
from models.builders import cnn, mlp

K, N, M, V, D = 48, 40, 24, 30, 20


def _weights(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"w1": (rng.standard_normal((K, N)) / np.sqrt(K)).astype(np.float32),
            "w2": (rng.standard_normal((M, N)) / np.sqrt(N)).astype(np.float32),
            "b2": (rng.standard_normal(M) * 0.1).astype(np.float32),
            "wc": (rng.standard_normal((8, 3, 3, 3)) * 0.3).astype(np.float32),
            "table": rng.standard_normal((V, D)).astype(np.float32)}


def _model(w: dict[str, np.ndarray], opset: int = 17) -> onnx.ModelProto:
    """y = Gemm(Relu(x @ w1), w2, b2, transB=1);  c = Conv(img, wc);  e = table[ids]."""
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"], name="mm"),
             helper.make_node("Relu", ["h"], ["r"], name="relu"),
             helper.make_node("Gemm", ["r", "w2", "b2"], ["y"], name="gemm", transB=1),
             helper.make_node("Conv", ["img", "wc"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Gather", ["table", "ids"], ["e"], name="embed")]
    inits = [numpy_helper.from_array(w[k], k) for k in ("w1", "w2", "b2", "wc", "table")]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", K]),
              helper.make_tensor_value_info("img", TensorProto.FLOAT, [1, 3, 6, 6]),
              helper.make_tensor_value_info("ids", TensorProto.INT64, ["B", 3])]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", M]),
               helper.make_tensor_value_info("c", TensorProto.FLOAT, [1, 8, 6, 6]),
               helper.make_tensor_value_info("e", TensorProto.FLOAT, ["B", 3, D])]
    model = helper.make_model(helper.make_graph(nodes, "g", inputs, outputs, inits),
                              opset_imports=[helper.make_opsetid("", opset)], ir_version=9)
    onnx.checker.check_model(model, full_check=True)
    return model


def _feed(seed: int = 1, rows: int = 4) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"x": rng.standard_normal((rows, K)).astype(np.float32),
            "img": rng.standard_normal((1, 3, 6, 6)).astype(np.float32),
            "ids": rng.integers(0, V, (rows, 3)).astype(np.int64)}


def run_pass(proto: onnx.ModelProto, ctx: PassContext | None = None, **options):
    options.setdefault("min_elements", 0)
    result = ClusterWeights(**options).run(ir.serde.deserialize_model(proto), ctx or PassContext())
    out = ir.serde.serialize_model(result.model)
    onnx.checker.check_model(out, full_check=True)
    return out, result


def expanded_weights(proto: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Each weight input of the consumers as ONNX Runtime folds it (ORT_ENABLE_BASIC)."""
    model = ir.serde.deserialize_model(proto)
    names = {n.name: n.inputs[0 if n.op_type == "Gather" else 1].name for n in model.graph
             if n.name in ("mm", "gemm", "conv", "embed", "mm2")}
    probe = onnx.ModelProto()
    probe.CopyFrom(proto)
    probe.graph.output.extend(helper.make_tensor_value_info(v, TensorProto.FLOAT, None) for v in names.values())
    out = dict(zip([o.name for o in probe.graph.output], run_ort(probe, _feed())))
    return {node: out[value] for node, value in names.items()}


def ort_optimized_ops(proto: onnx.ModelProto, path, level) -> Counter:
    so = ort.SessionOptions()
    so.graph_optimization_level = level
    so.optimized_model_filepath = str(path)
    so.log_severity_level = 3
    ort.InferenceSession(proto.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return Counter(n.op_type for n in onnx.load(str(path)).graph.node)


# --- numerics -----------------------------------------------------------------------------

@pytest.mark.parametrize("granularity,bits", [("tensor", 2), ("tensor", 3), ("tensor", 5), ("tensor", 8),
                                              ("channel", 2), ("channel", 3), ("channel", 5)])
def test_outputs_are_the_model_with_palette_weights_and_within_the_weight_error(granularity, bits):
    w = _weights()
    out, result = run_pass(_model(w), bits=bits, granularity=granularity)
    assert result.modified
    clustered = {row["layer"] for row in result.stats["layers"]}
    kept = result.stats["kept_float"]  # a channel palette as large as its rows saves nothing
    assert clustered | set(kept) == {"w1", "w2", "wc", "table"}
    assert all("are not smaller" in reason for reason in kept.values())
    assert {"w1", "w2"} <= clustered
    weights = expanded_weights(out)
    sources = {"mm": ("w1", 1), "gemm": ("w2", 0), "conv": ("wc", 0), "embed": ("table", 1)}
    for node, (name, axis) in sources.items():
        values, original = weights[node], w[name]
        assert values.shape == original.shape
        if name in kept:
            np.testing.assert_array_equal(values, original)
            continue
        rows = np.moveaxis(values, axis, 0).reshape(values.shape[axis], -1) if granularity == "channel" \
            else values.reshape(1, -1)
        assert max(len(np.unique(r)) for r in rows) <= 2**bits
        sqnr = 10 * np.log10(np.sum(original**2) / np.sum((original - values) ** 2))
        assert sqnr > 5.5 * bits - 6  # Lloyd-Max on Gaussian-like values: ~6 dB per bit
    reference = dict(w, w1=weights["mm"], w2=weights["gemm"], wc=weights["conv"], table=weights["embed"])
    feed = _feed()
    for got, want, orig in zip(run_ort(out, feed), run_ort(_model(reference), feed), run_ort(_model(w), feed)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
        rel = np.linalg.norm(got - orig) / np.linalg.norm(orig)
        assert rel < 2.0 ** (2 - bits)
    for row in result.stats["layers"]:
        assert row["bits"] == bits and row["bytes_after"] < row["bytes_before"]


def test_ops_count_and_one_expansion_per_weight():
    out, result = run_pass(_model(_weights()), bits=4)
    before, after = (Counter(n.op_type for n in m.graph.node) for m in (_model(_weights()), out))
    for op in ("MatMul", "Gemm", "Conv", "Relu"):
        assert after[op] == before[op]
    books = {i.name for i in out.graph.initializer if "_codebook" in i.name}
    assert len(books) == 4
    assert sum(n.op_type == "Gather" and n.input[0] in books for n in out.graph.node) == 4
    names = {i.name for i in out.graph.initializer}
    assert not names & {"w1", "w2", "wc", "table"}  # the float weights are gone
    assert result.stats["by_bits"] == {"4 bits": 4}
    size = result.stats["size"]
    assert size["constant_bytes"]["after"] < 0.3 * size["constant_bytes"]["before"]
    assert size["deflated_bytes"]["after"] < size["deflated_bytes"]["before"]


@pytest.mark.parametrize("level", ["ORT_ENABLE_BASIC", "ORT_ENABLE_ALL"])
@pytest.mark.parametrize("granularity", ["tensor", "channel"])
def test_onnx_runtime_folds_the_expansion(tmp_path, level, granularity):
    for proto in (cnn(), _model(_weights())):
        out, result = run_pass(proto, bits=3, granularity=granularity)
        assert result.stats["folding"] == {"folds": True, "level": "ORT_ENABLE_BASIC"}
        opt_level = getattr(ort.GraphOptimizationLevel, level)
        ops = ort_optimized_ops(out, tmp_path / "clustered.onnx", opt_level)
        assert ops == ort_optimized_ops(proto, tmp_path / "input.onnx", opt_level)  # nothing left to expand
        if level == "ORT_ENABLE_BASIC":
            assert ops["Gather"] == Counter(n.op_type for n in proto.graph.node)["Gather"]
            assert not ops["Reshape"] and not ops["Mod"] and not ops["Cast"]


# --- palettes -----------------------------------------------------------------------------

def test_two_bits_give_a_palette_of_four_entries():
    out, result = run_pass(_model(_weights()), bits=2)
    books = {i.name: numpy_helper.to_array(i) for i in out.graph.initializer if "_codebook" in i.name}
    assert len(books) == 4 and all(b.shape == (4,) for b in books.values())
    assert all(row["palette_size"] == 4 and row["index_bits"] == 2 for row in result.stats["layers"])
    assert all(len(np.unique(v)) == 4 for v in expanded_weights(out).values())


def test_keep_zero_keeps_exact_zeros():
    w = _weights()
    pruned = {k: (np.where(np.abs(v) < np.quantile(np.abs(v), 0.15), 0, v) if k != "b2" else v).astype(np.float32)
              for k, v in w.items()}  # 15% exact zeros: too few to earn an entry of their own at 2 bits
    out, result = run_pass(_model(pruned), bits=2, keep_zero=True)
    source = {"mm": "w1", "gemm": "w2", "conv": "wc", "embed": "table"}
    for node, values in expanded_weights(out).items():
        zeros = pruned[source[node]] == 0
        assert np.all(values[zeros] == 0.0), node
        assert np.count_nonzero(values == 0) >= zeros.sum()
    assert all(row["zero_entry_rows"] == 1 for row in result.stats["layers"])
    without, _ = run_pass(_model(pruned), bits=2, keep_zero=False)
    assert any(np.any(v[pruned[source[n]] == 0] != 0) for n, v in expanded_weights(without).items())


def test_channel_keep_zero_pins_zero_per_row():
    w = _weights()
    w["w1"][:, ::2] = 0.0  # even output channels entirely zero: a one-entry palette of their own
    w["w1"][::3, 1::2] = 0.0
    out, result = run_pass(_model(w), bits=2, granularity="channel", keep_zero=True)
    values = expanded_weights(out)["mm"]
    assert np.all(values[w["w1"] == 0] == 0.0)
    row = next(r for r in result.stats["layers"] if r["layer"] == "w1")
    assert row["palettes"] == N and row["palette_size"] == 4


def test_small_weights_stay_float_with_the_reason():
    out, result = run_pass(_model(_weights()), bits=4, min_elements=K * N)
    kept = result.stats["kept_float"]
    assert kept["w2"] == f"{M * N} elements < min_elements={K * N}"
    assert kept["wc"].endswith(f"< min_elements={K * N}") and "table" in kept
    assert [row["layer"] for row in result.stats["layers"]] == ["w1"]
    assert {"w2", "wc", "table"} <= {i.name for i in out.graph.initializer}


def test_all_equal_weights_get_a_single_entry_and_stay_exact():
    w = _weights()
    w["w1"] = np.full((K, N), 0.125, np.float32)
    out, result = run_pass(_model(w), bits=4)
    row = next(r for r in result.stats["layers"] if r["layer"] == "w1")
    assert row["palette_size"] == 1 and row["index_bits"] == 1 and row["weight_sqnr_db"] == float("inf")
    assert "fewer distinct values" in row["note"]
    np.testing.assert_array_equal(expanded_weights(out)["mm"], w["w1"])


def test_fewer_distinct_values_than_the_palette_keep_them_all():
    w = _weights()
    rng = np.random.default_rng(3)
    w["w1"] = rng.choice(np.array([-0.5, 0.0, 0.25], np.float32), size=(K, N))
    w["wc"] = rng.choice(np.array([-1, 1], np.float32), size=w["wc"].shape)
    out, result = run_pass(_model(w), bits=4)
    rows = {r["layer"]: r for r in result.stats["layers"]}
    assert rows["w1"]["palette_size"] == 3 and rows["w1"]["index_bits"] == 2
    assert rows["wc"]["palette_size"] == 2 and rows["wc"]["index_bits"] == 1
    weights = expanded_weights(out)
    np.testing.assert_array_equal(weights["mm"], w["w1"])
    np.testing.assert_array_equal(weights["conv"], w["wc"])


def test_a_shared_weight_is_clustered_once():
    rng = np.random.default_rng(0)
    shared = rng.standard_normal((K, N)).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["a"], name="mm"),
             helper.make_node("MatMul", ["x2", "w"], ["b"], name="mm2")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(n, TensorProto.FLOAT, [2, K])
                                           for n in ("x", "x2")],
                              [helper.make_tensor_value_info(n, TensorProto.FLOAT, [2, N]) for n in ("a", "b")],
                              [numpy_helper.from_array(shared, "w")])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    out, result = run_pass(proto, bits=3)
    assert len(result.stats["layers"]) == 1
    assert result.stats["layers"][0]["readers"] == ["MatMul:mm", "MatMul:mm2"]
    book = next(i.name for i in out.graph.initializer if "_codebook" in i.name)
    assert sum(n.op_type == "Gather" and n.input[0] == book for n in out.graph.node) == 1
    readers = [n for n in out.graph.node if n.op_type == "MatMul"]
    assert readers[0].input[1] == readers[1].input[1]
    assert sum("_codebook" in i.name for i in out.graph.initializer) == 1
    np.testing.assert_allclose(*(run_ort(out, {"x": np.ones((2, K), np.float32), "x2": np.ones((2, K), np.float32)})))


def test_embeddings_off_leaves_gather_tables():
    out, result = run_pass(_model(_weights()), bits=4, embeddings=False)
    assert "table" in {i.name for i in out.graph.initializer}
    assert "table" not in {row["layer"] for row in result.stats["layers"]}


# --- refusals -----------------------------------------------------------------------------

def test_no_eligible_weights_is_the_requires_reason():
    model = ir.serde.deserialize_model(parse(ADD_RELU))
    reason = ClusterWeights().requires(model, PassContext())
    assert reason.startswith("no eligible weights")
    result = ClusterWeights().run(model, PassContext())
    assert not result.modified and result.stats["skipped"] == reason


def test_tiny_weights_only_is_a_requires_reason_naming_them():
    reason = ClusterWeights(min_elements=10**6).requires(ir.serde.deserialize_model(_model(_weights())),
                                                          PassContext())
    assert reason.startswith("no eligible weights") and "min_elements=1000000" in reason


def test_an_already_clustered_model_is_refused_with_the_reason():
    out, _ = run_pass(_model(_weights()), bits=4)
    model = ir.serde.deserialize_model(out)
    reason = ClusterWeights(min_elements=0).requires(model, PassContext())
    assert reason == ("already clustered: 4 weight(s) come from Gather(codebook, indices) "
                      "and no other weight is eligible")


def test_partly_clustered_models_cluster_the_rest_and_count_the_others():
    first, _ = run_pass(_model(_weights()), bits=4, embeddings=False)
    _, result = run_pass(first, bits=4)
    assert [row["layer"] for row in result.stats["layers"]] == ["table"]
    assert len(result.stats["already_clustered"]) == 3


def test_old_opsets_are_refused():
    reason = ClusterWeights().requires(ir.serde.deserialize_model(_model(_weights(), opset=9)), PassContext())
    assert reason.startswith("opset 9 < 11")


@pytest.mark.parametrize("options", [{"bits": 1}, {"bits": 9}, {"min_bits": 5, "max_bits": 4},
                                     {"budget_share": 0}, {"granularity": "block"}, {"iterations": 0}])
def test_bad_options_are_input_errors(options):
    with pytest.raises(InputError, match="pass 'cluster'"):
        graphopt.optimize(_model(_weights()), passes=[ClusterWeights(**options)], calib=[_feed()] * 4)


# --- budget -------------------------------------------------------------------------------

def _budget_feeds(count: int, seed: int = 5) -> list[dict]:
    rng = np.random.default_rng(seed)
    return [{"x": rng.standard_normal((4, 64)).astype(np.float32)} for _ in range(count)]


def test_budget_mode_picks_the_fewest_bits_that_fit():
    proto = mlp(batch="B", in_features=64, hidden=128, layers=3)
    result = graphopt.optimize(proto, passes=[ClusterWeights(min_elements=1024)], calib=_budget_feeds(16),
                               budget={"cosine": 0.99})
    record = result.report["passes"][0]
    assert record["applied"] and not record["rolled_back"] and record["verify"]["ok"]
    stats = record["stats"]
    fit = stats["budget"]
    assert fit["measured"] and fit["fits"] and 2 <= fit["global_bits"] <= 8
    assert fit["result"]["cosine"] >= 0.99
    bits = {row["layer"]: row["bits"] for row in stats["layers"]}
    assert set(bits) == {"fc0.weight", "fc1.weight", "fc2.weight", "head.weight"}
    assert all(2 <= b <= fit["global_bits"] for b in bits.values())
    assert sum(step["lowered"] for step in fit.get("lowered", [])) == sum(fit["global_bits"] - b for b in bits.values())
    assert isinstance(result.model, onnx.ModelProto)
    for feed in _budget_feeds(8, seed=11):  # fresh inputs: close to the budget, not held to it
        a, b = run_ort(proto, feed)[0], run_ort(result.model, feed)[0]
        assert np.dot(a.ravel(), b.ravel()) / (np.linalg.norm(a) * np.linalg.norm(b)) > 0.97


def test_a_looser_budget_gives_fewer_bits():
    proto = mlp(batch="B", in_features=64, hidden=128, layers=2)
    chosen = {}
    for cosine in (0.999, 0.95):
        result = graphopt.optimize(proto, passes=[ClusterWeights(min_elements=1024, per_layer=False)],
                                   calib=_budget_feeds(12), budget={"cosine": cosine})
        chosen[cosine] = result.report["passes"][0]["stats"]["budget"]["global_bits"]
    assert chosen[0.95] < chosen[0.999]


def test_without_held_out_feeds_every_layer_takes_bits():
    _, result = run_pass(_model(_weights()), bits=5)
    assert result.stats["budget"] == {"measured": False, "reason": "no held-out feeds: every layer at 5 bits"}


def test_a_weight_also_read_inside_a_subgraph_is_refused():
    w = np.random.default_rng(0).standard_normal((K, N)).astype(np.float32)
    branch = lambda name, op: helper.make_graph(  # noqa: E731
        [helper.make_node(op, ["w"] if op == "Identity" else ["w", "w"], [f"{name}_out"])], name, [],
        [helper.make_tensor_value_info(f"{name}_out", TensorProto.FLOAT, [K, N])])
    nodes = [helper.make_node("MatMul", ["x", "w"], ["y"], name="mm"),
             helper.make_node("If", ["flag"], ["z"], name="if", then_branch=branch("then", "Identity"),
                              else_branch=branch("else", "Add"))]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, K]),
                                           helper.make_tensor_value_info("flag", TensorProto.BOOL, [])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, N]),
                               helper.make_tensor_value_info("z", TensorProto.FLOAT, [K, N])],
                              [numpy_helper.from_array(w, "w")])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    onnx.checker.check_model(proto, full_check=True)
    reason = ClusterWeights(min_elements=0).requires(ir.serde.deserialize_model(proto), PassContext())
    assert reason.startswith("no eligible weights") and "also read inside a subgraph" in reason


def test_palettes_are_reused_by_a_second_run_of_the_same_instance_on_the_same_weights():
    model = ir.serde.deserialize_model(_model(_weights()))
    cluster = ClusterWeights(bits=3, min_elements=0, check_folding=False, deflate=False)
    cluster.run(model, PassContext())
    first = {key: item for key, (_, item) in cluster._palettes.items()}
    cluster.run(model.clone(), PassContext())  # the manager's retry: a clone, tensors shared
    assert {key: item for key, (_, item) in cluster._palettes.items()} == first
    assert all(cluster._palettes[key][1] is item for key, item in first.items())
    cluster.run(ir.serde.deserialize_model(_model(_weights(seed=1))), PassContext())
    assert all(cluster._palettes[key][1] is not item for key, item in first.items())


def test_options_parse_from_a_spec_string():
    from graphopt.options import parse_options

    options = parse_options("cluster", ClusterWeights.Options,
                            {"granularity": "channel", "bits": "3", "keep_zero": "true", "method": "kmeans"})
    assert (options.granularity, options.bits, options.keep_zero, options.method) == ("channel", 3, True, "kmeans")
    with pytest.raises(InputError, match="granularity"):
        parse_options("cluster", ClusterWeights.Options, {"granularity": "row"})
