"""Latency check of `quantize-dynamic`: keep int8 only where it is faster here.

Integer kernels are not faster on every CPU (without VNNI or on small matrices the quantization
of each activation at run time can cost more than it saves), so it is measured:
    latency(m) = median over interleaved blocks of ONNX Runtime runs (CPU EP, ORT_ENABLE_ALL,
                 one feed), for m in {float, int8}
and the int8 model is kept only if latency(int8) <= (1 - margin)·latency(float).
"""

from __future__ import annotations

import onnx_ir as ir

from graphopt.bench import interleaved_p50
from graphopt.runtime import create_session, return_freed_memory


def compare_latency(float_model: ir.Model, candidate: ir.Model, feed: dict, runs: int, threads: int,
                    margin: float) -> dict:
    """{"latency_ms": {"float", "int8"}, "faster": bool, ...} for the two models on `feed`."""
    sessions = [create_session(m, "cpu", "enable_all", threads) for m in (float_model, candidate)]
    try:
        plain, quantized = interleaved_p50(sessions, feed, runs)
    finally:
        del sessions
        return_freed_memory()
    return {"measured": True, "latency_ms": {"float": round(plain, 3), "int8": round(quantized, 3)},
            "faster": quantized <= plain * (1 - margin), "runs": runs, "threads": threads or "default",
            "margin": margin}


__all__ = ["compare_latency"]
