"""A model run segment by segment gives every wanted value exactly as the whole model does."""

import os

import numpy as np
import onnx_ir as ir
import pytest

from graphopt.passes.quantize.calibration import segments
from graphopt.activations import exposed_session, with_outputs
from graphopt.errors import InputError
from tests.conftest import parse

# `h` is read again after `d`: a skip connection that crosses every cut; `w` is a Constant node.
SKIP = """
<ir_version: 9, opset_import: ["" : 17]>
g (float[N, 8] x) => (float[N, 8] y) {
    w = Constant <value = float[8, 8] {1,0,0,0,0,0,0,0, 0,1,0,0,0,0,0,0, 0,0,1,0,0,0,0,0, 0,0,0,1,0,0,0,0,
                                       0,0,0,0,1,0,0,0, 0,0,0,0,0,1,0,0, 0,0,0,0,0,0,1,0, 0,0,0,0,0,0,0,2}> ()
    h = MatMul(x, w)
    a = Relu(h)
    b = Neg(a)
    c = Sigmoid(b)
    d = Mul(c, a)
    e = Add(d, h)
    unused = Exp(e)
    y = Tanh(e)
}
"""


def _model(text=SKIP, untyped=False) -> ir.Model:
    model = ir.serde.deserialize_model(parse(text))
    if untyped:  # as Paddle exports come: no value_info for intermediate values
        for node in model.graph:
            for value in node.outputs:
                if not value.is_graph_output():
                    value.type, value.shape = None, None
    return model


def _run_all(model, wanted, feed, cap):
    built = segments.build(model, wanted, {n: 4 * 3 * 8 for n in wanted}, cap,
                           dtypes={v.name: ir.DataType.FLOAT for n in model.graph for v in n.outputs})
    run = segments.SegmentedRun(built, lambda m: exposed_session(m, "disable_all", low_memory=True))
    got, counts = {}, []
    for part in run.run(feed):
        counts.append(len(part))
        got.update(part)
    return built, got, counts


@pytest.mark.parametrize("untyped", [False, True])
@pytest.mark.parametrize("cap", [1, 200, 10**9])  # one value, a few values, everything per segment
def test_segments_give_the_values_the_whole_model_gives(untyped, cap):
    model = _model(untyped=untyped)
    wanted = ["h", "a", "c", "d", "e"]
    feed = {"x": np.random.default_rng(0).standard_normal((3, 8)).astype(np.float32)}
    expected = exposed_session(with_outputs(_model(), wanted)).run(wanted, feed)
    built, got, counts = _run_all(model, wanted, feed, cap)
    assert sum(counts) == len(wanted) and set(got) == set(wanted)
    for name, array in zip(wanted, expected):
        np.testing.assert_array_equal(got[name], array)
    assert len(built) == {1: 5, 200: 2, 10**9: 1}[cap]
    ops = [n.op_type for s in built for n in s.model.graph]
    assert "Exp" not in ops and "Tanh" not in ops  # nodes no wanted value depends on are left out
    if cap == 1:  # h is computed once and handed on to the segments that read it
        assert built[0].outputs == ["h"] and ["h" in s.inputs for s in built] == [False, True, False, False, True]
    assert [n.op_type for n in model.graph][0] == "Constant" and len(model.graph.outputs) == 1  # untouched


def test_a_constant_weight_read_late_is_an_initializer_of_its_reader_not_a_crossing_value():
    text = """
    <ir_version: 9, opset_import: ["" : 17]>
    g (float[N, 8] x) => (float[N, 8] y) {
        w = Constant <value = float[8, 8] {%s}> ()
        h = Relu(x)
        a = Neg(h)
        y = MatMul(a, w)
    }
    """ % ", ".join(str(v) for v in range(64))
    feed = {"x": np.random.default_rng(1).standard_normal((3, 8)).astype(np.float32)}
    wanted = ["h", "a", "y"]
    expected = exposed_session(with_outputs(_model(text), wanted)).run(wanted, feed)
    built, got, _ = _run_all(_model(text), wanted, feed, cap=1)
    assert len(built) == 3 and all("w" not in s.inputs + s.outputs for s in built)
    assert ["w" in s.model.graph.initializers for s in built] == [False, False, True]
    for name, array in zip(wanted, expected):
        np.testing.assert_array_equal(got[name], array)


def test_a_wanted_constant_stays_a_node_whose_value_a_segment_gives():
    feed = {"x": np.random.default_rng(3).standard_normal((3, 8)).astype(np.float32)}
    wanted = ["w", "h", "e"]
    expected = exposed_session(with_outputs(_model(), wanted)).run(wanted, feed)
    built, got, _ = _run_all(_model(), wanted, feed, cap=1)
    assert "w" in built[0].outputs and all("w" not in s.model.graph.initializers for s in built)
    for name, array in zip(wanted, expected):
        np.testing.assert_array_equal(got[name], array)


def test_a_value_with_no_known_dtype_is_refused_with_its_name():
    model = _model(untyped=True)
    model.graph.node(0).outputs[0].type = None
    model.graph.opset_imports["custom"] = 1
    model.graph.node(1).domain = "custom"  # shape inference cannot type what follows
    with pytest.raises(InputError, match="no dtype known for"):
        segments.build(model, ["a", "e"], {"a": 100, "e": 100}, cap=1)


# The If's branches read `h` and `a` from the outer graph without taking them as inputs, and the
# Loop nested in one branch reads `a` two levels down: cut at every value, they cross the cuts.
SUBGRAPH = """
<ir_version: 9, opset_import: ["" : 17]>
g (float[N, 8] x, bool c) => (float[N, 8] y) {
    h = Relu(x)
    a = Neg(h)
    z = Sigmoid(x)
    b = If (c) <then_branch = t () => (float[N, 8] o) { o = Mul(h, a) },
                else_branch = f () => (float[N, 8] o) {
                    n = Constant <value_int = 2> ()
                    go = Constant <value = bool {1}> ()
                    o = Loop (n, go, h) <body = l (int64 i, bool cond, float[N, 8] acc) => (bool cond_out, float[N, 8] acc_out) {
                        cond_out = Identity(cond)
                        acc_out = Add(acc, a)
                    }>
                }>
    y = Add(b, z)
}
"""


@pytest.mark.parametrize("branch", [True, False])
def test_values_captured_by_subgraphs_cross_cuts_like_inputs(branch):
    model = _model(SUBGRAPH)
    wanted = ["h", "a", "z", "b", "y"]
    feed = {"x": np.random.default_rng(2).standard_normal((3, 8)).astype(np.float32), "c": np.array(branch)}
    expected = exposed_session(with_outputs(_model(SUBGRAPH), wanted)).run(wanted, feed)
    built, got, _ = _run_all(model, wanted, feed, cap=1)
    assert len(built) == 5
    holder = next(s for s in built if any(n.op_type == "If" for n in s.model.graph))
    assert {"h", "a"} <= set(holder.inputs)  # captured, so declared as the segment's inputs
    for name, array in zip(wanted, expected):
        np.testing.assert_array_equal(got[name], array)
    relu = np.maximum(feed["x"], 0)
    np.testing.assert_allclose(got["b"], relu * -relu if branch else -relu, rtol=1e-6)  # h·a, or h + 2a


def test_cut_closes_a_segment_once_its_wanted_bytes_reach_the_cap():
    model = _model()
    sizes = {"h": 10, "a": 10, "c": 30, "d": 10, "e": 10}
    # needed nodes in order (the Constant is not cut): MatMul(h), Relu(a), Neg, Sigmoid(c), Mul(d), Add(e)
    assert segments.cut(model, list(sizes), sizes, cap=20) == (2, 4, 6)
    assert segments.cut(model, list(sizes), sizes, cap=10**6) == (6,)


def test_sessions_that_run_in_turns_share_one_arena_and_do_not_spin():
    from graphopt import runtime

    many = runtime.session_options(low_memory=True, many_sessions=True)
    assert many.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert many.get_session_config_entry("session.use_env_allocators") == "1"
    assert many.intra_op_num_threads == min(4, max(1, os.cpu_count() - 1))  # a core for the statistics
    alone = runtime.session_options(low_memory=True)
    for key in ("session.use_env_allocators", "session.intra_op.allow_spinning"):
        with pytest.raises(Exception):  # ORT raises for a key that was never set
            alone.get_session_config_entry(key)
