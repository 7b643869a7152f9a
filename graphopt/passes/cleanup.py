"""Lossless graph cleanup, wrapping onnx_ir's common passes.

Each rewrite here preserves every output bit for bit: dead-node and dead-initializer
removal (a value with no path to a graph output cannot affect one), deduplication of
initializers with equal dtype, shape and bytes (SHA-512 of the data), Identity elimination
(y = Identity(x) ⇒ uses of y read x), common-subexpression elimination (two nodes with the
same op, attributes and inputs compute the same values, for deterministic ops), lifting
Constant nodes to initializers, dropping initializers from the graph inputs (IR >= 4), and a
stable topological sort.

onnx_ir's IdentityEliminationPass is not safe when the Identity output is a subgraph's
output (design.md, "Known pitfalls"), so `eliminate-identity` skips those nodes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_ir as ir
from onnx_ir.passes import common as irp

from graphopt.options import NoOptions
from graphopt.pass_api import Pass, PassContext, PassResult, quiet_libraries, structure_fingerprint
from graphopt.size import data_bytes, model_size
from graphopt.tolerance import Reassoc


def _run_library_pass(lib_pass: ir.passes.PassBase, model: ir.Model) -> bool:
    with quiet_libraries():
        return bool(lib_pass(model).modified)


def _run_with_size_stats(model: ir.Model, *lib_passes: ir.passes.PassBase) -> PassResult:
    """Run onnx_ir passes in order; stats say what they removed."""
    before, fingerprint = model_size(model), structure_fingerprint(model)
    declared = [(graph, [(v.type, v.shape) for v in graph.outputs]) for graph in model.graphs()]
    modified = False
    for lib_pass in lib_passes:
        modified |= _run_library_pass(lib_pass, model)
    _restore_output_types(declared)
    # onnx_ir's RemoveUnusedNodesPass trims unused trailing node outputs (Dropout's mask) and
    # reports no change: compare the graph itself
    modified |= structure_fingerprint(model) != fingerprint
    after = model_size(model)
    return PassResult(model, modified, {"nodes_removed": before.nodes - after.nodes,
                                        "initializers_removed": before.initializers - after.initializers,
                                        "bytes_saved": before.bytes - after.bytes})


def _restore_output_types(declared: list) -> None:
    """onnx_ir's CSE can make an untyped duplicate the value behind a graph output (three equal
    Relu(x), the last one an output): the output then has no type and the checker rejects the
    model. Graph outputs keep the type and shape they were declared with."""
    for graph, types in declared:
        for value, (type_, shape) in zip(graph.outputs, types):
            value.type = value.type or type_
            value.shape = value.shape or shape


class RemoveUnused(Pass):
    name = "remove-unused"
    summary = "remove nodes, initializers, functions and opset imports no output depends on"

    def run(self, model: ir.Model, ctx: PassContext) -> PassResult:
        return _run_with_size_stats(model, irp.RemoveUnusedNodesPass(), irp.RemoveUnusedFunctionsPass(),
                                    irp.RemoveUnusedOpsetsPass())


@dataclass(frozen=True)
class DedupOptions:
    max_bytes: int = 4 << 30  # initializers larger than this are not hashed

    def validate(self) -> None:
        if self.max_bytes < 0:
            raise ValueError("max_bytes must be >= 0")


class DedupInitializers(Pass):
    name = "dedup-initializers"
    summary = "merge initializers with identical dtype, shape and data (hashed, streaming)"
    Options = DedupOptions

    def run(self, model: ir.Model, ctx: PassContext) -> PassResult:
        copied = _contiguous_initializers(model)
        result = _run_with_size_stats(model, irp.DeduplicateHashedInitializersPass(self.options.max_bytes))
        if copied:
            result.modified, result.stats["made_contiguous"] = True, copied
        return result


def _contiguous_initializers(model: ir.Model) -> int:
    """onnx_ir's dedup hashes each tensor's buffer, which raises "ndarray is not C-contiguous"
    for a tensor wrapping a strided view (folding a Transpose of a weight produces one). Such a
    tensor is replaced by a new tensor holding a contiguous copy (same values; the shared
    original is not touched). Returns how many were replaced."""
    copied = 0
    for graph in model.graphs():
        for value in graph.initializers.values():
            tensor = value.const_value
            if isinstance(tensor, ir.Tensor) and isinstance(tensor.raw, np.ndarray) \
                    and not tensor.raw.flags.c_contiguous:
                value.const_value = ir.tensor(np.ascontiguousarray(tensor.raw), name=tensor.name)
                copied += 1
    return copied


class EliminateIdentity(Pass):
    name = "eliminate-identity"
    summary = "bypass Identity nodes (graph outputs keep their names)"

    def run(self, model: ir.Model, ctx: PassContext) -> PassResult:
        removed = 0
        for node in list(ir.traversal.RecursiveGraphIterator(model.graph)):
            if node.op_type != "Identity" or node.domain not in ("", "ai.onnx"):
                continue
            reason = _eliminate_identity(node)
            if reason:
                ctx.no_match(self.name, node.name, reason)
            else:
                removed += 1
        return PassResult(model, removed > 0, {"identities_removed": removed})


def _eliminate_identity(node: ir.Node) -> str | None:
    """Remove y = Identity(x); returns why not when it must stay.

    If y is not a graph output, its uses read x. If y is an output of this graph and x is
    produced by a node of this same graph (and is neither an input nor another output),
    x takes y's place and name. Otherwise the Identity is what defines the output and stays.
    """
    graph, source, target = node.graph, node.inputs[0], node.outputs[0]
    if graph is None or source is None:
        return "Identity outside a graph or without input"
    if not target.is_graph_output():
        target.replace_all_uses_with(source)
        graph.remove(node, safe=True)
        return None
    producer = source.producer()
    if producer is None or producer.graph is not graph:
        return "its output is a graph output fed by a graph input, initializer or outer-scope value"
    if source.is_graph_output() or source.is_graph_input():
        return "its input is itself a graph input or output"
    name = target.name
    source.type = source.type or target.type
    source.shape = source.shape or target.shape
    target.replace_all_uses_with(source, replace_graph_outputs=True)
    graph.remove(node, safe=True)
    source.name = name
    return None


class CommonSubexpressions(Pass):
    name = "cse"
    summary = "merge nodes that compute the same op on the same inputs"

    def run(self, model: ir.Model, ctx: PassContext) -> PassResult:
        return _run_with_size_stats(model, irp.CommonSubexpressionEliminationPass())


class LiftConstants(Pass):
    name = "lift-constants"
    summary = "turn Constant nodes into initializers so weight-reading passes see them"

    def run(self, model: ir.Model, ctx: PassContext) -> PassResult:
        before, bytes_before = model_size(model), data_bytes(model)
        modified = _run_library_pass(irp.LiftConstantsToInitializersPass(size_limit=0), model)
        after = model_size(model)
        # bytes move from Constant nodes to initializers: weight bytes grow, constant data does not
        return PassResult(model, modified, {"constants_lifted": after.initializers - before.initializers,
                                            "bytes_added": data_bytes(model) - bytes_before})


class InitializersNotInputs(Pass):
    """IR-3 era exports list every initializer as a graph input too; ONNX Runtime then treats
    them as overridable inputs and will not constant-fold or pre-pack them. Dropping them
    from the inputs (raising IR version 3 to 4, where that is allowed) changes no value, but
    ORT then runs constant-weight kernels (pre-packed MatMul/Gemm), which sum in another order
    and differ by a few ulp (measured: docs/design-measurements.md), hence `reassoc`, not `exact`."""

    name = "initializers-not-inputs"
    summary = "stop listing initializers as graph inputs (lets ORT treat them as constants)"
    tolerance = Reassoc(rtol=1e-5, atol=1e-6)

    def run(self, model: ir.Model, ctx: PassContext) -> PassResult:
        count = sum(1 for v in model.graph.inputs if v.name in model.graph.initializers)
        if count == 0:
            return PassResult(model, False)
        _run_library_pass(irp.RemoveInitializersFromInputsPass(), model)
        if model.ir_version is not None and model.ir_version < 4:
            model.ir_version = 4
        return PassResult(model, True, {"inputs_removed": count})


class TopologicalSort(Pass):
    name = "topo-sort"
    summary = "stable topological order of nodes (graph and subgraphs)"

    def run(self, model: ir.Model, ctx: PassContext) -> PassResult:
        order = [id(n) for n in ir.traversal.RecursiveGraphIterator(model.graph)]
        irp.TopologicalSortPass()(model)
        new_order = [id(n) for n in ir.traversal.RecursiveGraphIterator(model.graph)]
        return PassResult(model, order != new_order)


CLEANUP_SEQUENCE = (RemoveUnused, DedupInitializers, EliminateIdentity, CommonSubexpressions,
                    RemoveUnused, TopologicalSort)


class Cleanup(Pass):
    name = "cleanup"
    summary = "remove-unused, dedup-initializers, eliminate-identity, cse, remove-unused, topo-sort"
    Options = NoOptions

    def run(self, model: ir.Model, ctx: PassContext) -> PassResult:
        modified, stats = False, {}
        for cls in CLEANUP_SEQUENCE:
            result = cls().run(model, ctx)
            modified |= result.modified
            for key, value in result.stats.items():
                stats[key] = stats.get(key, 0) + value
        return PassResult(model, modified, stats)
