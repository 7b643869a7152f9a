"""Budget search: usage against the budget's room, greedy allocation, bounded evaluations."""

from __future__ import annotations

import math

import numpy as np
import pytest

from graphopt.metrics import compare_arrays
from graphopt.passes.lowrank.select import BudgetSearch, Candidate, Level, budget_usage
from graphopt.tolerance import Budget


def _metrics(cosine: float) -> dict:
    # a 2-vector pair with the requested cosine
    ref = np.array([1.0, 0.0])
    cand = np.array([cosine, math.sqrt(1 - cosine**2)])
    return {"y": compare_arrays(ref, cand)}


def test_usage_is_the_fraction_of_the_room_spent():
    start = _metrics(1.0)
    assert budget_usage(_metrics(0.99), Budget({"cosine": 0.98}), start) == pytest.approx(0.5, abs=1e-6)
    assert budget_usage(_metrics(0.97), Budget({"cosine": 0.98}), start) == pytest.approx(1.5, abs=1e-6)
    assert budget_usage(start, Budget({"cosine": 0.98}), start) == 0.0


def test_usage_without_room_is_infinite_once_anything_is_spent():
    start = _metrics(0.98)
    assert budget_usage(_metrics(0.97), Budget({"cosine": 0.99}), start) == math.inf
    assert budget_usage(start, Budget({"cosine": 0.99}), start) == 0.0


def _candidates() -> list[Candidate]:
    # "cheap" saves a lot per unit of error, "sensitive" little
    cheap = Candidate("cheap", 1000, [Level((8,), 600, 0.1), Level((4,), 300, 0.2)])
    sensitive = Candidate("sensitive", 1000, [Level((8,), 600, 0.1), Level((4,), 300, 0.2)])
    return [cheap, sensitive]


def _true_usage(choice: dict[str, Level], k: dict | None = None) -> float:
    k = k or {"cheap": 10.0, "sensitive": 200.0}  # usage = k * error^2, additive
    return sum(k[w] * lv.error**2 for w, lv in choice.items())


def test_search_spends_the_budget_on_the_least_sensitive_layer_and_fits():
    search = BudgetSearch(_candidates(), _true_usage, max_evals=20)
    choice = search.run()
    assert choice["cheap"].rank == (4,)  # 10 * 0.04 = 0.4 usage for 700 MACs saved
    assert "sensitive" not in choice or choice["sensitive"].rank == (8,)
    assert _true_usage(choice) <= 1.0
    assert search.evaluations <= 20
    assert [c.probe["rank"] for c in search.candidates] == [[8], [8]]  # probes nearest half the MACs


def test_search_backs_off_when_the_prediction_was_optimistic():
    def interacting(choice):  # the combined model is worse than the sum of single-layer probes
        usage = _true_usage(choice, {"cheap": 10.0, "sensitive": 40.0})
        return usage * (3.0 if len(choice) > 1 else 1.0)

    search = BudgetSearch(_candidates(), interacting, max_evals=20)
    choice = search.run()
    assert interacting(choice) <= 1.0
    assert search.trace[0]["layers"] == 2 and search.trace[0]["usage"] > 1.0  # first guess missed ...
    assert choice == {"cheap": Level((4,), 300, 0.2)}  # ... then it backed off to what fits


def test_search_returns_nothing_when_no_level_fits():
    search = BudgetSearch(_candidates(), lambda choice: 5.0 * len(choice), max_evals=10)
    assert search.run() == {}
    assert search.evaluations <= 10


def test_allocate_respects_the_allowance():
    search = BudgetSearch(_candidates(), _true_usage, max_evals=20)
    search._probe()
    assert search.allocate(0.0) == {}
    assert set(search.allocate(100.0)) == {"cheap", "sensitive"}
