"""Run a model segment by segment, so that every wanted intermediate tensor reaches Python
without all of them being alive at once.

Exposing tensors as graph outputs keeps each of them alive until the end of the run, so reading
more than a memory cap's worth of them used to take one more pass over the data per cap's worth.
Here the nodes the wanted values depend on, in graph order (a topological order), are cut into
consecutive segments whose wanted tensors total about `cap` bytes (`cut`: a segment closes once
its sizes reach the cap). Each segment is a model of its own:

    inputs(k)  = values its nodes read that no node of segment k produces (feed inputs and
                 values of earlier segments), initializers excepted
    outputs(k) = its wanted values + its values that a later segment reads

and running one feed is running the segments in order, keeping in a dict only the values a later
segment still reads (dropped after their last reader). Because the graph order is topological,
every input of segment k exists when k runs, and every node sees the inputs it sees in the whole
model, so each value is exactly the one the whole model computes (same kernels, optimizations
off). Peak memory: the wanted tensors the caller holds, the values crossing the cut, and what ORT
holds inside one segment. Segment inputs are declared with their dtype only (any shape); values
the export left untyped (Paddle) take dtypes from graphopt.value_bytes.inferred or ONNX shape
inference.
Tensor-valued Constant nodes (Paddle keeps every weight in one) are not cut: they become
initializers of each segment that reads them, so weights never cross a cut as values
(PP-OCR rec: 225 of 339 segment inputs were Constant outputs, copied out of segment 0 per feed).

A node holding subgraphs (If/Loop/Scan) is cut as one node: the outer values its subgraphs read
(captures, not among its inputs) count as values it reads, so they are produced by an earlier
segment or the feed and declared as inputs of its segment like any other.

The caller makes the sessions (graphopt.passes.quantize.calibration.segmented borrows the weights, shares one ORT
arena between them and turns thread spinning off).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np
import onnx_ir as ir
from onnx_ir.passes.common import LiftConstantsToInitializersPass

from graphopt.analyses import infer_shapes
from graphopt.errors import InputError


@dataclass
class Segment:
    model: ir.Model
    inputs: list[str]
    outputs: list[str]
    wanted: list[str]


def cut(model: ir.Model, wanted: list[str], sizes: dict[str, int], cap: int) -> tuple[int, ...]:
    """Positions (among the nodes the wanted values depend on, graph order, tensor Constants
    left out) where segments end: whenever a segment's wanted bytes (`sizes`) reach `cap`, and at
    the last node."""
    nodes = _needed(model.graph, set(wanted))
    ends, used = [], 0
    for position, node in enumerate(nodes):
        used += sum(sizes.get(v.name, 0) for v in node.outputs)
        if used >= cap or position == len(nodes) - 1:
            ends.append(position + 1)
            used = 0
    return tuple(ends)


def build(model: ir.Model, wanted: list[str], sizes: dict[str, int], cap: int,
          dtypes: dict[str, ir.DataType] | None = None) -> list[Segment]:
    """The segment models computing `wanted` (tensors shared, `model` untouched): only nodes the
    wanted values depend on, cut as `cut` says. `dtypes` types values the model leaves untyped."""
    ends = cut(model, wanted, sizes, cap)
    copy = model.clone()
    _lift_constants(copy, set(wanted))
    nodes = _needed(copy.graph, set(wanted))
    reads = {node: _reads(node, copy.graph) for node in nodes}
    group = {node: k for k, (start, end) in enumerate(zip((0, *ends), ends)) for node in nodes[start:end]}
    readers = _reader_segments(reads, group)
    _type_crossing_values(copy, reads, group, dtypes or {})
    wanted_set = set(wanted)
    copy.graph.remove(list(copy.graph), safe=False)
    segments = []
    for k in range(len(ends)):
        mine = [n for n in nodes if group[n] == k]
        outputs = [v for n in mine for v in n.outputs
                   if v.name in wanted_set or any(j > k for j in readers.get(v.name, ()))]
        segments.append(_segment(copy, mine, {n: reads[n] for n in mine}, outputs, wanted_set))
    return segments


def _needed(graph: ir.Graph, wanted: set[str]) -> list[ir.Node]:
    """The nodes (graph order) that the wanted values depend on, tensor Constants excepted."""
    needed: set[ir.Node] = set()
    stack = [v.producer() for node in graph for v in node.outputs if v.name in wanted]
    while stack:
        node = stack.pop()
        if node is None or node in needed or _liftable(node, wanted):
            continue
        needed.add(node)
        stack.extend(v.producer() for v in _reads(node, graph))
    return [n for n in graph if n in needed]


def _reads(node: ir.Node, graph: ir.Graph) -> list[ir.Value]:
    """The values of `graph` that `node` reads: its inputs, then the ones its subgraphs capture."""
    values = [v for v in node.inputs if v is not None]
    for inner in _inner_nodes(node):
        values.extend(v for v in inner.inputs if v is not None and v.graph is graph)
    return list(dict.fromkeys(values))


def _inner_nodes(node: ir.Node) -> list[ir.Node]:
    """Every node inside `node`'s subgraphs, at any depth."""
    found = []
    for attr in node.attributes.values():
        subgraphs = [attr.value] if attr.type == ir.AttributeType.GRAPH else \
            list(attr.value) if attr.type == ir.AttributeType.GRAPHS else []
        for subgraph in subgraphs:
            found.extend(ir.traversal.RecursiveGraphIterator(subgraph))
    return found


def _liftable(node: ir.Node, wanted: set[str]) -> bool:
    """A Constant node that LiftConstantsToInitializersPass lifts (one `value` tensor, default
    domain) and whose value is not itself wanted."""
    return (node.op_type == "Constant" and node.domain in ("", "onnx.ai") and set(node.attributes) == {"value"}
            and node.outputs[0].name not in wanted)


def _lift_constants(copy: ir.Model, wanted: set[str]) -> None:
    """onnx_ir's LiftConstantsToInitializersPass on the clone (tensors shared); it leaves graph
    outputs alone, so wanted Constants are made the only outputs while it runs, then none are
    (the clone's values become the segments' outputs)."""
    copy.graph.outputs.clear()
    copy.graph.outputs.extend(v for n in copy.graph if n.op_type == "Constant" for v in n.outputs if v.name in wanted)
    LiftConstantsToInitializersPass(size_limit=0)(copy)
    copy.graph.outputs.clear()


def _type_crossing_values(copy: ir.Model, reads: dict[ir.Node, list[ir.Value]], group: dict[ir.Node, int],
                          dtypes: dict[str, ir.DataType]) -> None:
    """A segment's inputs must be typed (ORT refuses untyped graph inputs); exports without
    value_info (Paddle) take their dtypes from `dtypes`, else from ONNX shape inference."""
    crossing = [v for n, values in reads.items() for v in values
                if not v.is_initializer() and (v.producer() is None or group.get(v.producer()) != group[n])]
    for value in crossing:
        if value.dtype is None and dtypes.get(value.name) is not None:
            value.dtype = dtypes[value.name]
    if any(v.dtype is None for v in crossing):
        infer_shapes(copy, strict=False)
    untyped = sorted({v.name for v in crossing if v.dtype is None})
    if untyped:
        raise InputError(f"segments: no dtype known for {untyped[:3]} (shape inference left them untyped)")


def _reader_segments(reads: dict[ir.Node, list[ir.Value]], group: dict[ir.Node, int]) -> dict[str, set[int]]:
    readers: dict[str, set[int]] = {}
    for node, values in reads.items():
        for value in values:
            readers.setdefault(value.name, set()).add(group[node])
    return readers


def _segment(copy: ir.Model, nodes: list[ir.Node], reads: dict[ir.Node, list[ir.Value]],
             outputs: list[ir.Value], wanted: set[str]) -> Segment:
    """One segment's model: each value its nodes (or their subgraphs) read from outside it is
    replaced by a stand-in graph input (dtype only, ORT takes any shape) or initializer."""
    produced = {v for n in nodes for v in n.outputs}
    users = set(nodes) | {i for n in nodes for i in _inner_nodes(n)}
    stand_ins: dict[ir.Value, ir.Value] = {}
    for node in nodes:
        for value in reads[node]:
            if value in produced or value in stand_ins:
                continue
            initializer = value.is_initializer()
            stand_ins[value] = ir.Value(name=value.name, type=value.type, shape=value.shape if initializer else None,
                                        const_value=value.const_value if initializer else None)
            for user, index in value.uses():
                if user in users:
                    user.replace_input_with(index, stand_ins[value])
    inputs = [v for v in stand_ins.values() if v.const_value is None]
    initializers = [v for v in stand_ins.values() if v.const_value is not None]
    graph = ir.Graph(inputs, outputs, nodes=nodes, initializers=initializers,
                     opset_imports=dict(copy.graph.opset_imports), name="segment")
    model = ir.Model(graph, ir_version=copy.ir_version, producer_name="graphopt.passes.quantize.calibration.segments")
    return Segment(model, [v.name for v in inputs], [v.name for v in outputs],
                   [v.name for v in outputs if v.name in wanted])


class SegmentedRun:
    """Sessions over the segments; `run(feed)` yields each segment's {wanted name: array}."""

    def __init__(self, segments: list[Segment], session_factory):
        self.segments = segments
        self.sessions = [session_factory(s.model) for s in segments]
        last: dict[str, int] = {}
        for k, segment in enumerate(segments):
            for name in segment.inputs:
                last[name] = k
        self.last_reader = last

    def run(self, feed: dict[str, np.ndarray]) -> Iterator[dict[str, np.ndarray]]:
        values = dict(feed)
        for k, (segment, session) in enumerate(zip(self.segments, self.sessions)):
            missing = [n for n in segment.inputs if n not in values]
            if missing:
                raise InputError(f"segment {k}: no value for {missing[:3]} (a graph input missing from the feed?)")
            produced = dict(zip(segment.outputs, session.run(segment.outputs, {n: values[n] for n in segment.inputs})))
            for name in [n for n in values if self.last_reader.get(n, -1) <= k]:
                del values[name]
            values.update((n, a) for n, a in produced.items() if self.last_reader.get(n, -1) > k)
            part = {n: produced[n] for n in segment.wanted}
            del produced  # while the caller holds the part, the next segment runs: keep nothing else
            yield part
            del part
