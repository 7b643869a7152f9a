"""Execution providers: unavailable ones are skipped with a reason; OpenVINO runs when installed.

The OpenVINO case runs in CI's second virtual environment, where onnxruntime-openvino
provides the `onnxruntime` module instead of onnxruntime.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import onnxruntime as ort
import pytest

import models
from graphopt import optimize
from graphopt.runtime import create_session, resolve_providers, run_feeds

HAS_OPENVINO = "OpenVINOExecutionProvider" in ort.get_available_providers()


def test_unavailable_providers_are_skipped_with_reason():
    choice = resolve_providers(["cpu", "tensorrt"])
    assert "cpu" in choice.usable
    if "TensorrtExecutionProvider" not in ort.get_available_providers():
        assert "not in this onnxruntime build" in choice.skipped["tensorrt"]


def test_default_provider_list_covers_known_eps():
    choice = resolve_providers(None)
    assert set(choice.usable) | set(choice.skipped) == {"cpu", "cuda", "tensorrt", "openvino", "dml"}


@pytest.mark.skipif(not HAS_OPENVINO, reason="onnxruntime-openvino is not the installed onnxruntime")
def test_openvino_ep_runs_and_matches_cpu():
    model = ir.serde.deserialize_model(models.cnn())
    feed = {"input": np.random.default_rng(0).standard_normal((1, 3, 32, 32)).astype(np.float32)}
    cpu = run_feeds(create_session(model, "cpu"), [feed])[0]["logits"]
    session = create_session(model, "openvino")
    assert session.get_providers()[0] == "OpenVINOExecutionProvider"
    ov = run_feeds(session, [feed])[0]["logits"]
    np.testing.assert_allclose(ov, cpu, rtol=1e-3, atol=1e-3)


@pytest.mark.skipif(not HAS_OPENVINO, reason="onnxruntime-openvino is not the installed onnxruntime")
def test_optimize_benchmarks_on_cpu_and_openvino():
    result = optimize(models.build_default(), bench=True, providers=["cpu", "openvino"], bench_runs=3)
    assert set(result.report["bench"]["input"]) == {"cpu", "openvino"}
    final = [p for p in result.report["passes"] if p["applied"]][-1]
    assert final["bench"]["openvino"]["p50_ms"] > 0


def test_provider_that_fails_on_the_model_is_recorded_not_fatal(monkeypatch):
    import graphopt.bench as bench
    from graphopt.errors import InputError

    real = bench.create_session

    def flaky(model, provider, *args):
        if provider == "openvino":
            raise InputError("ONNX Runtime cannot load the model: missing libopenvino.so")
        return real(model, "cpu", *args)

    monkeypatch.setattr(bench, "create_session", flaky)
    model = ir.serde.deserialize_model(models.mlp())
    feed = {"x": np.ones((1, 64), np.float32)}
    result = bench.bench_model(model, feed, bench.BenchConfig(("cpu", "openvino"), runs=2, warmup=0))
    assert result["cpu"]["p50_ms"] > 0
    assert result["openvino"] == {"error": "ONNX Runtime cannot load the model: missing libopenvino.so"}


def test_the_summary_speed_is_judged_on_the_input_and_final_model_timed_side_by_side():
    result = optimize(models.mlp(), passes="cleanup", bench=True, providers=["cpu"], bench_runs=5)
    pair = result.report["bench"]["final_vs_input"]["cpu"]
    assert {"p10_ms", "p50_ms", "p90_ms"} <= set(pair["input"]) and pair["final"]["runs"] >= 10
    compared = result.report["summary"]["speed_vs_input"]["cpu"]
    assert compared["timed"] == "interleaved"
    assert compared["ratio"] == pytest.approx(pair["input"]["p50_ms"] / pair["final"]["p50_ms"])
