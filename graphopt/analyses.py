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
import onnx_ir as ir
from onnx_ir.passes.common import ShapeInferencePass

SOURCE, SINK = "<source>", "<sink>"


class Shapes:
    def __init__(self, model: ir.Model):
        self.modified = ShapeInferencePass()(model).modified


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
