"""`QuantJob`: the shared state of one `quantize` run, and the candidates built from it.

The pass prepares one job (the model clone to quantize, its placement plan, the calibration
feeds, the resolved profile and the calibration options built once from the pass's options);
its steps then take the job instead of threading those values through closures and long
parameter lists. A `Builder` turns one calibration's ranges into candidates (the budget search
and the speed check ask for many, with different units kept float).

The search's `disabled` units go back to float, or, for a profile with a `wide` type (qnn), stay
quantized with their activations in that type (`Plan.widened`): the search code is the same, the
candidate interprets the set. A candidate with 16-bit tensors is raised to opset 21.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Iterable

import onnx_ir as ir

from graphopt.pass_api import PassContext, default_opset
from graphopt.passes.quantize.apply import apply_plan
from graphopt.passes.quantize.calibration import CalibrationOptions
from graphopt.passes.quantize.options import SIXTEEN_BIT_OPSET, QuantizeOptions
from graphopt.passes.quantize.plan import Exclusion, Plan, build_plan
from graphopt.passes.quantize.profiles import QuantProfile
from graphopt.passes.quantize.ranges import Calibration, Overrides, calibrate_ranges
from graphopt.passes.quantize.sensitivity import Candidate
from graphopt.phases import timed


@dataclass
class QuantJob:
    model: ir.Model  # the input model: the reference of the budget and the float speed baseline
    work: ir.Model  # the clone being quantized (opset raised, MatMul+bias as Gemm, smoothed)
    options: QuantizeOptions
    profile: QuantProfile  # the target profile with the options' activation and weight types
    ctx: PassContext
    calibration: CalibrationOptions  # built and validated once from `options`
    per_channel: bool  # per-channel weight scales (the option, and opset >= 13)
    overrides: Overrides
    excluded: Exclusion
    plan: Plan | None = None  # placement on `work` (rebuilt once after smoothing)
    feeds: Callable[[], Iterable[dict]] | None = None  # calibration feeds
    source: str = ""  # where the feeds came from (the report's calibration "source")
    setup_seconds: float = 0.0  # reading the feeds and smoothing (added to the first calibration's time)
    weights: dict = field(default_factory=dict)  # quantized weights, shared by every candidate of every calibration
    opset_note: str = ""  # how the opset was raised (or why it was not)
    gemms: int = 0  # MatMul + bias rewritten as Gemm
    smoothed: dict = field(default_factory=dict)  # SmoothQuant's decision per input

    def place(self) -> Plan:
        """Placement of the quantized nodes on `work` (kept as the job's plan)."""
        self.plan = build_plan(self.work.graph, self.profile, self.excluded, self.overrides.float_tensors)
        return self.plan

    def calibrate(self, options: CalibrationOptions, extra: dict) -> Calibration:
        """Ranges of the plan's tensors under `options` (the user's overrides applied), the
        tensors to keep float (user's, plus those whose range a few extreme values set), and the
        report entry; `extra` adds to it (its "seconds" are added to the calibration's own). A
        budget retry of the pass reuses its first try's ranges (`PassContext.across_retries`)."""
        start = time.perf_counter()
        key = ("quantize calibration", options, self.options.cache_dir, frozenset(self.plan.tensors))
        (ranges, calib), reused = self.ctx.across_retries(key, lambda: calibrate_ranges(
            self.work, self.plan, self.feeds, options, self.options.cache_dir, self.ctx.progress))
        ranges, calib = {**ranges, **self.overrides.ranges}, dict(calib)
        if reused:
            calib["reused"] = "ranges from this pass's first try (a budget retry does not change them)"
        extreme = frozenset(calib.get("extreme", {})) - set(self.overrides.ranges)
        spent = time.perf_counter() - start + extra.get("seconds", 0.0)
        calib.update({**extra, "seconds": round(spent, 3)})
        return Calibration(ranges, calib, self.overrides.float_tensors | extreme)

    def builder(self, calibration: Calibration) -> Builder:
        return Builder(self, calibration)

    @timed("candidate build")
    def candidate(self, calibration: Calibration, disabled: frozenset[str]) -> Candidate:
        """`work` quantized with `calibration`'s ranges, the `disabled` units kept float (or, with a
        `wide` profile, their activations in the wide type)."""
        model = self.work.clone()
        widen = self.profile.wide is not None
        plan = build_plan(model.graph, self.profile, self.excluded, calibration.float_tensors,
                          frozenset() if widen else disabled)
        wide = plan.widened(disabled) if widen else frozenset()
        applied = apply_plan(model, plan, calibration.ranges, self.profile, self.per_channel,
                             self.ctx.names(model).fresh, self.weights, wide)
        if any(bits > 8 for bits in applied.bits.values()) and default_opset(model) < SIXTEEN_BIT_OPSET:
            applied.bytes_added += self._raise_opset(model)
        return Candidate(model, plan, applied, disabled)

    def _raise_opset(self, model: ir.Model) -> int:
        """16-bit Q/DQ needs opset 21: the candidate is raised (exact); the bytes that added."""
        from graphopt.passes.opset import RaiseOpset

        return RaiseOpset(target=SIXTEEN_BIT_OPSET).run(model, self.ctx).stats.get("bytes_added", 0)


@dataclass(frozen=True)
class Builder:
    """build(disabled) -> Candidate for one calibration; the `base` units are always kept float."""

    job: QuantJob
    calibration: Calibration
    base: frozenset[str] = frozenset()

    def __call__(self, disabled: frozenset[str]) -> Candidate:
        return self.job.candidate(self.calibration, (disabled | self.base) if self.base else disabled)


__all__ = ["Builder", "QuantJob"]
