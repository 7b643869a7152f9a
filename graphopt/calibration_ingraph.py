"""Calibration passes whose statistics are computed inside the graph (few bytes leave ORT).

1. Summaries (graphopt.summaries): one pass gives each tensor's exact extremes, a NaN/Inf flag
   and a strided sample; a batch with non-finite values is re-run with its tensors exposed, so
   counts stay exact. That is all minmax needs.
2. Histograms (graphopt.histogram_graph), for percentile/entropy/mse: with the extremes of pass 1
   the final bin exponent of each tensor is known, so a second pass bins every element inside the
   graph and returns only 2·bins counts per tensor, equal to the streaming histogram's. Tensors
   holding NaN/Inf or mask sentinels, which have no bin, are exposed in the same pass (the caller
   says which fit its memory cap) and folded from their values. Below
   opset 16 (ScatterElements' reduction) this pass runs on a clone raised to opset 16 by the
   `opset` pass; if that fails, every tensor is left to the caller.

Both sessions borrow the model's weights and run in graph order, so each tensor is freed right
after its statistics: peak memory stays near the float model's session however many tensors are
calibrated. Any ORT refusal raises `Refused`; the caller then calibrates by exposure.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from graphopt import histogram_graph, summaries
from graphopt.activations import exposed_session, stream_activations
from graphopt.calibration_plan import checked_feeds
from graphopt.errors import InputError
from graphopt.histogram import SENTINEL, TensorStats, range_exponent
from graphopt.runtime import return_freed_memory

OPT_LEVEL = "disable_all"  # ORT level of the in-graph passes (every calibrated value must exist)


class Refused(Exception):
    """ORT (or the opset converter) did not take an in-graph pass: expose instead."""


def usable(model: ir.Model, names: list[str]) -> bool:
    by_name = {v.name: v for node in model.graph for v in node.outputs}
    return summaries.supported(model, [by_name[n] for n in names])


def collect_summaries(model, names, source, stats, inputs, say, method: str) -> None:
    """Pass 1 into minmax `stats` (graph inputs among `inputs` folded from the feeds)."""
    outputs = [out for name in names for out in summaries.output_names(name)]
    say(f"calibration ({method}): {len(names) + len(inputs)} tensors, "
        + ("1 pass over the data (in-graph summaries)" if method == "minmax"
           else "2 passes over the data (in-graph summaries, then histograms)"))
    redo: dict[int, list[str]] = {}
    for i, arrays in _runs(summaries.with_summaries(model, names), outputs, model, source, inputs, stats):
        for name, (lo, hi, finite, size, sample) in summaries.read(names, arrays).items():
            if finite:
                stats[name].update_summary(lo, hi, size, sample)
            else:
                redo.setdefault(i, []).append(name)
        say(f"calibration pass 1/{1 if method == 'minmax' else 2}: batch {i + 1}")
    if redo:
        _exact_batches(model, source, redo, stats)


def clean(names: list[str], extremes: dict[str, TensorStats]) -> list[str]:
    """The names whose values were all finite and below the sentinel magnitude in pass 1."""
    return [n for n in names if extremes[n].nonfinite == 0 and extremes[n].sentinels == 0
            and max(-extremes[n].min, extremes[n].max, 0.0) < SENTINEL]


def collect_histograms(model, names, source, extremes, stats, inputs, say, raw: list[str]) -> None:
    """Pass 2: histograms of the `clean` names (minmax `extremes` from pass 1) into histogram
    `stats`; the `raw` names are exposed in the same pass and folded from their values."""
    bins = next(iter(stats.values())).bins
    binned = {}
    for name in names:
        amax = max(-extremes[name].min, extremes[name].max, 0.0) if extremes[name].samples else 0.0
        exponent = range_exponent(amax, bins)
        stats[name] = TensorStats.from_extremes(extremes[name], exponent)
        if exponent is not None:  # all-zero tensors: every element in bin B, done
            binned[name] = exponent
    if not binned and not raw:
        for feed in checked_feeds(source, model):
            for name in inputs:
                stats[name].update(feed[name])
        return
    graph_model = _at_least_opset_16(model, [*binned, *raw])
    outputs = [histogram_graph.output_name(n) for n in binned] + raw
    largest = {n: extremes[n].largest for n in binned}
    with_hist = histogram_graph.with_histograms(graph_model, binned, bins, raw, largest)
    for i, arrays in _runs(with_hist, outputs, model, source, inputs, stats):
        for name, counts in zip(binned, arrays):
            stats[name].counts += counts
        for name, array in zip(raw, arrays[len(binned):]):
            stats[name].update(array)
        say(f"calibration pass 2/2: batch {i + 1}")


def _runs(graph_model, outputs, model, source, inputs, stats):
    """(feed index, output arrays) over the feeds, folding graph inputs into `stats` on the way."""
    try:
        session = exposed_session(graph_model, OPT_LEVEL, low_memory=True)
    except InputError as exc:
        raise Refused(str(exc)) from None
    try:
        for i, feed in enumerate(checked_feeds(source, model)):
            for name in inputs:
                stats[name].update(feed[name])
            try:
                arrays = session.run(outputs, feed)
            except Exception as exc:  # noqa: BLE001  (ORT's private types; exposure reports it)
                raise Refused(f"feed {i}: {str(exc).strip()[:200]}") from None
            yield i, arrays
    finally:
        del session
        return_freed_memory()


def _at_least_opset_16(model: ir.Model, names: list[str]) -> ir.Model:
    if histogram_graph.supported(model):
        return model
    from graphopt.pass_api import PassContext
    from graphopt.passes.opset import RaiseOpset

    try:
        raised = RaiseOpset(target=histogram_graph.MIN_OPSET).run(model.clone(), PassContext()).model
    except Exception as exc:  # noqa: BLE001  (a converter gap: expose instead)
        raise Refused(f"raising the opset to {histogram_graph.MIN_OPSET} failed: {exc}") from None
    produced = {v.name for node in raised.graph for v in node.outputs}
    if not histogram_graph.supported(raised) or not set(names) <= produced:
        raise Refused("the opset-16 clone does not compute every calibrated tensor")
    return raised


def _exact_batches(model, source, redo: dict[int, list[str]], stats) -> None:
    """Fold the batches in `redo` ({feed index: names}) from the exposed tensors themselves."""
    picked = [feed for i, feed in enumerate(checked_feeds(source, model)) if i in redo]
    wanted = [redo[i] for i in sorted(redo)]
    names = sorted({n for group in wanted for n in group})

    def consume(index: int, arrays: dict[str, np.ndarray]) -> None:
        for name in wanted[index]:
            stats[name].update(arrays[name])

    stream_activations(model, names, lambda: iter(picked), consume, max_bytes=2**62)
