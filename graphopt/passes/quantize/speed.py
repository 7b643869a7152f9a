"""Latency check: keep only the quantized op families that make the model faster here.

Integer kernels are not faster everywhere. On AVX2 without VNNI, MatMulIntegerToFloat / QGemm
beat float MatMul, but a QLinearConv island between float activations (HardSwish, scalar
affines) costs a QuantizeLinear, a DequantizeLinear and NCHW<->NHWC transposes around it, so
PP-OCR det and cls ran slower with int8 convolutions than in float (measured:
docs/design-measurements.md). Whether the trade pays depends on the CPU (VNNI, AMX), the thread
count and the model, so it is measured rather than guessed:

    candidates = {all quantized} ∪ {one or more op families back in float} ∪ {float}
    latency(c) = median over interleaved blocks of ONNX Runtime runs (ORT_ENABLE_ALL, one feed)

Each candidate is compared with float block by block (graphopt.bench.paired_verdict: faster,
slower or within noise, with `margin`). The timing stops before `runs` once the decision has
settled (`Settled`): from MIN_PAIRS block pairs on, when every candidate is called faster or
slower than float or is level with it (block-ratio quartiles half a margin short of a verdict),
and the fastest of those called faster is faster than the next, at two checks in a row. A close
call (a ratio near the margin, two faster candidates near each other) runs the full count. The
fastest candidate measurably faster that meets the accuracy budget wins; when none is, the most
quantized candidate within noise of float is kept (and the stats say it is not faster); the
model stays float only when every quantized candidate is measurably slower (the stats say why).
"""

from __future__ import annotations

import itertools

from graphopt.bench import interleaved_timings, paired_verdict
from graphopt.runtime import create_session, return_freed_memory
from graphopt.phases import timed

FAMILIES = {"conv": frozenset({"Conv", "ConvTranspose"}), "matmul": frozenset({"MatMul", "Gemm"})}


def family_units(plan) -> dict[str, frozenset[str]]:
    """Unit keys per op family present in the plan."""
    found = {}
    for family, ops in FAMILIES.items():
        keys = frozenset(k for k, u in plan.units.items() if u.node.op_type in ops)
        if keys:
            found[family] = keys
    return found


SPEED_BLOCK = 3  # runs per interleaved block: speed_runs=30 gives 10 block pairs to compare
MIN_PAIRS = 5  # block pairs before the timing may stop early (Settled)


class Settled:
    """`interleaved_timings`' stop test for [float, candidates...] timings: every candidate's
    verdict against float decided or a robust "within noise" (the quartile that would call it
    faster, or slower, at least half the margin short of doing so), the fastest "faster" one
    also faster than the runner-up "faster" one, and the same verdicts as at the previous check."""

    def __init__(self, margin: float):
        self.margin, self.previous = margin, None

    def __call__(self, timings: list[dict]) -> bool:
        if len(timings[0]["blocks"]) < MIN_PAIRS:
            return False
        verdicts = [paired_verdict(timings[0], t, self.margin) for t in timings[1:]]
        half = self.margin / 2
        robust = all(v["verdict"] != "within noise"
                     or v["ratio_q25_q75"][0] <= 1 + half and v["ratio_q25_q75"][1] >= 1 - half for v in verdicts)
        faster = sorted((t["p50_ms"], i) for i, (t, v) in enumerate(zip(timings[1:], verdicts))
                        if v["verdict"] == "faster")
        ordered = len(faster) < 2 or paired_verdict(timings[1 + faster[1][1]], timings[1 + faster[0][1]],
                                                    self.margin)["verdict"] == "faster"
        names = tuple(v["verdict"] for v in verdicts)
        stable, self.previous = names == self.previous, names
        return robust and ordered and stable


@timed("speed check")
def choose_fastest(model, best, build, fits, feed, runs: int, threads: int, margin: float, progress=None,
                   provider: str = "cpu"):
    """(winning candidate or None for float, report). `fits(candidate) -> bool` checks the budget;
    the candidates are timed on `provider` (a graphopt.runtime.PROVIDERS key) and each compared
    with float block by block (graphopt.bench.paired_verdict)."""
    families = family_units(best.plan)
    variants = {"int8": best}
    for size in range(1, len(families)):
        for dropped in itertools.combinations(sorted(families), size):
            disabled = best.disabled.union(*(families[f] for f in dropped))
            variants["int8 without " + "+".join(dropped)] = build(frozenset(disabled))
    sessions = [create_session(model, provider, "enable_all", threads)]
    sessions += [create_session(c.model, provider, "enable_all", threads) for c in variants.values()]
    try:
        timings = interleaved_timings(sessions, feed, runs, block=SPEED_BLOCK, settled=Settled(margin))
    finally:
        del sessions
        return_freed_memory()
    latency = {"float": round(timings[0]["p50_ms"], 3)}
    latency.update({name: round(t["p50_ms"], 3) for name, t in zip(variants, timings[1:])})
    verdicts = {name: paired_verdict(timings[0], t, margin) for name, t in zip(variants, timings[1:])}
    if progress:
        progress("quantize: latency " + ", ".join(f"{k} {v:.2f} ms" for k, v in latency.items()))
    report = {"latency_ms": latency, "vs_float": verdicts, "runs": timings[0].get("runs", runs), "max_runs": runs,
              "threads": threads or "default", "margin": margin, "provider": provider}
    name = _pick(variants, latency, verdicts, fits)
    if name is None:
        return None, {**report, "chosen": "float"}
    if verdicts[name]["verdict"] == "within noise":
        report["note"] = f"{name} within noise of float: kept (smaller), not called faster"
    return variants[name], {**report, "chosen": name}


def _pick(variants: dict, latency: dict, verdicts: dict, fits) -> str | None:
    """The fastest variant measurably faster than float that fits; else the most quantized one
    within noise of float (int8 itself when it is: the pass was asked for int8, and dropping it
    on noise made identical runs disagree); None (float) when every variant is measurably slower."""
    for name in sorted(variants, key=lambda n: latency[n]):
        if verdicts[name]["verdict"] == "faster" and (name == "int8" or fits(variants[name])):
            return name
    for name in sorted(variants, key=lambda n: len(dropped_families(n))):
        if verdicts[name]["verdict"] == "within noise" and (name == "int8" or fits(variants[name])):
            return name
    return None


def dropped_families(chosen: str) -> list[str]:
    return chosen.split(" without ", 1)[1].split("+") if " without " in chosen else []
