"""Which converted ops add the most error: the order in which the budget fallback puts them back.

Both models run, one after the other, on a few search feeds (the float32 one and the fully converted
candidate, graph optimizations off), exposing the outputs of the converted ops; per tensor v the
relative error of the candidate is
    e(v) = ||v_low - v_32|| / ||v_32||    (summed over the feeds),
and an op's *added* error is e(its output) - max e(its inputs): the error that appears at that op
(the rounding of its weights and of its result) rather than what it received. Ops are ranked by
added error, largest first. It is a proxy: an op whose output is rounded again by a low-precision
reader gains little alone, which the prefix search (budget.py) absorbs by taking more ops.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from graphopt.activations import exposed_session, with_outputs
from graphopt.passes.precision.ranges import slot_values
from graphopt.passes.precision.select import node_keys
from graphopt.passes.precision.streams import chunks_for
from graphopt.runtime import return_freed_memory

MAX_FEEDS = 2  # each feed runs both models with every converted op's output exposed
MAX_BYTES = 512 * 1024 * 1024


def relative_errors(reference: ir.Model, candidate: ir.Model, names: list[str], feeds: list[dict]) -> dict[str, float]:
    """e(v) for each name, on `feeds` (one chunk of exposed tensors at a time, both models)."""
    present = {v.name for node in candidate.graph for v in node.outputs}
    chunks = chunks_for(reference, [n for n in names if n in present], feeds[0], MAX_BYTES) if feeds else []
    diff: dict[str, float] = {}
    norm: dict[str, float] = {}
    for chunk in chunks:  # one session at a time: the two together held two copies of the weights
        expected = _run(reference, chunk, feeds)
        for feed_values, actual in zip(expected, _run(candidate, chunk, feeds)):
            for name, a, b in zip(chunk, feed_values, actual):
                a = np.nan_to_num(np.asarray(a, np.float32).ravel(), posinf=0.0, neginf=0.0)
                d = np.nan_to_num(np.asarray(b, np.float32).ravel(), posinf=0.0, neginf=0.0) - a
                diff[name] = diff.get(name, 0.0) + float(np.dot(d, d))
                norm[name] = norm.get(name, 0.0) + float(np.dot(a, a))
    return {n: float(np.sqrt(diff[n] / norm[n])) if norm[n] > 0 else float(np.sqrt(diff[n])) for n in diff}


def _run(model: ir.Model, chunk: list[str], feeds: list[dict]) -> list[list]:
    """The `chunk` tensors of `model` on every feed; the session is gone when this returns."""
    session = exposed_session(with_outputs(model, chunk), owned=True)
    try:
        return [session.run(chunk, feed) for feed in feeds]
    finally:
        del session
        return_freed_memory()


def rank_by_added_error(work: ir.Model, candidate: ir.Model, chosen: dict, feeds: list[dict]) -> tuple[list[str], dict]:
    """Converted ops (keys of `chosen`), most error-adding first, and each one's added error."""
    nodes = node_keys(work.graph)
    outputs = {key: [nodes[key].outputs[i] for i in sorted(slots.outputs)] for key, slots in chosen.items()}
    names = [v.name for values in outputs.values() for v in values]
    errors = relative_errors(work, candidate, names, feeds[:MAX_FEEDS])
    added = {}
    for key, slots in chosen.items():
        outs = {v.name for v in outputs[key]}
        ins = [errors.get(v.name, 0.0) for v in slot_values(nodes[key], slots) if v.name not in outs]
        added[key] = max((errors.get(n, 0.0) for n in outs), default=0.0) - max(ins, default=0.0)
    order = sorted(chosen, key=lambda k: -added[k])
    return order, {k: float(f"{added[k]:.3g}") for k in order}


__all__ = ["rank_by_added_error", "relative_errors"]
