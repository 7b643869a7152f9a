"""`quantize`: static INT8 quantization by Q/DQ insertion, sized to the run's accuracy budget.

The math (qdq.py): x' = (saturate(round(x/s) + z) - z)·s with per-tensor (s, z) for
activations from calibrated ranges and symmetric per-channel scales for weights; INT32 biases with
s_b = s_x·s_w. The quantized model computes the same graph with every quantized tensor replaced
by x', so its error is the propagated sum of those rounding and clipping errors.

Steps, on a clone of the model (raised to opset 13 for per-channel DequantizeLinear):
1. exact rewrites for the target's kernels: MatMul + bias + Reshape as a 2-D Gemm (gemm.py,
   ort-cpu), then placement from the target profile (plan.py, profiles.py);
2. SmoothQuant on MatMul/Gemm inputs with outlier channels, α chosen per input by the layer's
   quantized output error (smooth.py);
3. ranges of the tensors to quantize from streaming calibration (calibration/, through ranges.py);
4. Q/DQ, INT8 weights and INT32 biases written into a candidate (apply.py);
5. for targets that run here (ort-cpu, openvino), a latency pre-check (speed.py) times the
   fully quantized model, the same with each op family back in float, and float: integer kernels
   are not faster everywhere. Ranges barely move latency, so this check runs on ranges from one
   minmax pass of in-graph summaries; the configured method's histogram calibration (steps 3-4
   again) is paid only if int8 wins. If no variant beats float, the model stays float and the
   budget search is skipped (putting nodes back to float cannot make int8 faster); else the
   fastest variant is the start of
6. the budget search, measured on the held-out feeds against the input model: if it misses the
   budget, units (nodes) are ranked by sensitivity and the fewest go back to float until it fits
   (sensitivity.py); if that changed the model, the speed check runs again on the result. With a
   `wide` profile (qnn, every float op quantized) those units stay quantized with 16-bit
   activations instead (job.py), and when even that misses the budget the pass does not apply.
The run's shared state (clone, plan, feeds, profile, calibration options, weight cache) is one
`QuantJob` (job.py); the options and the calibration options they build are in options.py.
Stats: every node kept float and why, each fallback with its measured effect, the SQNR of each
quantized tensor and weight (worst first), the smoothing and latency decisions.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, replace
from functools import partial

import onnx_ir as ir

from graphopt.analyses import Shapes
from graphopt.exclusion import exclusion
from graphopt.lossy import budget_share, effective_budget
from graphopt.pass_api import Pass, PassContext, PassResult, default_opset
from graphopt.passes.quantize.gemm import matmul_bias_to_gemm
from graphopt.passes.quantize.job import Builder, QuantJob
from graphopt.passes.quantize.options import QuantizeOptions, resolve_profile
from graphopt.passes.quantize.plan import Plan
from graphopt.passes.quantize.profiles import PROFILES, QuantProfile
from graphopt.passes.quantize.ranges import parse_overrides, tensor_sqnr
from graphopt.passes.quantize.sensitivity import Candidate, fit_budget
from graphopt.passes.quantize.smooth import smooth
from graphopt.passes.quantize.speed import choose_fastest, dropped_families, family_units
from graphopt.runtime import resolve_providers
from graphopt.tolerance import Lossy

NAME = "quantize"
NOT_SEARCHED = {"measured": False, "reason": "not searched: int8 is slower even fully quantized"}
PER_CHANNEL_OPSET = 13  # DequantizeLinear has `axis` from 13: the profiles' floor


class Quantize(Pass):
    name = NAME
    summary = "static INT8 by Q/DQ insertion (profiles: " + ", ".join(PROFILES) + "), sized to the budget"
    Options = QuantizeOptions
    tolerance = Lossy()

    @property
    def deployed_numerics(self) -> bool:
        """ORT_ENABLE_ALL runs 8-bit integer kernels, so the result is verified there too; for
        float8 and 16-bit types ORT CPU has no such kernels (the targets are GPUs and NPUs), and
        its rewrites would only be judged on what they get wrong (options.ORT_FLOAT8_RELU)."""
        profile = resolve_profile(self.options)
        return not (profile.activation.beyond_int8 or profile.weight.beyond_int8)

    def requires(self, model: ir.Model, ctx: PassContext) -> str | None:
        current = default_opset(model)
        return f"opset {current} < 10 has no QuantizeLinear/DequantizeLinear" if current < 10 else None

    def run(self, model: ir.Model, ctx: PassContext) -> PassResult:
        if (skipped := self.skip_result(model, ctx)) is not None:
            return skipped
        opts, profile = self.options, resolve_profile(self.options)
        work, opset_note = _prepared(model, ctx, opts, profile)
        if _type_opset(profile) and default_opset(work) < profile.min_opset:
            return PassResult(model, False, {"skipped": f"{_type_opset(profile)}: {opset_note}"})
        job = QuantJob(model, work, opts, profile, ctx, opts.calibration(profile.activation.symmetric),
                       per_channel=opts.per_channel and default_opset(work) >= 13,
                       overrides=parse_overrides(opts.overrides),
                       excluded=exclusion(opts.exclude_nodes, opts.exclude_ops, opts.exclude_regex),
                       opset_note=opset_note)
        job.gemms = matmul_bias_to_gemm(work.graph, ctx.names(work).fresh) if profile.gemm_bias else 0
        plan = job.place()
        for key, reason in sorted(plan.skipped.items()):
            ctx.no_match(self.name, key, reason)
        if not plan.units:
            return PassResult(model, False, {"skipped": _nothing_to_quantize(work.graph, profile),
                                             "kept_float": plan.skipped})
        _feeds_and_smoothing(job)
        first = _latency_first(job)
        if first.candidate is None:
            return _float(job, first.speed, dict(NOT_SEARCHED), first.calib)
        return _searched(job, first)


@dataclass(frozen=True)
class LatencyFirst:
    """What the latency pre-check leaves for the budget search."""

    candidate: Candidate | None  # the fastest variant (the search's start); None: float is fastest
    build: Builder  # candidates on the final calibration's ranges
    full: Candidate  # fully quantized, on those ranges
    speed: dict  # the pre-check's report
    calib: dict  # the final calibration's report entry


def _prepared(model: ir.Model, ctx: PassContext, options: QuantizeOptions,
              profile: QuantProfile) -> tuple[ir.Model, str]:
    """A clone to quantize (opset >= 10, `requires`), at opset >= 13 where it can be raised
    (per-channel DequantizeLinear has `axis` from 13), with every value typed."""
    current = default_opset(model)
    work, note = model.clone(), ""
    typed = _type_opset(profile)
    if current < profile.min_opset and (options.per_channel or typed):
        from graphopt.passes.opset import RaiseOpset

        why = typed or "per-channel DequantizeLinear needs 13"
        try:
            RaiseOpset(target=profile.min_opset).run(work, ctx)
            note = f"opset raised {current} -> {profile.min_opset} ({why})"
        except Exception as exc:  # noqa: BLE001  (a converter gap: quantize per tensor instead)
            work = model.clone()
            note = f"opset {current} kept (raising it failed: {exc}); weights per tensor, not per channel"
            ctx.no_match(NAME, "model", note)
    ctx.analysis(Shapes, work)  # placement needs every value's type
    return work, note


QUANTIZED_OPS = frozenset({"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "ConvInteger",
                           "MatMulInteger", "DynamicQuantizeLSTM", "DynamicQuantizeMatMul", "MatMulIntegerToFloat",
                           "MatMulNBits", "QGemm", "GatherBlockQuantized"})  # and every QLinear* op


def _nothing_to_quantize(graph: ir.Graph, profile: QuantProfile) -> str:
    """Why no unit was placed: the model is quantized already (which ops say so), or it has no op
    the profile quantizes."""
    found = Counter(n.op_type for n in graph.all_nodes()
                    if n.op_type in QUANTIZED_OPS or n.op_type.startswith("QLinear"))
    if found:
        ops = ", ".join(f"{count} {op}" for op, count in found.most_common(4))
        return f"nothing to quantize: the model is quantized already ({ops})"
    compute = sorted(op for op, rule in profile.ops.items() if rule.role == "compute")
    return f"nothing to quantize: no {'/'.join(compute)} the {profile.name} profile quantizes (kept_float says why)"


def _type_opset(profile: QuantProfile) -> str:
    """Why the profile's types need a newer opset than per-channel Q/DQ does ('' when they do not)."""
    if profile.min_opset <= PER_CHANNEL_OPSET:
        return ""
    types = sorted({t.dtype for t in (profile.activation, profile.weight) if t.beyond_int8})
    return f"{' and '.join(types)} Q/DQ needs opset {profile.min_opset}"


def _feeds_and_smoothing(job: QuantJob) -> None:
    """The calibration feeds, then SmoothQuant (placement again when it added X/s nodes); the
    time both took is reported with the first calibration's."""
    began = time.perf_counter()
    job.feeds, job.source = job.ctx.calibration_source()
    opts = job.options
    if opts.smooth:
        job.smoothed = smooth(job.work, job.plan, job.feeds, job.ctx.names(job.work).fresh, opts.calib_max_bytes,
                              job.profile.weight.bits)
    for name, entry in sorted(job.smoothed.items()):
        if "not_smoothed" in entry:
            job.ctx.no_match(NAME, f"smoothing {name}", entry["not_smoothed"])
    if any(s["alpha"] != "none" for s in job.smoothed.values()):  # placement again, with the X/s nodes
        job.place()
    job.setup_seconds = time.perf_counter() - began


def _latency_first(job: QuantJob) -> LatencyFirst:
    """Latency first: when no family's int8 kernels beat float even fully quantized, fallbacks
    (more float) cannot make it faster, so the budget search is skipped. The ranges barely
    move the latency, so the check runs on one-pass minmax summaries (calibration/summaries.py)
    and the histogram calibration of the configured method is paid only when int8 wins."""
    method = job.calibration.method
    quick = _speed_check_skipped(job) is None and method != "minmax"
    options = replace(job.calibration, method="minmax") if quick else job.calibration
    first = job.calibrate(options, {"seconds": job.setup_seconds, "source": job.source})
    build = job.builder(first)
    full = build(frozenset())
    start, precheck = _precheck(job, full, build, options)
    if not quick:
        return LatencyFirst(start, build, full, precheck, first.calib)
    if start is None:
        note = f"minmax summaries for the latency check only: no {method} calibration needed"
        return LatencyFirst(None, build, full, precheck, {**first.calib, "note": note})
    final = job.calibrate(job.calibration, {"source": job.source})
    calib = {**final.calib, "latency_check": "on minmax summaries (one pass)"}
    build = job.builder(final)
    full = build(frozenset())
    return LatencyFirst(build(start.disabled) if start.disabled else full, build, full, precheck, calib)


def _precheck(job: QuantJob, full: Candidate, build: Builder, options) -> tuple[Candidate | None, dict]:
    """The fastest fully quantized variant (None: float) and the check's report. It does not
    depend on the budget, so a budget retry reuses the first try's (same variants, and no
    second noisy timing that could pick another start)."""
    made = {}

    def measure():
        made["start"], report = _fastest(job, full, build, _any_fits)
        return (None if made["start"] is None else made["start"].disabled), report

    key = ("quantize latency check", options, frozenset(job.plan.tensors), frozenset(job.plan.units))
    (disabled, report), reused = job.ctx.across_retries(key, measure)
    if not reused:
        return made["start"], report
    start = None if disabled is None else build(disabled) if disabled else full
    return start, {**report, "reused": "timed in this pass's first try (a budget retry does not change it)"}


def _searched(job: QuantJob, first: LatencyFirst) -> PassResult:
    """The budget search from the pre-check's fastest variant, then the speed check again if
    fallbacks changed the model; the result with its stats."""
    start, precheck, opts = first.candidate, first.speed, job.options
    sqnr = tensor_sqnr(job.work, start, job.feeds, opts.sqnr_batches) if opts.sqnr_batches else {}
    fit_build = replace(first.build, base=start.disabled)  # the pre-check's dropped families stay float
    best, fit, fits = _fit(job, start, fit_build, unit_sqnr(start, sqnr))
    speed = precheck
    if best is None and "stopped" in fit:
        return _float(job, speed, fit, first.calib, fit["reason"])
    if job.profile.wide is not None and fit.get("fits") is False:
        return _float(job, speed, fit, first.calib, _wide_miss(job, fit, len(start.plan.units)))
    if best is not start and precheck.get("measured", True):  # fallbacks changed it: time again
        if job.ctx.deadline.expired():
            job.ctx.deadline.skip("quantize: the speed check after the fallbacks")
            speed = {**precheck, "after_fallbacks": "not timed: no time left (--max-time)"}
        else:
            best, speed = _fastest(job, best, first.build, fits)
            speed = {**speed, "precheck": precheck}
    if best is None:
        return _float(job, speed, fit, first.calib)
    _mark_slow_families(best, first.full.plan, [precheck, speed])
    stats = _stats(job, best, first.calib, fit)
    stats.update(speed=speed, smoothed=job.smoothed, matmul_bias_to_gemm=job.gemms, tensor_sqnr_db=sqnr)
    return PassResult(best.model, True, stats)


def _float(job: QuantJob, speed: dict, fit: dict, calib: dict, reason: str | None = None) -> PassResult:
    reason = reason or f"int8 measured slower than float here, beyond noise ({speed['latency_ms']})"
    job.ctx.no_match(NAME, "model", reason)
    return PassResult(job.model, False, {"skipped": reason, "speed": speed, "budget": fit, "calibration": calib})


def _wide_miss(job: QuantJob, fit: dict, units: int) -> str:
    """One line: the budget is missed even with the search's units in the wide type."""
    widened = len(fit.get("fallbacks", []))
    which = f"every quantized node's ({units})" if widened >= units else \
        f"{widened} of {units} quantized nodes' (max_fallback={job.options.max_fallback})"
    limits = ", ".join(f"{k}={v}" for k, v in fit.get("limits", {}).items())
    return f"budget {limits} missed even with {which} activations in {job.profile.wide.dtype}"


def _any_fits(candidate: Candidate) -> bool:
    return True


def _fits_budget(ev, budget, candidate: Candidate) -> bool:
    return ev.fits(candidate.model, budget)[0]


def _fit(job: QuantJob, full: Candidate, build: Builder, proxy: dict[str, float]):
    """(candidate meeting the budget, report, fits(candidate) -> bool for later choices)."""
    opts, ctx = job.options, job.ctx
    if not opts.fallback or not ctx.holdout:
        return full, {"measured": False}, _any_fits
    ev = ctx.evaluator(job.model)
    budget = effective_budget(ctx.budget)
    if opts.budget_share < 1:
        budget = budget_share(budget, ev.measure(job.model), opts.budget_share)
    memo = ctx.search_memo(NAME, job.calibration.method, build.base)  # candidates: disabled ∪ base
    best, report = fit_budget(full, build, ev, budget, opts.max_fallback, ctx.progress, opts.rank, proxy, memo)
    return best, report, partial(_fits_budget, ev, budget)


def _speed_check_skipped(job: QuantJob) -> dict | None:
    """Why no speed check is made ({"measured": False, ...}), or None when one is."""
    if not job.options.speed_check or not job.profile.latency_check:
        return {"measured": False}
    missing = resolve_providers(None).skipped.get(job.profile.latency_provider)
    if missing:
        return {"measured": False, "reason": f"{missing}: int8 kept without a speed check"}
    return None


def _fastest(job: QuantJob, best: Candidate, build: Builder, fits):
    """The fastest of {best, best with an op family back in float, float} that `fits`
    (speed.py); (best, {"measured": False, ...}) when no speed check is made."""
    skipped = _speed_check_skipped(job)
    if skipped is not None:
        return best, skipped
    opts, ctx = job.options, job.ctx
    feed = ctx.holdout[0] if ctx.holdout else next(iter(job.feeds()))
    return choose_fastest(job.model, best, build, fits, feed, opts.speed_runs, opts.threads,
                          opts.speed_margin, ctx.progress, job.profile.latency_provider)


def _mark_slow_families(best: Candidate, full_plan, reports: list[dict]) -> None:
    """Say in the plan why the op families a speed check dropped stayed float."""
    families = family_units(full_plan)
    for report in reports:
        for family in dropped_families(report.get("chosen", "")):
            for key in families.get(family, ()):
                best.plan.skipped[key] = (f"{family} back in float: int8 measured slower here "
                                          f"({report['latency_ms']})")


def unit_sqnr(candidate: Candidate, tensor_sqnr_db: dict[str, float]) -> dict[str, float]:
    """Worst SQNR among each unit's quantized inputs and weight (the `rank=sqnr` proxy)."""
    result = {}
    for key, unit in candidate.plan.units.items():
        values = [tensor_sqnr_db.get(tensor, float("inf")) for tensor in unit.names]
        weight = candidate.applied.weights.get(key)
        if weight is not None:
            values.append(weight["sqnr_db"])
        result[key] = min(values, default=float("inf"))
    return result


def _stats(job: QuantJob, best: Candidate, calib: dict, fit: dict) -> dict:
    profile: QuantProfile = job.profile
    plan: Plan = best.plan
    ops: dict[str, int] = {}
    for unit in plan.units.values():
        ops[unit.node.op_type] = ops.get(unit.node.op_type, 0) + 1
    weights = sorted(best.applied.weights.items(), key=lambda kv: kv[1]["sqnr_db"])
    return {
        "profile": profile.name,
        "activation": profile.activation.dtype + ("" if not profile.activation.symmetric else " symmetric"),
        "weight": f"{profile.weight.dtype} {profile.weight.bits}-bit symmetric",
        "notes": list(profile.notes) + ([job.opset_note] if job.opset_note else []),
        "quantized_nodes": len(plan.units), "quantized_by_op": dict(sorted(ops.items())),
        "quantized_tensors": len(plan.tensors), "relu_folded": best.applied.relu_folded,
        "scale_groups": len(plan.groups), "qdq_nodes_added": best.applied.nodes_added,
        "kept_float": dict(sorted(plan.skipped.items())), "bias_scale_grown": best.applied.bias_grown,
        "calibration": calib, "budget": {**fit, "fallback_to": profile.wide.dtype if profile.wide else "float"},
        "weight_sqnr_db": {name: w["sqnr_db"] for name, w in weights},
        "bytes_added": best.applied.bytes_added,
        **(_widths(best) if profile.wide is not None else {}),
    }


def _widths(best: Candidate) -> dict:
    """How many quantized activations are 8-bit and 16-bit, and the 16-bit ones by name."""
    bits = best.applied.bits
    wide = sorted(name for name, b in bits.items() if b == 16)
    return {"activations_8bit": sum(b == 8 for b in bits.values()), "activations_16bit": len(wide),
            "tensors_16bit": wide}


__all__ = ["Quantize", "QuantizeOptions", "resolve_profile"]
