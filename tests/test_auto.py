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
    assert chains == [("lossless", ["cleanup"], [], ())]


def test_candidate_chains_raise_the_opset_before_the_cleanup():
    chains = {name: (prefix, tail) for name, prefix, tail, _ in
              auto.candidate_chains(("cleanup",), {"cleanup", "opset", "quantize"})}
    assert chains["modern"] == (["opset:target=20", "cleanup"], [])
    assert chains["int8 percentile"] == (["opset:target=20", "cleanup"], ["quantize:method=percentile"])


def test_auto_on_the_default_model_is_deterministic(monkeypatch, tmp_path):
    monkeypatch.setattr(auto, "CANDIDATES", (("lossless", (), ()), ("modern", (auto.MODERN,), ())))
    runs = [optimize("models/default.onnx", tmp_path / f"{i}.onnx", recipe="auto", goal="size",
                     budget={"cosine": 0.999}, bench_runs=5) for i in range(2)]
    first, second = (r.report["auto"] for r in runs)
    assert first["chosen"] == second["chosen"] and first["pareto"] == second["pareto"]
    assert [t["bytes"] for t in first["tried"]] == [t["bytes"] for t in second["tried"]]
    assert all(t["meets_budget"] and t["cosine"] >= 0.999 for t in first["tried"])
    assert "> " in first["table"] or ">*" in first["table"]
    assert (tmp_path / "0.onnx").exists()


def test_candidates_with_the_same_prefix_share_its_run(monkeypatch, tmp_path):
    from graphopt.manager import PassManager

    monkeypatch.setattr(auto, "CANDIDATES", (("lossless", (), ()), ("prune", ("prune:sparsity=0.2",), ()),
                                             ("prune more", ("prune:sparsity=0.3",), ())))
    runs = []
    original = PassManager.run

    def counting_run(self, model, reference=None, previous=None, **kwargs):
        runs.append([p.name for p in self.passes])
        return original(self, model, reference, previous, **kwargs)

    monkeypatch.setattr(PassManager, "run", counting_run)
    result = optimize("models/default.onnx", None, recipe="auto", budget={"cosine": 0.9}, bench_runs=5,
                      calib="synthetic")
    assert len(runs) == 3 and runs[1:] == [["prune"], ["prune"]]  # the lossless prefix ran once
    tried = {t["name"]: t for t in result.report["auto"]["tried"]}
    assert tried["prune more"]["passes"][-1] == "prune:sparsity=0.3"
    assert tried["lossless"]["cosine"] > 0.99999 > tried["prune more"]["cosine"]  # measured vs the input
    chosen = result.report["auto"]["chosen"]
    assert [p["name"] for p in result.report["passes"]][-1] == ("cleanup" if chosen == "lossless" else "prune")


def test_size_goal_turns_the_speed_gates_off():
    chains = {name: tail for name, _, tail, _ in
              auto.candidate_chains(("cleanup",), {"cleanup", "opset", "quantize", "svd"}, goal="size")}
    assert chains["int8 minmax"] == ["quantize:method=minmax;speed_check=false"]
    assert chains["svd budget"] == ["svd:select=budget;speed_check=false"]


def test_a_combination_is_skipped_when_a_part_did_not_pay(monkeypatch):
    """quantize measured slower than float (faked): the other methods and the int8 chain are
    skipped, and the Pareto print says why."""
    import graphopt.passes.quantize.speed as quant_speed

    monkeypatch.setattr(quant_speed, "interleaved_timings", lambda sessions, feed, runs, block, settled=None: [
        {"p50_ms": t, "blocks": [t] * 10} for t in [1.0] + [2.0] * (len(sessions) - 1)])
    monkeypatch.setattr(auto, "CANDIDATES", (
        ("lossless", (), ()),
        ("int8 percentile", ("quantize:method=percentile;cache_dir=off",), ()),
        ("int8 minmax", ("quantize:method=minmax;cache_dir=off",), ("int8 percentile",)),
        ("prune", ("prune:sparsity=0.2",), ()),
        ("prune + int8", ("prune:sparsity=0.2", "quantize:cache_dir=off"), ("prune", "int8 percentile"))))
    result = optimize("models/default.onnx", None, recipe="auto", budget={"cosine": 0.9}, bench_runs=5,
                      calib="synthetic")
    tried = {t["name"]: t for t in result.report["auto"]["tried"]}
    assert [n for n, t in tried.items() if t["skipped"]] == ["int8 minmax", "prune + int8"]
    assert "quantize not applied: int8 measured slower than float" in tried["int8 minmax"]["error"]
    assert tried["prune"]["meets_budget"] and not tried["prune"]["skipped"]
    assert tried["int8 percentile"]["same_as"] == "lossless"  # timed once, never chosen over lossless
    assert tried["int8 percentile"]["p50_ms"] == tried["lossless"]["p50_ms"]
    assert "skip" in result.report["auto"]["table"]


def test_other_calibration_methods_only_when_the_first_needed_fallbacks():
    def quantized(fallbacks):
        trial = _trial("int8 percentile")
        trial.spec, trial.tail = ["cleanup", "quantize"], 1
        stats = {"budget": {"fallbacks": fallbacks}}
        trial.result = type("R", (), {"report": {"passes": [{"name": "cleanup", "applied": True, "stats": {}},
                                                           {"name": "quantize", "applied": True, "stats": stats}]}})
        return trial

    assert auto.why_not_paid("int8 percentile", [quantized([])]) is None
    assert "no node back in float" in auto.why_not_paid("int8 percentile|fallbacks", [quantized([])])
    assert auto.why_not_paid("int8 percentile|fallbacks", [quantized([{"node": "n1"}])]) is None


def test_dynamic_int8_and_int4_weights_are_candidates_with_the_targets_options():
    from graphopt.targets import get_target, with_target_options

    registered = {"cleanup", "opset", "quantize", "quantize-dynamic", "quantize-weights"}
    latency = {name: tail for name, _, tail, _ in auto.candidate_chains(("cleanup",), registered)}
    assert latency["int8 dynamic"] == ["quantize-dynamic"] and "int4 weights" not in latency
    ort = get_target("ort")
    size = {name: tail for name, _, tail, _ in
            auto.candidate_chains(("cleanup",), registered, "size", lambda item: with_target_options(item, ort))}
    assert size["int8 dynamic"] == ["quantize-dynamic:form=ort;speed_check=false"]
    assert size["int4 weights"] == ["quantize-weights:form=matmulnbits"]


def test_the_progress_line_gives_time_spent_and_an_upper_bound_left():
    from graphopt.auto import Trial, _eta

    trials = [Trial("a", [], 0, seconds=10.0), Trial("b", [], 1, seconds=30.0),
              Trial("c", [], 1, skipped=True, seconds=0.0)]
    assert _eta([], 5) == ""
    assert _eta(trials, 3) == " (40 s so far, at most about 60 s left)"
