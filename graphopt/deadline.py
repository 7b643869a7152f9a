"""`--max-time SECONDS`: the best result found within the time, reported as such.

The run's clock starts when `optimize` is called. Work that can stop early checks the deadline
before each step it can skip: a budget search before measuring one more candidate (it then keeps
the best candidate that fit so far), the manager before a lossy pass and before a budget retry,
`auto` before another chain. What the final steps need (verifying the last result against the
held-out feeds at both ORT optimization levels, writing the outputs) is held back as a reserve:
`Deadline.started_final(seconds)` is told how long one reference run over the held-out feeds took,
and the steps stop at max_time - reserve, reserve = 5% of max_time + 3 such runs + 1 s. Steps
that cannot stop midway (one calibration pass, one candidate measurement, a speed check) can
overrun the deadline by their own length: `--max-time` should leave room for them.
Every skipped step is recorded (`skipped`) and the report lists them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from graphopt.errors import InputError


class OutOfTime(Exception):
    """A step the run's `--max-time` leaves no room for; `what` names it."""

    def __init__(self, what: str):
        super().__init__(what)
        self.what = what


@dataclass
class Deadline:
    max_time: float | None = None  # seconds; None: no limit
    started: float = field(default_factory=lambda: time.monotonic())
    reserve: float = 1.0  # held back for the final verification and the save
    skipped: list[str] = field(default_factory=list)

    def __post_init__(self):
        if self.max_time is not None:
            if isinstance(self.max_time, bool) or not isinstance(self.max_time, (int, float)) \
                    or not 0 < self.max_time < float("inf"):
                raise InputError(f"--max-time: expected a positive number of seconds, got {self.max_time!r}")
            self.reserve = 0.05 * self.max_time + 1.0

    def set_reference_cost(self, seconds: float) -> None:
        """One run over the held-out feeds took `seconds`: the final verification needs about 3."""
        if self.max_time is not None:
            self.reserve = 0.05 * self.max_time + 3 * seconds + 1.0

    def left(self) -> float:
        """Seconds left for work that can stop early (inf without a limit)."""
        if self.max_time is None:
            return float("inf")
        return self.max_time - self.reserve - (time.monotonic() - self.started)

    def expired(self) -> bool:
        return self.left() <= 0

    def check(self, what: str) -> None:
        """Raise OutOfTime(what) when no time is left; the step is recorded as skipped."""
        if self.expired():
            self.skip(what)
            raise OutOfTime(what)

    def skip(self, what: str) -> None:
        if what not in self.skipped:
            self.skipped.append(what)

    def summary(self) -> dict | None:
        """For the report: the limit, the time used and what was skipped (None without a limit)."""
        if self.max_time is None:
            return None
        return {"max_time_s": self.max_time, "used_s": round(time.monotonic() - self.started, 3),
                "reserve_s": round(self.reserve, 3), "skipped": list(self.skipped)}
