"""The `qnn` profile (Qualcomm QNN HTP's QDQ format): every op that computes on floats runs quantized,
so the graph has no float island between the first Q and the last DQ; the budget search widens
units' activations to 16 bits instead of putting them back to float."""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import numpy_helper

from conftest import run_ort
from graphopt import optimize
from graphopt.exclusion import exclusion
from graphopt.pass_api import PassContext
from graphopt.passes.opset import RaiseOpset
from graphopt.passes.quantize.apply import apply_plan
from graphopt.passes.quantize.plan import build_plan
from graphopt.passes.quantize.profiles import get_profile
from graphopt.report.table import format_table
from graphopt.tolerance import Budget
from models.builders import cnn
from models.transformer import transformer_block
from tests.passes.quantize.test_quantize import _feeds, _lossless, _model, cosine, quantize

QDQ = ("QuantizeLinear", "DequantizeLinear")
FLOAT = onnx.TensorProto.FLOAT
SHARED = ("Reshape", "Transpose", "Squeeze", "Unsqueeze", "Slice", "Split", "MaxPool", "Flatten")


def _types(proto: onnx.ModelProto) -> dict[str, int]:
    """Element type of every value (inputs, outputs, initializers, inferred intermediates)."""
    inferred = onnx.shape_inference.infer_shapes(proto)
    graph = inferred.graph
    types = {v.name: v.type.tensor_type.elem_type for v in [*graph.input, *graph.output, *graph.value_info]}
    types.update({t.name: t.data_type for t in graph.initializer})
    return types


def _zero_points(proto: onnx.ModelProto) -> dict[str, np.dtype]:
    """The zero point's dtype of each Q/DQ node's quantized side, by the node's float-side value."""
    inits = {t.name: t for t in proto.graph.initializer}
    dtypes = {}
    for node in proto.graph.node:
        if node.op_type in QDQ and node.input[2] in inits:
            side = node.input[0] if node.op_type == "QuantizeLinear" else node.output[0]
            dtypes[side] = numpy_helper.to_array(inits[node.input[2]]).dtype
    return dtypes


def float_islands(proto: onnx.ModelProto) -> list[str]:
    """Every node that is not a Q/DQ and reads or writes floats must read each float input from a
    DequantizeLinear and feed each float output to QuantizeLinears only (graph inputs are read by
    Qs, graph outputs come out of DQs). One exception: the bias of a Conv/Gemm whose input is 16-bit
    is float by design (an INT32 bias at s_x·s_w would overflow there)."""
    types, zero_points = _types(proto), _zero_points(proto)
    producers = {o: n for n in proto.graph.node for o in n.output}
    consumers = defaultdict(list)
    for node in proto.graph.node:
        for name in node.input:
            consumers[name].append(node)
    problems = [f"graph output {o.name} is not a DequantizeLinear's" for o in proto.graph.output
                if producers.get(o.name) is None or producers[o.name].op_type != "DequantizeLinear"]
    for node in proto.graph.node:
        if node.op_type in QDQ:
            continue
        for index, name in enumerate(node.input):
            source = producers.get(name)
            if not name or types.get(name) != FLOAT or (source is not None and source.op_type == "DequantizeLinear"):
                continue
            wide_x = zero_points.get(node.input[0], np.dtype("uint8")).itemsize == 2
            if not (index == 2 and node.op_type in ("Conv", "Gemm") and wide_x and source is None):
                problems.append(f"{node.op_type} {node.name}: float input {name} not from a DequantizeLinear")
        for name in node.output:
            users = consumers[name]
            if types.get(name) == FLOAT and (not users or any(u.op_type != "QuantizeLinear" for u in users)):
                problems.append(f"{node.op_type} {node.name}: float output {name} not only read by QuantizeLinear")
    return problems


def default_opset(proto: onnx.ModelProto) -> int:
    return next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))


MODELS = {"transformer block, fused LayerNorm": lambda: _lossless(transformer_block()),
          "transformer block, primitives (ReduceMean, Pow, Sqrt)": transformer_block,
          "CNN": lambda: _lossless(cnn())}


@pytest.fixture(scope="module", params=list(MODELS))
def quantized(request):
    proto = MODELS[request.param]()
    out, result = quantize(proto, _feeds(proto, 8, seed=1), profile="qnn")
    return proto, out, result


def test_every_float_op_reads_dq_and_writes_q(quantized):
    proto, out, result = quantized
    assert result.modified and result.stats["kept_float"] == {}
    assert float_islands(out) == []
    float_ops = {n.op_type for n in proto.graph.node if n.op_type not in SHARED}
    assert float_ops <= set(result.stats["quantized_by_op"])  # every arithmetic op is a quantized unit
    assert result.stats["activations_16bit"] == 0 and result.stats["tensors_16bit"] == []
    assert default_opset(out) < 21  # all 8-bit: no 16-bit Q/DQ, no opset raise


def test_the_checker_sees_the_float_islands_other_profiles_leave(quantized):
    proto, _, _ = quantized
    out, _ = quantize(proto, _feeds(proto, 4, seed=1))  # ort-cpu: LayerNorm, Softmax, Relu, ... in float
    assert float_islands(out)


def test_integer_paths_are_left_alone():
    proto = _model("""
<ir_version: 8, opset_import: ["" : 17]>
g (float[N, 8] x) => (float[N, 2, 4] y) {
    h = Sigmoid(x)
    s = Shape(h)
    n = Slice(s, zero, one)
    shape = Concat<axis=0>(n, tail)
    r = Reshape(h, shape)
    y = Mul(r, r)
}
""", zero=np.array([0], np.int64), one=np.array([1], np.int64), tail=np.array([2, 4], np.int64))
    out, result = quantize(proto, _feeds(proto, 4, batch=3, seed=1), profile="qnn")
    assert float_islands(out) == [] and result.stats["quantized_by_op"] == {"Mul": 1, "Sigmoid": 1}
    nodes = {n.op_type: n for n in out.graph.node}
    assert list(nodes["Slice"].input) == ["s", "zero", "one"] and list(nodes["Concat"].input) == ["n", "tail"]
    assert nodes["Reshape"].input[1] == "shape"
    types = _types(out)
    assert all(types[n.input[0]] == FLOAT for n in out.graph.node if n.op_type == "QuantizeLinear")
    feed = _feeds(proto, 1, batch=3, seed=2)[0]
    assert cosine(run_ort(proto, feed)[0], run_ort(out, feed)[0]) > 0.999


def test_types_of_activations_weights_and_biases(quantized):
    _, out, _ = quantized
    inits = {t.name: numpy_helper.to_array(t) for t in out.graph.initializer}
    producers = {o: n for n in out.graph.node for o in n.output}
    for node in out.graph.node:
        if node.op_type == "QuantizeLinear":
            assert inits[node.input[2]].dtype == np.uint8  # activations: uint8 asymmetric
        weight = producers[node.input[1]] if node.op_type in ("Conv", "Gemm", "MatMul") else None
        if weight is not None and weight.input[0] in inits:  # a constant weight (not attention's P·V)
            zero = inits[weight.input[2]]
            assert inits[weight.input[0]].dtype == np.int8 and zero.size > 1 and not zero.any()  # per channel
        if node.op_type in ("Conv", "Gemm") and len(node.input) > 2:
            assert inits[producers[node.input[2]].input[0]].dtype == np.int32  # 8-bit x: int32 bias
        if node.op_type == "Reshape":  # its shape input stays as it was
            assert inits[node.input[1]].dtype == np.int64


def test_ort_runs_it_close_to_float(quantized):
    proto, out, _ = quantized
    for feed in _feeds(proto, 3, seed=2):  # held out
        for ref, got in zip(run_ort(proto, feed), run_ort(out, feed)):
            sqnr = 10 * np.log10(np.sum(ref.astype(np.float64) ** 2) / np.sum((ref - got).astype(np.float64) ** 2))
            assert sqnr > 20 and cosine(ref, got) > 0.995


def test_a_constant_scalar_is_stored_exactly():
    """Pow(x, 2) with the exponent quantized as 2.0000002 would be NaN for every x < 0."""
    proto = transformer_block()
    out, _ = quantize(proto, _feeds(proto, 4, seed=1), profile="qnn")
    feed = _feeds(proto, 1, seed=2)[0]
    exposed = onnx.ModelProto.FromString(out.SerializeToString())
    pows = [n for n in exposed.graph.node if n.op_type == "Pow"]
    exposed.graph.output.extend(onnx.helper.make_tensor_value_info(n.input[1], FLOAT, None) for n in pows)
    exponents = run_ort(exposed, feed)[1:]
    assert pows and all(float(e) == 2.0 for e in exponents)
    assert np.isfinite(run_ort(out, feed)[0]).all()


def test_tight_budget_widens_units_to_16_bit_and_keeps_every_op_quantized():
    proto = _lossless(transformer_block())
    feeds, holdout = _feeds(proto, 8, seed=1), _feeds(proto, 4, seed=2)
    budget = 0.9993  # all 8-bit: 0.9986 on these feeds; all 16-bit: 0.9997
    out, result = quantize(proto, feeds, holdout, Budget({"cosine": budget}), profile="qnn", method="minmax")
    stats = result.stats
    assert result.modified and stats["budget"]["fits"] and stats["budget"]["all_quantized"]["cosine"] < budget
    assert stats["budget"]["fallback_to"] == "uint16"  # the report says widened, not float
    wide = stats["tensors_16bit"]
    assert 0 < len(wide) == stats["activations_16bit"] < stats["activations_16bit"] + stats["activations_8bit"]
    assert float_islands(out) == []
    assert default_opset(out) >= 21
    inits = {t.name: numpy_helper.to_array(t) for t in out.graph.initializer}
    assert all(inits[f"{name}_zero_point"].dtype == np.uint16 for name in wide)
    q_types = [inits[n.input[2]].dtype for n in out.graph.node if n.op_type == "QuantizeLinear"]
    assert q_types.count(np.dtype(np.uint16)) == len(wide)
    zero_points = _zero_points(out)
    for node in out.graph.node:  # a scale group is one type: shared ops' input and output agree
        if node.op_type in SHARED:
            assert zero_points[node.input[0]] == zero_points[node.output[0]], node.name
    assert min(cosine(run_ort(proto, f)[0], run_ort(out, f)[0]) for f in holdout) >= budget


def test_a_widened_unit_takes_its_scale_group_and_its_readers_keep_a_float_bias():
    """The builder's view of one fallback: the last Relu's input and output in uint16, with its
    whole scale group (MaxPool, GlobalAveragePool and Flatten share its scale), so the Gemm reading
    it has a 16-bit x and a float bias; every other bias stays INT32."""
    model = ir.serde.deserialize_model(_lossless(cnn()))
    profile = get_profile("qnn")
    plan = build_plan(model.graph, profile, exclusion((), (), ""))
    pool = next(n for n in model.graph if n.op_type == "MaxPool")
    relu = pool.inputs[0].producer()
    wide = plan.widened(frozenset({plan.keys[relu]}))
    gemm = next(n for n in model.graph if n.op_type == "Gemm")
    assert {relu.inputs[0].name, relu.outputs[0].name, pool.outputs[0].name, gemm.inputs[0].name} <= wide
    assert relu.inputs[0].producer().inputs[0].name not in wide  # the Conv's own input stays 8-bit
    names = iter(range(10**6))
    applied = apply_plan(model, plan, {name: (-2.0, 2.0) for name in plan.tensors}, profile, True,
                         lambda base: f"{base}_{next(names)}", wide=wide)
    assert {n for n, b in applied.bits.items() if b == 16} == wide
    RaiseOpset(target=21).run(model, PassContext())
    out = ir.serde.serialize_model(model)
    onnx.checker.check_model(out, full_check=True)
    assert float_islands(out) == []
    inits = {t.name: numpy_helper.to_array(t) for t in out.graph.initializer}
    producers = {o: n for n in out.graph.node for o in n.output}
    for node in out.graph.node:
        if node.op_type in ("Conv", "Gemm") and len(node.input) > 2:
            bias = inits[node.input[2]] if node.input[2] in inits else inits[producers[node.input[2]].input[0]]
            assert bias.dtype == (np.float32 if node.op_type == "Gemm" else np.int32), node.name


def test_unreachable_budget_leaves_the_model_float_with_one_line():
    proto = _lossless(transformer_block())
    result = optimize(proto, passes="quantize:profile=qnn;cache_dir=off", data=_feeds(proto, 8, seed=1),
                      budget=["cosine=0.99999"])  # all 16-bit reaches 0.9997
    record = result.report["passes"][0]
    assert not record["applied"] and not record["rolled_back"]
    reason = record["stats"]["skipped"]
    assert "\n" not in reason and reason.startswith("budget cosine=0.99999 missed even with every quantized node's")
    assert reason.endswith("activations in uint16")
    assert f"quantize: not applied: {reason}" in format_table(result.report).splitlines()
    assert not any(n.op_type in QDQ for n in result.model.graph.node)
