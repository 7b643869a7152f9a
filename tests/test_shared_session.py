"""Sessions that borrow the IR's weight buffers: same outputs, no copy, clean fallbacks."""

import numpy as np
import onnx
import onnx_ir as ir
import pytest

from graphopt import io as gio
from graphopt.runtime import create_session
from graphopt.shared_session import shared_weight_session


def _model(rows: int = 64, dtype=np.float32) -> ir.Model:
    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", rows])
    y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)
    rng = np.random.default_rng(0)
    w = onnx.numpy_helper.from_array(rng.standard_normal((rows, 32)).astype(np.float32), "w")
    b = onnx.numpy_helper.from_array(rng.standard_normal(32).astype(np.float32), "b")  # 128 B: serialized
    nodes = [onnx.helper.make_node("MatMul", ["x", "w"], ["m"]), onnx.helper.make_node("Add", ["m", "b"], ["y"])]
    graph = onnx.helper.make_graph(nodes, "g", [x], [y], [w, b])
    proto = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)], ir_version=9)
    model = ir.serde.deserialize_model(proto)
    gio.materialize_embedded_tensors(model)
    return model


@pytest.mark.parametrize("level", ["disable_all", "enable_all"])
def test_outputs_equal_an_ordinary_session(level):
    model = _model()
    feed = {"x": np.random.default_rng(1).standard_normal((3, 64)).astype(np.float32)}
    shared = shared_weight_session(model, level)
    assert shared is not None
    expected = create_session(model, opt_level=level).run(None, feed)[0]
    np.testing.assert_array_equal(shared.run(None, feed)[0], expected)


def test_the_session_uses_the_models_own_buffer_and_leaves_the_model_as_it_was():
    model = _model()
    tensor = model.graph.initializers["w"].const_value
    session = shared_weight_session(model)
    borrowed, _ = session.graphopt_borrowed
    assert set(borrowed) == {"w"}  # the 128-byte bias is serialized, not borrowed
    assert np.shares_memory(borrowed["w"], tensor.numpy())
    assert model.graph.initializers["w"].const_value is tensor
    feed = {"x": np.eye(64, dtype=np.float32)[:2]}
    b = model.graph.initializers["b"].const_value.numpy()
    np.testing.assert_allclose(session.run(None, feed)[0], tensor.numpy()[:2] + b, rtol=1e-6)


def test_no_borrowing_for_external_data_or_only_small_weights(tmp_path):
    assert shared_weight_session(_model(rows=8)) is None  # 8 x 32 floats: 1 KiB, below the threshold
    path = tmp_path / "m.onnx"
    gio.save_model(_model(), path, external_data=True)
    external = gio.load_path(path)
    assert isinstance(external.graph.initializers["w"].const_value, ir.ExternalTensor)
    assert shared_weight_session(external) is None


def test_refused_session_returns_none_for_the_caller_to_fall_back():
    model = _model()
    model.graph[0].op_type = "NoSuchOp"
    assert shared_weight_session(model) is None


def test_weights_in_constant_nodes_are_borrowed_and_the_model_keeps_its_constants():
    model = _model()
    w = model.graph.initializers.pop("w")  # as a Paddle export holds it: a Constant node
    constant = ir.node("Constant", [], {"value": w.const_value}, name="w_const")
    model.graph.insert_before(model.graph[0], constant)
    constant.outputs[0].name = "w_value"
    w.replace_all_uses_with(constant.outputs[0])
    session = shared_weight_session(model)
    borrowed, _ = session.graphopt_borrowed
    assert set(borrowed) == {"w_value"}
    assert np.shares_memory(borrowed["w_value"], w.const_value.numpy())
    assert [n.op_type for n in model.graph] == ["Constant", "MatMul", "Add"]
    feed = {"x": np.random.default_rng(2).standard_normal((3, 64)).astype(np.float32)}
    np.testing.assert_array_equal(session.run(None, feed)[0], create_session(model).run(None, feed)[0])


def test_an_owned_copy_has_its_weight_constants_lifted_in_place_instead_of_in_a_clone():
    model = _model()
    w = model.graph.initializers.pop("w")
    constant = ir.node("Constant", [], {"value": w.const_value}, name="w_const")
    model.graph.insert_before(model.graph[0], constant)
    w.replace_all_uses_with(constant.outputs[0])
    session = shared_weight_session(model, owned=True)
    assert [n.op_type for n in model.graph] == ["MatMul", "Add"]  # lifted in the model itself
    lifted = model.graph.initializers[constant.outputs[0].name].const_value
    assert lifted is w.const_value and not isinstance(lifted, ir.ExternalTensor)  # its tensor is back
    feed = {"x": np.eye(64, dtype=np.float32)[:2]}
    np.testing.assert_array_equal(session.run(None, feed)[0], create_session(model).run(None, feed)[0])
