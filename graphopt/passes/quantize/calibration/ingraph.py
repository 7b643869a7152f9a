"""minmax calibration inside the graph (few bytes per tensor leave ORT).

Summaries (graphopt.passes.quantize.calibration.summaries): one pass gives each tensor's exact extremes, a NaN/Inf flag and a
strided sample; a batch with non-finite values is re-run with its tensors exposed, so counts stay
exact. The session borrows the model's weights and runs in graph order, so each tensor is freed
right after its summary: peak memory stays near the float model's session however many tensors
are calibrated. Any ORT refusal raises `Refused`; the caller then calibrates by exposure. (The
histogram methods run the model in segments instead: graphopt.passes.quantize.calibration.segmented.)
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from graphopt.passes.quantize.calibration import summaries
from graphopt.activations import exposed_session, stream_activations
from graphopt.passes.quantize.calibration.plan import checked_feeds
from graphopt.errors import InputError
from graphopt.runtime import return_freed_memory

OPT_LEVEL = "disable_all"  # ORT level of the in-graph passes (every calibrated value must exist)


class Refused(Exception):
    """ORT did not take an in-graph pass or a segment: expose instead."""


def usable(model: ir.Model, names: list[str]) -> bool:
    by_name = {v.name: v for node in model.graph for v in node.outputs}
    return summaries.supported(model, [by_name[n] for n in names])


def collect_summaries(model, names, source, stats, inputs, say) -> None:
    """One pass into minmax `stats` (graph inputs among `inputs` folded from the feeds)."""
    outputs = [out for name in names for out in summaries.output_names(name)]
    say(f"calibration (minmax): {len(names) + len(inputs)} tensors, 1 pass over the data (in-graph summaries)")
    redo: dict[int, list[str]] = {}
    for i, arrays in _runs(summaries.with_summaries(model, names), outputs, model, source, inputs, stats):
        for name, (lo, hi, finite, size, sample) in summaries.read(names, arrays).items():
            if finite:
                stats[name].update_summary(lo, hi, size, sample)
            else:
                redo.setdefault(i, []).append(name)
        say(f"calibration pass 1/1: batch {i + 1}")
    if redo:
        _exact_batches(model, source, redo, stats)


def _runs(graph_model, outputs, model, source, inputs, stats):
    """(feed index, output arrays) over the feeds, folding graph inputs into `stats` on the way."""
    try:
        session = exposed_session(graph_model, OPT_LEVEL, low_memory=True, owned=True)
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


def _exact_batches(model, source, redo: dict[int, list[str]], stats) -> None:
    """Fold the batches in `redo` ({feed index: names}) from the exposed tensors themselves."""
    picked = [feed for i, feed in enumerate(checked_feeds(source, model)) if i in redo]
    wanted = [redo[i] for i in sorted(redo)]
    names = sorted({n for group in wanted for n in group})

    def consume(index: int, arrays: dict[str, np.ndarray]) -> None:
        for name in wanted[index]:
            stats[name].update(arrays[name])

    stream_activations(model, names, lambda: iter(picked), consume, max_bytes=2**62)
