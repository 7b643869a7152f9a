"""Budget fallback search (quantize/sensitivity.py) on a fake evaluator: which units stay float,
and how many measurements it takes."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from graphopt.passes.quantize.sensitivity import Candidate, fit_budget
from graphopt.tolerance import Budget

UNITS = [f"u{i}" for i in range(32)]


class FakeEvaluator:
    """cosine = 1 - 0.02 per quantized unit in `harmful` (+ 0.0001 per other quantized unit)."""

    def __init__(self, harmful: set[str]):
        self.harmful, self.calls, self.feeds, self.feeds_seen = harmful, 0, [None], 1

    def measure(self, model):
        self.calls += 1
        quantized = set(UNITS) - model.disabled
        loss = 0.02 * len(quantized & self.harmful) + 0.0001 * len(quantized - self.harmful)
        return {"y": SimpleNamespace(cosine=1.0 - loss, sample_cosine=1.0 - loss)}

    def fits(self, model, budget, early=True):
        metrics = self.measure(model)
        return metrics["y"].cosine >= budget.limits["cosine"], metrics


def build(disabled: frozenset[str]) -> Candidate:
    plan = SimpleNamespace(units={u: None for u in UNITS if u not in disabled})
    return Candidate(SimpleNamespace(disabled=disabled), plan, None, disabled)


# measurements: the fit is deterministic on this fake; a unit-by-unit walk over the fitting prefix
# took 32, 39, 15 and 49
@pytest.mark.parametrize("harmful, most_calls", [({"u20"}, 18), ({"u3", "u25"}, 25), (set(UNITS[:8]), 15),
                                                 (set(UNITS[1::4]), 49)])
def test_fallbacks_are_exactly_the_harmful_units(monkeypatch, harmful, most_calls):
    import graphopt.passes.quantize.sensitivity as sensitivity

    monkeypatch.setattr(sensitivity, "worst", lambda metrics, metric: metrics["y"].cosine)
    monkeypatch.setattr(sensitivity, "summarize", lambda metrics: {"cosine": metrics["y"].cosine})
    ev = FakeEvaluator(harmful)
    proxy = {u: i for i, u in enumerate(UNITS)}  # a poor proxy: ranks u0 most sensitive
    best, report = fit_budget(build(frozenset()), build, ev, Budget({"cosine": 0.99}), 64, proxy=proxy)
    assert report["fits"] and best.disabled == frozenset(harmful)
    assert {e["node"] for e in report["fallbacks"]} == harmful
    assert ev.calls <= most_calls


class MeasurementsDeadline:
    """A --max-time that runs out after `allowed` new candidate measurements."""

    def __init__(self, allowed: int):
        from graphopt.deadline import Deadline

        self.inner, self.allowed = Deadline(), allowed

    def check(self, what):
        from graphopt.deadline import OutOfTime

        if self.allowed <= 0:
            self.inner.skip(what)
            raise OutOfTime(what)
        self.allowed -= 1


@pytest.mark.parametrize("allowed, in_float", [(1, None), (7, None), (8, 24), (9, 24), (10, 22)])
def test_out_of_time_keeps_the_best_fitting_candidate_measured_so_far(monkeypatch, allowed, in_float):
    """Harmful u20 under a poor proxy (u0 first): the first k units in float fit iff k >= 21. The
    search measures prefixes 1, 2, 4, 8, 16 (miss), 32 (fits: every unit, i.e. float), then
    bisects: 24 (fits), 20 (miss), 22 (fits), ... Out of time, the fitting candidate with the
    fewest units in float measured so far is kept; none (float) while only "every unit" fits."""
    import graphopt.passes.quantize.sensitivity as sensitivity
    from graphopt.search_memo import SearchMemo

    monkeypatch.setattr(sensitivity, "worst", lambda metrics, metric: metrics["y"].cosine)
    monkeypatch.setattr(sensitivity, "summarize", lambda metrics: {"cosine": metrics["y"].cosine})
    memo = SearchMemo(MeasurementsDeadline(allowed))  # the fully quantized candidate is the first
    proxy = {u: i for i, u in enumerate(UNITS)}
    best, report = fit_budget(build(frozenset()), build, FakeEvaluator({"u20"}), Budget({"cosine": 0.99}), 64,
                              proxy=proxy, memo=memo)
    assert "no time left (--max-time)" in report["stopped"]
    if in_float is None:
        assert best is None and not report["fits"]
    else:
        assert best.disabled == frozenset(UNITS[:in_float]) and report["fits"]


def test_a_retry_rules_out_what_the_verification_rejected(monkeypatch):
    """The verification rejected the first try's {u20}: in the retry (same memo, a budget the
    search feeds still meet with {u20}), {u20} and its subsets count as misses, so the retry
    puts one more unit in float instead of choosing {u20} again."""
    import graphopt.passes.quantize.sensitivity as sensitivity
    from graphopt.search_memo import SearchMemo

    monkeypatch.setattr(sensitivity, "worst", lambda metrics, metric: metrics["y"].cosine)
    monkeypatch.setattr(sensitivity, "summarize", lambda metrics: {"cosine": metrics["y"].cosine})
    proxy = {u: i for i, u in enumerate(UNITS)}
    memo = SearchMemo()
    first, report = fit_budget(build(frozenset()), build, FakeEvaluator({"u20"}), Budget({"cosine": 0.99}), 64,
                               proxy=proxy, memo=memo)
    assert first.disabled == {"u20"} and "ruled_out" not in report
    again, retry = fit_budget(build(frozenset()), build, FakeEvaluator({"u20"}), Budget({"cosine": 0.995}), 64,
                              proxy=proxy, memo=memo)
    assert retry["fits"] and retry["ruled_out"] == 1
    assert again.disabled > {"u20"} and len(again.disabled) == 2
    assert memo.chosen == [frozenset({"u20"}), again.disabled]
