"""`--max-time` (graphopt.deadline): the best result within the time, and what was skipped."""

import json

import pytest

import graphopt.deadline as deadline_module
from graphopt import auto
from graphopt.api import optimize
from graphopt.cli import main
from graphopt.deadline import Deadline, OutOfTime
from graphopt.errors import InputError, VerificationError
from models import default_model_path


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


@pytest.fixture
def clock(monkeypatch):
    fake = Clock()
    monkeypatch.setattr(deadline_module.time, "monotonic", fake)
    return fake


def test_the_reserve_holds_back_time_for_the_final_verification(clock):
    d = Deadline(100)
    assert d.left() == pytest.approx(100 - 5 - 1)
    d.set_reference_cost(2.0)  # one held-out run: the final verification needs about three
    assert d.left() == pytest.approx(100 - 5 - 6 - 1)
    clock.now += 87.5
    assert not d.expired()
    clock.now += 1
    assert d.expired()
    with pytest.raises(OutOfTime) as info:
        d.check("quantize: more candidates")
    assert info.value.what == "quantize: more candidates"
    d.skip("quantize: more candidates")
    assert d.summary()["skipped"] == ["quantize: more candidates"]


def test_no_limit_never_expires(clock):
    d = Deadline()
    clock.now += 1e9
    assert not d.expired() and d.summary() is None
    d.check("anything")


@pytest.mark.parametrize("value", [0, -1, float("inf"), float("nan"), True, "10"])
def test_bad_limits_are_refused(value):
    with pytest.raises(InputError, match="--max-time"):
        Deadline(value)


def test_the_cli_refuses_a_bad_limit_in_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        main(["optimize", str(default_model_path()), str(tmp_path / "o.onnx"), "--max-time", "0"])
    err = capsys.readouterr().err
    assert info.value.code == 2 and "--max-time" in err and "positive number of seconds" in err


def test_a_lossy_pass_past_the_deadline_is_skipped_and_named(tmp_path):
    """The reserve alone exceeds a 0.5 s limit: every lossy pass is skipped, the lossless ones run,
    and the model is still verified and written."""
    report = tmp_path / "r.json"
    result = optimize(default_model_path(), tmp_path / "o.onnx", recipe="int8", calib="synthetic", max_time=0.5,
                      reports=[report])
    quantize = next(p for p in result.report["passes"] if p["name"] == "quantize")
    assert not quantize["applied"] and "no time left (--max-time)" in quantize["skipped"]
    assert any(p["applied"] for p in result.report["passes"])  # the lossless clean-up still ran
    saved = json.loads(report.read_text())["max_time"]
    assert saved["max_time_s"] == 0.5 and "quantize: the whole pass" in saved["skipped"]


def test_auto_skips_the_chains_left_when_time_is_up():
    calls = []
    expired = Deadline(1000)
    expired.left = lambda: 0.0  # out of time from the start
    chains = [("a", [], [], ()), ("b", [], ["x"], ()), ("c", [], ["y"], ())]

    def run_chain(prefix, tail):
        calls.append(tail)
        raise VerificationError("this chain failed")  # a trial that ran

    trials = auto.search(chains, run_chain, lambda message: None, expired)
    assert len(calls) == 1  # the first chain always runs: there is a result to return
    assert [t.error for t in trials[1:]] == ["skipped: no time left (--max-time)"] * 2
    assert expired.skipped == ["auto: chain b", "auto: chain c"]
