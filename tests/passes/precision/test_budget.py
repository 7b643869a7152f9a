"""float16's fallback search (precision/budget.py) on a fake evaluator: a budget retry does not
choose again what the verification rejected."""

from __future__ import annotations

from types import SimpleNamespace

from graphopt.metrics import OutputMetrics
from graphopt.passes.precision.budget import Search, fit_budget
from graphopt.search_memo import SearchMemo
from graphopt.tolerance import Budget

OPS = [f"op{i}" for i in range(12)]


class FakeEvaluator:
    """cosine = 1 - 0.02 per op left in float16 among `harmful` (- 0.0001 per other op)."""

    def __init__(self, harmful: set[str]):
        self.harmful, self.feeds, self.feeds_seen, self.calls = harmful, [None], 1, 0

    def fits(self, model, budget, early=True):
        self.calls += 1
        low = set(OPS) - model.kept
        cos = 1.0 - 0.02 * len(low & self.harmful) - 0.0001 * len(low - self.harmful)
        metrics = {"y": OutputMetrics(0.0, 0.0, cos, 60.0, 0.0, 1.0, sample_cosine=cos, samples=1)}
        return not budget.violations(metrics), metrics


def test_a_retry_does_not_choose_the_rejected_set_or_a_subset_again():
    memo, rank = SearchMemo(), lambda: list(OPS)

    def search(ev, cosine):
        s = Search(lambda kept: SimpleNamespace(kept=kept), ev, Budget({"cosine": cosine}), lambda m: None)
        s.memo = memo
        return s

    first, report = fit_budget(search(FakeEvaluator({"op3"}), 0.99), rank, 12)
    assert first == {"op3"} and report["fits"]
    again, retry = fit_budget(search(FakeEvaluator({"op3"}), 0.995), rank, 12)
    assert retry["fits"] and again > {"op3"} and len(again) == 2  # one more op in float32
    assert memo.chosen == [frozenset({"op3"}), again]
