"""Measurements reused across a lossy pass's retries (graphopt.search_memo)."""

import numpy as np

from graphopt.lossy import Evaluator
from graphopt.search_memo import Measured, SearchMemo, at_least_as_tight, reuse
from graphopt.metrics import compare_arrays
from graphopt.tolerance import Budget
from tests.test_staged import feeds_and_noisy_reference, identity_model


def test_tightness_compares_every_entry_in_its_direction():
    assert at_least_as_tight(Budget({"cosine": 0.995, "max_abs": 0.1}), Budget({"cosine": 0.99, "max_abs": 0.2}))
    assert not at_least_as_tight(Budget({"cosine": 0.98}), Budget({"cosine": 0.99}))
    assert not at_least_as_tight(Budget({"max_abs": 0.3}), Budget({"max_abs": 0.2}))
    assert not at_least_as_tight(Budget({"cosine": 0.999}), Budget({"cosine": 0.99, "top1": 0.9}))


def test_complete_measurements_are_judged_again_and_early_misses_only_under_tighter_budgets():
    metrics = {"y": compare_arrays(np.ones(4, np.float32), np.full(4, 1.05, np.float32))}  # max_abs 0.05
    complete = Measured(metrics, 10, True, Budget({"max_abs": 0.1}))
    assert reuse(complete, Budget({"max_abs": 0.01}))[0] is False
    assert reuse(complete, Budget({"max_abs": 0.06}))[0] is True
    partial = Measured(metrics, 4, False, Budget({"max_abs": 0.04}))
    assert reuse(partial, Budget({"max_abs": 0.02})) == (False, metrics)
    assert reuse(partial, Budget({"max_abs": 0.2})) is None  # looser: measured again
    assert reuse(None, Budget({"max_abs": 0.2})) is None


def test_a_retry_with_a_tighter_budget_builds_nothing_it_measured_before():
    feeds, reference = feeds_and_noisy_reference(20, seed=5, noise=0.02, hard=1)
    ev, memo, builds = Evaluator(feeds, reference), SearchMemo(), []

    def build():
        builds.append(1)
        return identity_model()

    first = memo.fits("c", build, ev, Budget({"cosine": 0.999}))
    again = memo.fits("c", build, ev, Budget({"cosine": 0.9995}))
    assert first[0] is False and again[0] is False and len(builds) == 1
    memo.fits("c", build, ev, Budget({"cosine": 0.1}))  # looser than the early miss: measured again
    assert len(builds) == 2
