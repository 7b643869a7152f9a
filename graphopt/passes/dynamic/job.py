"""One `quantize-dynamic` run's shared state: the input, its typed clone, the units, their
weights, the smoothing plan, the candidate builder and the budget's evaluator."""

from __future__ import annotations

from dataclasses import dataclass, field

import onnx_ir as ir

from graphopt.lossy import Evaluator, budget_share, effective_budget
from graphopt.pass_api import PassContext
from graphopt.passes.dynamic.build import Builder
from graphopt.passes.dynamic.budget import Search
from graphopt.passes.dynamic.options import QuantizeDynamicOptions
from graphopt.passes.dynamic.select import Selection
from graphopt.passes.dynamic.sensitivity import unit_sqnr
from graphopt.passes.dynamic.smooth import SmoothingPlan
from graphopt.tolerance import Budget


@dataclass
class Job:
    options: QuantizeDynamicOptions
    ctx: PassContext
    model: ir.Model  # the input (returned unchanged when the pass keeps it float)
    work: ir.Model  # a typed clone (tensors shared) the candidates are built from
    found: Selection
    bits: int
    plan: SmoothingPlan = field(default_factory=SmoothingPlan)
    build: Builder | None = None
    searched: dict = field(default_factory=dict)  # the smoothing search's measurements
    _evaluation: tuple[Evaluator, Budget] | None = None
    _statistics: list | None = None

    def evaluation(self) -> tuple[Evaluator, Budget]:
        """The held-out evaluator and this pass's share of the run's budget (made once)."""
        if self._evaluation is None:
            ev = self.ctx.evaluator(self.model)
            budget = effective_budget(self.ctx.budget)
            if self.options.budget_share < 1:
                budget = budget_share(budget, ev.measure(self.model), self.options.budget_share)
            self._evaluation = ev, budget
        return self._evaluation

    def search(self, build, what: str = "node(s) in float", scope=()) -> Search:
        """A budget search over `build`'s candidates; `scope` names what else fixes them (the
        memo of earlier tries is keyed by it, graphopt.search_memo)."""
        ev, budget = self.evaluation()
        search = Search(build, ev, budget, self.ctx.progress or (lambda message: None), what)
        search.memo = self.ctx.search_memo("quantize-dynamic", what, *scope)
        return search

    def statistics_feeds(self) -> list:
        """What the activation statistics (smoothing, estimates) run on: --calib when given, else
        the held-out feeds."""
        if self._statistics is None:
            source, _ = self.ctx.calibration_source()
            self._statistics = list(source())
        return self._statistics

    def sqnr(self) -> dict[str, float]:
        """Each unit's estimated output SQNR as the builder quantizes it (sensitivity.py)."""
        if not self.plan.plain:
            estimates = unit_sqnr(self.work, self.found.units, self.statistics_feeds(), self.options.per_channel,
                                  self.bits)
            self.plan.plain = {key: by_variant["none"] for key, by_variant in estimates.items()}
        return self.plan.sqnr(self.build.active)

    def rank(self) -> list[str]:
        """Units, most sensitive first."""
        sqnr = self.sqnr()
        return sorted(self.found.units, key=lambda key: sqnr[key])


__all__ = ["Job"]
