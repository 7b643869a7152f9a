"""Analyses: shapes, and the context's cache of analyses across passes."""

from __future__ import annotations

import onnx_ir as ir

import models
from conftest import parse
from graphopt import optimize
from graphopt.analyses import Shapes
from graphopt.pass_api import Pass, PassResult

def test_shapes_analysis_fills_intermediate_shapes():
    model = ir.serde.deserialize_model(models.mlp())
    inner = [v for n in model.graph for v in n.outputs if not v.is_graph_output()]
    assert Shapes(model).modified
    assert all(v.shape is not None and v.dtype is not None for v in inner)


class NodeCount:
    """A stand-in analysis: any class taking the model works with the context's cache."""

    def __init__(self, model: ir.Model):
        self.count = len(list(model.graph))


class Probe(Pass):
    """Records the analysis object it sees; optionally modifies or breaks the model."""

    name = "probe"
    seen: list = []

    def __init__(self, preserve: bool, modify: bool, break_it: bool = False):
        super().__init__()
        self.preserves = frozenset({NodeCount}) if preserve else frozenset()
        self.modify, self.break_it = modify, break_it

    def run(self, model, ctx):
        flow = ctx.analysis(NodeCount, model)
        assert ctx.analysis(NodeCount, model) is flow  # cached within a pass
        Probe.seen.append(flow)
        if self.break_it:
            next(n for n in model.graph if n.op_type == "Relu").op_type = "Sigmoid"
        return PassResult(model, self.modify or self.break_it)


def test_cache_survives_preserving_passes_and_is_dropped_otherwise():
    Probe.seen = []
    optimize(models.mlp(), passes=[Probe(preserve=True, modify=True), Probe(preserve=False, modify=True),
                                   Probe(preserve=False, modify=False), Probe(preserve=True, modify=False)])
    first, second, third, fourth = Probe.seen
    assert second is first  # the first pass preserved it
    assert third is not second  # the second changed the model without preserving it
    assert fourth is third  # an unmodified model keeps every analysis


def test_cache_is_dropped_on_rollback():
    Probe.seen = []
    result = optimize(models.mlp(), passes=[Probe(preserve=True, modify=False),
                                            Probe(preserve=True, modify=False, break_it=True),
                                            Probe(preserve=True, modify=False)])
    assert result.report["passes"][1]["rolled_back"]
    assert Probe.seen[1] is Probe.seen[0] and Probe.seen[2] is not Probe.seen[1]


def test_fresh_names_avoid_every_name_in_the_model_and_subgraphs():
    from graphopt.pass_api import PassContext

    model = ir.serde.deserialize_model(models.if_model())
    taken = {v.name for n in ir.traversal.RecursiveGraphIterator(model.graph) for v in n.outputs}
    taken |= set(model.graph.initializers) | {v.name for v in model.graph.inputs}
    names = PassContext().names(model)
    existing = sorted(taken)[0]
    fresh = [names.fresh(existing) for _ in range(3)]
    assert len(set(fresh)) == 3 and not set(fresh) & taken
    assert names.fresh("brand_new") == "brand_new" and names.fresh("brand_new") == "brand_new_1"


def test_shape_inference_keeps_sequence_types():
    """onnx_ir 1.1's ShapeInferencePass merged only dtype/shape, so sequence values got tensor
    types and the checker rejected the model (simple/test_sequence_model1 through fuse-bn)."""
    from graphopt.analyses import infer_shapes
    from graphopt.verify import structural_problems

    model = ir.serde.deserialize_model(parse("""
    <ir_version: 7, opset_import: ["" : 12]>
    g (float[2, 3] x, int64 pos) => (float[?, 3] out) {
        empty = SequenceEmpty()
        s1 = SequenceInsert(empty, x)
        out = SequenceAt(s1, pos)
    }
    """))
    assert infer_shapes(model)
    s1 = next(n for n in model.graph if n.op_type == "SequenceInsert").outputs[0]
    assert isinstance(s1.type, ir.SequenceType) and structural_problems(model) == []
