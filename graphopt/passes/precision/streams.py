"""Streaming many tensors of a model with dynamic dims: chunks planned on the feeds' real shapes.

graphopt.activations plans its chunks on each value's declared shape, a symbolic dim counting as
128; a model whose tensors are [N, C, H, W] with N, H and W symbolic (a text recognizer) then
looks 128^3 times larger than it is, every chunk holds one tensor, and each chunk costs a
session: 253 sessions for PP-OCR rec. Here the shapes are inferred once on a clone whose inputs
take the first feed's shapes, the chunks are planned on those, and each chunk runs on the model
as it is (graphopt.activations' session and run helpers). Other feeds may be larger: the sizes
are a planning estimate, as there.
"""

from __future__ import annotations

from typing import Callable

import onnx_ir as ir

from graphopt.activations import DEFAULT_MAX_BYTES, exposed_session, plan_chunks, run_exposed, with_outputs
from graphopt.analyses import infer_shapes
from graphopt.runtime import return_freed_memory


def chunks_for(model: ir.Model, names: list[str], feed: dict, max_bytes: int) -> list[list[str]]:
    """`names` split into chunks of about `max_bytes` for inputs shaped like `feed`."""
    probe = model.clone()
    for value in probe.graph.inputs:
        if value.name in feed:
            value.shape = ir.Shape(list(feed[value.name].shape))
    infer_shapes(probe, strict=False)
    by_name = {v.name: v for node in probe.graph for v in node.outputs}
    return plan_chunks([by_name[n] for n in dict.fromkeys(names) if n in by_name], max_bytes)


def stream(model: ir.Model, names: list[str], feeds: Callable, consume, progress=None,
           max_bytes: int = DEFAULT_MAX_BYTES) -> int:
    """Run `model` over `feeds()` once per chunk, calling `consume(i, {name: array})`; the batch count."""
    first = next(iter(feeds()), None)
    if first is None or not names:
        return 0
    planned = chunks_for(model, names, first, max_bytes)
    batches = 0
    for ci, chunk in enumerate(planned):
        session = exposed_session(with_outputs(model, chunk), owned=True)
        try:
            batches = run_exposed(session, chunk, feeds, consume, progress, (ci, len(planned)))
        finally:
            del session
            return_freed_memory()
    return batches


__all__ = ["chunks_for", "stream"]
