"""`--recipe auto`: search pass chains for the fastest (or smallest) model inside the budget.

The search space is data: `CANDIDATES` lists named pass chains (the lossless recipe, int8 with
each calibration method, SVD and channel pruning sized to the budget, their combinations, the
compress chain, dynamic int8, and for goal="size" weight-only int4). Chains whose passes are not registered are left out. Each candidate runs
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

import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from graphopt.bench import interleaved_p50
from graphopt.errors import InputError, VerificationError
from graphopt.runtime import create_session

TIE = 0.03
SPEED_GATED = ("quantize", "svd", "quantize-dynamic")  # passes with a `speed_check` option
LOSSLESS = "lossless"
MODERN = "opset:target=20"
# (name, passes, needs): a candidate runs only if each candidate in `needs` paid on its own (met
# the budget with every lossy pass applied; quantize applies only where int8 measured faster,
# svd only where the factored layers did): a chain with a part that did not pay alone is not
# tried. `NAME|fallbacks` also needs NAME's quantize to have put nodes back in float for the
# budget: otherwise another calibration method yields the same kernels, so it cannot be faster.
CANDIDATES: tuple[tuple[str, tuple[str, ...], tuple[str, ...]], ...] = (
    ("lossless", (), ()),
    ("modern", (MODERN,), ()),
    ("int8 percentile", (MODERN, "quantize:method=percentile"), ()),  # = the int8 recipe
    ("int8 minmax", (MODERN, "quantize:method=minmax"), ("int8 percentile|fallbacks",)),
    ("int8 entropy", (MODERN, "quantize:method=entropy"), ("int8 percentile|fallbacks",)),
    ("svd budget", ("svd:select=budget",), ()),
    ("svd budget + int8", ("svd:select=budget;budget_share=0.5", "quantize:method=entropy"),
     ("svd budget", "int8 percentile")),
    ("prune-channels budget", ("prune-channels:mode=budget",), ()),
    ("prune-channels budget + int8", ("prune-channels:mode=budget;budget_share=0.5", "quantize:method=entropy"),
     ("prune-channels budget", "int8 percentile")),
    ("compress", ("prune-channels:mode=budget;budget_share=0.34", "svd:select=budget;budget_share=0.5",
                  "quantize"), ("prune-channels budget", "svd budget", "int8 percentile")),
    ("int8 dynamic", (MODERN, "quantize-dynamic"), ()),  # = the int8-dynamic recipe
    ("int4 weights", (MODERN, "quantize-weights"), ()),  # = the int4 recipe (form set by --target)
)
# weight-only int4 shrinks the file ~4x but decodes its weights at run time: tried for size only
SIZE_ONLY = frozenset({"int4 weights"})


@dataclass
class Trial:
    name: str
    spec: list[str]
    tail: int = 0  # how many of `spec` are the candidate's own (lossy) passes
    ok: bool = False
    skipped: bool = False
    same_as: str | None = None  # no lossy pass applied: the model is that candidate's
    error: str | None = None
    cosine: float = float("nan")
    bytes: int = 0
    ms: float = float("nan")
    seconds: float = 0.0  # search time spent on this candidate (its shared prefix counts once)
    result: Any = field(default=None, repr=False)

    def row(self) -> dict[str, Any]:
        return {"name": self.name, "passes": self.spec, "meets_budget": self.ok, "skipped": self.skipped,
                "same_as": self.same_as, "error": self.error,
                "cosine": self.cosine, "bytes": self.bytes, "p50_ms": self.ms,
                "seconds": round(self.seconds, 1)}


def candidate_chains(lossless: tuple[str, ...], registered: set[str], goal: str = "latency",
                     target_options: Callable[[str], str] = lambda item: item
                     ) -> list[tuple[str, list[str], list[str], tuple[str, ...]]]:
    """(name, prefix, tail, needs) of each candidate whose passes all exist: the prefix is the
    lossless recipe, after an opset raise if the candidate has one (so the clean-up and fusions
    see the new opset's ops, `modern`); the tail is the candidate's lossy passes, each with the
    options the deployment target sets (`target_options`, graphopt.targets.with_target_options).
    Candidates with the same prefix share its run; SIZE_ONLY ones run for goal="size" only."""
    chains = []
    for name, extra, needs in CANDIDATES:
        if name in SIZE_ONLY and goal != "size":
            continue
        extra = tuple(target_options(item) for item in extra)
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


def search(chains, run_chain: Callable[[list[str], list[str]], Any], say: Callable[[str], None],
           deadline=None) -> list[Trial]:
    """Run the candidates in order; one whose `needs` did not pay is recorded as skipped, with why,
    and so is every one left when the `deadline` (graphopt.deadline) has passed."""
    trials: list[Trial] = []
    for i, (name, prefix, tail, needs) in enumerate(chains, 1):
        blocker = next(filter(None, (why_not_paid(n, trials) for n in needs)), None)
        if blocker is None and deadline is not None and trials and deadline.expired():
            blocker = "no time left (--max-time)"
            deadline.skip(f"auto: chain {name}")
        if blocker:
            say(f"auto [{i}/{len(chains)}] {name}: skipped ({blocker})")
            trials.append(Trial(name, [*prefix, *tail], len(tail), skipped=True, error=f"skipped: {blocker}"))
            continue
        say(f"auto [{i}/{len(chains)}] {name}{_eta(trials, len(chains) - i + 1)}")
        trial = run_trial(name, prefix, tail, run_chain)
        base = next((t for t in trials if t.spec == prefix and t.tail == 0 and t.ok), None)
        if trial.ok and tail and base is not None and not any(
                r["applied"] for r in trial.result.report["passes"][len(prefix):]):
            trial.same_as = base.name
            trial.error = f"= {base.name}: {why_not_paid(name, [trial]).split(': ', 1)[1]}"
        trials.append(trial)
    return trials


def _eta(trials: list[Trial], left: int) -> str:
    """' (N s so far, about M s left)': the chains run so far, at their mean, for those left (an
    upper bound: chains whose prerequisite did not pay are skipped at no cost)."""
    ran = [t.seconds for t in trials if not t.skipped]
    if not ran:
        return ""
    spent = sum(ran)
    return f" ({spent:.0f} s so far, at most about {left * spent / len(ran):.0f} s left)"


def why_not_paid(need: str, trials: list[Trial]) -> str | None:
    """None if candidate `need` met the budget with each of its lossy passes applied (and, for
    `NAME|fallbacks`, its quantize kept nodes in float for the budget), else why not."""
    name, _, condition = need.partition("|")
    trial = next((t for t in trials if t.name == name), None)
    if trial is None or trial.skipped:
        return f"{name} was not tried"
    if not trial.ok:
        return f"{name} failed: {trial.error}"
    records = trial.result.report["passes"][len(trial.spec) - trial.tail:]
    for record in records:
        if not record["applied"]:
            return f"{name}: {record['name']} not applied: {_why_not_applied(record)[:160]}"
    if condition == "fallbacks" and not any((r["stats"].get("budget") or {}).get("fallbacks")
                                            for r in records if r["name"] == "quantize"):
        return f"{name} met the budget with no node back in float: another method gives the same kernels"
    return None


def _why_not_applied(record: dict) -> str:
    why = record["stats"].get("skipped") or record.get("error") or "no change"
    if isinstance(why, list) and why and isinstance(why[0], dict):  # per-layer reasons (svd, tucker)
        why = f"{len(why)} layer(s) left as they were, e.g. {why[0].get('node')}: {why[0].get('reason')}"
    return str(why)


def pareto(trials: list[Trial], cost: Callable[[Trial], float]) -> list[Trial]:
    """Trials not dominated in (cost lower, cosine higher) by another trial that meets the budget."""
    ok = [t for t in trials if t.ok and t.same_as is None]
    return [t for t in ok if not any(
        (cost(o) <= cost(t) and o.cosine >= t.cosine) and (cost(o) < cost(t) or o.cosine > t.cosine)
        for o in ok)]


def choose(trials: list[Trial], goal: str) -> Trial:
    """The fastest (or smallest) trial meeting the budget; ties within TIE go to size, then order."""
    ok = [t for t in trials if t.ok and t.same_as is None]
    if not ok:
        raise VerificationError("auto: no candidate meets the budget: " + "; ".join(
            f"{t.name}: {t.error or f'cosine {t.cosine:.4f}'}" for t in trials))
    if goal == "size":
        return min(ok, key=lambda t: (t.bytes, trials.index(t)))
    fastest = min(t.ms for t in ok)
    near = [t for t in ok if t.ms <= fastest * (1 + TIE)]
    return min(near, key=lambda t: (t.bytes, trials.index(t)))


def measure_latency(trials: list[Trial], feed: dict[str, np.ndarray], runs: int, threads: int) -> None:
    ok = [t for t in trials if t.result is not None and t.same_as is None]
    sessions = [create_session(t.result.model, "cpu", "enable_all", threads) for t in ok]
    for trial, ms in zip(ok, interleaved_p50(sessions, feed, runs)):
        trial.ms = ms
    for trial in trials:
        if trial.same_as is not None:
            trial.ms = next(t.ms for t in ok if t.name == trial.same_as)


def format_trials(trials: list[Trial], front: list[Trial], chosen: Trial, goal: str) -> str:
    lines = [f"auto search (goal: {goal}); * = Pareto front, > = chosen; skip = not tried, "
             "same = no lossy pass applied (that candidate's model)",
             f"  {'candidate':32} {'budget':>6} {'cosine':>9} {'MB':>8} {'p50 ms':>8} {'search s':>8}"]
    for t in trials:
        mark = (">" if t is chosen else " ") + ("*" if t in front else " ")
        status = "same" if t.same_as else "ok" if t.ok else "skip" if t.skipped else "miss"
        lines.append(f"{mark}{t.name:32} {status:>6} {t.cosine:9.5f} {t.bytes / 1e6:8.2f} {t.ms:8.2f} {t.seconds:8.0f}"
                     + (f"  ({t.error})" if t.error else ""))
    return "\n".join(lines)


def run_trial(name: str, prefix: list[str], tail: list[str],
              run_chain: Callable[[list[str], list[str]], Any]) -> Trial:
    trial = Trial(name, [*prefix, *tail], len(tail))
    start = time.perf_counter()
    try:
        trial.result = run_chain(prefix, tail)
    except (VerificationError, InputError) as exc:
        trial.error = str(exc)[:200]
        return trial
    finally:
        trial.seconds = time.perf_counter() - start
    summary = trial.result.report["summary"]
    final = summary.get("final_verify") or {}
    trial.cosine = float((final.get("vs_input") or final).get("cosine", float("nan")))
    trial.bytes = summary["bytes"][1]
    trial.ok = True
    return trial
