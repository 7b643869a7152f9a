"""The `opset` pass: models raised to a newer opset still compute the same values in ORT."""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import onnx.parser
import onnx_ir as ir
import pytest

import models
from conftest import parse, run_ort
from graphopt.data import synthesize_feeds
from graphopt.errors import InputError
from graphopt.pass_api import PassContext
from graphopt.registry import get_pass
from graphopt.passes.opset import conversion_steps
from graphopt.verify import structural_problems

BUILDERS = {
    "mlp": models.mlp, "cnn": models.cnn, "transformer": models.transformer_block,
    "dynamic": models.dynamic_batch_mlp, "if": models.if_model, "redundant": models.redundant_model,
}


def at_opset(proto: onnx.ModelProto, opset: int) -> onnx.ModelProto:
    """The builder's graph declared at another opset (its ops mean the same at 13..17)."""
    proto.opset_import[0].version = opset
    onnx.checker.check_model(proto, full_check=True)
    return proto


def raise_opset(proto: onnx.ModelProto, target: int) -> tuple[ir.Model, bool, dict]:
    model = ir.serde.deserialize_model(proto)
    result = get_pass("opset")(target=target).run(model, PassContext())
    assert structural_problems(result.model) == []
    return result.model, result.modified, result.stats


def feeds_for(proto: onnx.ModelProto) -> list[dict[str, np.ndarray]]:
    feeds = synthesize_feeds(ir.serde.deserialize_model(proto), 2, None, 0)
    return feeds + [{k: -v if v.dtype.kind == "f" else v for k, v in f.items()} for f in feeds]


def assert_same_outputs(before: onnx.ModelProto, after: ir.Model) -> onnx.ModelProto:
    out = ir.serde.serialize_model(after)
    onnx.checker.check_model(out, full_check=True)
    for feed in feeds_for(before):
        for ref, got in zip(run_ort(before, feed), run_ort(out, feed)):
            np.testing.assert_array_equal(ref, got)
    return out


def default_opset(model: ir.Model) -> int:
    return model.opset_imports[""]


@pytest.mark.parametrize("target", [17, 20, 23])
@pytest.mark.parametrize("builder", list(BUILDERS))
def test_opset_13_builders_raised_keep_outputs(builder, target):
    proto = at_opset(BUILDERS[builder](), 13)
    model, modified, stats = raise_opset(proto, target)
    assert modified and default_opset(model) == target and stats["from"] == 13
    assert model.ir_version >= onnx.helper.find_min_ir_version_for([onnx.helper.make_opsetid("", target)])
    assert_same_outputs(proto, model)


OLD_SIGNATURES = """
<ir_version: 8, opset_import: ["" : 13]>
g (float[2, 6, 4] x, float[2, 6, 4] z) => (float[2, 1, 4] m, float[2, 3, 4] a, float[2, 3, 4] b,
                                           float[2, 6, 4] c, float[2, 8, 4] p, float[2, 6, 4] s) {
    m = ReduceMax <axes = [1]> (x)
    sizes = Constant <value = int64[2] {3, 3}> ()
    a, b = Split <axis = 1> (x, sizes)
    lo = Constant <value = float {-0.5}> ()
    hi = Constant <value = float {0.5}> ()
    c = Clip (x, lo, hi)
    pads = Constant <value = int64[6] {0, 1, 0, 0, 1, 0}> ()
    p = Pad <mode = "reflect"> (x, pads)
    s = Softmax <axis = 1> (z)
}
"""


@pytest.mark.parametrize("target", [18, 20, 25])
def test_ops_whose_signature_changed_are_converted(target):
    """ReduceMax axes (an input from 18), Split, Clip, Pad, Softmax keep their meaning."""
    proto = parse(OLD_SIGNATURES)
    model, modified, _ = raise_opset(proto, target)
    assert modified
    reduce_max = next(n for n in model.graph if n.op_type == "ReduceMax")
    assert len(reduce_max.inputs) == 2 and "axes" not in reduce_max.attributes
    assert_same_outputs(proto, model)


GROUP_NORM_18 = """
<ir_version: 8, opset_import: ["" : 18]>
g (float[2, 6, 4, 4] x) => (float[2, 6, 4, 4] y) {
    s = Constant <value = float[3] {1.0, 1.5, 0.5}> ()
    b = Constant <value = float[3] {0.0, 0.1, -0.1}> ()
    y = GroupNormalization <num_groups = 3, epsilon = 1e-5> (x, s, b)
}
"""


def test_group_normalization_keeps_per_group_scale_past_opset_21():
    """Opset 21 made GroupNormalization's scale per channel: the old per-group scale is expanded.
    (ONNX's C++ converter gets this wrong; onnxscript's adapter gets it right given shapes.)
    The checker calls GroupNormalization-18 deprecated, but ORT runs it."""
    proto = onnx.parser.parse_model(GROUP_NORM_18)
    model, modified, stats = raise_opset(proto, 21)
    assert modified and stats["steps"] == ["onnxscript:21"]
    assert_same_outputs(proto, model)


def test_conversion_steps():
    assert conversion_steps(13, 17) == [("onnx", 17)]
    assert conversion_steps(13, 20) == [("onnx", 18), ("onnxscript", 20)]
    assert conversion_steps(18, 23) == [("onnxscript", 23)]
    assert conversion_steps(20, 28) == [("onnxscript", 25), ("onnx", 28)]


def test_if_branches_are_converted():
    then = onnx.parser.parse_graph("t () => (float[2, 1] ty) { ty = ReduceMean <axes = [-1]> (x) }")
    model_text = """
    <ir_version: 8, opset_import: ["" : 13]>
    g (float[2, 4] x, bool c) => (float[2, 1] y) {
        z = ReduceMin <axes = [1]> (x)
        y = If (c) <then_branch = THEN, else_branch = ELSE>
    }
    """
    proto = onnx.parser.parse_model(model_text.replace("<then_branch = THEN, else_branch = ELSE>", ""))
    proto.graph.node[1].attribute.extend([
        onnx.helper.make_attribute("then_branch", then),
        onnx.helper.make_attribute("else_branch", onnx.parser.parse_graph(
            "e () => (float[2, 1] ey) { ey = Neg (z) }"))])
    onnx.checker.check_model(proto, full_check=True)
    model, modified, _ = raise_opset(proto, 20)
    assert modified
    inner = [n for n in ir.traversal.RecursiveGraphIterator(model.graph) if n.op_type == "ReduceMean"]
    assert len(inner) == 1 and len(inner[0].inputs) == 2
    for cond in (True, False):
        feed = {"x": np.arange(8, dtype=np.float32).reshape(2, 4), "c": np.array(cond)}
        np.testing.assert_array_equal(run_ort(proto, feed)[0], run_ort(ir.serde.serialize_model(model), feed)[0])


def test_symbolic_dims_stay_symbolic():
    proto = models.dynamic_batch_mlp()
    model, modified, _ = raise_opset(proto, 20)
    assert modified
    assert str(model.graph.inputs[0].shape[0]) == "batch" and str(model.graph.outputs[0].shape[0]) == "batch"
    out = assert_same_outputs(proto, model)
    feed = {"x": np.ones((5, 64), np.float32)}
    np.testing.assert_array_equal(run_ort(proto, feed)[0], run_ort(out, feed)[0])


@pytest.mark.parametrize("target", [17, 13])
def test_lowering_or_same_opset_is_refused(caplog, target):
    proto = models.mlp()
    with caplog.at_level("DEBUG", logger="graphopt"):
        model, modified, stats = raise_opset(proto, target)
    assert not modified and default_opset(model) == 17 and "skipped" in stats
    assert ("lowering an opset is not supported" if target < 17 else "already at opset 17") in caplog.text


@pytest.mark.parametrize("target", [6, onnx.defs.onnx_opset_version() + 1])
def test_target_outside_supported_range_is_refused(target):
    with pytest.raises(InputError, match="target must be in"):
        get_pass("opset")(target=target)


def test_external_weights_are_not_read_or_copied(tmp_path):
    """Large weights travel to ONNX's converter by name only and stay memory-mapped."""
    from graphopt import optimize

    src = models.large_mlp(tmp_path / "in" / "big.onnx", layers=2, width=256)
    model = ir.load(src)
    assert get_pass("opset")(target=20).run(model, PassContext()).modified
    assert {type(v.const_value).__name__ for v in model.graph.initializers.values()
            if v.const_value.size > 1024} == {"ExternalTensor"}
    out = tmp_path / "out" / "big.onnx"
    result = optimize(src, out, passes="opset:target=20")
    record = result.report["passes"][0]
    assert record["applied"] and not record["rolled_back"] and record["verify"]["max_ulps"] == 0
    feed = {"x": np.random.default_rng(0).standard_normal((1, 256)).astype(np.float32)}
    np.testing.assert_array_equal(run_ort(out, feed)[0], run_ort(src, feed)[0])


def test_transformer_block_at_17_fuses_after_opset_20():
    proto = models.transformer_block()
    model, modified, _ = raise_opset(proto, 20)
    assert modified
    ctx = PassContext()
    assert get_pass("fuse-layernorm")().run(model, ctx).modified
    assert get_pass("fuse-gelu")().run(model, ctx).modified
    counts = Counter(n.op_type for n in model.graph)
    assert counts["LayerNormalization"] == 2 and counts["Gelu"] == 1 and counts["Erf"] == 0
    feed = feeds_for(proto)[0]
    ref, got = run_ort(proto, feed)[0], run_ort(ir.serde.serialize_model(model), feed)[0]
    tol = get_pass("fuse-gelu").tolerance
    assert np.abs(ref - got).max() <= tol.atol + tol.rtol * np.abs(ref).max()


@pytest.mark.slow
@pytest.mark.parametrize("target", [17, 23])
def test_zoo_graphs_from_opset_9_keep_outputs_bitwise(target):
    """The onnx wheel's real (IR 3, opset 9) zoo graphs: ONNX's converter, then onnxscript's."""
    from models.zoo import light_model_paths, load_case

    for path in light_model_paths():
        case = load_case(path)
        model = ir.load(path)
        assert get_pass("opset")(target=target).run(model, PassContext()).modified, path.stem
        got = run_ort(ir.serde.serialize_model(model), case.feed)
        for ref, out in zip(run_ort(onnx.load(path), case.feed), got):
            np.testing.assert_array_equal(ref, out, err_msg=path.stem)


def test_small_initializers_travel_and_large_ones_come_back_by_identity():
    """Weights held back from ONNX's converter are the very tensors of the input model."""
    proto = models.cnn()
    model = ir.serde.deserialize_model(proto)
    before = {name: v.const_value for name, v in model.graph.initializers.items()}
    assert get_pass("opset")(target=18).run(model, PassContext()).modified
    assert_same_outputs(proto, model)
    after = model.graph.initializers
    large = [name for name, t in before.items() if t.size > 1024]
    assert large and all(after[name].const_value is before[name] for name in large)
    assert not any(v.name in after for v in model.graph.inputs)


def test_sequence_values_keep_their_type():
    """onnx_ir's ShapeInferencePass gave sequence values tensor types (SequenceInsert's output
    became tensor(float)); the converted model failed the checker (simple/test_sequence_model1)."""
    proto = onnx.parser.parse_model("""
    <ir_version: 7, opset_import: ["" : 12]>
    g (float[2, 3] x, float[1, 3] y, int64 pos) => (float[?, 3] out) {
        empty = SequenceEmpty()
        s1 = SequenceInsert(empty, x)
        s2 = SequenceInsert(s1, y)
        out = SequenceAt(s2, pos)
    }
    """)
    model, modified, stats = raise_opset(proto, 20)  # asserts the result passes the checker
    assert modified and stats["steps"] == ["onnx:18", "onnxscript:20"]
    assert not isinstance(next(n for n in model.graph if n.op_type == "SequenceInsert").outputs[0].type,
                          ir.TensorType)


def test_declarations_the_conversion_exposes_as_wrong_are_repaired_and_listed():
    """An output declared [1, 'seqlen'] that is computed as [2, 1, 6] (ddddocr's CRNN declares its
    CTC logits so): once converted, the checker sees it; the pass corrects the declaration (the
    checker needs an output shape) instead of failing, and says so."""
    proto = onnx.parser.parse_model("""
        <ir_version: 7, opset_import: ["" : 12]>
        g (float[2, 6] x) => (float[1, seqlen] y) {
            s = Constant <value = int64[3] {2, 1, 6}> ()
            y = Reshape (x, s)
        }""")
    model = ir.serde.deserialize_model(proto)
    result = get_pass("opset")(target=20).run(model, PassContext())
    assert result.modified and structural_problems(result.model) == []
    [line] = result.stats["declarations_repaired"]
    assert line.startswith("output 'y': declared shape [1,seqlen] contradicts the inferred [2,1,6]")
    assert list(result.model.graph.outputs[0].shape) == [2, 1, 6]
    feed = {"x": np.arange(12, dtype=np.float32).reshape(2, 6)}
    out = ir.serde.serialize_model(result.model)
    onnx.checker.check_model(out, full_check=True)
    np.testing.assert_array_equal(run_ort(out, feed)[0], feed["x"].reshape(2, 1, 6))
