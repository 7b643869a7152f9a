"""Slice of a Slice over disjoint axes becomes one Slice (simplify): YOLOv5's Focus block, negative
axes against a known rank, and the cases that must stay (shared axis, run-time starts, unknown
rank with a negative axis). Outputs bitwise equal in ORT."""

from __future__ import annotations

import onnx.parser
import pytest
from onnx import TensorProto, helper

from tests.passes.fusion.test_shape_rules import assert_bitwise, ops, simplified, x_feed

# YOLOv5's Focus: rows of each parity, then columns of each parity of those, concatenated.
FOCUS = """
<ir_version: 8, opset_import: ["" : 13]>
g (float[1, 3, H, W] x) => (float[1, 12, h, w] y)
  <int64[1] z = {0}, int64[1] o = {1}, int64[1] big = {9223372036854775807}, int64[1] two = {2},
   int64[1] a2 = {2}, int64[1] a3 = {3}> {
    r0 = Slice(x, z, big, a2, two)
    r1 = Slice(x, o, big, a2, two)
    c00 = Slice(r0, z, big, a3, two)
    c01 = Slice(r0, o, big, a3, two)
    c10 = Slice(r1, z, big, a3, two)
    c11 = Slice(r1, o, big, a3, two)
    y = Concat <axis = 1> (c00, c10, c01, c11)
}"""

NEGATIVE_AXES = """
<ir_version: 8, opset_import: ["" : 13]>
g (float[2, 5, 6, 7] x) => (float[2, 3, 2, 7] y)
  <int64[1] s1 = {1}, int64[1] e1 = {4}, int64[1] am3 = {-3}, int64[1] s2 = {-3}, int64[1] e2 = {1000},
   int64[1] am2 = {-2}, int64[1] st = {2}> {
    a = Slice(x, s1, e1, am3)
    y = Slice(a, s2, e2, am2, st)
}"""

SHARED_AXIS = """
<ir_version: 8, opset_import: ["" : 13]>
g (float[1, 8, 8] x) => (float[1, 2, 8] y) <int64[1] s = {1}, int64[1] e = {5}, int64[1] ax = {1},
   int64[1] s2 = {0}, int64[1] e2 = {2}> {
    a = Slice(x, s, e, ax)
    y = Slice(a, s2, e2, ax)
}"""

RUNTIME_START = """
<ir_version: 8, opset_import: ["" : 13]>
g (float[1, 8, 8] x, int64[1] s) => (float[1, ?, ?] y) <int64[1] e = {5}, int64[1] a1 = {1},
   int64[1] a2 = {2}, int64[1] z = {0}> {
    a = Slice(x, s, e, a1)
    y = Slice(a, z, e, a2)
}"""



def _unknown_rank() -> onnx.ModelProto:
    """x of unknown rank (no shape at all), sliced on axis -1 and then on axis 0."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, None)
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    consts = [helper.make_tensor(name, TensorProto.INT64, [1], [v])
              for name, v in (("s", 0), ("e", 2), ("am1", -1), ("a0", 0))]
    nodes = [helper.make_node("Slice", ["x", "s", "e", "am1"], ["a"]),
             helper.make_node("Slice", ["a", "s", "e", "a0"], ["y"])]
    graph = helper.make_graph(nodes, "g", [x], [y], initializer=consts)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)


def test_focus_block_becomes_four_slices_of_the_input():
    proto = onnx.parser.parse_model(FOCUS)
    model, stats = simplified(proto)
    assert ops(model)["Slice"] == 4 and stats["rewrites"]["slice_of_slice"] == 4
    assert all(n.inputs[0].name == "x" for n in model.graph if n.op_type == "Slice")
    assert_bitwise(proto, model, [x_feed(1, 3, 8, 10), x_feed(1, 3, 6, 2), x_feed(1, 3, 2, 2)])


def test_negative_axes_are_read_against_the_known_rank():
    proto = onnx.parser.parse_model(NEGATIVE_AXES)
    model, _ = simplified(proto)
    (node,) = [n for n in model.graph if n.op_type == "Slice"]
    assert node.inputs[3].const_value.numpy().tolist() == [1, 2]
    assert_bitwise(proto, model, [x_feed(2, 5, 6, 7)])


@pytest.mark.parametrize("text", [SHARED_AXIS, RUNTIME_START, None],
                         ids=["shared-axis", "runtime-start", "negative-axis-unknown-rank"])
def test_slices_that_do_not_compose_stay(text):
    proto = onnx.parser.parse_model(text) if text else _unknown_rank()
    model, stats = simplified(proto)
    assert ops(model)["Slice"] == 2 and "slice_of_slice" not in stats.get("rewrites", {})
    if text is None:
        assert_bitwise(proto, model, [x_feed(3, 4), x_feed(2, 3, 5)])
