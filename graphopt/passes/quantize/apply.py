"""Apply a placement plan: scales from calibrated ranges, Q/DQ pairs, INT8 weights, INT32 biases.

Per scale group the range is the union of its members' ranges (Relu/Clip-folded members use the
clipped range), so every member gets the same (s, z). Weight channel axes, by op:
- Conv W [Cout, Cin/g, k...]: axis 0;  ConvTranspose W [Cin, Cout/g, k...]: axis 1;
- Gemm B: axis 0 with transB=1 ([N, K]), else axis 1 ([K, N]);  MatMul B [..., K, N]: last axis;
- embedding tables [V, D]: axis 1 (one scale per hidden feature; the gathered rows keep it on
  their last axis, so the DQ after the Gather uses axis -1).
Who reads the dequantized value: every consumer when the producer's kernel needs the output Q
(or is a shared op / quantized elementwise op, or the Q absorbed a Relu); otherwise only the
quantized consumers, so float consumers (a residual Add beside a MatMul) keep the exact value.
A graph output that an `always` op computes is the DQ itself (under the output's name).

Types: the profile's activation type, or its `wide` type (uint16) for the `wide` tensors a budget
fallback chose; an INT32 bias (s_b = s_x·s_w) only behind an 8-bit x, else the bias stays float.
Constants that a plan quantizes take their own range; one whose elements are all equal (c, not
in a scale group) is stored exactly: from the (s, z) of its range, m = round(|c| / s) steps, the
scale becomes s' = |c| / 2^floor(log2 m) and q = z ± 2^floor(log2 m), so (q - z)·s' = c in
floating point (a Pow exponent 2 must stay 2: Pow(x < 0, 2.0000002) is NaN).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx_ir as ir

from graphopt.passes.quantize.plan import Plan, Unit, clip_bounds, constant_array, is_constant
from graphopt.passes.quantize.profiles import QuantProfile, TensorType
from graphopt.passes.quantize.qdq import (QdqWriter, QParams, activation_params, bias_params, to_quantized,
                                       weight_params, weight_sqnr)


@dataclass
class Applied:
    params: dict[str, QParams] = field(default_factory=dict)  # quantized activation -> its params
    weights: dict[str, dict] = field(default_factory=dict)  # unit key -> weight report
    bias_grown: list[str] = field(default_factory=list)
    nodes_added: int = 0
    relu_folded: int = 0
    bytes_added: int = 0  # quantized weight copies whose float original float nodes still read
    bits: dict[str, int] = field(default_factory=dict)  # quantized activation (not constant) -> its bits


def weight_axis(node: ir.Node, rank: int) -> int:
    if node.op_type == "Conv":
        return 0
    if node.op_type == "ConvTranspose":
        return 1
    if node.op_type == "Gemm":
        return 0 if node.attributes.get_int("transB", 0) else 1
    if node.op_type == "Gather":
        return 1
    return rank - 1  # MatMul: output columns


def tensor_params(plan: Plan, ranges: dict[str, tuple[float, float]], qtype: TensorType,
                  wide: frozenset[str] = frozenset(), wide_type: TensorType | None = None) -> dict[str, QParams]:
    """(s, z) per quantized tensor; one per scale group; the `wide` tensors in `wide_type`."""
    clipped = {}
    for name in plan.tensors:
        lo, hi = ranges.get(name, (0.0, 0.0))
        fold = plan.folds.get(name)
        if fold is not None:
            b_lo, b_hi = clip_bounds(fold)
            lo, hi = max(lo, b_lo), min(hi, b_hi)
        clipped[name] = (lo, hi)
    params = {}
    grouped = set()
    for group in plan.groups:
        lo = min(clipped[m][0] for m in group)
        hi = max(clipped[m][1] for m in group)
        shared = activation_params(lo, hi, wide_type if group & wide else qtype)
        params.update({m: shared for m in group})
        grouped |= group
    for name in plan.tensors - grouped:
        params[name] = activation_params(*clipped[name], wide_type if name in wide else qtype)
    return params


def apply_plan(model: ir.Model, plan: Plan, ranges: dict[str, tuple[float, float]], profile: QuantProfile,
               per_channel: bool, fresh, cache: dict | None = None, wide: frozenset[str] = frozenset()) -> Applied:
    """Rewrite `model` in place; `cache` (any dict) keeps quantized weights across candidates;
    `wide`: tensors in the profile's wide type (a budget fallback)."""
    graph = model.graph
    cache = {} if cache is None else cache
    applied = Applied(params=tensor_params(plan, ranges, profile.activation, wide, profile.wide))
    writer = QdqWriter(graph, fresh)
    shared: dict[tuple, ir.Value] = {}  # one DQ per quantized weight, whoever reads it
    for unit in plan.units.values():  # first: the bias scale needs the unit's input name
        if unit.weight is not None:
            _quantize_weight_input(unit, applied, writer, profile, per_channel, (cache, shared))
    _quantize_tensors(graph, plan, profile, applied, writer)
    for relu in plan.folds.values():
        if not relu.outputs[0].uses() and not relu.outputs[0].is_graph_output():
            graph.remove(relu, safe=True)
            applied.relu_folded += 1
    applied.nodes_added = writer.added_nodes
    applied.bytes_added = _copies_beside_float(graph, shared)
    graph.sort()
    return applied


def _quantize_tensors(graph: ir.Graph, plan: Plan, profile: QuantProfile, applied: Applied,
                      writer: QdqWriter) -> None:
    """A Q/DQ pair after each quantized activation, a DQ'd copy of each quantized constant."""
    values = _values(graph)
    everyone = {n: _all_read_dq(values[n], plan) for n in plan.tensors if n in values}  # before rewiring
    grouped = set().union(*plan.groups)
    for name in sorted(plan.tensors):
        value = values.get(name)
        if value is None:  # rows of an embedding table: already dequantized after the Gather
            continue
        if is_constant(value):
            array = constant_array(value)
            qp = applied.params[name] if name in grouped else exact_constant(array, applied.params[name])
            applied.params[name] = qp
            dq = writer.dequantized_constant(name, _quantize_constant(array, qp), qp, value.dtype)
            _rewire_consumers(value, dq, plan, everyone=False)
            drop_if_dead(value, graph)
            continue
        dq = writer.quantize_dequantize(values[plan.physical(name)], applied.params[name])
        applied.bits[name] = 8 * applied.params[name].dtype.itemsize
        _rewire_consumers(value, dq, plan, everyone=everyone[name])
        if value.is_graph_output() and plan.physical(name) == name and _always(value, plan, profile):
            _output_is_dq(graph, value, dq, writer.fresh)


def exact_constant(array: np.ndarray, qp: QParams) -> QParams:
    """`qp`, or for a constant whose elements all equal c != 0 the scale that stores c exactly:
    s' = |c| / 2^k with 2^k <= round(|c| / s) (the steps qp gives), q = z ± 2^k."""
    flat = array.reshape(-1).astype(np.float32)
    if flat.size == 0 or not np.all(flat == flat[0]) or not np.isfinite(flat[0]) or flat[0] == 0 \
            or qp.scale.size != 1:
        return qp
    steps = max(float(np.round(abs(flat[0]) / float(qp.scale))), 1.0)
    return QParams(np.array(abs(flat[0]) / 2.0 ** np.floor(np.log2(steps)), np.float32), qp.zero_point, qp.axis)


def _always(value: ir.Value, plan: Plan, profile: QuantProfile) -> bool:
    """Whether `value`'s producer is quantized by an `always` rule (its output Q is part of it)."""
    producer = value.producer()
    if producer is None:
        return False
    unit = plan.unit_of(producer)
    rule = unit.rule if unit is not None else profile.rule(producer.op_type)
    return rule is not None and rule.always


def _output_is_dq(graph: ir.Graph, value: ir.Value, dq: ir.Value, fresh) -> None:
    """The graph output `value` becomes the DQ after it, under the output's name."""
    name = value.name
    value.name = fresh(f"{name}_float")
    dq.name = name
    graph.outputs[graph.outputs.index(value)] = dq


def _copies_beside_float(graph: ir.Graph, shared: dict[tuple, ir.Value]) -> int:
    """Bytes of the quantized copies of weights that float nodes still read (units of a shared
    weight put back to float keep its float original): what the rewrite adds to the file, which
    the pass declares as `bytes_added` (the manager refuses growth beyond it)."""
    alive = {**_values(graph), **graph.initializers}
    total = 0
    for (name, _), dq in shared.items():
        original = alive.get(name)
        if original is not None and original.uses():
            total += sum(v.const_value.nbytes for v in dq.producer().inputs
                         if v is not None and v.const_value is not None)
    return total


def _values(graph: ir.Graph) -> dict[str, ir.Value]:
    values = {v.name: v for v in graph.inputs}
    values.update(graph.initializers)
    for node in graph:
        values.update({o.name: o for o in node.outputs})
    return values


def _quantize_constant(array: np.ndarray, qp: QParams) -> np.ndarray:
    return to_quantized(array.astype(np.float32) / qp.scale, qp.zero_point, qp.dtype)


def _all_read_dq(value: ir.Value, plan: Plan) -> bool:
    """Every consumer reads the DQ when the producer runs quantized with an output Q."""
    if value.name in plan.folds:
        return True
    producer = value.producer()
    if producer is None:
        return False
    unit = plan.unit_of(producer)
    if unit is not None:
        return unit.rule.output
    return bool(producer.inputs) and producer.inputs[0] is not None and producer.inputs[0].name in plan.tensors


def _rewire_consumers(value: ir.Value, dq: ir.Value, plan: Plan, everyone: bool) -> None:
    for node, index in list(value.uses()):
        if node is dq.producer() or node is _q_of(dq).producer():
            continue
        unit = plan.unit_of(node)
        quantized_use = (unit is not None and index in unit.activations) or _shared_user(node, plan)
        if everyone or quantized_use:
            node.replace_input_with(index, dq)


def _q_of(dq: ir.Value) -> ir.Value:
    return dq.producer().inputs[0]


def _shared_user(node: ir.Node, plan: Plan) -> bool:
    return plan.unit_of(node) is None and any(o.name in plan.tensors for o in node.outputs) \
        and bool(node.inputs) and node.inputs[0] is not None and node.inputs[0].name in plan.tensors


def _cached_weight(weight_value: ir.Value, axis: int | None, qtype: TensorType, cache: dict):
    key = (weight_value.name, axis, qtype)
    if key not in cache:
        weight = constant_array(weight_value)
        qp, q = weight_params(weight, axis, qtype)
        cache[key] = (qp, q, round(weight_sqnr(weight, qp, q), 2))
    return cache[key]


def _quantize_weight_input(unit: Unit, applied: Applied, writer: QdqWriter, profile: QuantProfile,
                           per_channel: bool, caches: tuple[dict, dict]) -> None:
    cache, shared = caches
    node = unit.node
    weight_value = node.inputs[unit.weight]
    weight = constant_array(weight_value)
    axis = weight_axis(node, weight.ndim) if per_channel and weight.ndim >= 2 else None
    qp, q, sqnr = _cached_weight(weight_value, axis, profile.weight, cache)
    report = {"op": node.op_type, "weight": weight_value.name, "shape": list(weight.shape),
              "axis": axis, "bits": profile.weight.bits, "sqnr_db": sqnr}
    if _int32_bias(unit, applied, profile, qp):
        x_scale = float(applied.params[unit.names[0]].scale)
        bias_value = node.inputs[unit.bias]
        bp, bq, grown_qp, grown_q = bias_params(constant_array(bias_value), x_scale, qp, weight, profile.weight)
        if grown_qp is not None:
            qp, q, axis = grown_qp, grown_q, ("grown", unit.key)  # this unit's own copy
            applied.bias_grown.append(unit.key)
            report["sqnr_db"] = round(weight_sqnr(weight, qp, q), 2)
        node.replace_input_with(unit.bias, writer.dequantized_constant(bias_value.name, bq, bp, bias_value.dtype))
        drop_if_dead(bias_value, writer.graph)
    applied.weights[unit.key] = report
    if node.op_type == "Gather":
        _quantize_embedding(unit.key, node, qp, q, writer)
        return
    key = (weight_value.name, axis)
    if key not in shared:
        shared[key] = writer.dequantized_constant(weight_value.name, q, qp, weight_value.dtype)
    node.replace_input_with(unit.weight, shared[key])
    drop_if_dead(weight_value, writer.graph)


def _int32_bias(unit: Unit, applied: Applied, profile: QuantProfile, weight: QParams) -> bool:
    """An INT32 bias at s_x·s_w: where the profile has them, x is 8-bit (with 16-bit x it would
    overflow) and the weight has one scale per bias element or one in all."""
    x = applied.params.get(unit.names[0]) if unit.bias is not None and unit.names else None
    if x is None or not profile.bias_int32 or x.dtype.itemsize != 1:
        return False
    return weight.scale.size in (1, constant_array(unit.node.inputs[unit.bias]).size)


def drop_if_dead(value: ir.Value, graph: ir.Graph) -> None:
    """Remove a float weight nothing reads any more (its initializer or Constant node)."""
    if value.uses() or value.is_graph_output() or value.is_graph_input():
        return
    producer = value.producer()
    if producer is not None and producer.op_type == "Constant":
        graph.remove(producer, safe=True)
    elif value.name in graph.initializers and graph.initializers[value.name] is value:
        graph.initializers.pop(value.name)


def _quantize_embedding(key: str, node: ir.Node, qp: QParams, q: np.ndarray, writer: QdqWriter) -> None:
    """Gather from the INT8 table, then dequantize the rows (axis -1 = the table's columns)."""
    old = node.outputs[0]
    table = writer.constant(f"{node.inputs[0].name}_quantized", q)
    gather = ir.node("Gather", [table, node.inputs[1]], {"axis": 0}, name=writer.fresh(f"{key}_quantized"),
                     num_outputs=1)
    rows = gather.outputs[0]
    rows.name, rows.dtype, rows.shape = writer.fresh(f"{old.name}_rows"), ir.DataType.from_numpy(q.dtype), old.shape
    writer.graph.append(gather)
    axis = -1 if qp.axis is not None else None  # the table's columns are the rows' last axis
    restored = writer.dequantize(rows, QParams(qp.scale, qp.zero_point, axis), old.dtype, old.name)
    ir.convenience.replace_all_uses_with(old, restored)
    table_value = node.inputs[0]
    writer.graph.remove(node, safe=True)
    drop_if_dead(table_value, writer.graph)
