"""Calibration histograms computed inside the graph, once each tensor's final range is known.

graphopt.histogram's histogram of a tensor with bin exponent e counts, for every element,
bin floor(x·2^-e) + B of 2B bins. When e is known before the pass (the final e, from the
extremes of a summaries pass over all the data), that count is one ONNX expression:

    idx    = Cast(Floor(x · 2^-e) + B, int32)          (exact: x·2^-e only shifts the exponent,
                                                         and floor(..) + B is an integer < 2^24)
    counts = ScatterElements(zeros[2B], Reshape(idx, [-1]), ones, reduction="add")

(ScatterElements' `reduction` needs opset 16). With the final e, every |x| < B·2^e, so every
index lies in [0, 2B); the counts equal the streaming histogram's exactly, because its re-binning
to a grown range is exact (graphopt/histogram.py). Only tensors with all values finite and below
the sentinel magnitude qualify (NaN/Inf/sentinels have no bin); the caller exposes the others.

Each tensor's histogram nodes sit right after its producer and the session runs in graph order,
so the int32 temporaries of one tensor at a time are alive: ORT's memory stays near the float
model's, and only 2B int32 counts per tensor leave ORT, in one pass however large the tensors.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

MIN_OPSET = 16


def supported(model: ir.Model) -> bool:
    return model.opset_imports.get("", model.opset_imports.get("ai.onnx", 0)) >= MIN_OPSET


def output_name(name: str) -> str:
    return f"{name}__graphopt_histogram"


def with_histograms(model: ir.Model, exponents: dict[str, int], bins: int, raw: list[str] = ()) -> ir.Model:
    """A copy of `model` (tensors shared) whose outputs are the 2·bins int32 counts of each
    tensor in `exponents` on the grid of width 2^exponent, then the `raw` tensors themselves."""
    copy = model.clone()
    graph = copy.graph
    by_name = {v.name: v for node in graph for v in node.outputs}
    offset = _constant(graph, "__graphopt_hist_offset", np.array(bins, np.float32))
    flat_shape = _constant(graph, "__graphopt_hist_flat", np.array([-1], np.int64))
    zeros = _constant(graph, "__graphopt_hist_zeros", np.zeros(2 * bins, np.int32))
    graph.outputs.clear()
    for name, exponent in exponents.items():
        x = by_name[name]
        scale = _constant(graph, f"{name}__graphopt_hist_scale", np.array(2.0 ** -exponent, np.float32))
        out = output_name(name)
        nodes = [ir.node("Mul", [x, scale], name=out + "_scale")]
        nodes.append(ir.node("Floor", [nodes[-1].outputs[0]], name=out + "_floor"))
        nodes.append(ir.node("Add", [nodes[-1].outputs[0], offset], name=out + "_offset"))
        nodes.append(ir.node("Cast", [nodes[-1].outputs[0]], {"to": ir.DataType.INT32}, name=out + "_index"))
        nodes.append(ir.node("Reshape", [nodes[-1].outputs[0], flat_shape], name=out + "_flat"))
        shape = ir.node("Shape", [nodes[-1].outputs[0]], name=out + "_shape")
        ones = ir.node("ConstantOfShape", [shape.outputs[0]],
                       {"value": ir.tensor(np.array([1], np.int32))}, name=out + "_ones")
        scatter = ir.node("ScatterElements", [zeros, nodes[-1].outputs[0], ones.outputs[0]],
                          {"axis": 0, "reduction": "add"}, name=out + "_node")
        nodes += [shape, ones, scatter]
        for node in nodes[:-1]:
            node.outputs[0].name = node.name + "_out"
        scatter.outputs[0].name = out
        graph.insert_after(x.producer(), nodes)
        graph.outputs.append(scatter.outputs[0])
    graph.outputs.extend(by_name[name] for name in raw)
    return copy


def _constant(graph: ir.Graph, name: str, array: np.ndarray) -> ir.Value:
    value = ir.Value(name=name, const_value=ir.Tensor(array, name=name),
                     type=ir.TensorType(ir.DataType.from_numpy(array.dtype)), shape=ir.Shape(array.shape))
    graph.register_initializer(value)
    return value
