"""Overflow safety by measurement: which ops must stay float32 because their values leave the
low type's range.

The calibration feeds are streamed through the float32 model (graphopt.activations), and for
every float32 tensor a candidate reads or writes in its slots the largest finite |x| is kept
(constants: from their data; graph inputs: from the feeds). Rule, with M the type's largest
finite value (float16: 65504) and margin m (option `range_margin`, default 0.5):
    an op stays float32 when a tensor in its slots has max |x| > m·M
(its output, or an input it would read in the low type: a value that does not fit cannot be
handed to it either). The margin covers feeds larger than the calibration ones. Tensors that
already hold ±inf or NaN in float32 keep them in the low type; only finite values are judged.
For the divisor paths (underflow.py) the smallest nonzero |x| is kept too.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx_ir as ir

from graphopt.io import release_tensor

from graphopt.passes.precision.lowtypes import LowType
from graphopt.passes.precision.select import Selection, is_constant, node_keys
from graphopt.activations import stream_activations


@dataclass
class Ranges:
    max_abs: dict[str, float] = field(default_factory=dict)
    min_abs: dict[str, float] = field(default_factory=dict)  # smallest nonzero |x| (divisor paths)
    batches: int = 0

    def fold(self, name: str, array: np.ndarray, small: bool) -> None:
        a = np.abs(np.asarray(array, np.float32))
        finite = a if np.isfinite(a).all() else a[np.isfinite(a)]
        self.max_abs[name] = max(self.max_abs.get(name, 0.0), float(finite.max(initial=0.0)))
        if small:
            nonzero = finite[finite > 0]
            if nonzero.size:
                self.min_abs[name] = min(self.min_abs.get(name, np.inf), float(nonzero.min()))


def slot_values(node: ir.Node, slots) -> list[ir.Value]:
    values = [node.inputs[i] for i in sorted(slots.inputs)] + [node.outputs[i] for i in sorted(slots.outputs)]
    return [v for v in values if v is not None]


def measure(work: ir.Model, found: Selection, small: set[str], feeds, progress=None) -> Ranges:
    """Max |x| of every float32 tensor in the candidates' slots (min |x| too for `small`)."""
    nodes = node_keys(work.graph)
    ranges = Ranges()
    activations, inputs = [], {v.name for v in work.graph.inputs}
    for key, slots in found.candidates.items():
        for value in slot_values(nodes[key], slots):
            if is_constant(value):
                tensor = ir.convenience.get_const_tensor(value)
                ranges.fold(value.name, tensor.numpy(), value.name in small)
                release_tensor(tensor)  # an external weight's pages, read once, need not stay resident
            elif value.name not in inputs:
                activations.append(value.name)
    for feed in feeds():
        ranges.batches += 1
        for name in inputs & set(feed):
            if np.issubdtype(np.asarray(feed[name]).dtype, np.floating):
                ranges.fold(name, feed[name], name in small)
    activations = list(dict.fromkeys(activations))
    if activations and ranges.batches:
        stream_activations(work, activations, feeds,
                           lambda _, arrays: [ranges.fold(n, a, n in small) for n, a in arrays.items()],
                           progress=progress)
    return ranges


def out_of_range(work: ir.Model, found: Selection, ranges: Ranges, low: LowType, margin: float) -> dict[str, str]:
    """Candidates to keep float32 by the range rule, each with its measured reason."""
    limit = margin * low.max
    nodes = node_keys(work.graph)
    kept = {}
    for key, slots in found.candidates.items():
        node = nodes[key]
        for value in slot_values(node, slots):
            peak = ranges.max_abs.get(value.name, 0.0)
            if peak > limit:
                where = "its output" if value.producer() is node else "its input"
                kept[key] = (f"measured range: max |x| {peak:.3g} > {limit:g} ({margin:g} x {low.name} max "
                             f"{low.max:g}) at {where} '{value.name}'")
                break
    return kept


__all__ = ["Ranges", "measure", "out_of_range", "slot_values"]
