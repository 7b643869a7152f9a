"""Deciding that a candidate misses the budget on part of the held-out feeds.

A budget search measures many candidates that miss; most miss on a few hard feeds. The feeds
therefore run in stages (1, 3, 8, 16, then the rest: the first stage is the one hardest feed
found so far, which decides most misses alone; a feed can be a batch of many samples), and after each stage the judged statistics
over the feeds seen so far are merged (`merge_metrics`):
- worst-sample statistics (cosine, snr_db judged per sample; max_abs) are a min or max over
  feeds, so the value on a subset is at least as good as on all feeds: a subset that misses
  the budget decides the miss;
- top-1 agreement is a rate: a agreeing positions out of n seen, of N in all, ends at most
  (a + N - n) / N. When even that best case misses (`best_case`), more feeds cannot rescue it.
A candidate that fits is run on every feed, so the metrics of a fitting candidate are always
complete; those of a decided miss cover the feeds seen (the evaluator says how many).

The feeds of the stage that decided a miss that miss the budget on their own (else the whole
stage) move to the front of the order (`promote`): they hold a hard sample, so the next candidates
of the search are usually decided on the first stage.
Merged metrics are exact for the statistics the budget judges; the whole-tensor cosine and SNR
(report-only) of a merge are the worst stage's, a bound. Outputs without per-sample statistics
(strings, complex) are not staged (`stageable`).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from graphopt.metrics import OutputMetrics

FIRST_STAGES = (1, 3, 8, 16)  # feeds in the first stages; every remaining feed forms the last one


def stages(order: list[int]) -> list[list[int]]:
    """`order` cut into stages of FIRST_STAGES sizes, then one stage with the rest."""
    cuts, start = [], 0
    for size in FIRST_STAGES:
        if start + size >= len(order):
            break
        cuts.append(order[start:start + size])
        start += size
    return cuts + [order[start:]] if start < len(order) else cuts


def promote(order: list[int], stage: list[int]) -> list[int]:
    """`order` with `stage`'s feeds moved to the front (their relative order kept)."""
    chosen = set(stage)
    return list(stage) + [i for i in order if i not in chosen]


def stageable(reference: list[dict[str, np.ndarray]]) -> bool:
    """Every output numeric (per-sample statistics exist), and more feeds than one stage."""
    numeric = all(v.dtype.kind in "fiub" for feed in reference for v in feed.values())
    return numeric and len(reference) > FIRST_STAGES[0]


def _weighted(values: list[tuple[float | None, int]]) -> float | None:
    if any(v is None for v, _ in values):
        return None
    total = sum(n for _, n in values)
    return sum(v * n for v, n in values) / total if total else values[-1][0]


def _worst(values: list[float | None], pick) -> float | None:
    present = [v for v in values if v is not None]
    if not present:
        return None
    if any(np.isnan(v) for v in present):
        return float("nan")
    return pick(present)


def _merge_output(parts: list[OutputMetrics]) -> OutputMetrics:
    weights = [max(p.positions, p.samples, 1) for p in parts]
    rate_weights = [p.positions or p.samples or 1 for p in parts]
    return replace(
        parts[0],
        max_abs=_worst([p.max_abs for p in parts], max),
        mean_abs=_weighted([(p.mean_abs, w) for p, w in zip(parts, weights)]),
        cosine=_worst([p.cosine for p in parts], min),
        snr_db=_worst([p.snr_db for p in parts], min),
        max_ulps=_worst([p.max_ulps for p in parts], max),
        ref_max_abs=max(p.ref_max_abs for p in parts),
        top1=_weighted([(p.top1, w) for p, w in zip(parts, rate_weights)]),
        shape_match=all(p.shape_match for p in parts),
        top1_dist=_weighted([(p.top1_dist, w) for p, w in zip(parts, rate_weights)]),
        sample_cosine=_worst([p.sample_cosine for p in parts], min),
        sample_snr_db=_worst([p.sample_snr_db for p in parts], min),
        sample_top1=_worst([p.sample_top1 for p in parts], min),
        samples=sum(p.samples for p in parts),
        positions=sum(p.positions for p in parts),
    )


def merge_metrics(parts: list[dict[str, OutputMetrics]]) -> dict[str, OutputMetrics]:
    """Per-output metrics of consecutive stages, merged (module docstring)."""
    if len(parts) == 1:
        return parts[0]
    return {name: _merge_output([part[name] for part in parts]) for name in parts[0]}


def best_case(merged: dict[str, OutputMetrics], total_positions: dict[str, int]) -> dict[str, OutputMetrics]:
    """The best the metrics can end at once every feed is seen: worst-sample statistics as they
    are, top-1 rates as if every unseen position agreed (1.0 where the count is unknown)."""
    result = {}
    for name, m in merged.items():
        total = total_positions.get(name, 0)
        if m.top1 is None and m.top1_dist is None:
            result[name] = m
            continue
        if m.positions and total >= m.positions:
            best = lambda rate: None if rate is None else (rate * m.positions + total - m.positions) / total  # noqa: E731
        else:
            best = lambda rate: None if rate is None else 1.0  # noqa: E731
        result[name] = replace(m, top1=best(m.top1), top1_dist=best(m.top1_dist))
    return result
