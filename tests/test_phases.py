"""Per-phase wall times of a run (graphopt.phases) and the report's `timings`."""

import itertools

import pytest

import graphopt.phases as phases
from graphopt.phases import clocked, phase, timed


@pytest.fixture
def ticking(monkeypatch):
    """perf_counter advancing one second per call: every charge is a whole number of ticks."""
    ticks = itertools.count()
    monkeypatch.setattr(phases.time, "perf_counter", lambda: float(next(ticks)))


def test_time_is_charged_to_the_innermost_phase_only(ticking):
    with clocked() as clock:            # t=0 (clock start)
        with phase("search"):           # enter at 1
            with phase("session build"):  # search charged 2-1; enter at 2
                pass                    # leave at 3: session build 1
            with phase("session build"):  # search resumed at 3, charged 4-3; enter at 4
                pass                    # leave at 5
        table = clock.table()           # search left at 6 (charged 6-5); table at 7
    rows = {r["phase"]: r for r in table["phases"]}
    assert rows["session build"]["seconds"] == 2 and rows["session build"]["calls"] == 2
    assert rows["search"]["seconds"] == 3 and rows["search"]["inclusive"] == 5
    assert table["wall_s"] == 7 and rows["other"]["seconds"] == 2  # 0-1 and 6-7
    assert sum(r["seconds"] for r in table["phases"]) == table["wall_s"]


def test_recursive_phases_count_their_inclusive_time_once(ticking):
    @timed("walk")
    def walk(depth):
        if depth:
            walk(depth - 1)

    with clocked() as clock:
        walk(2)
        rows = {r["phase"]: r for r in clock.table()["phases"]}
    assert rows["walk"]["calls"] == 3 and rows["walk"]["inclusive"] == rows["walk"]["seconds"]


def test_without_a_clock_phases_do_nothing():
    assert phases.current_table() is None
    with phase("anything"):
        assert phases.current_table() is None


def test_a_nested_run_keeps_the_outer_clock():
    with clocked() as outer:
        with clocked() as inner:
            assert inner is outer


def test_the_report_says_where_the_time_went(tmp_path):
    from graphopt.api import optimize
    from models.default import default_model_path

    result = optimize(default_model_path(), tmp_path / "out.onnx")
    timings = result.report["timings"]
    names = {r["phase"] for r in timings["phases"]}
    assert {"load", "reference outputs", "verification", "inference", "session build", "compare outputs",
            "pass cleanup", "other"} <= names
    assert sum(r["seconds"] for r in timings["phases"]) == pytest.approx(timings["wall_s"], abs=0.01)
