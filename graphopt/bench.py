"""Latency benchmarking on ONNX Runtime execution providers.

Each measurement builds a session for (provider, optimization level), runs `warmup`
untimed iterations, then `runs` timed ones on the same feed, and reports the median (p50)
with the 10th and 90th percentiles in milliseconds. Both ORT_DISABLE_ALL (the graph as
written) and ORT_ENABLE_ALL (what deployments run) are measured, so a report shows what
graphopt adds beyond ONNX Runtime's own optimizer.

The p10-p90 range is the spread a report shows next to each median: two timings whose ranges
overlap are called "within noise" (`within_noise`), so a small model's run-to-run jitter is not
read as a speed-up or a slow-down. That range is one session's jitter only; the same model timed
in a fresh session can land outside it, so medians closer than NOISE_FLOOR are noise too.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from graphopt.errors import InputError
from graphopt.limits import MAX_RUNS
from graphopt.runtime import create_session, return_freed_memory
from graphopt.phases import timed

LEVELS = ("enable_all", "disable_all")
NOISE_FLOOR = 0.05  # medians this close (relative) are never called a change


@dataclass(frozen=True)
class BenchConfig:
    providers: tuple[str, ...] = ("cpu",)
    runs: int = 20
    warmup: int = 3
    threads: int = 0

    def __post_init__(self):
        if not _is_int(self.runs) or not 1 <= self.runs <= MAX_RUNS:
            raise InputError(f"bench runs must be an integer from 1 to {MAX_RUNS}, got {self.runs!r}")
        if not _is_int(self.warmup) or self.warmup < 0:
            raise InputError(f"bench warmup runs must be an integer >= 0, got {self.warmup!r}")
        if not _is_int(self.threads) or self.threads < 0:
            raise InputError(f"threads must be an integer >= 0 (0: ONNX Runtime's default), got {self.threads!r}")


def _is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def time_session(session, feed: dict[str, np.ndarray], runs: int, warmup: int) -> dict[str, float]:
    """p10/p50/p90 latency in ms of `session.run` on one feed."""
    for _ in range(warmup):
        session.run(None, feed)
    samples = np.empty(runs)
    for i in range(runs):
        start = time.perf_counter()
        session.run(None, feed)
        samples[i] = time.perf_counter() - start
    return {"p50_ms": float(np.median(samples) * 1e3), "p90_ms": float(np.percentile(samples, 90) * 1e3),
            "p10_ms": float(np.percentile(samples, 10) * 1e3), "runs": runs}


def spread_ms(timing: dict) -> tuple[float, float, float]:
    """(p10, p50, p90) of a `time_session` result; a missing percentile (older reports have no
    p10) takes the median, so the range only narrows."""
    p50 = timing["p50_ms"]
    return timing.get("p10_ms", p50), p50, timing.get("p90_ms", p50)


def within_noise(a: dict, b: dict, floor: float = NOISE_FLOOR) -> bool:
    """Whether two `time_session` results differ by no more than noise: their p10-p90 ranges
    overlap, or their medians are within `floor` of each other (relative)."""
    a10, a50, a90 = spread_ms(a)
    b10, b50, b90 = spread_ms(b)
    return (a10 <= b90 and b10 <= a90) or abs(a50 - b50) <= floor * min(a50, b50)


def compare_timings(base: dict, new: dict) -> dict:
    """`new` against `base`: speed ratio (base p50 / new p50, >1 is faster), both [p10, p50, p90]
    and whether the difference is within noise."""
    return {"ratio": base["p50_ms"] / new["p50_ms"], "within_noise": within_noise(base, new),
            "base_ms": list(spread_ms(base)), "new_ms": list(spread_ms(new))}


def bench_model(model: ir.Model, feed: dict[str, np.ndarray], config: BenchConfig) -> dict[str, dict]:
    """`{provider: {"p50_ms", "p90_ms", "p10_ms" (ENABLE_ALL), "disable_all": {the same}}}`.

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
    """Median ms of each session, timed in alternating blocks (`interleaved_timings`)."""
    return [t["p50_ms"] for t in interleaved_timings(sessions, feed, runs, block, warmup)]


@timed("timed runs")
def interleaved_timings(sessions: list, feed: dict[str, np.ndarray], runs: int, block: int = 5,
                        warmup: int = 3, settled=None) -> list[dict[str, float]]:
    """p10/p50/p90 ms of each session, timed in alternating blocks so machine noise hits all alike.

    Each block starts after a short pause (`BLOCK_PAUSE_S`): the worker threads of the session
    timed just before keep spinning for a while and steal cores. Without the pause a fast (int8)
    model's median came out well above what it gets when timed alone, while the float model's
    barely moved, so every faster variant looked slower than it is; with the pause it matches
    its time alone (measured: docs/design-measurements.md).

    `settled(timings) -> bool`, when given, is asked after every round of blocks (the summaries
    so far, as returned): True stops before `runs`, so a clear decision costs a few blocks and
    only a close one the full count."""
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
        if settled is not None and len(samples[0]) < runs and settled(_summaries(samples, block)):
            break
    return _summaries(samples, block)


def _summaries(samples: list[list[float]], block: int) -> list[dict[str, float]]:
    return [{"p50_ms": float(np.median(t)), "p10_ms": float(np.percentile(t, 10)),
             "p90_ms": float(np.percentile(t, 90)), "runs": len(t),
             "blocks": [float(np.median(t[i:i + block])) for i in range(0, len(t), block)]} for t in samples]


def paired_verdict(base: dict, new: dict, margin: float) -> dict:
    """Whether `new` is faster or slower than `base` (two `interleaved_timings` results) beyond
    noise. Blocks timed back to back see the same machine state, so the ratio new/base is taken
    block by block: "faster" when even its 75th percentile is under 1 - margin, "slower" when its
    25th percentile is over 1 + margin, else "within noise". A burst of load that hits a few
    blocks moves a few ratios, not the quartiles; a load that flips the order of the medians
    (seen on a shared 2-core machine: int8 21 ms vs float 13 ms, then 13 ms vs 22 ms) shows as
    quartiles on both sides of 1. Fewer than 3 block pairs are always "within noise"."""
    ratios = np.array(new["blocks"]) / np.maximum(np.array(base["blocks"][:len(new["blocks"])]), 1e-9)
    q25, q50, q75 = (float(v) for v in np.percentile(ratios, [25, 50, 75])) if len(ratios) else (1.0,) * 3
    if len(ratios) >= 3 and q75 < 1 - margin:
        verdict = "faster"
    elif len(ratios) >= 3 and q25 > 1 + margin:
        verdict = "slower"
    else:
        verdict = "within noise"
    return {"verdict": verdict, "ratio": round(q50, 3), "ratio_q25_q75": [round(q25, 3), round(q75, 3)],
            "pairs": int(len(ratios))}


def bench_pair(before: ir.Model, after: ir.Model, feed: dict[str, np.ndarray],
               config: BenchConfig) -> dict[str, dict]:
    """`{provider: {"input": timing, "final": timing}}` at ORT_ENABLE_ALL, the two models timed
    in alternating blocks in one run: what the summary's speed-up is judged on (timings taken
    minutes apart, at the start and the end of a run, differ by the machine's drift)."""
    result = {}
    for provider in config.providers:
        try:
            sessions = [create_session(m, provider, "enable_all", config.threads) for m in (before, after)]
            first, second = interleaved_timings(sessions, feed, max(config.runs, 10), warmup=config.warmup)
        except Exception as exc:  # noqa: BLE001  (ORT raises several private types)
            result[provider] = {"error": str(exc).splitlines()[0]}
            continue
        finally:
            sessions = None
            return_freed_memory()
        result[provider] = {"input": first, "final": second}
    return result
