"""--recipe auto: candidates as data, budget-respecting choice, Pareto front, determinism."""

from __future__ import annotations

import pytest

from graphopt import auto, optimize
from graphopt.errors import VerificationError


def _trial(name, ok=True, cosine=0.995, size=100, ms=10.0):
    t = auto.Trial(name, [name], ok=ok, cosine=cosine, bytes=size, ms=ms)
    return t


def test_choose_fastest_within_budget_and_breaks_ties_by_size():
    trials = [_trial("a", ms=10.0, size=100), _trial("b", ms=9.9, size=50), _trial("c", ok=False, ms=1.0),
              _trial("d", ms=5.0, size=500)]
    assert auto.choose(trials, "latency").name == "d"
    trials[3].ms = 9.8  # within 3% of b: the smaller one wins
    assert auto.choose(trials, "latency").name == "b"
    assert auto.choose(trials, "size").name == "b"


def test_no_candidate_in_budget_is_a_verification_error():
    with pytest.raises(VerificationError, match="no candidate meets the budget"):
        auto.choose([_trial("a", ok=False, cosine=0.5)], "latency")


def test_pareto_front_drops_dominated_and_failed_trials():
    trials = [_trial("fast", cosine=0.991, ms=5), _trial("accurate", cosine=0.999, ms=9),
              _trial("dominated", cosine=0.990, ms=9.5), _trial("failed", ok=False, ms=1)]
    front = auto.pareto(trials, lambda t: t.ms)
    assert [t.name for t in front] == ["fast", "accurate"]


def test_candidate_chains_skip_unregistered_passes():
    chains = auto.candidate_chains(("cleanup",), {"cleanup"})
    assert chains == [("lossless", ["cleanup"])]


def test_candidate_chains_raise_the_opset_before_the_cleanup():
    chains = dict(auto.candidate_chains(("cleanup",), {"cleanup", "opset", "quantize"}))
    assert chains["modern"] == ["opset:target=20", "cleanup"]
    assert chains["int8 percentile"] == ["opset:target=20", "cleanup", "quantize:method=percentile"]


def test_auto_on_the_default_model_is_deterministic(monkeypatch, tmp_path):
    monkeypatch.setattr(auto, "CANDIDATES", (("lossless", ()), ("modern", (auto.MODERN,))))
    runs = [optimize("models/default.onnx", tmp_path / f"{i}.onnx", recipe="auto", goal="size",
                     budget={"cosine": 0.999}, bench_runs=5) for i in range(2)]
    first, second = (r.report["auto"] for r in runs)
    assert first["chosen"] == second["chosen"] and first["pareto"] == second["pareto"]
    assert [t["bytes"] for t in first["tried"]] == [t["bytes"] for t in second["tried"]]
    assert all(t["meets_budget"] and t["cosine"] >= 0.999 for t in first["tried"])
    assert "> " in first["table"] or ">*" in first["table"]
    assert (tmp_path / "0.onnx").exists()
