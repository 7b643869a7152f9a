"""Sessions built with the large weights handed over, not serialized (graphopt.session_weights)."""

import numpy as np
import onnx
import onnx_ir as ir
from onnx import helper, numpy_helper

from graphopt.runtime import create_session
from graphopt.session_weights import serialize_sharing_weights

def mlp(seed: int = 0) -> ir.Model:
    """y = (x @ w1) @ w2, and an initializer nothing reads."""
    rng = np.random.default_rng(seed)
    weights = {name: rng.normal(size=shape).astype(np.float32)
               for name, shape in (("w1", (128, 256)), ("w2", (256, 256)), ("unused", (256, 256)))}
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w1"], ["h"]), helper.make_node("MatMul", ["h", "w2"], ["y"])], "g",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 128])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", 256])],
        [numpy_helper.from_array(w, name) for name, w in weights.items()])
    return ir.serde.deserialize_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))


def test_large_read_weights_are_handed_over_and_the_model_is_left_as_it_was():
    model = mlp()
    before = {name: v.const_value for name, v in model.graph.initializers.items()}
    data, names, values = serialize_sharing_weights(model)
    assert sorted(names) == ["w1", "w2"]  # "unused" is read by nothing: ORT would drop it first
    assert len(data) < 256 * 256 * 4 + 4096  # only the unread weight is in the bytes
    assert {name: v.const_value for name, v in model.graph.initializers.items()} == before
    assert all(v.const_value is before[n] for n, v in model.graph.initializers.items())


def test_the_session_computes_what_the_serialized_model_computes():
    model = mlp()
    x = {"x": np.random.default_rng(1).normal(size=(3, 128)).astype(np.float32)}
    expected = (x["x"] @ model.graph.initializers["w1"].const_value.numpy()) @ \
        model.graph.initializers["w2"].const_value.numpy()
    for level in ("disable_all", "enable_all"):
        got = create_session(model, opt_level=level).run(None, x)[0]
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-3)
