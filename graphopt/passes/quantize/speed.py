"""Latency check: keep only the quantized op families that make the model faster here.

Integer kernels are not faster everywhere. On AVX2 without VNNI, MatMulIntegerToFloat / QGemm
beat float MatMul, but a QLinearConv island between float activations (HardSwish, scalar
affines) costs a QuantizeLinear, a DequantizeLinear and NCHW<->NHWC transposes around it, so
PP-OCR det and cls ran slower with int8 convolutions than in float (measured:
docs/design-measurements.md). Whether the trade pays depends on the CPU (VNNI, AMX), the thread
count and the model, so it is measured rather than guessed:

    candidates = {all quantized} ∪ {one or more op families back in float} ∪ {float}
    latency(c) = median over interleaved blocks of ONNX Runtime runs (ORT_ENABLE_ALL, one feed)

and the fastest candidate that meets the accuracy budget wins; a quantized candidate must be at
least `margin` faster than the float model, else the model stays float (the stats say why).
"""

from __future__ import annotations

import itertools

from graphopt.bench import interleaved_p50
from graphopt.runtime import create_session, return_freed_memory

FAMILIES = {"conv": frozenset({"Conv", "ConvTranspose"}), "matmul": frozenset({"MatMul", "Gemm"})}


def family_units(plan) -> dict[str, frozenset[str]]:
    """Unit keys per op family present in the plan."""
    found = {}
    for family, ops in FAMILIES.items():
        keys = frozenset(k for k, u in plan.units.items() if u.node.op_type in ops)
        if keys:
            found[family] = keys
    return found


def choose_fastest(model, best, build, fits, feed, runs: int, threads: int, margin: float, progress=None,
                   provider: str = "cpu"):
    """(winning candidate or None for float, report). `fits(candidate) -> bool` checks the budget;
    the candidates are timed on `provider` (a graphopt.runtime.PROVIDERS key)."""
    families = family_units(best.plan)
    variants = {"int8": best}
    for size in range(1, len(families)):
        for dropped in itertools.combinations(sorted(families), size):
            disabled = best.disabled.union(*(families[f] for f in dropped))
            variants["int8 without " + "+".join(dropped)] = build(frozenset(disabled))
    sessions = [create_session(model, provider, "enable_all", threads)]
    sessions += [create_session(c.model, provider, "enable_all", threads) for c in variants.values()]
    try:
        times = interleaved_p50(sessions, feed, runs)
    finally:
        del sessions
        return_freed_memory()
    latency = {"float": round(times[0], 3)}
    latency.update({name: round(t, 3) for name, t in zip(variants, times[1:])})
    if progress:
        progress("quantize: latency " + ", ".join(f"{k} {v:.2f} ms" for k, v in latency.items()))
    report = {"latency_ms": latency, "runs": runs, "threads": threads or "default", "margin": margin,
              "provider": provider}
    for name in sorted(variants, key=lambda n: latency[n]):
        if latency[name] > latency["float"] * (1 - margin):
            break
        if name == "int8" or fits(variants[name]):
            return variants[name], {**report, "chosen": name}
    return None, {**report, "chosen": "float"}


def dropped_families(chosen: str) -> list[str]:
    return chosen.split(" without ", 1)[1].split("+") if " without " in chosen else []
