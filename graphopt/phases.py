"""Where a run's wall time goes, phase by phase, for the report's `timings`.

A run installs a `PhaseClock` (`clocked`); code marks what it does with `with phase(name):`
(reading data, reference outputs, calibration, building candidates, ORT session builds,
inference, comparing outputs, timed runs, verification, saving). Time is charged to the
innermost open phase only (exclusive time), so the phases add up to the run's wall time and a
session build inside a budget search is counted as a session build, not twice. Outside a run (no
clock installed) `phase` costs one context-variable lookup.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import time
from dataclasses import dataclass, field
from typing import Iterator

_CLOCK: contextvars.ContextVar[PhaseClock | None] = contextvars.ContextVar("graphopt_phase_clock", default=None)


@dataclass
class PhaseClock:
    started: float = field(default_factory=lambda: time.perf_counter())
    seconds: dict[str, float] = field(default_factory=dict)  # exclusive
    inclusive: dict[str, float] = field(default_factory=dict)  # with the phases nested inside
    calls: dict[str, int] = field(default_factory=dict)
    _stack: list[list] = field(default_factory=list)  # [name, time the phase last resumed, entered]

    def enter(self, name: str) -> None:
        now = time.perf_counter()
        if self._stack:
            self._charge(self._stack[-1], now)
        self._stack.append([name, now, now])
        self.calls[name] = self.calls.get(name, 0) + 1

    def leave(self) -> None:
        now = time.perf_counter()
        entry = self._stack.pop()
        self._charge(entry, now)
        if not any(open_[0] == entry[0] for open_ in self._stack):  # recursion: counted once
            self.inclusive[entry[0]] = self.inclusive.get(entry[0], 0.0) + now - entry[2]
        if self._stack:
            self._stack[-1][1] = now

    def _charge(self, entry: list, now: float) -> None:
        self.seconds[entry[0]] = self.seconds.get(entry[0], 0.0) + now - entry[1]

    def table(self) -> dict:
        """{"wall_s", "phases": [{"phase", "seconds" (exclusive), "inclusive", "calls"}, ...]
        slowest first}; time outside every marked phase is "other"."""
        wall = time.perf_counter() - self.started
        rows = [{"phase": name, "seconds": round(s, 3), "inclusive": round(self.inclusive.get(name, s), 3),
                 "calls": self.calls[name]}
                for name, s in sorted(self.seconds.items(), key=lambda kv: -kv[1])]
        other = max(wall - sum(self.seconds.values()), 0.0)
        rows.append({"phase": "other", "seconds": round(other, 3), "inclusive": round(other, 3), "calls": 1})
        return {"wall_s": round(wall, 3), "phases": rows}


@contextlib.contextmanager
def phase(name: str) -> Iterator[None]:
    """Charge the time inside to `name` (module docstring)."""
    clock = _CLOCK.get()
    if clock is None:
        yield
        return
    clock.enter(name)
    try:
        yield
    finally:
        clock.leave()


@contextlib.contextmanager
def clocked() -> Iterator[PhaseClock]:
    """Install a fresh clock for the run inside (an enclosing run's clock is kept)."""
    existing = _CLOCK.get()
    if existing is not None:
        yield existing
        return
    clock = PhaseClock()
    token = _CLOCK.set(clock)
    try:
        yield clock
    finally:
        _CLOCK.reset(token)


def timed(name: str):
    """Decorator: every call of the function is charged to phase `name`."""
    def wrap(fn):
        @functools.wraps(fn)
        def inner(*args, **kwargs):
            with phase(name):
                return fn(*args, **kwargs)
        return inner
    return wrap


def clocked_run(fn):
    """Decorator: the function runs under its own clock (`clocked`); `current_table` reads it."""
    @functools.wraps(fn)
    def inner(*args, **kwargs):
        with clocked():
            return fn(*args, **kwargs)
    return inner


def current_table() -> dict | None:
    """The installed clock's table so far (None outside a clocked run)."""
    clock = _CLOCK.get()
    return None if clock is None else clock.table()
