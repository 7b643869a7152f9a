"""`--recipe auto`: search pass chains for the fastest (or smallest) model inside the budget.

The search space is data: `CANDIDATES` lists named pass chains (the lossless recipe, int8 with
each calibration method, SVD energies, channel-pruning ratios, the compress chain). Chains
whose passes are not registered are left out. Each candidate runs through the normal
verified pipeline (so a pass that breaks the budget is rolled back there); then every
surviving model is measured side by side: latency by interleaved medians on the CPU EP
(ORT_ENABLE_ALL), size in weight bytes, accuracy = worst cosine vs the input model on the
held-out feeds. A candidate that misses the budget is reported, never chosen.

Determinism: candidates run in a fixed order with the run's seed; latency is measured, so two
candidates within `TIE` (3%) of each other count as equally fast and the tie is broken by
size, then by the candidate order. The Pareto front (no other candidate is both faster/smaller
and more accurate) is printed with everything tried.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from graphopt.bench import interleaved_p50
from graphopt.errors import InputError, VerificationError
from graphopt.runtime import create_session

TIE = 0.03
LOSSLESS = "lossless"
MODERN = "opset:target=20"
CANDIDATES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("lossless", ()),
    ("modern", (MODERN,)),
    ("int8 percentile", (MODERN, "quantize:method=percentile")),  # = the int8 recipe
    ("int8 minmax", (MODERN, "quantize:method=minmax")),
    ("int8 entropy", (MODERN, "quantize:method=entropy")),
    ("svd budget", ("svd:select=budget",)),
    ("svd budget + int8", ("svd:select=budget;budget_share=0.5", "quantize:method=entropy")),
    ("prune-channels budget", ("prune-channels:mode=budget",)),
    ("prune-channels budget + int8", ("prune-channels:mode=budget;budget_share=0.5", "quantize:method=entropy")),
    ("compress", ("prune-channels:mode=budget;budget_share=0.34", "svd:select=budget;budget_share=0.5",
                  "quantize")),
)


@dataclass
class Trial:
    name: str
    spec: list[str]
    ok: bool = False
    error: str | None = None
    cosine: float = float("nan")
    bytes: int = 0
    ms: float = float("nan")
    result: Any = field(default=None, repr=False)

    def row(self) -> dict[str, Any]:
        return {"name": self.name, "passes": self.spec, "meets_budget": self.ok, "error": self.error,
                "cosine": self.cosine, "bytes": self.bytes, "p50_ms": self.ms}


def candidate_chains(lossless: tuple[str, ...], registered: set[str]) -> list[tuple[str, list[str]]]:
    """Named chains (lossless recipe + the candidate's lossy passes) whose passes all exist. An
    opset raise goes first, so the clean-up and fusions see the new opset's ops (`modern`)."""
    chains = []
    for name, extra in CANDIDATES:
        if all(item.split(":", 1)[0] in registered for item in extra):
            first = [item for item in extra if item.split(":", 1)[0] == "opset"]
            rest = [item for item in extra if item not in first]
            chains.append((name, [*first, *lossless, *rest]))
    return chains


def pareto(trials: list[Trial], cost: Callable[[Trial], float]) -> list[Trial]:
    """Trials not dominated in (cost lower, cosine higher) by another trial that meets the budget."""
    ok = [t for t in trials if t.ok]
    return [t for t in ok if not any(
        (cost(o) <= cost(t) and o.cosine >= t.cosine) and (cost(o) < cost(t) or o.cosine > t.cosine)
        for o in ok)]


def choose(trials: list[Trial], goal: str) -> Trial:
    """The fastest (or smallest) trial meeting the budget; ties within TIE go to size, then order."""
    ok = [t for t in trials if t.ok]
    if not ok:
        raise VerificationError("auto: no candidate meets the budget: " + "; ".join(
            f"{t.name}: {t.error or f'cosine {t.cosine:.4f}'}" for t in trials))
    if goal == "size":
        return min(ok, key=lambda t: (t.bytes, trials.index(t)))
    fastest = min(t.ms for t in ok)
    near = [t for t in ok if t.ms <= fastest * (1 + TIE)]
    return min(near, key=lambda t: (t.bytes, trials.index(t)))


def measure_latency(trials: list[Trial], feed: dict[str, np.ndarray], runs: int, threads: int) -> None:
    ok = [t for t in trials if t.result is not None]
    sessions = [create_session(t.result.model, "cpu", "enable_all", threads) for t in ok]
    for trial, ms in zip(ok, interleaved_p50(sessions, feed, runs)):
        trial.ms = ms


def format_trials(trials: list[Trial], front: list[Trial], chosen: Trial, goal: str) -> str:
    lines = [f"auto search (goal: {goal}); * = Pareto front, > = chosen",
             f"  {'candidate':32} {'budget':>6} {'cosine':>9} {'MB':>8} {'p50 ms':>8}"]
    for t in trials:
        mark = (">" if t is chosen else " ") + ("*" if t in front else " ")
        status = "ok" if t.ok else "miss"
        lines.append(f"{mark}{t.name:32} {status:>6} {t.cosine:9.5f} {t.bytes / 1e6:8.2f} {t.ms:8.2f}"
                     + (f"  ({t.error})" if t.error else ""))
    return "\n".join(lines)


def run_trial(name: str, spec: list[str], optimize_chain: Callable[[str], Any]) -> Trial:
    trial = Trial(name, spec)
    try:
        trial.result = optimize_chain(",".join(spec))
    except (VerificationError, InputError) as exc:
        trial.error = str(exc)[:200]
        return trial
    summary = trial.result.report["summary"]
    final = summary.get("final_verify") or {}
    trial.cosine = float((final.get("vs_input") or final).get("cosine", float("nan")))
    trial.bytes = summary["bytes"][1]
    trial.ok = True
    return trial
