"""`quantize`: static INT8 quantization by Q/DQ insertion, sized to the run's accuracy budget.

The math (quant_qdq.py): x' = (saturate(round(x/s) + z) - z)·s with per-tensor (s, z) for
activations from calibrated ranges and symmetric per-channel scales for weights; INT32 biases with
s_b = s_x·s_w. The quantized model computes the same graph with every quantized tensor replaced
by x', so its error is the propagated sum of those rounding and clipping errors.

Steps, on a clone of the model (raised to opset 13 for per-channel DequantizeLinear):
1. exact rewrites for the target's kernels: MatMul + bias + Reshape as a 2-D Gemm (quant_gemm.py,
   ort-cpu), then placement from the target profile (quant_plan.py, quant_profiles.py);
2. SmoothQuant on MatMul/Gemm inputs with outlier channels, α chosen per input by the layer's
   quantized output error (quant_smooth.py);
3. ranges of the tensors to quantize from streaming calibration (graphopt.calibration);
4. Q/DQ, INT8 weights and INT32 biases written into a candidate (quant_apply.py);
5. for targets that run here (ort-cpu, openvino), a latency pre-check (quant_speed.py) times the
   fully quantized model, the same with each op family back in float, and float: integer kernels
   are not faster everywhere. Ranges barely move latency, so this check runs on ranges from one
   minmax pass of in-graph summaries; the configured method's histogram calibration (steps 3-4
   again) is paid only if int8 wins. If no variant beats float, the model stays float and the
   budget search is skipped (putting nodes back to float cannot make int8 faster); else the
   fastest variant is the start of
6. the budget search, measured on the held-out feeds against the input model: if it misses the
   budget, units (nodes) are ranked by sensitivity and the fewest go back to float until it fits
   (quant_sensitivity.py); if that changed the model, the speed check runs again on the result.
Stats: every node kept float and why, each fallback with its measured effect, the SQNR of each
quantized tensor and weight (worst first), the smoothing and latency decisions.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Literal

import onnx_ir as ir

from graphopt.analyses import Shapes
from graphopt.lossy import budget_share, effective_budget
from graphopt.pass_api import Pass, PassContext, PassResult, default_opset, register
from graphopt.passes.quant_apply import apply_plan
from graphopt.passes.quant_calib import calibrate_plan, parse_overrides, tensor_sqnr
from graphopt.passes.quant_gemm import matmul_bias_to_gemm
from graphopt.passes.quant_plan import Plan, build_plan, exclusion
from graphopt.passes.quant_profiles import PROFILES, TensorType, get_profile
from graphopt.passes.quant_smooth import smooth
from graphopt.passes.quant_sensitivity import Candidate, fit_budget
from graphopt.passes.quant_speed import choose_fastest, dropped_families, family_units
from graphopt.runtime import resolve_providers
from graphopt.tolerance import Lossy

Method = Literal["minmax", "percentile", "entropy", "mse"]


@dataclass(frozen=True)
class QuantizeOptions:
    profile: Literal["ort-cpu", "tensorrt", "openvino"] = "ort-cpu"
    method: Method = "percentile"
    percentile: float = 99.999
    per_channel: bool = True
    activation_type: Literal["auto", "uint8", "int8"] = "auto"  # auto: the profile's
    weight_type: Literal["auto", "int8", "uint8"] = "auto"
    weight_bits: int = 0  # 0: the profile's (ort-cpu: 7 on AVX2 without VNNI, else 8)
    exclude_nodes: tuple[str, ...] = ()
    exclude_ops: tuple[str, ...] = ()
    exclude_regex: str = ""
    overrides: tuple[str, ...] = ()  # NAME=float or NAME=LO..HI
    budget_share: float = 1.0
    fallback: bool = True  # put sensitive nodes back to float until the budget holds
    max_fallback: int = 64  # at most this many nodes go back to float
    smooth: bool = True  # SmoothQuant for MatMul/Gemm inputs with outlier channels (alpha searched)
    rank: Literal["sqnr", "measured"] = "sqnr"  # fallback order: SQNR proxy, or one measurement per node
    sqnr_batches: int = 4  # calibration batches the per-tensor SQNR report uses
    calib_max_bytes: int = 512 * 2**20
    cache_dir: str = ""  # calibration cache: "" = default folder, "off" = none, else a folder
    speed_check: bool = True  # ort-cpu/openvino: keep only the op families whose int8 kernels are faster here
    speed_runs: int = 10
    speed_margin: float = 0.03  # int8 must be at least this much faster than float to be kept
    threads: int = 0  # ORT intra-op threads for the speed check (0: ORT's default)

    def validate(self) -> None:
        if not 90.0 <= self.percentile <= 100.0:
            raise ValueError(f"percentile must be in [90, 100], got {self.percentile}")
        if self.weight_bits not in (0, 7, 8):
            raise ValueError(f"weight_bits must be 0 (profile default), 7 or 8, got {self.weight_bits}")
        if not 0 < self.budget_share <= 1:
            raise ValueError(f"budget_share must be in (0, 1], got {self.budget_share}")
        if self.max_fallback < 0 or self.sqnr_batches < 0 or self.threads < 0:
            raise ValueError("max_fallback, sqnr_batches and threads must be >= 0")
        if self.speed_runs < 1 or not 0 <= self.speed_margin < 1:
            raise ValueError("speed_runs must be >= 1 and speed_margin in [0, 1)")
        if self.calib_max_bytes < 2**20:
            raise ValueError("calib_max_bytes must be at least 1 MiB")
        if self.exclude_regex:
            import re

            try:
                re.compile(self.exclude_regex)
            except re.error as exc:
                raise ValueError(f"exclude_regex: {exc}") from None
        parse_overrides(self.overrides)


def resolve_profile(options: QuantizeOptions):
    from dataclasses import replace

    profile = get_profile(options.profile)
    act, weight = profile.activation, profile.weight
    if options.activation_type != "auto":
        act = TensorType(options.activation_type, symmetric=options.activation_type == "int8")
    if options.weight_type != "auto" or options.weight_bits:
        weight = TensorType(options.weight_type if options.weight_type != "auto" else weight.dtype, True,
                            options.weight_bits or weight.bits)
    return replace(profile, activation=act, weight=weight)


@register
class Quantize(Pass):
    name = "quantize"
    summary = "static INT8 by Q/DQ insertion (profiles: " + ", ".join(PROFILES) + "), sized to the budget"
    Options = QuantizeOptions
    tolerance = Lossy()

    def run(self, model: ir.Model, ctx: PassContext) -> PassResult:
        opts, profile = self.options, resolve_profile(self.options)
        work, opset_note = self._prepared(model, ctx, profile)
        if work is None:
            return PassResult(model, False, {"skipped": opset_note})
        per_channel = opts.per_channel and default_opset(work) >= 13
        gemms = matmul_bias_to_gemm(work.graph, ctx.names(work).fresh) if profile.gemm_bias else 0
        overrides = parse_overrides(opts.overrides)
        excluded = exclusion(opts.exclude_nodes, opts.exclude_ops, opts.exclude_regex)
        plan = build_plan(work.graph, profile, excluded, overrides.float_tensors)
        for key, reason in sorted(plan.skipped.items()):
            ctx.no_match(self.name, key, reason)
        if not plan.units:
            return PassResult(model, False, {"skipped": "nothing to quantize", "kept_float": plan.skipped})
        began = time.perf_counter()
        feeds, origin = ctx.calibration_source()
        smoothed = smooth(work, plan, feeds, ctx.names(work).fresh, opts.calib_max_bytes, profile.weight.bits) \
            if opts.smooth else {}
        if any(s["alpha"] != "none" for s in smoothed.values()):  # placement again, with the X/s nodes
            plan = build_plan(work.graph, profile, excluded, overrides.float_tensors)
        spent = {"seconds": time.perf_counter() - began, "source": origin}
        weights: dict = {}  # quantized weights, shared by every candidate of every calibration

        def calibrated(method: str, extra: dict):
            c = calibrate_plan(work, plan, feeds, opts, method, profile.activation.symmetric, overrides,
                               ctx.progress, extra)
            return c, _builder(work, profile, excluded, c.float_tensors, c.ranges, per_channel, ctx, weights)

        start, build, full, precheck, calib = self._latency_first(model, ctx, feeds, calibrated, spent)
        if start is None:
            not_searched = {"measured": False, "reason": "not searched: int8 is slower even fully quantized"}
            return self._float(model, ctx, precheck, not_searched, calib)
        sqnr = tensor_sqnr(work, start, feeds, opts.sqnr_batches) if opts.sqnr_batches else {}
        base = start.disabled
        fit_build = (lambda disabled: build(disabled | base)) if base else build
        best, fit, fits = self._fit(model, start, fit_build, ctx, unit_sqnr(start, sqnr))
        speed = precheck
        if best is not start and precheck.get("measured", True):  # fallbacks changed it: time again
            best, speed = self._fastest(model, best, build, ctx, feeds, fits)
            speed = {**speed, "precheck": precheck}
        if best is None:
            return self._float(model, ctx, speed, fit, calib)
        _mark_slow_families(best, full.plan, [precheck, speed])
        stats = _stats(profile, best, calib, fit, opset_note)
        stats.update(speed=speed, smoothed=smoothed, matmul_bias_to_gemm=gemms, tensor_sqnr_db=sqnr)
        return PassResult(best.model, True, stats)

    def _latency_first(self, model: ir.Model, ctx: PassContext, feeds, calibrated, spent: dict):
        """(start candidate or None, build, fully quantized candidate, speed pre-check, calibration).

        Latency first: when no family's int8 kernels beat float even fully quantized, fallbacks
        (more float) cannot make it faster, so the budget search is skipped. The ranges barely
        move the latency, so the check runs on one-pass minmax summaries (graphopt.summaries) and
        the histogram calibration of the configured method is paid only when int8 wins."""
        method = self.options.method
        quick = self._speed_check_skipped() is None and method != "minmax"
        first, build = calibrated("minmax" if quick else method, dict(spent))
        full = build(frozenset())
        start, precheck = self._fastest(model, full, build, ctx, feeds, lambda candidate: True)
        if not quick:
            return start, build, full, precheck, first.calib
        if start is None:
            note = f"minmax summaries for the latency check only: no {method} calibration needed"
            return None, build, full, precheck, {**first.calib, "note": note}
        final, build = calibrated(method, {"source": spent["source"]})
        calib = {**final.calib, "latency_check": "on minmax summaries (one pass)"}
        full = build(frozenset())
        return (build(start.disabled) if start.disabled else full), build, full, precheck, calib

    def _float(self, model: ir.Model, ctx: PassContext, speed: dict, fit: dict, calib: dict) -> PassResult:
        reason = f"int8 measured slower than float here ({speed['latency_ms']})"
        ctx.no_match(self.name, "model", reason)
        return PassResult(model, False, {"skipped": reason, "speed": speed, "budget": fit, "calibration": calib})

    def _prepared(self, model: ir.Model, ctx: PassContext, profile) -> tuple[ir.Model | None, str]:
        """A clone to quantize, at opset >= 13 (per-channel DequantizeLinear has `axis` from 13),
        with every value typed; (None, reason) below opset 10 (no Q/DQ ops at all)."""
        current = default_opset(model)
        if current < 10:
            reason = f"opset {current} < 10 has no QuantizeLinear/DequantizeLinear"
            ctx.no_match(self.name, "model", reason)
            return None, reason
        work, note = model.clone(), ""
        if current < profile.min_opset and self.options.per_channel:
            from graphopt.passes.opset import RaiseOpset

            try:
                RaiseOpset(target=profile.min_opset).run(work, ctx)
                note = f"opset raised {current} -> {profile.min_opset} (per-channel DequantizeLinear needs 13)"
            except Exception as exc:  # noqa: BLE001  (a converter gap: quantize per tensor instead)
                work = model.clone()
                note = f"opset {current} kept (raising it failed: {exc}); weights per tensor, not per channel"
                ctx.no_match(self.name, "model", note)
        ctx.analysis(Shapes, work)  # placement needs every value's type
        return work, note

    def _fit(self, model: ir.Model, full: Candidate, build, ctx: PassContext, proxy: dict[str, float]):
        """(candidate meeting the budget, report, fits(candidate) -> bool for later choices)."""
        opts = self.options
        if not opts.fallback or not ctx.holdout:
            return full, {"measured": False}, lambda candidate: True
        ev = ctx.evaluator(model)
        budget = effective_budget(ctx.budget)
        if opts.budget_share < 1:
            budget = budget_share(budget, ev.measure(model), opts.budget_share)
        best, report = fit_budget(full, build, ev, budget, opts.max_fallback, ctx.progress, opts.rank, proxy)
        return best, report, lambda candidate: ev.fits(candidate.model, budget)[0]

    def _speed_check_skipped(self) -> dict | None:
        """Why no speed check is made ({"measured": False, ...}), or None when one is."""
        opts = self.options
        profile = resolve_profile(opts)
        if not opts.speed_check or not profile.latency_check:
            return {"measured": False}
        missing = resolve_providers(None).skipped.get(profile.latency_provider)
        if missing:
            return {"measured": False, "reason": f"{missing}: int8 kept without a speed check"}
        return None

    def _fastest(self, model: ir.Model, best: Candidate, build, ctx: PassContext, feeds, fits):
        """The fastest of {best, best with an op family back in float, float} that `fits`
        (quant_speed.py); (best, {"measured": False, ...}) when no speed check is made."""
        opts = self.options
        profile = resolve_profile(opts)
        skipped = self._speed_check_skipped()
        if skipped is not None:
            return best, skipped
        feed = ctx.holdout[0] if ctx.holdout else next(iter(feeds()))
        return choose_fastest(model, best, build, fits, feed, opts.speed_runs, opts.threads,
                              opts.speed_margin, ctx.progress, profile.latency_provider)


def _mark_slow_families(best: Candidate, full_plan, reports: list[dict]) -> None:
    """Say in the plan why the op families a speed check dropped stayed float."""
    families = family_units(full_plan)
    for report in reports:
        for family in dropped_families(report.get("chosen", "")):
            for key in families.get(family, ()):
                best.plan.skipped[key] = (f"{family} back in float: int8 measured slower here "
                                          f"({report['latency_ms']})")


def _builder(model: ir.Model, profile, excluded, float_tensors, ranges, per_channel: bool, ctx: PassContext,
             weights: dict):
    """build(disabled) -> Candidate; `weights` caches quantized weights (they do not depend on
    the activation ranges)."""

    def build(disabled: frozenset[str]) -> Candidate:
        candidate = model.clone()
        plan = build_plan(candidate.graph, profile, excluded, float_tensors, disabled)
        applied = apply_plan(candidate, plan, ranges, profile, per_channel, ctx.names(candidate).fresh, weights)
        return Candidate(candidate, plan, applied, disabled)

    return build


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


def _stats(profile, best: Candidate, calib: dict, fit: dict, opset_note: str) -> dict:
    plan: Plan = best.plan
    ops: dict[str, int] = {}
    for unit in plan.units.values():
        ops[unit.node.op_type] = ops.get(unit.node.op_type, 0) + 1
    weights = sorted(best.applied.weights.items(), key=lambda kv: kv[1]["sqnr_db"])
    return {
        "profile": profile.name,
        "activation": profile.activation.dtype + ("" if not profile.activation.symmetric else " symmetric"),
        "weight": f"{profile.weight.dtype} {profile.weight.bits}-bit symmetric",
        "notes": list(profile.notes) + ([opset_note] if opset_note else []),
        "quantized_nodes": len(plan.units), "quantized_by_op": dict(sorted(ops.items())),
        "quantized_tensors": len(plan.tensors), "relu_folded": best.applied.relu_folded,
        "scale_groups": len(plan.groups), "qdq_nodes_added": best.applied.nodes_added,
        "kept_float": dict(sorted(plan.skipped.items())), "bias_scale_grown": best.applied.bias_grown,
        "calibration": calib, "budget": fit,
        "weight_sqnr_db": {name: w["sqnr_db"] for name, w in weights},
    }


__all__ = ["Quantize", "QuantizeOptions", "resolve_profile"]
