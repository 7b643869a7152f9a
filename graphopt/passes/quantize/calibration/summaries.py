"""Per-tensor summaries computed inside the graph, so calibration reads bytes, not tensors.

Exposing an activation as a graph output makes ONNX Runtime copy the whole tensor out, and
Python then scans it again; for minmax calibration all that is needed per batch is

    lo = ReduceMin(x), hi = ReduceMax(x)                (all axes, keepdims=0)
    flag = ReduceSum(x)                                 (NaN if x holds a NaN: NaN + y is NaN)
    n = Size(x), sample = Reshape(x, [-1])[::n // 8192 + 1]   (<= 8192 strided elements)

x holds a non-finite value iff flag is NaN or lo/hi is infinite: an Inf is an extreme, a NaN
makes the sum NaN. The sum may overflow to ±Inf on finite values (the -3.4e38 of attention
masks): that is not a NaN, so those tensors are not suspected; +Inf and -Inf overflows in one
sum give NaN, a false alarm that costs an exact re-run, never a missed value. (The flag was
ReduceSum(x - x) before: a whole-tensor temporary per tensor, and MiniLM's summaries pass was
slower with it; measured: docs/design-measurements.md.)

`sample` is exactly graphopt.passes.quantize.calibration.histogram's `octave_sample` of the flattened tensor, so the octave
profile (what flags extreme outliers) is the same as when the tensor itself is exposed, and
lo/hi are the exact extremes. A batch in which a tensor may hold non-finite values has them to
count: the caller re-runs that batch with the tensor exposed. The summary outputs are a few bytes per
tensor whatever the activation size, so one ORT pass covers every tensor at once. The summary
nodes sit right after each tensor's producer and the session runs nodes in graph order
(graphopt.runtime's `low_memory`), so each tensor is freed after its summary as it would be
without one; in ORT's default order the summaries ran late and kept the tensors alive, so the
peak rose far above the plain model's (measured: docs/design-measurements.md).

`supported` says when this applies: default-domain opset >= 10 (Slice takes `steps` from 10; the
reductions are used without `axes`, so their opset 13/18 signature changes do not matter) and
float32 (or untyped) values; anything else is calibrated by exposure.
"""

from __future__ import annotations

import math

import numpy as np
import onnx_ir as ir

from graphopt.passes.quantize.calibration.histogram import OCTAVE_SAMPLE
from graphopt.pass_api import default_opset

SUFFIXES = ("min", "max", "flag", "size", "sample")


def supported(model: ir.Model, values: list[ir.Value]) -> bool:
    return default_opset(model) >= 10 and all(v.dtype in (None, ir.DataType.FLOAT) for v in values)


def output_names(name: str) -> list[str]:
    return [f"{name}__graphopt_{suffix}" for suffix in SUFFIXES]


def with_summaries(model: ir.Model, names: list[str]) -> ir.Model:
    """A copy of `model` (tensors shared) whose outputs are the summaries of each of `names`."""
    copy = model.clone()
    graph = copy.graph
    by_name = {v.name: v for node in graph for v in node.outputs}
    minus_one = constant(graph, "__graphopt_minus_one", np.array([-1], np.int64))
    zero = constant(graph, "__graphopt_zero", np.array([0], np.int64))
    end = constant(graph, "__graphopt_end", np.array([np.iinfo(np.int64).max], np.int64))
    per_step = constant(graph, "__graphopt_per_step", np.array([OCTAVE_SAMPLE], np.int64))
    one = constant(graph, "__graphopt_one", np.array([1], np.int64))
    graph.outputs.clear()
    for name in names:
        x = by_name[name]
        lo, hi, flag, size, sample = output_names(name)
        nodes = [
            ir.node("ReduceMin", [x], {"keepdims": 0}, name=lo + "_node"),
            ir.node("ReduceMax", [x], {"keepdims": 0}, name=hi + "_node"),
        ]
        nodes.append(ir.node("ReduceSum", [x], {"keepdims": 0}, name=flag + "_node"))
        count = ir.node("Size", [x], name=size + "_node")
        count_1d = ir.node("Reshape", [count.outputs[0], one], name=size + "_1d")
        quotient = ir.node("Div", [count_1d.outputs[0], per_step], name=sample + "_div")
        step = ir.node("Add", [quotient.outputs[0], one], name=sample + "_step")
        flat = ir.node("Reshape", [x, minus_one], name=sample + "_flat")
        strided = ir.node("Slice", [flat.outputs[0], zero, end, zero, step.outputs[0]], name=sample + "_node")
        nodes += [count, count_1d, quotient, step, flat, strided]
        graph.insert_after(x.producer(), nodes)  # right after x: ORT frees x as soon as it can
        for node, out_name in zip((nodes[0], nodes[1], nodes[2], count, strided), (lo, hi, flag, size, sample)):
            node.outputs[0].name = out_name
            graph.outputs.append(node.outputs[0])
        for node in (count_1d, quotient, step, flat):
            node.outputs[0].name = node.name + "_out"
    return copy


def constant(graph: ir.Graph, name: str, array: np.ndarray) -> ir.Value:
    """A new initializer `name` holding `array` (type and shape from the array)."""
    value = ir.val(name, const_value=ir.tensor(array, name=name))
    graph.register_initializer(value)
    return value


def read(names: list[str], arrays: list[np.ndarray]) -> dict[str, tuple[float, float, bool, int, np.ndarray]]:
    """{tensor: (lo, hi, all_finite, size, sample)} from one run's summary outputs (in order)."""
    result = {}
    for i, name in enumerate(names):
        lo, hi, flag, size, sample = arrays[5 * i:5 * i + 5]
        lo, hi, size = float(lo), float(hi), int(np.asarray(size).reshape(-1)[0])
        finite = size == 0 or (not np.isnan(flag) and math.isfinite(lo) and math.isfinite(hi))
        result[name] = (lo, hi, finite, size, np.asarray(sample).reshape(-1))
    return result
