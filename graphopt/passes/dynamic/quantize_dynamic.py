"""`quantize-dynamic`: INT8 weights, activations quantized at run time, sized to the run's budget.

The math (weights.py): each constant weight W is stored as symmetric INT8 per output channel,
s_j = max_k |W[k, j]| / 127 (7-bit magnitudes on AVX2 without VNNI), and each activation x is
quantized per tensor when the model runs (DynamicQuantizeLinear: uint8 over [min(x, 0),
max(x, 0)]), so no calibration data is needed:
    x·W ≈ s_x·(xq - z_x)·Wq·s_w,   the integer product exact in int32.
Its error is the rounding of x on the grid s_x (wide when x has outliers) plus that of W.

Steps:
1. units (select.py): constant-weight MatMul / Gemm (/ Conv) not excluded, each other node of
   those types with why it stays float;
2. weights quantized once, streamed one tensor at a time (build.py);
3. candidates written in the standard ONNX form (DynamicQuantizeLinear, MatMulInteger, Cast,
   Mul) or, `form=ort`, ONNX Runtime's DynamicQuantizeMatMul / MatMulIntegerToFloat
   (rewrite.py); `form=auto` is the ort form when the model already imports com.microsoft (it
   runs on ONNX Runtime only);
4. a latency check (speed.py): int8 must beat float here, else the model stays float;
5. if the all-int8 model misses the budget on the held-out feeds, a smoothing plan (smooth.py:
   the unit groups whose estimated output SQNR, sensitivity.py, SmoothQuant-like channel
   scaling x/s, diag(s)·W raises; their weights quantized again, scaled), then the budget
   search (budget.py): the fewest groups smoothed, most sensitive first, then the fewest units
   back in float; if that changed the model, the latency check runs again.
The run's state is one `Job` (job.py). Stats: every node quantized or kept float and why, the
smoothed units, each fallback with its measured effect, the SQNR estimates and the latency check.
"""

from __future__ import annotations

from dataclasses import replace

import onnx_ir as ir

from graphopt.exclusion import exclusion
from graphopt.analyses import Shapes
from graphopt.pass_api import Pass, PassContext, PassResult, default_opset
from graphopt.passes.dynamic.budget import fit_budget, fit_smoothing
from graphopt.passes.dynamic.build import Builder, quantize_units
from graphopt.passes.dynamic.job import Job
from graphopt.passes.dynamic.options import QuantizeDynamicOptions
from graphopt.passes.dynamic.rewrite import MS_DOMAIN
from graphopt.passes.dynamic.select import node_keys, select
from graphopt.passes.dynamic.smooth import plan_smoothing
from graphopt.passes.dynamic.speed import compare_latency
from graphopt.passes.dynamic.weights import weight_bits
from graphopt.tolerance import Lossy

NAME = "quantize-dynamic"
MIN_OPSET = 11  # DynamicQuantizeLinear


class QuantizeDynamic(Pass):
    name = NAME
    summary = "dynamic INT8: int8 weights per channel, activations quantized at run time, sized to the budget"
    Options = QuantizeDynamicOptions
    tolerance = Lossy()
    deployed_numerics = True  # ORT_ENABLE_ALL runs integer kernels: verified there too

    def requires(self, model: ir.Model, ctx: PassContext) -> str | None:
        opset = default_opset(model)
        return f"opset {opset} < {MIN_OPSET} has no DynamicQuantizeLinear (run opset first)" \
            if opset < MIN_OPSET else None

    def run(self, model: ir.Model, ctx: PassContext) -> PassResult:
        if (skipped := self.skip_result(model, ctx)) is not None:
            return skipped
        opts = self.options
        bits = opts.weight_bits or weight_bits()
        work = model.clone()  # tensors shared, never written; typed here, so the input keeps its types
        ctx.analysis(Shapes, work)
        found = select(work.graph, opts.ops, exclusion(opts.exclude_nodes, opts.exclude_ops, opts.exclude_regex),
                       bits)
        for key, reason in sorted(found.skipped.items()):
            ctx.no_match(NAME, key, reason)
        if not found.units:
            reason = f"no eligible {'/'.join(opts.ops)} (a constant float32 weight and a float32 activation)"
            ctx.no_match(NAME, "model", reason)
            return PassResult(model, False, {"skipped": reason, "kept_float": found.skipped})
        job = Job(opts, ctx, model, work, found, bits)
        weights = quantize_units(work.graph, found.units, opts.per_channel, bits, progress=ctx.progress)
        job.build = Builder(work, found.units, weights, resolve_form(opts.form, model))
        return _decide(job)


def _decide(job: Job) -> PassResult:
    """Latency first (int8 must win here), then the smoothing and fallbacks the budget needs,
    then latency again if they changed the model."""
    opts, model = job.options, job.model
    full = job.build()
    feed = _timing_feed(job.ctx)
    speed = _speed(opts, model, full, feed)
    if not speed.get("faster", True):
        return _float(job, f"int8 measured slower than float here ({speed['latency_ms']})", {"speed": speed})
    smoothing = _smooth(job, full)
    disabled, fit = _fit(job, full)
    fit["smoothing"] = smoothing
    if disabled is None or disabled >= set(job.found.units):
        why = fit["reason"] if disabled is None else "the budget holds only with every node in float"
        return _float(job, why + ": kept float", {"speed": speed, "budget": fit})
    changed = bool(disabled or job.build.active)
    best = job.build(disabled) if changed else full
    if changed and speed.get("measured"):
        speed = {**compare_latency(model, best, feed, opts.speed_runs, opts.threads, opts.speed_margin),
                 "precheck": speed}
        if not speed["faster"]:
            why = (f"with {len(disabled)} node(s) back in float and {len(job.build.active)} smoothed, int8 "
                   f"measured slower ({speed['latency_ms']})")
            return _float(job, why, {"speed": speed, "budget": fit})
    return PassResult(best, True, _stats(job, disabled, fit, speed))


def resolve_form(form: str, model: ir.Model) -> str:
    """`auto`: the ort form when the model already imports com.microsoft, else standard ONNX."""
    if form != "auto":
        return form
    return "ort" if MS_DOMAIN in model.opset_imports else "standard"


def _timing_feed(ctx: PassContext) -> dict | None:
    if ctx.holdout:
        return ctx.holdout[0]
    if ctx.calibration is not None:
        return next(iter(ctx.calibration()), None)
    return None


def _speed(opts: QuantizeDynamicOptions, model: ir.Model, full: ir.Model, feed: dict | None) -> dict:
    if not opts.speed_check:
        return {"measured": False, "reason": "speed_check=false"}
    if feed is None:
        return {"measured": False, "reason": "no feed to time the models on"}
    return compare_latency(model, full, feed, opts.speed_runs, opts.threads, opts.speed_margin)


def _smooth(job: Job, full: ir.Model) -> dict:
    """Smooth the fewest groups that meet the budget (budget.py), planned (smooth.py) only when
    the unsmoothed model misses it; sets the builder's `active` units."""
    opts, ctx = job.options, job.ctx
    if not opts.smooth or not ctx.holdout:
        return {"measured": False, "reason": "smooth=false" if not opts.smooth else "no held-out feeds"}
    search = job.search(lambda active: replace(job.build, active=active)() if active else full, "unit(s) smoothed")
    job.searched = search.measured
    if not search.try_(frozenset()):
        job.plan = plan_smoothing(job.work, job.found.units, job.statistics_feeds(), opts.per_channel, job.bits)
        smoothable = {key: job.found.units[key] for key in job.plan.factors}
        job.build = replace(job.build, smoothed=quantize_units(job.work.graph, smoothable, opts.per_channel,
                                                               job.bits, job.plan.factors))
    active, report = fit_smoothing(search, job.plan.groups)
    job.build = replace(job.build, active=active)
    return report


def _fit(job: Job, full: ir.Model) -> tuple[frozenset[str] | None, dict]:
    """(units to keep float, or None when no fallback fits; the budget report)."""
    opts, ctx = job.options, job.ctx
    if not opts.fallback or not ctx.holdout:
        why = "fallback=false" if not opts.fallback else "no held-out feeds"
        return frozenset(), {"measured": False, "reason": why}
    build, start = job.build, job.build() if job.build.active else full
    search = job.search(lambda disabled: build(disabled) if disabled else start, scope=(frozenset(build.active),))
    if build.active in job.searched:  # the smoothing search measured this candidate already
        search.measured[frozenset()] = job.searched[build.active]
    disabled, report = fit_budget(search, job.rank, opts.max_fallback)
    if job.plan.plain:  # unsmoothed estimates (the smoothed units' are in the stats' "smoothed")
        report["unit_sqnr_db"] = dict(sorted(job.plan.plain.items(), key=lambda kv: kv[1]))
    return disabled, report


def _float(job: Job, reason: str, extra: dict) -> PassResult:
    job.ctx.no_match(NAME, "model", reason)
    return PassResult(job.model, False, {"skipped": reason, "kept_float": job.found.skipped, **extra})


def _stats(job: Job, disabled: frozenset[str], fit: dict, speed: dict) -> dict:
    found, build = job.found, job.build
    kept = dict(found.skipped)
    for effect in fit.get("fallbacks", []):
        kept[effect["node"]] = (f"kept float by the accuracy budget ({effect['metric']} {effect['float']:.5g}; "
                                f"{effect['int8']:.5g} with it in int8)")
    nodes = node_keys(job.work.graph)
    quantized = {key: f"{unit.op} of {nodes[key].inputs[0].name}" + (" + bias Add" if unit.bias_add else "")
                 + (", smoothed" if key in build.active else "")
                 for key, unit in found.units.items() if key not in disabled}
    by_op: dict[str, int] = {}
    for key in quantized:
        by_op[found.units[key].op] = by_op.get(found.units[key].op, 0) + 1
    weights = {k: build.smoothed[k] if k in build.active else build.weights[k] for k in quantized}
    worst_weights = sorted(((k, round(w.sqnr_db, 2)) for k, w in weights.items()), key=lambda kv: kv[1])[:8]
    per = "per channel" if job.options.per_channel else "per tensor"
    return {"form": build.form, "weight": f"int8 {job.bits}-bit symmetric {per}",
            "activation": "uint8 asymmetric per tensor, at run time", "quantized_nodes": len(quantized),
            "quantized_by_op": dict(sorted(by_op.items())), "quantized": quantized,
            "kept_float": dict(sorted(kept.items())), "smoothed": job.plan.report(build.active & set(quantized)),
            "budget": fit, "speed": speed, "worst_weight_sqnr_db": dict(worst_weights)}


__all__ = ["QuantizeDynamic", "resolve_form"]
