"""Analyses passes can ask the context for: computed lazily, cached, invalidated unless preserved.

- `Shapes`: ONNX shape inference run on the model (value types and shapes filled in, in
  place; symbolic dims stay symbolic). Holding it means "shapes are current".
- `Dataflow`: a read-only networkx view of the main graph: one vertex per node, an edge
  producer -> consumer per value, plus the virtual vertices SOURCE (graph inputs and
  initializers) and SINK (graph outputs). Dominators, reachability and cycle checks are
  networkx algorithms on it. It is derived from the IR, never the source of truth.
"""

from __future__ import annotations

import networkx as nx
import onnx
import onnx_ir as ir
from onnx_ir.passes.common._c_api_utils import call_onnx_api

SOURCE, SINK = "<source>", "<sink>"


class Shapes:
    def __init__(self, model: ir.Model):
        self.modified = infer_shapes(model)


def infer_shapes(model: ir.Model, strict: bool = True) -> bool:
    """ONNX shape inference merged into the model in place; True if anything changed.

    onnx_ir 1.1's ShapeInferencePass merges only dtype and shape, so a value inferred as a
    sequence or optional of tensors was given a *tensor* type (its element type): the checker
    then rejects the model ("input_sequence ... has unsupported type: tensor(float)"). Here a
    non-tensor inferred type replaces the value's type as a whole. If inference fails, the
    model is left unchanged (as onnx_ir does)."""
    def infer(proto: onnx.ModelProto) -> onnx.ModelProto:
        return onnx.shape_inference.infer_shapes(proto, check_type=True, strict_mode=strict, data_prop=True)

    try:
        inferred = ir.serde.deserialize_model(call_onnx_api(infer, model))
    except Exception:  # noqa: BLE001  (inference is best-effort, as in onnx_ir)
        return False
    modified = False
    for graph, inferred_graph in zip(model.graphs(), inferred.graphs()):
        known = ir.convenience.create_value_mapping(inferred_graph)
        for name, value in ir.convenience.create_value_mapping(graph).items():
            if name in known:
                modified |= _merge_value(value, known[name])
    return modified


def _merge_value(value: ir.Value, inferred: ir.Value) -> bool:
    if inferred.type is not None and not isinstance(inferred.type, ir.TensorType):
        if value.type == inferred.type:
            return False
        value.type = inferred.type
        return True
    modified = False
    if inferred.shape is not None and value.shape != inferred.shape:
        value.shape, modified = inferred.shape, True
    if inferred.dtype is not None and value.dtype != inferred.dtype:
        value.dtype, modified = inferred.dtype, True
    return modified


class Dataflow:
    def __init__(self, model: ir.Model):
        graph = nx.DiGraph()
        graph.add_node(SOURCE)
        graph.add_node(SINK)
        for node in model.graph:
            graph.add_node(node)
            for value in node.inputs:
                if value is None:
                    continue
                producer = value.producer()
                graph.add_edge(producer if producer in graph else SOURCE, node, value=value)
        for value in model.graph.outputs:
            producer = value.producer()
            graph.add_edge(producer if producer is not None else SOURCE, SINK, value=value)
        self.graph = graph

    def has_cycle(self) -> bool:
        return not nx.is_directed_acyclic_graph(self.graph)

    def reaches_output(self, node: ir.Node) -> bool:
        return nx.has_path(self.graph, node, SINK)

    def immediate_dominators(self) -> dict:
        """Node -> its immediate dominator on every path from the graph's inputs."""
        return nx.immediate_dominators(self.graph, SOURCE)

    def post_dominators(self) -> dict:
        """Node -> its immediate post-dominator on every path to the graph's outputs."""
        return nx.immediate_dominators(self.graph.reverse(copy=False), SINK)
