"""Latency benchmarking on ONNX Runtime execution providers.

Each measurement builds a session for (provider, optimization level), runs `warmup`
untimed iterations, then `runs` timed ones on the same feed, and reports the median (p50)
and 90th percentile in milliseconds. Both ORT_DISABLE_ALL (the graph as written) and
ORT_ENABLE_ALL (what deployments run) are measured, so a report shows what graphopt adds
beyond ONNX Runtime's own optimizer.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from graphopt.runtime import create_session, return_freed_memory

LEVELS = ("enable_all", "disable_all")


@dataclass(frozen=True)
class BenchConfig:
    providers: tuple[str, ...] = ("cpu",)
    runs: int = 20
    warmup: int = 3
    threads: int = 0

    def __post_init__(self):
        if self.runs < 1 or self.warmup < 0:
            raise ValueError("bench runs must be >= 1 and warmup >= 0")


def time_session(session, feed: dict[str, np.ndarray], runs: int, warmup: int) -> dict[str, float]:
    """p50/p90 latency in ms of `session.run` on one feed."""
    for _ in range(warmup):
        session.run(None, feed)
    samples = np.empty(runs)
    for i in range(runs):
        start = time.perf_counter()
        session.run(None, feed)
        samples[i] = time.perf_counter() - start
    return {"p50_ms": float(np.median(samples) * 1e3), "p90_ms": float(np.percentile(samples, 90) * 1e3),
            "runs": runs}


def bench_model(model: ir.Model, feed: dict[str, np.ndarray], config: BenchConfig) -> dict[str, dict]:
    """`{provider: {"p50_ms", "p90_ms" (ENABLE_ALL), "disable_all": {"p50_ms", "p90_ms"}}}`.

    A provider that is installed but cannot take this model (missing libraries, unsupported
    ops) gets `{"error": reason}` instead of numbers; the other providers still run.
    """
    result = {}
    for provider in config.providers:
        per_level = {}
        try:
            for level in LEVELS:
                session = create_session(model, provider, level, config.threads)
                per_level[level] = time_session(session, feed, config.runs, config.warmup)
                del session
                return_freed_memory()
        except Exception as exc:  # noqa: BLE001  (ORT raises several private types)
            result[provider] = {"error": str(exc).splitlines()[0]}
            continue
        result[provider] = {**per_level["enable_all"], "disable_all": per_level["disable_all"]}
    return result


BLOCK_PAUSE_S = 0.02  # see interleaved_p50


def interleaved_p50(sessions: list, feed: dict[str, np.ndarray], runs: int, block: int = 5,
                    warmup: int = 3) -> list[float]:
    """Median ms of each session, timed in alternating blocks so machine noise hits all alike.

    Each block starts after a short pause (`BLOCK_PAUSE_S`): the worker threads of the session
    timed just before keep spinning for a while and steal cores. Without the pause a fast (int8)
    model's median came out well above what it gets when timed alone, while the float model's
    barely moved, so every faster variant looked slower than it is; with the pause it matches
    its time alone (measured: docs/design-measurements.md)."""
    for session in sessions:
        for _ in range(warmup):
            session.run(None, feed)
    samples: list[list[float]] = [[] for _ in sessions]
    while len(samples[0]) < runs:
        for session, times in zip(sessions, samples):
            if len(sessions) > 1:
                time.sleep(BLOCK_PAUSE_S)
            for _ in range(block):
                start = time.perf_counter()
                session.run(None, feed)
                times.append((time.perf_counter() - start) * 1e3)
    return [float(np.median(times)) for times in samples]
