"""`prune-channels`: structured pruning that really shrinks tensors.

Whole output channels (Conv filters, Gemm/MatMul columns) are removed together with every
tensor index they reach (groups.py builds the dependency groups, rewrite.py
slices them, importance.py ranks channels). For a layer y = W·x the MACs scale with
(kept outputs)·(kept inputs), so pruning a fraction r of the channels between two layers
removes about r of both layers' MACs and parameters.

- Fixed mode: each group loses `ratio` of its channels (scope=layer), or one threshold over
  all groups' mean-normalised importances removes `ratio` of all channels (scope=global).
- Budget mode: each group is pruned alone at the cap `ratio` and its loss measured on
  held-out data (its sensitivity); importances are scaled by it, so insensitive groups give
  up channels first; a binary search over the global fraction keeps the largest measured
  candidate that fits the run's budget (prune.common.largest_fitting).
- Compensation (rewrite.py), from calibration statistics of each consumer's input:
  `bias` folds the removed channels' mean contribution E[x_r]·W[:, r] into the consumer's
  bias; `refit` (default) also refits dense and 1x1-Conv consumers on their kept inputs by
  ridge least squares (other consumers get the bias term). The stats report the fidelity
  with and without compensation.
- Per group the stats give channels, parameters and MACs of the layers it touches before and
  after, and its measured error when pruned alone (budget mode, or `measure_layers`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import onnx_ir as ir

from graphopt.analyses import Shapes
from graphopt.lossy import summarize
from graphopt.model_stats import model_stats
from graphopt.pass_api import Pass, PassContext, PassResult, quiet_libraries
from graphopt.passes.prune.channels import importance as ci
from graphopt.passes.prune import common as pc
from graphopt.passes.prune.channels.groups import ChannelAnalysis, analyze
from graphopt.passes.prune.channels.rewrite import apply_selection, as_matrix
from graphopt.tolerance import Lossy

MAX_GROUP_RATIO = 0.9  # global fixed mode never removes more of one group
FINE_LEVELS = (0.01, 0.02, 0.03, 0.04)  # budget mode: then every 5% up to the cap
LEVEL_STEP = 0.05


def budget_levels(cap: float) -> list[float]:
    """The fractions the budget search tries: 1% steps up to 4%, then 5% steps up to `cap`.
    Judged on feeds apart from the search's, a recognizer's default budget can allow only a few
    percent (PP-OCR rec with a logits head: 3%), which 5% steps would round down to nothing."""
    coarse = [round(float(x), 4) for x in np.arange(LEVEL_STEP, cap + 1e-9, LEVEL_STEP)]
    return [f for f in FINE_LEVELS if f <= cap] + coarse or [cap]


@dataclass(frozen=True)
class ChannelOptions:
    ratio: float = 0.25  # fixed mode: fraction removed; budget mode: the cap per group
    scope: Literal["layer", "global"] = "layer"
    importance: Literal["l1", "l2", "bn", "activation"] = "activation"
    mode: Literal["fixed", "budget"] = "fixed"
    compensation: Literal["none", "bias", "refit"] = "refit"
    round_to: int = 8  # kept channel counts are multiples of this (ORT CPU's NCHWc blocks, tensor cores)
    min_channels: int = 1
    measure_layers: bool = False  # fixed mode: measure each group pruned alone (one run each)
    max_evals: int = 48
    budget_share: float = 1.0

    def validate(self) -> None:
        pc.check_fraction("ratio", self.ratio)
        if self.round_to < 1:
            raise ValueError(f"round_to must be >= 1, got {self.round_to}")
        if self.min_channels < 1:
            raise ValueError(f"min_channels must be >= 1, got {self.min_channels}")
        pc.check_budget_options(self.max_evals, self.budget_share)


@dataclass
class Plan:
    """What the pass knows before it edits: groups, importances, statistics."""

    analysis: ChannelAnalysis
    groups: list
    scores: dict[int, np.ndarray]
    stats: dict | None  # activation statistics for compensation (None: no compensation)
    notes: list[str]


class PruneChannels(Pass):
    name = "prune-channels"
    summary = "structured pruning of Conv/Gemm/MatMul channels over dependency groups, with bias compensation"
    Options = ChannelOptions
    tolerance = Lossy()

    def run(self, model: ir.Model, ctx: PassContext) -> PassResult:
        o = self.options
        plan = self._plan(model, ctx)
        self._ev = ctx.evaluator(model) if pc.can_measure(ctx) else None
        if not plan.groups or (o.mode == "fixed" and o.ratio == 0):
            return PassResult(model, False, {"groups": [], "reason": "no prunable channel group",
                                             "refused": self._refused(plan.analysis)})
        if o.mode == "budget":
            found = self._budget(model, ctx, plan)
        else:
            found = self._fixed(model, ctx, plan)
        if found is None:
            return PassResult(model, False, {"reason": "no pruning level fits the budget"})
        keep, candidate, extra = found
        extra.update(self._report(model, candidate, plan, keep, extra.pop("alone", {})))
        if plan.stats is not None and self._ev is not None and "fidelity" in extra:
            plain = self._build(model, ctx, keep, None)
            extra["fidelity_without_compensation"] = summarize(self._ev.measure(plain))
        extra["notes"] = plan.notes + extra.get("notes", [])
        return PassResult(candidate, bool(keep), extra)

    # --- planning -----------------------------------------------------------------
    def _plan(self, model: ir.Model, ctx: PassContext) -> Plan:
        o = self.options
        with quiet_libraries():
            ctx.analysis(Shapes, model)
        if ctx.calibration is not None or ctx.holdout:
            pc.fill_unknown_ranks(model, ctx)
        analysis = analyze(model)
        for layer, reason in analysis.skipped:
            ctx.no_match(self.name, layer, reason)
        for group in analysis.groups:
            if group.refusal:
                ctx.no_match(self.name, group.name, group.refusal)
        groups = analysis.prunable()
        stats: dict = {}
        if groups and (o.importance == "activation" or o.compensation != "none"):
            sinks = [s for s in analysis.sites if s.kind in ("weight_in", "grouped_in") and s.value is not None]
            covariance = {s.value.name for s in sinks if o.compensation == "refit"
                          and as_matrix(s.node, pc.const_array(s.node.inputs[1]), s.axis) is not None}
            stats, _ = pc.channel_statistics(model, ctx, {s.value.name: s.value_axis for s in sinks}, covariance)
        scores, notes = {}, []
        for group in groups:
            scores[group.id], note = ci.importance(analysis, group, o.importance, stats, o.compensation != "none")
            if note:
                notes.append(note)
        return Plan(analysis, groups, scores, stats if o.compensation != "none" else None, notes)

    def _refused(self, analysis: ChannelAnalysis) -> list[dict]:
        return ([{"group": g.name, "reason": g.refusal} for g in analysis.groups if g.refusal]
                + [{"group": layer, "reason": reason} for layer, reason in analysis.skipped])

    def _keep(self, plan: Plan, fraction: float, scope: str, weights: dict | None = None) -> dict:
        """Kept channels per group for a removal fraction (per group, or one global threshold)."""
        o = self.options
        groups = plan.groups
        if scope == "layer":
            removals = [int(g.channels * fraction) for g in groups]
        else:
            cap = o.ratio if o.mode == "budget" else max(MAX_GROUP_RATIO, fraction)
            scores = [plan.scores[g.id] / max(float(plan.scores[g.id].mean()), 1e-30)
                      * (weights or {}).get(g.id, 1.0) for g in groups]
            removals = pc.capped_global_selection(scores, fraction, [int(g.channels * cap) for g in groups])
        keep = {}
        for group, remove in zip(groups, removals):
            count = ci.keep_count(group, remove, o.round_to, o.min_channels)
            if count < group.channels:
                keep[group.id] = ci.select(group, plan.scores[group.id], count)
        return keep

    def _build(self, model: ir.Model, ctx: PassContext, keep: dict, stats) -> ir.Model:
        candidate = model.clone()
        with quiet_libraries():
            apply_selection(candidate, ctx, analyze(candidate), keep, stats, self.options.compensation == "refit")
        return candidate

    # --- modes --------------------------------------------------------------------
    def _fixed(self, model, ctx, plan):
        o = self.options
        keep = self._keep(plan, o.ratio, o.scope)
        candidate = self._build(model, ctx, keep, plan.stats)
        extra: dict = {}
        if self._ev is not None:
            ev = self._ev
            extra["fidelity"] = summarize(ev.measure(candidate))
            if o.measure_layers:
                extra["alone"] = {gid: summarize(ev.measure(self._build(model, ctx, {gid: kept}, plan.stats)))
                                  for gid, kept in list(keep.items())[:o.max_evals]}
        return keep, candidate, extra

    def _budget(self, model, ctx, plan):
        o = self.options
        bctx = pc.BudgetContext.create(model, ctx, o.budget_share, self._ev)
        weights, alone = None, {}
        if o.scope == "global":
            weights, alone = self._sensitivities(model, ctx, plan, bctx)
        levels = budget_levels(o.ratio)
        index, candidate, metrics = pc.largest_fitting(
            levels, lambda f: self._build(model, ctx, self._keep(plan, f, o.scope, weights), plan.stats),
            bctx, max(o.max_evals - bctx.evaluations, 1))
        if candidate is None:
            return None
        keep = self._keep(plan, levels[index], o.scope, weights)
        return keep, candidate, {"budget": bctx.budget.limits, "fidelity": summarize(metrics),
                                 "fraction": levels[index], "search": bctx.trace,
                                 "evaluations": bctx.evaluations, "alone": alone}

    def _sensitivities(self, model, ctx, plan, bctx):
        """Each group pruned alone at the cap; its loss scales its channels' importance."""
        o = self.options
        probes = plan.groups[:max(o.max_evals - 8, 0)]
        losses, alone = {}, {}
        for group in probes:
            count = ci.keep_count(group, int(group.channels * o.ratio), o.round_to, o.min_channels)
            if count >= group.channels:
                continue
            keep = {group.id: ci.select(group, plan.scores[group.id], count)}
            _, metrics = bctx.measure(self._build(model, ctx, keep, plan.stats))
            losses[group.id] = max(bctx.loss(metrics), 0.0)
            alone[group.id] = {"ratio": o.ratio, **summarize(metrics)}
        mean = float(np.mean(list(losses.values()))) if losses else 1.0
        eps = 0.05 * mean + 1e-9
        return {g.id: (losses.get(g.id, mean) + eps) / (mean + eps) for g in plan.groups}, alone

    # --- report -------------------------------------------------------------------
    def _report(self, model, candidate, plan, keep, alone) -> dict:
        after_nodes = {pc.describe(n): n for n in candidate.graph}
        rows = []
        for group in plan.groups:
            layers = {pc.describe(s.node) for s in group.seeds}
            layers |= {pc.describe(s.node) for s in plan.analysis.group_sites(group)
                       if s.kind in ("weight_in", "grouped_in", "depthwise")}
            before = [n for n in model.graph if pc.describe(n) in layers]
            after = [after_nodes[name] for name in layers if name in after_nodes]
            row = {"group": group.id, "layers": group.name, "channels_before": group.channels,
                   "channels_after": int(len(keep[group.id])) if group.id in keep else group.channels,
                   "params_before": _params(before), "params_after": _params(after),
                   "macs_before": sum(pc.node_macs(n) for n in before),
                   "macs_after": sum(pc.node_macs(n) for n in after)}
            if group.id in alone:
                row["alone"] = alone[group.id]
            rows.append(row)
        b, a = model_stats(model), model_stats(candidate)
        return {"groups": rows, "refused": self._refused(plan.analysis),
                "model": {"params_before": b.param_count, "params_after": a.param_count,
                          "macs_before": b.macs, "macs_after": a.macs}}


def _params(nodes: list[ir.Node]) -> int:
    total = 0
    for node in nodes:
        for value in node.inputs[1:3]:
            array = pc.const_array(value)
            total += 0 if array is None else int(array.size)
    return total
