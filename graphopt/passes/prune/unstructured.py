"""`prune`: unstructured magnitude pruning of layer weights, optionally stored sparse.

For a weight W of a Conv / ConvTranspose / Gemm / MatMul, each element gets a saliency
- l1: |w|,  l2: w²  (the same order inside one tensor; they differ under global ranking,
  where scores are divided by the tensor's mean score so tensors of different scale compare),
- activation: |w_ij|·‖x_j‖ with ‖x_j‖ = √E[x_j²] of the input channel j the element reads,
  from calibration data (Wanda: a weight matters as much as what it multiplies).
The k lowest-saliency elements become 0: k = ⌊s·n⌋ per tensor (scope=layer), or one
threshold over all tensors' normalised scores (scope=global). The first and last layers
and tensors under `min_elements` are left dense (options).

Zeros alone make nothing faster on ORT CPU; what they buy is size: with `storage=sparse`
a tensor is written as an ONNX sparse_initializer (values + INT64 indices) when that is
smaller, i.e. past 2/3 sparsity for float32 (graphopt/sparse_storage.py). ONNX Runtime
densifies it at load, so the loaded model equals the dense pruned one bit for bit.

Budget mode prunes as far as the run's budget allows: with scope=global each layer is first
pruned alone at the cap sparsity and its loss measured (sensitivity); scores are scaled by
it, so insensitive layers go first; then a binary search over the global sparsity finds the
largest measured candidate that fits. With scope=layer the search is over one uniform sparsity.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import onnx_ir as ir

from graphopt.analyses import Shapes
from graphopt.lossy import summarize
from graphopt.pass_api import Pass, PassContext, PassResult
from graphopt.passes.prune import common as pc
from graphopt.sparse_storage import file_sizes, mark_sparse, sparse_is_smaller, sparse_nbytes
from graphopt.tolerance import Lossy

MAX_LAYER_SPARSITY = 0.95  # global ranking never empties a tensor beyond this (or the target)
LEVEL_STEP = 0.05


@dataclass(frozen=True)
class PruneOptions:
    sparsity: float = 0.5  # fixed mode: the target; budget mode: the cap
    scope: Literal["layer", "global"] = "layer"
    saliency: Literal["l1", "l2", "activation"] = "l1"
    skip_first_last: bool = True
    min_elements: int = 4096
    storage: Literal["dense", "sparse"] = "dense"
    mode: Literal["fixed", "budget"] = "fixed"
    measure_layers: bool = False  # fixed mode: measure each layer's error alone (one run each)
    max_evals: int = 48
    budget_share: float = 1.0
    report_sizes: bool = True  # serialize + deflate the result to report file sizes

    def validate(self) -> None:
        pc.check_fraction("sparsity", self.sparsity)
        if self.min_elements < 0:
            raise ValueError(f"min_elements must be >= 0, got {self.min_elements}")
        pc.check_budget_options(self.max_evals, self.budget_share)


@dataclass
class Layer:
    """One weight tensor to prune (shared by `nodes` when several layers read it)."""

    value: ir.Value
    nodes: list[ir.Node]
    weight: np.ndarray
    macs: int
    order: np.ndarray | None = None  # element indices, lowest saliency first
    normalized: np.ndarray | None = None  # saliency / mean saliency


def find_layers(model: ir.Model, ctx: PassContext, options: PruneOptions, name: str) -> list[Layer]:
    """Prunable weights in topological order; refusals go to ctx.no_match."""
    weighted = []
    for node in pc.layer_nodes(model):
        weight = pc.const_array(node.inputs[1])
        reason = pc.weight_refusal(node, weight)
        if reason is None:
            weighted.append((node, weight))
        elif node.op_type != "MatMul" or weight is not None or node.inputs[1].is_graph_input():
            # (a MatMul of two computed activations, as in attention, is no layer)
            ctx.no_match(name, pc.describe(node), reason)
    if options.skip_first_last and len(weighted) > 2:
        for node, _ in (weighted[0], weighted[-1]):
            ctx.no_match(name, pc.describe(node), "first/last layer kept dense (skip_first_last)")
        weighted = weighted[1:-1]
    layers: dict[str, Layer] = {}
    for node, weight in weighted:
        if weight.size < options.min_elements:
            ctx.no_match(name, pc.describe(node), f"{weight.size} elements < min_elements={options.min_elements}")
        elif node.inputs[1].name in layers:
            layers[node.inputs[1].name].nodes.append(node)
        else:
            layers[node.inputs[1].name] = Layer(node.inputs[1], [node], weight, pc.node_macs(node))
    return list(layers.values())


def input_scale(node: ir.Node, weight: np.ndarray, rms: np.ndarray) -> np.ndarray | None:
    """‖x_j‖ broadcast to the weight's elements (None when the shapes do not line up)."""
    axis = pc.reduction_axis(node)
    if node.op_type == "Conv":
        groups = node.attributes.get_int("group", 1)
        per_group, out = weight.shape[1], weight.shape[0]
        if rms.size != per_group * groups or out % groups:
            return None
        scale = np.repeat(rms.reshape(groups, per_group), out // groups, axis=0)
        return scale.reshape(scale.shape + (1,) * (weight.ndim - 2))
    if rms.size != weight.shape[axis]:
        return None
    shape = [1] * weight.ndim
    shape[axis] = rms.size
    return rms.reshape(shape)


def activation_requests(layers: list[Layer]) -> dict[str, int]:
    return {node.inputs[0].name: (1 if node.op_type.startswith("Conv") else -1)
            for layer in layers for node in layer.nodes}


def saliency(layer: Layer, kind: str, stats: dict) -> tuple[np.ndarray, str | None]:
    """Per-element saliency of the layer's weight, and a note if it fell back to |w|."""
    magnitude = np.abs(layer.weight.astype(np.float64))
    if kind == "l2":
        return np.square(magnitude), None
    if kind == "l1":
        return magnitude, None
    squares = np.zeros_like(magnitude)
    for node in layer.nodes:
        scale = input_scale(node, layer.weight, np.sqrt(stats[node.inputs[0].name].second_moment))
        if scale is None:
            return magnitude, "input channels do not match the weight; used |w|"
        squares = squares + np.square(magnitude * scale)
    return np.sqrt(squares), None


def prepare(layers: list[Layer], kind: str, stats: dict) -> list[str]:
    notes = []
    for layer in layers:
        score, note = saliency(layer, kind, stats)
        if note:
            notes.append(f"{layer.value.name}: {note}")
        layer.order = np.argsort(score, axis=None, kind="stable")
        layer.normalized = (score / max(float(score.mean()), 1e-30)).ravel()
    return notes


def counts_for(layers: list[Layer], sparsity: float, scope: str, weights: list[float] | None = None) -> list[int]:
    """Elements to zero per layer for a target sparsity (per layer, or one global threshold)."""
    if scope == "layer":
        return [int(sparsity * layer.weight.size) for layer in layers]
    cap = max(MAX_LAYER_SPARSITY, sparsity)
    scores = [layer.normalized * w for layer, w in zip(layers, weights or [1.0] * len(layers))]
    return pc.capped_global_selection(scores, sparsity, [int(cap * s.size) for s in scores])


def pruned_weight(layer: Layer, count: int) -> np.ndarray:
    flat = layer.weight.reshape(-1).copy()
    flat[layer.order[:count]] = 0
    return flat.reshape(layer.weight.shape)


def apply(model: ir.Model, ctx: PassContext, layers: list[Layer], counts: list[int], storage: str) -> ir.Model:
    """A clone of `model` with each layer's `count` lowest-saliency weights set to 0."""
    candidate = model.clone()
    values = pc.value_map(candidate)
    for layer, count in zip(layers, counts):
        if count <= 0:
            continue
        array = pruned_weight(layer, count)
        new = pc.new_initializer(candidate, ctx, array, f"{layer.value.name}_pruned")
        if storage == "sparse" and sparse_is_smaller(array):
            mark_sparse(new.const_value)
        old = values[layer.value.name]
        ir.convenience.replace_all_uses_with(old, new)
        pc.drop_unused(candidate, [old])
    return candidate


def layer_rows(layers: list[Layer], counts: list[int], storage: str, alone: dict) -> list[dict]:
    rows = []
    for layer, count in zip(layers, counts):
        array = pruned_weight(layer, count)
        nonzero = int(np.count_nonzero(array))
        row = {"layer": ", ".join(pc.describe(n) for n in layer.nodes), "weight": layer.value.name,
               "shape": list(layer.weight.shape), "params": int(layer.weight.size),
               "nonzero_before": int(np.count_nonzero(layer.weight)), "nonzero_after": nonzero,
               "sparsity": round(1 - nonzero / layer.weight.size, 4), "macs": layer.macs,
               "macs_if_sparse": int(layer.macs * nonzero / layer.weight.size),
               "dense_bytes": int(array.nbytes), "sparse_bytes": sparse_nbytes(array),
               "storage": "sparse" if storage == "sparse" and sparse_is_smaller(array) else "dense"}
        if layer.value.name in alone:
            row["alone"] = alone[layer.value.name]
        rows.append(row)
    return rows


class Prune(Pass):
    name = "prune"
    summary = "unstructured magnitude pruning (l1/l2/activation saliency), optional sparse storage"
    Options = PruneOptions
    tolerance = Lossy()
    preserves = frozenset({Shapes})  # weights change values, never shapes or types

    def run(self, model: ir.Model, ctx: PassContext) -> PassResult:
        o = self.options
        ctx.analysis(Shapes, model)  # static shapes for the MAC counts
        layers = find_layers(model, ctx, o, self.name)
        if not layers or (o.mode == "fixed" and o.sparsity == 0):
            return PassResult(model, False, {"layers": [], "reason": "nothing to prune"})
        stats, origin = ({}, None)
        if o.saliency == "activation":
            stats, origin = pc.channel_statistics(model, ctx, activation_requests(layers))
        notes = prepare(layers, o.saliency, stats)
        if o.mode == "budget":
            result = self._budget(model, ctx, layers)
        else:
            result = self._fixed(model, ctx, layers)
        if result is None:
            return PassResult(model, False, {"reason": "no sparsity level fits the budget"})
        candidate, counts, extra = result
        out = {"layers": layer_rows(layers, counts, o.storage, extra.pop("alone", {})), **extra, "notes": notes}
        if origin:
            out["calibration"] = origin
        total = sum(layer.weight.size for layer in layers)
        out["sparsity"] = round(sum(counts) / total, 4)
        if o.report_sizes:
            out["file"] = file_sizes(candidate)
        return PassResult(candidate, sum(counts) > 0, out)

    def _fixed(self, model, ctx, layers):
        o = self.options
        counts = counts_for(layers, o.sparsity, o.scope)
        candidate = apply(model, ctx, layers, counts, o.storage)
        extra: dict = {}
        if pc.can_measure(ctx):
            ev = ctx.evaluator(model)
            extra["fidelity"] = summarize(ev.measure(candidate))
            if o.measure_layers:
                extra["alone"] = self._alone(model, ctx, layers, counts, ev, o.max_evals)
        return candidate, counts, extra

    def _alone(self, model, ctx, layers, counts, ev, limit) -> dict:
        """Each layer's error when only it is pruned (at most `limit` runs)."""
        alone = {}
        for i, (layer, count) in enumerate(zip(layers, counts)):
            if i >= limit or count == 0:
                continue
            only = [c if j == i else 0 for j, c in enumerate(counts)]
            alone[layer.value.name] = summarize(ev.measure(apply(model, ctx, layers, only, "dense")))
        return alone

    def _budget(self, model, ctx, layers):
        o = self.options
        bctx = pc.BudgetContext.create(model, ctx, o.budget_share)
        weights, alone = None, {}
        if o.scope == "global":
            weights, alone = self._sensitivities(model, ctx, layers, bctx)
        levels = [round(float(x), 4) for x in np.arange(LEVEL_STEP, o.sparsity + 1e-9, LEVEL_STEP)] or [o.sparsity]
        budget_left = max(o.max_evals - bctx.evaluations, 1)
        index, candidate, metrics = pc.largest_fitting(
            levels, lambda s: apply(model, ctx, layers, counts_for(layers, s, o.scope, weights), o.storage),
            bctx, budget_left)
        if candidate is None:
            return None
        counts = counts_for(layers, levels[index], o.scope, weights)
        return candidate, counts, {"budget": bctx.budget.limits, "fidelity": summarize(metrics),
                                   "search": bctx.trace, "evaluations": bctx.evaluations, "alone": alone}

    def _sensitivities(self, model, ctx, layers, bctx):
        """Loss of each layer pruned alone at the cap; layers beyond the probe limit get the mean."""
        o = self.options
        probes = min(len(layers), max(o.max_evals - 8, 0))
        losses, alone = [], {}
        for i, layer in enumerate(layers[:probes]):
            only = [int(o.sparsity * lay.weight.size) if j == i else 0 for j, lay in enumerate(layers)]
            _, metrics = bctx.measure(apply(model, ctx, layers, only, "dense"))
            losses.append(max(bctx.loss(metrics), 0.0))
            alone[layer.value.name] = {"sparsity": o.sparsity, **summarize(metrics)}
        mean = float(np.mean(losses)) if losses else 1.0
        losses += [mean] * (len(layers) - probes)
        eps = 0.05 * mean + 1e-9
        return [(loss + eps) / (mean + eps) for loss in losses], alone
