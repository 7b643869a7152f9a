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
and a tensor is binned in chunks of CHUNK elements of its flattened view (Slice; the number of
chunks from the largest size the summaries pass saw, trailing slices past the end are empty), so
the temporaries (the scaled chunk, its int32 indices, the ones to add) of one chunk at a time are
alive: ORT's memory stays near the float model's, and only 2B int32 counts per tensor leave ORT,
in one pass however large the tensors.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from graphopt.pass_api import default_opset
from graphopt.summaries import constant

MIN_OPSET = 16
CHUNK = 1 << 20  # elements binned per step: the temporaries hold ~3 chunks, not ~3 tensors


def supported(model: ir.Model) -> bool:
    return default_opset(model) >= MIN_OPSET


def output_name(name: str) -> str:
    return f"{name}__graphopt_histogram"


def with_histograms(model: ir.Model, exponents: dict[str, int], bins: int, raw: list[str] = (),
                    largest: dict[str, int] | None = None) -> ir.Model:
    """A copy of `model` (tensors shared) whose outputs are the 2·bins int32 counts of each
    tensor in `exponents` on the grid of width 2^exponent, then the `raw` tensors themselves.
    A tensor of up to `largest[name]` elements is binned in chunks of CHUNK elements."""
    copy = model.clone()
    graph = copy.graph
    by_name = {v.name: v for node in graph for v in node.outputs}
    shared = {"offset": constant(graph, "__graphopt_hist_offset", np.array(bins, np.float32)),
              "flat": constant(graph, "__graphopt_hist_flat", np.array([-1], np.int64)),
              "axis": constant(graph, "__graphopt_hist_axis", np.array([0], np.int64)),
              "zeros": constant(graph, "__graphopt_hist_zeros", np.zeros(2 * bins, np.int32))}
    graph.outputs.clear()
    for name, exponent in exponents.items():
        x, out = by_name[name], output_name(name)
        scale = constant(graph, f"{out}_scale", np.array(2.0 ** -exponent, np.float32))
        flat = ir.node("Reshape", [x, shared["flat"]], name=out + "_flat")  # a view in ORT (alias)
        nodes, total = [flat], None
        for k in range(max(1, -(-(largest or {}).get(name, 0) // CHUNK))):
            bounds = [constant(graph, f"{out}_{k}_{end}", np.array([(k + end) * CHUNK], np.int64))
                      for end in (0, 1)]
            piece = ir.node("Slice", [flat.outputs[0], *bounds, shared["axis"]], name=f"{out}_{k}_slice")
            nodes += [piece, *_bin_counts(piece.outputs[0], scale, shared, f"{out}_{k}")]
            if total is not None:
                nodes.append(ir.node("Add", [total, nodes[-1].outputs[0]], name=f"{out}_{k}_sum"))
            total = nodes[-1].outputs[0]
        for node in nodes:
            node.outputs[0].name = node.name + "_out"
        total.name = out
        graph.insert_after(x.producer(), nodes)
        graph.outputs.append(total)
    graph.outputs.extend(by_name[name] for name in raw)
    return copy


def _bin_counts(chunk: ir.Value, scale: ir.Value, shared: dict, prefix: str) -> list[ir.Node]:
    """Nodes counting the 1-D `chunk` into 2·bins int32 bins (the last node's output)."""
    nodes = [ir.node("Mul", [chunk, scale], name=prefix + "_scaled")]
    nodes.append(ir.node("Floor", [nodes[-1].outputs[0]], name=prefix + "_floor"))
    nodes.append(ir.node("Add", [nodes[-1].outputs[0], shared["offset"]], name=prefix + "_offset"))
    nodes.append(ir.node("Cast", [nodes[-1].outputs[0]], {"to": ir.DataType.INT32}, name=prefix + "_index"))
    index = nodes[-1].outputs[0]
    nodes.append(ir.node("Shape", [index], name=prefix + "_shape"))
    nodes.append(ir.node("ConstantOfShape", [nodes[-1].outputs[0]],
                         {"value": ir.tensor(np.array([1], np.int32))}, name=prefix + "_ones"))
    nodes.append(ir.node("ScatterElements", [shared["zeros"], index, nodes[-1].outputs[0]],
                         {"axis": 0, "reduction": "add"}, name=prefix + "_counts"))
    return nodes
