"""`prune-nm`: N:M semi-structured sparsity (default 2:4) along each weight's reduction axis.

Sparse tensor cores (NVIDIA Ampere and later, used by TensorRT when a weight qualifies)
compute y = W·x skipping zeros when, along the reduction (input-channel) axis, every group
of M consecutive weights holds at most N non-zeros. For each layer the reduction axis is
the one that indexes input channels (prune.common.reduction_axis): MatMul W[K, N] axis 0,
Gemm axis 1 if transB else 0, Conv W[M, C/g, k…] axis 1 (groups of M input channels at each
output channel and kernel tap, TensorRT's rule for convolutions), ConvTranspose axis 0.
In every group the M − N elements of lowest saliency (|w|, or |w|·‖x_j‖ with calibration
data) become 0, so the weight keeps exactly N/M of its elements. A layer whose reduction
axis is not a multiple of M is left dense, with the reason.

On ORT CPU this changes no speed or size (the weights stay dense, as TensorRT wants them);
it is the input TensorRT's sparse-weights mode needs. Budget mode: every layer is pruned
alone and its loss measured; layers are then taken least sensitive first, and a binary
search finds the largest prefix whose combined model fits the budget.
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
from graphopt.passes.prune.unstructured import Layer, activation_requests, find_layers, saliency
from graphopt.tolerance import Lossy


@dataclass(frozen=True)
class NMOptions:
    n: int = 2
    m: int = 4
    saliency: Literal["l1", "activation"] = "l1"
    skip_first_last: bool = False
    min_elements: int = 1024
    mode: Literal["fixed", "budget"] = "fixed"
    measure_layers: bool = False
    max_evals: int = 48
    budget_share: float = 1.0

    def validate(self) -> None:
        if not 2 <= self.m <= 32:
            raise ValueError(f"m must be in [2, 32], got {self.m}")
        if not 0 < self.n < self.m:
            raise ValueError(f"n must be in [1, m-1] = [1, {self.m - 1}], got {self.n}")
        if self.min_elements < 0:
            raise ValueError(f"min_elements must be >= 0, got {self.min_elements}")
        pc.check_budget_options(self.max_evals, self.budget_share)


def nm_axis(layer: Layer, m: int) -> tuple[int | None, str | None]:
    """The reduction axis shared by every node reading this weight, or why there is none."""
    axes = {pc.reduction_axis(node) for node in layer.nodes}
    if len(axes) != 1:
        return None, "weight shared by layers that reduce over different axes"
    axis = axes.pop()
    if layer.weight.shape[axis] % m:
        return None, f"reduction axis {axis} has {layer.weight.shape[axis]} elements, not a multiple of {m}"
    return axis, None


def nm_mask(score: np.ndarray, axis: int, n: int, m: int) -> np.ndarray:
    """Boolean keep-mask: the n highest scores in each run of m along `axis`."""
    moved = np.moveaxis(score, axis, -1)
    groups = moved.reshape(moved.shape[:-1] + (moved.shape[-1] // m, m))
    ranks = np.argsort(np.argsort(-groups, axis=-1, kind="stable"), axis=-1, kind="stable")
    keep = (ranks < n).reshape(moved.shape)
    return np.moveaxis(keep, -1, axis)


def satisfies_nm(array: np.ndarray, axis: int, n: int, m: int) -> bool:
    """Every run of m along `axis` holds at most n non-zeros."""
    moved = np.moveaxis(array, axis, -1)
    groups = moved.reshape(moved.shape[:-1] + (moved.shape[-1] // m, m))
    return bool(np.all(np.count_nonzero(groups, axis=-1) <= n))


@dataclass
class NMLayer:
    layer: Layer
    axis: int
    pruned: np.ndarray


def apply(model: ir.Model, ctx: PassContext, chosen: list[NMLayer]) -> ir.Model:
    candidate = model.clone()
    values = pc.value_map(candidate)
    for item in chosen:
        old = values[item.layer.value.name]
        new = pc.new_initializer(candidate, ctx, item.pruned, f"{old.name}_nm")
        ir.convenience.replace_all_uses_with(old, new)
        pc.drop_unused(candidate, [old])
    return candidate


def row(item: NMLayer, n: int, m: int, applied: bool, alone: dict | None) -> dict:
    weight = item.layer.weight
    out = {"layer": ", ".join(pc.describe(x) for x in item.layer.nodes), "weight": item.layer.value.name,
           "shape": list(weight.shape), "axis": item.axis, "pattern": f"{n}:{m}", "applied": applied,
           "params": int(weight.size), "nonzero_before": int(np.count_nonzero(weight)),
           "nonzero_after": int(np.count_nonzero(item.pruned if applied else weight)), "macs": item.layer.macs,
           "pattern_ok": satisfies_nm(item.pruned, item.axis, n, m)}
    if alone is not None:
        out["alone"] = alone
    return out


class PruneNM(Pass):
    name = "prune-nm"
    summary = "N:M (default 2:4) sparsity along the reduction axis, for sparse tensor cores (TensorRT)"
    Options = NMOptions
    tolerance = Lossy()
    preserves = frozenset({Shapes})  # weights change values, never shapes or types

    def run(self, model: ir.Model, ctx: PassContext) -> PassResult:
        o = self.options
        ctx.analysis(Shapes, model)
        items = self._items(model, ctx)
        if not items:
            return PassResult(model, False, {"layers": [], "reason": "no layer qualifies"})
        if o.mode == "budget":
            chosen, extra = self._budget(model, ctx, items)
        else:
            chosen, extra = items, {}
        alone = extra.pop("alone", {})
        if not chosen:
            rows = [row(it, o.n, o.m, False, alone.get(it.layer.value.name)) for it in items]
            return PassResult(model, False, {"reason": "no layer fits the budget", "layers": rows, **extra})
        candidate = apply(model, ctx, chosen)
        if o.mode == "fixed" and pc.can_measure(ctx):
            ev = ctx.evaluator(model)
            extra["fidelity"] = summarize(ev.measure(candidate))
            if o.measure_layers:
                alone = {it.layer.value.name: summarize(ev.measure(apply(model, ctx, [it])))
                         for it in items[:o.max_evals]}
        chosen_names = {it.layer.value.name for it in chosen}
        rows = [row(it, o.n, o.m, it.layer.value.name in chosen_names, alone.get(it.layer.value.name))
                for it in items]
        return PassResult(candidate, True, {"layers": rows, **extra})

    def _items(self, model: ir.Model, ctx: PassContext) -> list[NMLayer]:
        o = self.options
        layers = find_layers(model, ctx, o, self.name)
        stats = {}
        if o.saliency == "activation" and layers:
            stats, _ = pc.channel_statistics(model, ctx, activation_requests(layers))
        items = []
        for layer in layers:
            axis, reason = nm_axis(layer, o.m)
            if reason:
                ctx.no_match(self.name, pc.describe(layer.nodes[0]), reason)
                continue
            score, _ = saliency(layer, o.saliency, stats)
            items.append(NMLayer(layer, axis, np.where(nm_mask(score, axis, o.n, o.m), layer.weight, 0)
                                 .astype(layer.weight.dtype)))
        return items

    def _budget(self, model, ctx, items):
        """Least sensitive layers first; the longest prefix that fits the budget."""
        o = self.options
        bctx = pc.BudgetContext.create(model, ctx, o.budget_share)
        probes = items[:max(o.max_evals - 8, 1)]
        losses, alone = {}, {}
        for it in probes:
            _, metrics = bctx.measure(apply(model, ctx, [it]))
            losses[it.layer.value.name] = bctx.loss(metrics)
            alone[it.layer.value.name] = summarize(metrics)
        ordered = sorted(probes, key=lambda it: losses[it.layer.value.name])
        index, _, metrics = pc.largest_fitting(list(range(1, len(ordered) + 1)),
                                               lambda k: apply(model, ctx, ordered[:k]), bctx,
                                               max(o.max_evals - bctx.evaluations, 1))
        chosen = ordered[:index + 1] if index >= 0 else []
        extra = {"budget": bctx.budget.limits, "search": bctx.trace, "evaluations": bctx.evaluations,
                 "alone": alone}
        if metrics is not None:
            extra["fidelity"] = summarize(metrics)
        return chosen, extra
