"""MatMulNBits' accuracy_level, chosen by measurement on the machine the pass runs on.

accuracy_level 0 (the attribute absent) multiplies in float32, the weight blocks dequantized on
the fly; 4 rounds the activation A to int8 per block as well and uses integer dot products
(VNNI where the CPU has them). 4 adds A's rounding error and is faster only where the CPU's
integer kernels are. With accuracy_level = -1 the pass times its fully quantized model both ways
(ONNX Runtime, ORT_ENABLE_ALL, one held-out feed, the two sessions in interleaved blocks:
graphopt.bench.interleaved_p50) and takes 4 if it beats 0 by at least `margin`, before the budget
search, so that the search measures the level the result will run at (level 4's extra error may
cost a few more int8 layers).
"""

from __future__ import annotations

import onnx_ir as ir

from graphopt.bench import interleaved_p50
from graphopt.runtime import create_session, return_freed_memory

NBITS = "MatMulNBits"


def with_accuracy_level(model: ir.Model, level: int) -> ir.Model:
    """A copy of `model` whose MatMulNBits nodes compute at `level` (0: the attribute absent)."""
    copy = model.clone()
    for node in copy.graph:
        if node.op_type != NBITS:
            continue
        node.attributes.pop("accuracy_level", None)
        if level > 0:
            node.attributes["accuracy_level"] = ir.AttrInt64("accuracy_level", level)
    return copy


def choose_accuracy_level(model: ir.Model, feed: dict, runs: int, margin: float) -> tuple[int, dict]:
    """4 if `model` (MatMulNBits at level 0) runs faster at level 4 by `margin`, else 0; and the timings."""
    fast = with_accuracy_level(model, 4)
    sessions = [create_session(m, "cpu", "enable_all") for m in (model, fast)]
    try:
        exact_ms, fast_ms = interleaved_p50(sessions, feed, runs)
    finally:
        del sessions
        return_freed_memory()
    report = {"latency_ms": {"0": round(exact_ms, 3), "4": round(fast_ms, 3)}, "margin": margin}
    if fast_ms < exact_ms * (1 - margin):
        return 4, {**report, "accuracy_level": 4}
    return 0, {**report, "accuracy_level": 0, "reason": "accuracy_level 4 is not faster here"}
