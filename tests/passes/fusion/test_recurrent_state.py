"""A provably zero initial state of LSTM/GRU/RNN is dropped (simplify), exactly: outputs bitwise
equal in ORT; states that are not provably +0 of the right shape stay, with the reason logged."""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from conftest import run_ort
from graphopt import optimize
from graphopt.pass_api import PassContext
from graphopt.registry import get_pass

RNG = np.random.default_rng(0)
HIDDEN, FEATURES = 3, 4
GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}


def _weights(op: str, directions: int) -> list[TensorProto]:
    gates = GATES[op]
    shapes = {"W": [directions, gates * HIDDEN, FEATURES], "R": [directions, gates * HIDDEN, HIDDEN],
              "B": [directions, 2 * gates * HIDDEN]}
    return [numpy_helper.from_array(RNG.standard_normal(s).astype(np.float32), n) for n, s in shapes.items()]


def recurrent(op: str = "LSTM", direction: str = "forward", outputs: int = 1, state: str = "chain",
              fill: float | None = None, layout: int = 0) -> onnx.ModelProto:
    """X [T, B, 4] (symbolic T, B) -> op -> Y..., its initial state built as `state` says:
    "chain": Shape(X) -> Gather(batch) -> Unsqueeze -> Concat -> ConstantOfShape(fill);
    "zeros": a zero initializer (static batch 2); "input": a graph input."""
    directions = 2 if direction == "bidirectional" else 1
    batch_axis = 0 if layout else 1
    x_shape = ["B", "T", FEATURES] if layout else ["T", "B", FEATURES]
    state_shape = ["B", directions, HIDDEN] if layout else [directions, "B", HIDDEN]
    nodes, inits, inputs = [], _weights(op, directions), [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)]
    if state == "chain":
        inits += [numpy_helper.from_array(np.array(batch_axis, np.int64), "batch_axis"),
                  numpy_helper.from_array(np.array([0], np.int64), "axes0"),
                  numpy_helper.from_array(np.array([directions], np.int64), "dirs"),
                  numpy_helper.from_array(np.array([HIDDEN], np.int64), "hidden")]
        parts = ["b1", "dirs", "hidden"] if layout else ["dirs", "b1", "hidden"]
        value = {} if fill is None else {"value": numpy_helper.from_array(np.array([fill], np.float32))}
        nodes += [helper.make_node("Shape", ["x"], ["xs"]),
                  helper.make_node("Gather", ["xs", "batch_axis"], ["b0"], axis=0),
                  helper.make_node("Unsqueeze", ["b0", "axes0"], ["b1"]),
                  helper.make_node("Concat", parts, ["state_shape"], axis=0),
                  helper.make_node("ConstantOfShape", ["state_shape"], ["h0"], **value)]
    elif state == "zeros":
        x_shape[batch_axis] = 2
        state_shape = [2, directions, HIDDEN] if layout else [directions, 2, HIDDEN]
        inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)]
        inits.append(numpy_helper.from_array(np.full(state_shape, 0.0 if fill is None else fill, np.float32), "h0"))
    else:
        inputs.append(helper.make_tensor_value_info("h0", TensorProto.FLOAT, state_shape))
    states = ["h0", "h0"] if op == "LSTM" else ["h0"]
    names = ["y", "y_h", "y_c"][:outputs]
    attrs = {"hidden_size": HIDDEN, "direction": direction, **({"layout": layout} if layout else {})}
    nodes.append(helper.make_node(op, ["x", "W", "R", "B", ""] + states, names, **attrs))
    seq, batch = (x_shape[1], x_shape[0]) if layout else (x_shape[0], x_shape[1])
    y_shape = [batch, seq, directions, HIDDEN] if layout else [seq, directions, batch, HIDDEN]
    h_shape = [batch, directions, HIDDEN] if layout else [directions, batch, HIDDEN]
    out_shapes = {"y": y_shape, "y_h": h_shape, "y_c": h_shape}
    graph = helper.make_graph(nodes, "g", inputs, [helper.make_tensor_value_info(n, TensorProto.FLOAT, out_shapes[n])
                                                    for n in names], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14 if layout else 13)], ir_version=8)
    onnx.checker.check_model(model, full_check=True)
    return model


def simplified(proto: onnx.ModelProto) -> tuple[ir.Model, dict]:
    model = ir.serde.deserialize_model(proto)
    stats = get_pass("simplify")().run(model, PassContext()).stats
    model = get_pass("cleanup")().run(model, PassContext()).model
    return model, stats


def ops(model: ir.Model) -> Counter:
    return Counter(n.op_type for n in model.graph)


def feed(proto: onnx.ModelProto, batch: int = 2, steps: int = 5) -> dict:
    dims = [d.dim_value or (batch if d.dim_param == "B" else steps)
            for d in proto.graph.input[0].type.tensor_type.shape.dim]
    return {"x": RNG.standard_normal(dims).astype(np.float32)}


def assert_bitwise(proto: onnx.ModelProto, model: ir.Model, feeds: list[dict]) -> None:
    out = ir.serde.serialize_model(model)
    for data in feeds:
        for ref, got in zip(run_ort(proto, data), run_ort(out, data)):
            assert ref.shape == got.shape
            assert np.array_equal(ref, got)


@pytest.mark.parametrize("op", ["LSTM", "GRU", "RNN"])
@pytest.mark.parametrize("direction", ["forward", "bidirectional"])
@pytest.mark.parametrize("outputs", [1, 2])
def test_zero_state_chain_is_dropped(op, direction, outputs):
    proto = recurrent(op, direction, outputs)
    model, stats = simplified(proto)
    assert ops(model) == Counter({op: 1})  # the Shape/Gather/Unsqueeze/Concat/ConstantOfShape chain is dead
    node = next(iter(model.graph))
    assert all(v is None for v in node.inputs[5:])
    assert sum(n for name, n in stats["rewrites"].items() if name.startswith(f"{op.lower()}_zero_state")) == 1
    assert_bitwise(proto, model, [feed(proto, 2, 5), feed(proto, 1, 3)])


@pytest.mark.parametrize("state, fill", [("chain", 0.0), ("zeros", None)])
def test_explicit_zero_value_and_zero_initializer(state, fill):
    proto = recurrent("LSTM", "bidirectional", 3, state=state, fill=fill)
    model, _ = simplified(proto)
    assert ops(model) == Counter({"LSTM": 1})
    assert_bitwise(proto, model, [feed(proto)])


def test_layout_1_state_is_batch_first():
    """ORT has no layout=1 kernels: the ONNX reference evaluator checks this one."""
    from onnx.reference import ReferenceEvaluator

    proto = recurrent("GRU", "bidirectional", 2, layout=1)
    model, _ = simplified(proto)
    assert ops(model) == Counter({"GRU": 1})
    data = feed(proto, 3, 4)
    refs = ReferenceEvaluator(proto).run(None, data)
    for ref, got in zip(refs, ReferenceEvaluator(ir.serde.serialize_model(model)).run(None, data)):
        assert np.array_equal(ref, got)


@pytest.mark.parametrize("state, fill, reason", [
    ("chain", 0.5, "a ConstantOfShape whose value is not +0"),
    ("chain", -0.0, "a ConstantOfShape whose value is not +0"),  # -0 could flip a sign of zero
    ("zeros", 1.0, "a constant that is not all +0"),
    ("input", None, "neither a constant nor a ConstantOfShape"),
])
def test_state_that_is_not_provably_zero_stays(state, fill, reason, caplog):
    proto = recurrent("LSTM", "forward", 1, state=state, fill=fill)
    with caplog.at_level("DEBUG", logger="graphopt"):
        model, _ = simplified(proto)
    node = next(n for n in model.graph if n.op_type == "LSTM")
    assert node.inputs[5] is not None and node.inputs[6] is not None
    assert f"initial_h is {reason}" in caplog.text


def test_state_of_unprovable_shape_stays(caplog):
    """A zero state whose batch dim is read from another tensor cannot be shown to match X's."""
    proto = recurrent("GRU", "forward", 1)
    proto.graph.input.append(helper.make_tensor_value_info("other", TensorProto.FLOAT, ["B2", FEATURES]))
    next(n for n in proto.graph.node if n.op_type == "Shape").input[0] = "other"
    next(i for i in proto.graph.initializer if i.name == "batch_axis").CopyFrom(
        numpy_helper.from_array(np.array(0, np.int64), "batch_axis"))
    with caplog.at_level("DEBUG", logger="graphopt"):
        model, _ = simplified(proto)
    assert ops(model)["ConstantOfShape"] == 1
    assert "is not provably [1, x[1], 3]" in caplog.text


def crnn_head() -> onnx.ModelProto:
    """What ddddocr's captcha recognizer ends with: features [1, 1, 4, W] -> Transpose -> Reshape by
    a Shape chain -> LSTM with a zero state built from X's batch -> Transpose -> Reshape -> Reshape by
    a Shape chain -> Gemm -> Reshape by a Shape chain; its output is declared [1, seqlen] though it
    is [W, 1, 5] (ORT only warns), as ddddocr's is."""
    inits = _weights("LSTM", 2) + [
        numpy_helper.from_array(RNG.standard_normal([5, 2 * HIDDEN]).astype(np.float32), "fc_w"),
        numpy_helper.from_array(RNG.standard_normal([5]).astype(np.float32), "fc_b")]
    for name, value in {"i0": 0, "i1": 1, "i2": 2, "i3": 3}.items():
        inits.append(numpy_helper.from_array(np.array(value, np.int64), name))
    for name, value in {"two": [2], "hid": [HIDDEN], "minus1": [-1], "flat": [0, 0, -1]}.items():
        inits.append(numpy_helper.from_array(np.array(value, np.int64), name))
    n = helper.make_node
    nodes = [
        n("Transpose", ["x"], ["t"], perm=[3, 0, 1, 2]),
        n("Shape", ["t"], ["ts"]), n("Gather", ["ts", "i0"], ["t0"], axis=0), n("Gather", ["ts", "i1"], ["t1"], axis=0),
        n("Gather", ["ts", "i2"], ["t2"], axis=0), n("Gather", ["ts", "i3"], ["t3"], axis=0), n("Mul", ["t2", "t3"], ["t23"]),
        n("Unsqueeze", ["t0"], ["u0"], axes=[0]), n("Unsqueeze", ["t1"], ["u1"], axes=[0]),
        n("Unsqueeze", ["t23"], ["u23"], axes=[0]), n("Concat", ["u0", "u1", "u23"], ["s1"], axis=0),
        n("Reshape", ["t", "s1"], ["seq"]),
        n("Shape", ["seq"], ["qs"]), n("Gather", ["qs", "i1"], ["q1"], axis=0), n("Unsqueeze", ["q1"], ["uq1"], axes=[0]),
        n("Concat", ["two", "uq1", "hid"], ["hs"], axis=0), n("ConstantOfShape", ["hs"], ["h0"]),
        n("LSTM", ["seq", "W", "R", "B", "", "h0", "h0"], ["y"], hidden_size=HIDDEN, direction="bidirectional"),
        n("Transpose", ["y"], ["yt"], perm=[0, 2, 1, 3]), n("Reshape", ["yt", "flat"], ["yr"]),
        n("Shape", ["yr"], ["ys"]), n("Gather", ["ys", "i0"], ["y0"], axis=0), n("Gather", ["ys", "i1"], ["y1"], axis=0),
        n("Gather", ["ys", "i2"], ["y2"], axis=0), n("Mul", ["y0", "y1"], ["y01"]),
        n("Unsqueeze", ["y01"], ["uy01"], axes=[0]), n("Unsqueeze", ["y2"], ["uy2"], axes=[0]),
        n("Concat", ["uy01", "uy2"], ["s2"], axis=0), n("Reshape", ["yr", "s2"], ["flat2"]),
        n("Gemm", ["flat2", "fc_w", "fc_b"], ["logits"], transB=1),
        n("Unsqueeze", ["y0"], ["vy0"], axes=[0]), n("Unsqueeze", ["y1"], ["vy1"], axes=[0]),
        n("Concat", ["vy0", "vy1", "minus1"], ["s3"], axis=0), n("Reshape", ["logits", "s3"], ["out"]),
    ]
    graph = helper.make_graph(nodes, "crnn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 4, "W"])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, "seqlen"])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 12)], ir_version=7)
    onnx.checker.check_model(model, full_check=True)
    return model


def test_crnn_head_keeps_only_the_compute_nodes():
    proto = crnn_head()
    result = optimize(proto, shapes={"x": (1, 1, 4, 7)})
    assert not result.report["summary"]["passes_rolled_back"]
    kinds = Counter(n.op_type for n in result.model.graph.node)
    assert kinds == Counter({"Reshape": 3, "Transpose": 1, "LSTM": 1, "Gemm": 1})
    lstm = next(n for n in result.model.graph.node if n.op_type == "LSTM")
    assert list(lstm.input[5:]) == []  # both states absent
    for width in (7, 12):
        data = {"x": RNG.standard_normal([1, 1, 4, width]).astype(np.float32)}
        (ref,), (got,) = run_ort(proto, data), run_ort(result.model, data)
        assert ref.shape == got.shape == (width, 1, 5)
        assert np.array_equal(ref, got)
    simplify = next(p for p in result.report["passes"] if p["name"] == "simplify")
    assert any("output 'out'" in line for line in simplify["stats"]["declarations_repaired"])
    assert len(result.model.graph.output[0].type.tensor_type.shape.dim) == 3


def test_dynamic_quantize_lstm_zero_state_is_dropped(tmp_path):
    """ORT's quantize_dynamic turns the LSTM into com.microsoft::DynamicQuantizeLSTM (ddddocr's
    common_old.onnx has one): its zero initial states go too, outputs bitwise equal."""
    from onnxruntime.quantization import quantize_dynamic

    onnx.save(recurrent("LSTM", outputs=3), tmp_path / "f.onnx")
    quantize_dynamic(str(tmp_path / "f.onnx"), str(tmp_path / "q.onnx"), op_types_to_quantize=["LSTM"])
    proto = onnx.load(tmp_path / "q.onnx")
    assert [n.op_type for n in proto.graph.node].count("DynamicQuantizeLSTM") == 1
    model, stats = simplified(proto)
    (node,) = [n for n in model.graph if n.op_type == "DynamicQuantizeLSTM"]
    assert node.inputs[5] is None and node.inputs[6] is None and "ConstantOfShape" not in Counter(
        n.op_type for n in model.graph)
    out = ir.serde.serialize_model(model)
    for shape in ((5, 2, FEATURES), (1, 1, FEATURES)):
        feed = {"x": RNG.standard_normal(shape).astype(np.float32)}
        for a, b in zip(run_ort(proto, feed), run_ort(out, feed)):
            assert np.array_equal(a, b)
