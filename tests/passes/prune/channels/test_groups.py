"""Channel dependency groups: ties, pieces, blocks and refusals on small graphs."""

from __future__ import annotations

import numpy as np
import pytest
import onnx_ir as ir
from onnx import helper, numpy_helper
from onnx_ir.passes.common import ShapeInferencePass

from graphopt.passes.prune.channels.groups import analyze
from tests.conftest import parse
from tests.passes.prune import prune_models as pm


def analysis_of(proto):
    model = ir.serde.deserialize_model(proto)
    ShapeInferencePass()(model)
    return model, analyze(model)


def by_layers(analysis) -> dict[str, object]:
    return {" + ".join(sorted(s.node.op_type + str(i) for i, s in enumerate(g.seeds))): g for g in analysis.groups}


def test_residual_add_ties_both_producers_into_one_group():
    _, a = analysis_of(pm.residual())
    tied = [g for g in a.groups if len(g.seeds) == 2]
    assert len(tied) == 1 and tied[0].channels == 8 and tied[0].refusal is None
    assert a.ties.number_of_edges() == 1
    bn_sites = [s for s in a.group_sites(tied[0]) if s.node.op_type == "BatchNormalization"]
    assert sorted(s.index for s in bn_sites) == [1, 2, 3, 4]
    # the last conv reaches the graph output
    last = next(g for g in a.groups if g.seeds[0].channels == 6)
    assert "graph output" in last.refusal


def test_concat_gives_the_consumer_pieces_at_offsets():
    _, a = analysis_of(pm.concat())
    sink = next(s for s in a.sites if s.kind == "weight_in")
    assert [(p.start, p.stop) for p in sink.pieces] == [(0, 6), (0, 4)]
    assert [a.seeds[p.seed].channels for p in sink.pieces] == [6, 4]
    assert len(a.prunable()) == 2


def test_split_cuts_the_layout_and_records_sizes():
    _, a = analysis_of(pm.split())
    site = next(s for s in a.sites if s.kind == "split")
    assert [[(p.start, p.stop) for p in part] for part in site.parts] == [[(0, 3)], [(3, 8)]]


def test_grouped_conv_imposes_blocks_and_depthwise_passes_through():
    _, a = analysis_of(pm.grouped())
    first = a.groups[0]
    assert first.blocks == 2 and first.refusal is None
    grouped_out = a.groups[1]  # the grouped conv's own outputs, tied through the depthwise conv
    assert grouped_out.blocks == 2 and grouped_out.channels == 8
    kinds = {s.kind for s in a.group_sites(grouped_out)}
    assert {"depthwise", "weight_in"} <= kinds


def test_flatten_into_gemm_spans_each_channel_over_its_pixels():
    _, a = analysis_of(pm.flatten_gemm())
    sink = next(s for s in a.sites if s.node.op_type == "Gemm")
    assert sink.pieces[0].inner == 16 and sink.axis == 1


def test_transformer_ffn_hidden_dim_is_the_only_group():
    _, a = analysis_of(pm.ffn())
    prunable = a.prunable()
    assert len(prunable) == 1 and prunable[0].channels == 32
    refused = [g.refusal for g in a.groups if g.refusal]
    assert any("channels no prunable layer produces" in r for r in refused)  # the residual with x


def test_refusals_name_the_reason():
    proto = parse("""
    <ir_version: 9, opset_import: ["" : 17]>
    g (float[1, 4, 6, 6] x, float[8, 4, 3, 3] wdyn) => (float[1, 2, 4, 36] y) {
        w1 = Constant <value = float[8, 4, 1, 1] {1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31,32}> ()
        a = Conv <kernel_shape = [1, 1]> (x, w1)
        b = Conv <kernel_shape = [1, 1]> (x, w1)
        c = Conv <kernel_shape = [3, 3], pads = [1, 1, 1, 1]> (x, wdyn)
        s = Add(a, b)
        t = Add(s, c)
        shape = Constant <value = int64[4] {1, 2, 4, 36}> ()
        r = Reshape(t, shape)
        w2 = Constant <value = float[2, 2, 1, 1] {1, 2, 3, 4}> ()
        y = Conv <kernel_shape = [1, 1]> (r, w2)
    }
    """)
    model, a = analysis_of(proto)
    reasons = " | ".join(g.refusal or "" for g in a.groups)
    assert "shared with another node" in reasons
    assert "channels no prunable layer produces" in reasons  # c's conv has a dynamic weight
    skipped = dict(a.skipped)
    assert any("is not constant" in r for r in skipped.values())
    assert not a.prunable()


def test_unknown_op_and_subgraph_use_refuse():
    proto = parse("""
    <ir_version: 9, opset_import: ["" : 17]>
    g (float[1, 4, 6, 6] x) => (float[1, 8, 6, 6] y) {
        w = Constant <value = float[8, 4, 1, 1] {1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31,32}> ()
        a = Conv <kernel_shape = [1, 1]> (x, w)
        y = DepthToSpace <blocksize = 1> (a)
    }
    """)
    _, a = analysis_of(proto)
    assert "DepthToSpace is not understood" in a.groups[0].refusal


def test_shape_read_of_other_axes_is_allowed():
    w = np.arange(32, dtype=np.float32).reshape(8, 4, 1, 1)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["a"], kernel_shape=[1, 1]),
         helper.make_node("Shape", ["a"], ["s"]),
         helper.make_node("Gather", ["s", "i"], ["hw"]),
         helper.make_node("Relu", ["a"], ["r"]),
         helper.make_node("Conv", ["r", "w2"], ["y"], kernel_shape=[1, 1])],
        "g", [helper.make_tensor_value_info("x", 1, [1, 4, 6, 6])],
        [helper.make_tensor_value_info("y", 1, [1, 2, 6, 6]), helper.make_tensor_value_info("hw", 7, [2])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.array([2, 3], np.int64), "i"),
         numpy_helper.from_array(np.ones((2, 8, 1, 1), np.float32), "w2")])
    _, a = analysis_of(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9))
    assert a.groups[0].refusal is None


@pytest.mark.parametrize("target, ok", [([1, 2, 4, 36], False), ([1, 8, 36], True), ([0, 8, -1], True),
                                        ([1, 288], True), ([1, -1], True), ([8, 36], False)])
def test_reshape_is_followed_only_when_channels_stay_whole(target, ok):
    w = np.arange(32, dtype=np.float32).reshape(8, 4, 1, 1)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["a"], kernel_shape=[1, 1]),
         helper.make_node("Reshape", ["a", "shape"], ["r"]),
         helper.make_node("ReduceSum", ["r"], ["y"], keepdims=0)],
        "g", [helper.make_tensor_value_info("x", 1, [1, 4, 6, 6])],
        [helper.make_tensor_value_info("y", 1, [])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.array(target, np.int64), "shape")])
    _, a = analysis_of(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9))
    reason = a.groups[0].refusal
    assert ("Reshape" not in (reason or "")) == ok, reason
