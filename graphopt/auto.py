"""`--recipe auto`: search pass chains for the fastest (or smallest) model inside the budget.

The search space is data: `CANDIDATES` lists named pass chains (the lossless recipe, int8 with
each calibration method, SVD and channel pruning sized to the budget, their combinations, the
compress chain). Chains whose passes are not registered are left out. Each candidate runs
through the normal verified pipeline (so a pass that breaks the budget is rolled back there);
then every surviving model is measured side by side: latency by interleaved medians on the CPU
EP (ORT_ENABLE_ALL), size in weight bytes, accuracy = worst cosine vs the input model on the
held-out feeds. A candidate that misses the budget is reported, never chosen.

Cost: candidates that start with the same lossless (or modern) clean-up share one verified run
of it, and the search uses the per-pass results as it goes: a combination is tried only if each
of its parts paid on its own (`needs`), so a model where int8 kernels are slower than float does
not pay for three calibration methods and three int8 chains (PP-OCR rec on this repo's 2-core
VM). With `goal="size"` the speed gates of quantize and svd are off: smaller is what counts.

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
SPEED_GATED = ("quantize", "svd")  # passes with a `speed_check` option
LOSSLESS = "lossless"
MODERN = "opset:target=20"
# (name, passes, needs): a candidate runs only if each candidate in `needs` paid on its own (met
# the budget with every lossy pass applied; quantize applies only where int8 measured faster,
# svd only where the factored layers did). Another calibration method cannot make int8 kernels
# faster, and a chain with a pass that did not pay alone is not tried.
CANDIDATES: tuple[tuple[str, tuple[str, ...], tuple[str, ...]], ...] = (
    ("lossless", (), ()),
    ("modern", (MODERN,), ()),
    ("int8 percentile", (MODERN, "quantize:method=percentile"), ()),  # = the int8 recipe
    ("int8 minmax", (MODERN, "quantize:method=minmax"), ("int8 percentile",)),
    ("int8 entropy", (MODERN, "quantize:method=entropy"), ("int8 percentile",)),
    ("svd budget", ("svd:select=budget",), ()),
    ("svd budget + int8", ("svd:select=budget;budget_share=0.5", "quantize:method=entropy"),
     ("svd budget", "int8 percentile")),
    ("prune-channels budget", ("prune-channels:mode=budget",), ()),
    ("prune-channels budget + int8", ("prune-channels:mode=budget;budget_share=0.5", "quantize:method=entropy"),
     ("prune-channels budget", "int8 percentile")),
    ("compress", ("prune-channels:mode=budget;budget_share=0.34", "svd:select=budget;budget_share=0.5",
                  "quantize"), ("prune-channels budget", "svd budget", "int8 percentile")),
)


@dataclass
class Trial:
    name: str
    spec: list[str]
    tail: int = 0  # how many of `spec` are the candidate's own (lossy) passes
    ok: bool = False
    skipped: bool = False
    error: str | None = None
    cosine: float = float("nan")
    bytes: int = 0
    ms: float = float("nan")
    result: Any = field(default=None, repr=False)

    def row(self) -> dict[str, Any]:
        return {"name": self.name, "passes": self.spec, "meets_budget": self.ok, "skipped": self.skipped,
                "error": self.error,
                "cosine": self.cosine, "bytes": self.bytes, "p50_ms": self.ms}


def candidate_chains(lossless: tuple[str, ...], registered: set[str], goal: str = "latency"
                     ) -> list[tuple[str, list[str], list[str], tuple[str, ...]]]:
    """(name, prefix, tail, needs) of each candidate whose passes all exist: the prefix is the
    lossless recipe, after an opset raise if the candidate has one (so the clean-up and fusions
    see the new opset's ops, `modern`); the tail is the candidate's lossy passes. Candidates with
    the same prefix share its run."""
    chains = []
    for name, extra, needs in CANDIDATES:
        if all(item.split(":", 1)[0] in registered for item in extra):
            first = [item for item in extra if item.split(":", 1)[0] == "opset"]
            rest = [item for item in extra if item not in first]
            if goal == "size":
                rest = [_without_speed_gate(item) for item in rest]
            chains.append((name, [*first, *lossless], rest, needs))
    return chains


def _without_speed_gate(item: str) -> str:
    name, _, options = item.partition(":")
    if name not in SPEED_GATED:
        return item
    return f"{name}:{options + ';' if options else ''}speed_check=false"


def search(chains, run_chain: Callable[[list[str], list[str]], Any], say: Callable[[str], None]) -> list[Trial]:
    """Run the candidates in order; one whose `needs` did not pay is recorded as skipped, with why."""
    trials: list[Trial] = []
    for i, (name, prefix, tail, needs) in enumerate(chains, 1):
        blocker = next(filter(None, (why_not_paid(n, trials) for n in needs)), None)
        if blocker:
            say(f"auto [{i}/{len(chains)}] {name}: skipped ({blocker})")
            trials.append(Trial(name, [*prefix, *tail], len(tail), skipped=True, error=f"skipped: {blocker}"))
            continue
        say(f"auto [{i}/{len(chains)}] {name}")
        trials.append(run_trial(name, prefix, tail, run_chain))
    return trials


def why_not_paid(name: str, trials: list[Trial]) -> str | None:
    """None if candidate `name` met the budget with each of its lossy passes applied, else why not."""
    trial = next((t for t in trials if t.name == name), None)
    if trial is None or trial.skipped:
        return f"{name} was not tried"
    if not trial.ok:
        return f"{name} failed: {trial.error}"
    records = trial.result.report["passes"][len(trial.spec) - trial.tail:]
    for record in records:
        if not record["applied"]:
            why = record["stats"].get("skipped") or record.get("error") or "no change"
            return f"{name}: {record['name']} not applied: {str(why)[:120]}"
    return None


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
        status = "ok" if t.ok else "skip" if t.skipped else "miss"
        lines.append(f"{mark}{t.name:32} {status:>6} {t.cosine:9.5f} {t.bytes / 1e6:8.2f} {t.ms:8.2f}"
                     + (f"  ({t.error})" if t.error else ""))
    return "\n".join(lines)


def run_trial(name: str, prefix: list[str], tail: list[str],
              run_chain: Callable[[list[str], list[str]], Any]) -> Trial:
    trial = Trial(name, [*prefix, *tail], len(tail))
    try:
        trial.result = run_chain(prefix, tail)
    except (VerificationError, InputError) as exc:
        trial.error = str(exc)[:200]
        return trial
    summary = trial.result.report["summary"]
    final = summary.get("final_verify") or {}
    trial.cosine = float((final.get("vs_input") or final).get("cosine", float("nan")))
    trial.bytes = summary["bytes"][1]
    trial.ok = True
    return trial
