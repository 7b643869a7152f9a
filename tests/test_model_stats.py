"""model_stats: hand-computed MACs, parameter counts, histograms, external data untouched."""

from __future__ import annotations

import json

import numpy as np
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from graphopt.model_stats import format_stats, model_stats
from models import cnn, dynamic_batch_mlp, if_model, large_mlp, mlp

F = TensorProto.FLOAT


def single_op_model(op, x_shape, w_shape, **attrs) -> ir.Model:
    """One ``op`` node ``y = op(x, w)``; y's shape is left for shape inference."""
    w = numpy_helper.from_array(np.ones(w_shape, np.float32), "w")
    node = helper.make_node(op, ["x", "w"], ["y"], **attrs)
    graph = helper.make_graph([node], op, [helper.make_tensor_value_info("x", F, x_shape)],
                              [helper.make_tensor_value_info("y", F, None)], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    return ir.from_proto(model)


@pytest.mark.parametrize("op, x, w, attrs, macs", [
    ("MatMul", [2, 3, 4], [4, 5], {}, 2 * 3 * 5 * 4),
    ("MatMul", [4], [4, 5], {}, 5 * 4),
    ("Gemm", [6, 4], [6, 7], {"transA": 1}, 4 * 7 * 6),
    ("Gemm", [3, 6], [7, 6], {"transB": 1}, 3 * 7 * 6),
    ("Conv", [1, 4, 10, 10], [8, 2, 3, 3], {"group": 2, "pads": [1, 1, 1, 1]}, 8 * 100 * 2 * 9),
    ("Conv", [2, 3, 9, 9], [6, 3, 3, 3], {"strides": [2, 2]}, 2 * 6 * 16 * 27),
    ("ConvTranspose", [1, 4, 5, 5], [4, 3, 3, 3], {"strides": [2, 2]}, 4 * 25 * 3 * 9),
])
def test_macs_by_hand(op, x, w, attrs, macs):
    stats = model_stats(single_op_model(op, x, w, **attrs))
    assert stats.macs == macs
    assert stats.macs_by_op == {op: macs}
    assert not stats.macs_approximate


def test_symbolic_dims_count_as_one_and_flag():
    stats = model_stats(single_op_model("MatMul", ["N", 4], [4, 5]))
    assert stats.macs == 20 and stats.macs_approximate
    assert stats.inputs[0].shape == ["N", 4]


def test_callers_model_is_not_changed():
    model = ir.from_proto(cnn())
    shapes = [(v.name, v.shape) for n in model.graph for v in n.outputs]
    assert model_stats(model).macs > 0
    assert [(v.name, v.shape) for n in model.graph for v in n.outputs] == shapes
    assert all(shape is None for name, shape in shapes if name != "logits")


def test_mlp_stats():
    stats = model_stats(ir.from_proto(mlp(in_features=64, hidden=128, out_features=10)))
    assert stats.param_count == (64 * 128 + 128) + (128 * 128 + 128) + (128 * 10 + 10)
    assert stats.weight_bytes == 4 * stats.param_count
    assert stats.macs_by_op == {"MatMul": 64 * 128 + 128 * 128, "Gemm": 128 * 10}
    assert stats.op_histogram == {"MatMul": 2, "Add": 2, "Relu": 2, "Gemm": 1}
    assert stats.node_count == 7 and stats.opset_imports == {"": 17}
    assert [(s.name, s.dtype, s.shape) for s in stats.inputs] == [("x", "float32", [1, 64])]
    assert [(s.name, s.dtype, s.shape) for s in stats.outputs] == [("logits", "float32", [1, 10])]


def test_dynamic_batch_is_approximate():
    stats = model_stats(ir.from_proto(dynamic_batch_mlp()))
    assert stats.macs_approximate and stats.macs == 64 * 128 + 128 * 128 + 128 * 10
    assert stats.inputs[0].shape == ["batch", 64]


def test_cnn_macs():
    stats = model_stats(ir.from_proto(cnn()))
    conv = (32 * 32 * 16 * 3 * 9            # stem 3->16 at 32x32
            + 16 * 16 * 32 * 16 * 9         # down 16->32, stride 2
            + 2 * 16 * 16 * 32 * 32 * 9     # residual block
            + 16 * 16 * 32 * 8 * 9)         # grouped conv, 4 groups
    assert stats.macs_by_op == {"Conv": conv, "Gemm": 32 * 10}
    assert stats.op_histogram["BatchNormalization"] == 5


def test_histogram_counts_subgraph_nodes():
    stats = model_stats(ir.from_proto(if_model()))
    assert stats.op_histogram["Identity"] == 1  # only inside the else branch
    assert stats.op_histogram["Relu"] == 1 and stats.op_histogram["Mul"] == 1
    assert stats.node_count == 8


def test_constants_and_custom_domains():
    value = helper.make_tensor("c", F, [2, 3], np.arange(6, dtype=np.float32))
    nodes = [
        helper.make_node("Constant", [], ["c"], value=value),
        helper.make_node("Constant", [], ["ints"], value_ints=[1, 2, 3, 4]),
        helper.make_node("Add", ["x", "c"], ["a"]),
        helper.make_node("FusedThing", ["a", "ints"], ["y"], domain="my.ops"),
    ]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", F, [2, 3])],
                              [helper.make_tensor_value_info("y", F, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                    helper.make_opsetid("my.ops", 1)])
    stats = model_stats(ir.from_proto(model))
    assert stats.param_count == 6 + 4 and stats.weight_bytes == 6 * 4 + 4 * 8
    assert stats.op_histogram == {"Constant": 2, "Add": 1, "my.ops::FusedThing": 1}
    assert stats.opset_imports == {"": 17, "my.ops": 1}


def test_external_data_is_not_materialized(tmp_path, monkeypatch):
    path = large_mlp(tmp_path / "ext.onnx", layers=3, width=128)
    model = ir.load(path)
    (tmp_path / "ext.data").unlink()  # any read of the weights would now fail

    def refuse(self, *args, **kwargs):
        raise AssertionError("external tensor data was read")

    for method in ("numpy", "tobytes", "tofile", "__array__"):
        monkeypatch.setattr(ir.ExternalTensor, method, refuse)
    stats = model_stats(model)
    assert stats.param_count == 3 * (128 * 128 + 128)
    assert stats.weight_bytes == 4 * stats.param_count
    assert stats.macs == 3 * 128 * 128 and not stats.macs_approximate
    assert all(isinstance(v.const_value, ir.ExternalTensor)
               for v in model.graph.initializers.values())


def test_to_dict_and_format():
    stats = model_stats(ir.from_proto(dynamic_batch_mlp()))
    data = json.loads(json.dumps(stats.to_dict()))
    assert data["macs_by_op"]["Gemm"] == 1280 and data["op_histogram"]["MatMul"] == 2
    assert data["inputs"] == [{"name": "x", "dtype": "float32", "shape": ["batch", 64]}]
    text = format_stats(stats)
    assert "[batch, 64]" in text and "(approximate)" in text and "Gemm" in text
    assert "26,122" in text  # parameters
