"""Every model builder: valid (onnx full check), runs in ORT CPU, right shapes and numbers."""

from __future__ import annotations

import math

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from models import (
    build_default,
    cnn,
    default_model_path,
    dynamic_batch_mlp,
    if_model,
    large_mlp,
    mlp,
    redundant_model,
    transformer_block,
)


def run(model: onnx.ModelProto | str, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    source = model if isinstance(model, str) else model.SerializeToString()
    session = ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def weights(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def randn(*shape: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


BUILDERS = {
    "mlp": (mlp, {"x": (1, 64)}, [(1, 10)]),
    "dynamic_batch_mlp": (dynamic_batch_mlp, {"x": (1, 64)}, [(1, 10)]),
    "cnn": (cnn, {"input": (1, 3, 32, 32)}, [(1, 10)]),
    "transformer_block": (transformer_block, {"hidden": (1, 16, 64)}, [(1, 16, 64)]),
    "if_model": (if_model, {"x": (1, 8)}, [(1, 8)]),
    "redundant_model": (redundant_model, {"x": (1, 16)}, [(1, 16)]),
    "build_default": (build_default, {"input": (1, 3, 32, 32)}, [(1, 10)]),
}


@pytest.mark.parametrize("name", BUILDERS)
def test_builder_is_valid_and_runs(name):
    build, inputs, expected = BUILDERS[name]
    model = build()
    onnx.checker.check_model(model, full_check=True)
    assert model.ir_version == 9
    assert [(o.domain, o.version) for o in model.opset_import] == [("", 17)]
    outputs = run(model, {k: randn(*shape) for k, shape in inputs.items()})
    assert [o.shape for o in outputs] == expected
    assert all(o.dtype == np.float32 and np.isfinite(o).all() for o in outputs)
    assert all(np.abs(o).max() > 1e-3 for o in outputs)


@pytest.mark.parametrize("name", BUILDERS)
def test_builder_is_deterministic(name):
    build = BUILDERS[name][0]
    assert build().SerializeToString() == build().SerializeToString()
    if name != "build_default":
        assert build(seed=1).SerializeToString() != build(seed=0).SerializeToString()


def test_mlp_matches_numpy():
    model = mlp(batch=4, in_features=8, hidden=16, out_features=3, layers=3)
    w, x = weights(model), randn(4, 8)
    h = x
    for i in range(3):
        h = np.maximum(h @ w[f"fc{i}.weight"] + w[f"fc{i}.bias"], 0)
    expected = h @ w["head.weight"].T + w["head.bias"]
    (got,) = run(model, {"x": x})
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    ops = [n.op_type for n in model.graph.node]
    assert ops == ["MatMul", "Add", "Relu"] * 3 + ["Gemm"]


def test_dynamic_batch_mlp_runs_with_batch_1_and_3():
    model = dynamic_batch_mlp()
    for value in (*model.graph.input, *model.graph.output):
        assert value.type.tensor_type.shape.dim[0].dim_param == "batch"
    x = randn(3, 64)
    (three,) = run(model, {"x": x})
    (one,) = run(model, {"x": x[1:2]})
    assert three.shape == (3, 10) and one.shape == (1, 10)
    np.testing.assert_allclose(one[0], three[1], rtol=1e-5, atol=1e-6)


def test_cnn_structure():
    model = cnn()
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("Conv") == 5 and ops.count("BatchNormalization") == 5
    for op in ("Add", "MaxPool", "GlobalAveragePool", "Flatten", "Gemm"):
        assert op in ops
    groups = [a.i for n in model.graph.node for a in n.attribute if a.name == "group"]
    assert 4 in groups
    var = weights(model)["stem.bn.running_var"]
    assert var.min() >= 0.5 and var.std() > 0.1  # non-trivial statistics


def test_transformer_block_matches_numpy():
    seq, d, heads, ffn = 8, 32, 2, 64
    model = transformer_block(seq=seq, d_model=d, heads=heads, ffn=ffn)
    x = randn(1, seq, d)
    (got,) = run(model, {"hidden": x})
    np.testing.assert_allclose(got, _transformer_reference(weights(model), x, heads),
                               rtol=1e-4, atol=1e-4)
    ops = [n.op_type for n in model.graph.node]
    counts = {op: ops.count(op) for op in ("ReduceMean", "Pow", "Sqrt", "Erf", "Softmax", "MatMul")}
    assert counts == {"ReduceMean": 4, "Pow": 2, "Sqrt": 2, "Erf": 1, "Softmax": 1, "MatMul": 8}


def _transformer_reference(w, x, heads):
    """Post-LN encoder block in float64 numpy, from the model's own initializers."""
    x = x.astype(np.float64)
    seq, d = x.shape[1:]
    dh = d // heads

    def lin(t, name):
        return t @ w[f"{name}.weight"] + w[f"{name}.bias"]

    def ln(t, name):
        mu = t.mean(-1, keepdims=True)
        var = ((t - mu) ** 2).mean(-1, keepdims=True)
        return (t - mu) / np.sqrt(var + 1e-5) * w[f"{name}.weight"] + w[f"{name}.bias"]

    def split(t):
        return t.reshape(1, seq, heads, dh).transpose(0, 2, 1, 3)

    q, k, v = (split(lin(x, f"attn.{n}")) for n in "qkv")
    scores = q @ k.transpose(0, 1, 3, 2) / math.sqrt(dh)
    probs = np.exp(scores - scores.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    ctx = (probs @ v).transpose(0, 2, 1, 3).reshape(1, seq, d)
    a = ln(x + lin(ctx, "attn.out"), "ln1")
    up = lin(a, "ffn.up")
    gelu = up * 0.5 * (1 + np.vectorize(math.erf)(up / math.sqrt(2)))
    return ln(a + lin(gelu, "ffn.down"), "ln2")


def test_if_model_takes_both_branches():
    model = if_model()
    w = weights(model)
    x_pos = np.abs(randn(1, 8)) + 0.1
    (pos,) = run(model, {"x": x_pos})
    (neg,) = run(model, {"x": -x_pos})
    h = x_pos @ w["w"]
    then = np.maximum(h * w["branch_scale"], 0) + w["bias"]
    np.testing.assert_allclose(pos, then, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(neg, -h + w["bias"], rtol=1e-5, atol=1e-6)
    (if_node,) = [n for n in model.graph.node if n.op_type == "If"]
    branches = {a.name: a.g for a in if_node.attribute}
    assert [n.op_type for n in branches["else_branch"].node] == ["Identity"]
    outer = {n.output[0] for n in model.graph.node} | set(w)
    for branch in branches.values():  # both branches read outer-scope values
        assert {i for n in branch.node for i in n.input} & outer


def test_redundant_model_contains_cleanup_candidates():
    model = redundant_model()
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("Identity") == 3 and "Dropout" in ops
    w = weights(model)
    assert np.array_equal(w["w_a"], w["w_a_copy"])
    consumed = {i for n in model.graph.node for i in n.input} | {"y"}
    dead = [n.op_type for n in model.graph.node if not set(n.output) & consumed]
    assert dead == ["Mul"]
    relus = [n for n in model.graph.node if n.op_type == "Relu"]
    assert len(relus) == 2 and relus[0].input == relus[1].input
    assert ["Shape", "Gather", "Unsqueeze", "Concat", "Reshape"] == [
        op for op in ops if op in ("Shape", "Gather", "Unsqueeze", "Concat", "Reshape")]


def test_default_onnx_is_what_build_default_writes():
    path = default_model_path()
    data = path.read_bytes()
    assert data == build_default().SerializeToString()
    assert len(data) < 1_000_000


def test_large_mlp_small_writes_external_data(tmp_path):
    layers, width = 2, 256
    path = large_mlp(tmp_path / "big.onnx", layers=layers, width=width)
    data_file = tmp_path / "big.data"
    assert path == tmp_path / "big.onnx" and data_file.exists()
    assert data_file.stat().st_size == layers * (width * width + width) * 4
    assert path.stat().st_size < 10_000
    header = onnx.load(str(path), load_external_data=False)
    assert all(t.data_location == onnx.TensorProto.EXTERNAL for t in header.graph.initializer)
    onnx.checker.check_model(str(path), full_check=True)
    full = onnx.load(str(path))
    w, x = weights(full), randn(1, width)
    h = x
    for i in range(layers):
        h = np.maximum(h @ w[f"fc{i}.weight"] + w[f"fc{i}.bias"], 0)
    (got,) = run(str(path), {"x": x})
    np.testing.assert_allclose(got, h, rtol=1e-4, atol=1e-4)
