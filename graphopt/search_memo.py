"""Budget-search measurements kept across a lossy pass's retries.

`run_with_retries` (graphopt.lossy) runs a lossy pass again with a tighter budget when the
verification feeds show the first result missed it. The retry builds mostly the same candidates
from the same calibration, so what the last try measured is reused instead of run again:
- a measurement on every search feed holds whatever the budget: it is judged again against the
  retry's budget;
- a miss decided on the first feeds (graphopt.staged) stays a miss under a budget at least as
  tight on every entry (the retries only tighten it); under any other budget it is measured again.
A memo lives for one pass's tries (the manager clears it before the next pass); each search
keys it by what determines its candidates (`PassContext.search_memo`). It also holds the run's
deadline: past `--max-time`, measuring one more candidate raises OutOfTime (graphopt.deadline).
A search records its result in `chosen`: a retry only runs when the verification rejected it,
so the retry's search can rule it (and whatever it implies) out.
"""

from __future__ import annotations

from dataclasses import dataclass

from graphopt.metrics import OutputMetrics
from graphopt.phases import phase
from graphopt.tolerance import BUDGET_METRICS, Budget


@dataclass(frozen=True)
class Measured:
    metrics: dict[str, OutputMetrics]
    feeds: int  # search feeds it ran on
    complete: bool  # on every search feed (else: a miss decided early)
    budget: Budget  # the budget it was measured against


def at_least_as_tight(new: Budget, old: Budget) -> bool:
    """Every entry of `old` is in `new` with a limit no looser."""
    for key, limit in old.limits.items():
        if key not in new.limits:
            return False
        bound = new.limits[key]
        if (bound < limit) if BUDGET_METRICS[key] == "min" else (bound > limit):
            return False
    return True


def reuse(entry: Measured | None, budget: Budget) -> tuple[bool, dict[str, OutputMetrics]] | None:
    """(fits `budget`, metrics) from an earlier try's measurement, or None to measure again."""
    if entry is None:
        return None
    if entry.complete:
        return not budget.violations(entry.metrics), entry.metrics
    if at_least_as_tight(budget, entry.budget):
        return False, entry.metrics
    return None


class SearchMemo(dict):
    """key -> Measured for one search's candidates; `fits` measures through it. With a
    `deadline` (graphopt.deadline), measuring a new candidate past it raises OutOfTime."""

    def __init__(self, deadline=None, label: str = "budget search"):
        super().__init__()
        self.deadline, self.label = deadline, label
        self.chosen: list = []  # each earlier try's result: its verification missed (else no retry)

    def rejects(self, key, worse_than) -> bool:
        """Whether `key` is no better than an earlier try's result (`worse_than(key, chosen)`,
        a partial order such as frozenset.issubset for units kept at higher precision)."""
        return any(worse_than(key, failed) for failed in self.chosen)

    def fits(self, key, build, ev, budget: Budget, early: bool = True) -> tuple[bool, dict[str, OutputMetrics]]:
        """(fits, metrics) of the candidate `build()` makes, reused when an earlier try measured it."""
        entry = self.get(key)
        hit = reuse(entry, budget) if entry is not None and (early or entry.complete) else None
        if hit is not None:
            ev.feeds_seen = self[key].feeds
            return hit
        if self.deadline is not None:
            self.deadline.check(f"{self.label}: more candidates")
        with phase("candidate build"):
            model = build()
        ok, metrics = ev.fits(model, budget, early)
        self[key] = Measured(metrics, ev.feeds_seen, ev.feeds_seen == len(ev.feeds), budget)
        return ok, metrics
