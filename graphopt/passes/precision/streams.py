"""Chunks of exposed tensors planned on the feeds' real shapes, for the comparison of two models.

graphopt.activations streams one model's tensors (its chunks sized by graphopt.value_bytes at the
first feed's shapes); relative_errors (rank.py) runs the float32 reference and the candidate side
by side over the same chunks, so it plans them here the same way. Before sizes came from shape
inference at the feed's shapes, a model whose tensors are [N, C, H, W] with N, H and W symbolic (a
text recognizer) looked 128^3 times larger than it is, every chunk held one tensor, and each chunk
cost a session: 253 sessions for PP-OCR rec.
"""

from __future__ import annotations

import onnx_ir as ir

from graphopt.value_bytes import packed, value_sizes


def chunks_for(model: ir.Model, names: list[str], feed: dict, max_bytes: int) -> list[list[str]]:
    """`names` split into chunks of about `max_bytes` for inputs shaped like `feed`."""
    names = list(dict.fromkeys(names))
    return packed(names, value_sizes(model, names, feed), max_bytes)


__all__ = ["chunks_for"]
