"""What the pass reports about its result: sizes raw and deflated, and whether ONNX Runtime folds
every expansion away at session start.

- raw: bytes of the constant data, initializers and Constant nodes' tensors (graphopt.size.data_bytes:
  exporters such as paddle2onnx keep every weight in a Constant node);
- deflated: Σ len(zlib.compress(tensor bytes, level 6)) over the same tensors, what a zip or a
  gzip'd download of the weights costs. Codes of b bits in a byte, a clustered float tensor
  (few distinct values) and an 8-bit palette index all deflate well, so the ratio shows what
  storage the palette really saves; a tensor shared by both models is compressed once.
- folding: ONNX Runtime builds a session at ORT_ENABLE_BASIC (where its constant folding runs)
  and writes the optimized model (`optimized_model_filepath`, in a temporary folder); the
  expansion folded when no node of that model reads a stored code or codebook tensor any more
  (the consumers then read a plain float initializer, so inference runs the same kernels as the
  input model: same latency).
"""

from __future__ import annotations

import tempfile
import zlib
from pathlib import Path

import onnx
import onnx_ir as ir
import onnxruntime as ort

from graphopt.runtime import model_file, needs_file, session_options
from graphopt.size import data_bytes


def constant_tensors(model: ir.Model):
    """The initializers of every graph and the tensors of Constant nodes."""
    for graph in model.graphs():
        for value in graph.initializers.values():
            if value.const_value is not None:
                yield value.const_value
    for node in ir.traversal.RecursiveGraphIterator(model.graph):
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
            attr = node.attributes.get("value")
            if attr is not None and attr.type == ir.AttributeType.TENSOR:
                yield attr.as_tensor()


class Deflated:
    """zlib-deflated bytes of a model's constant tensors; a tensor seen before is not compressed again."""

    def __init__(self):
        self._sizes: dict[int, tuple[object, int]] = {}

    def __call__(self, model: ir.Model) -> int:
        return sum(self._size(tensor) for tensor in constant_tensors(model))

    def _size(self, tensor) -> int:
        known = self._sizes.get(id(tensor))
        if known is None or known[0] is not tensor:
            known = (tensor, len(zlib.compress(tensor.tobytes(), 6)))
            self._sizes[id(tensor)] = known
        return known[1]


def sizes(before: ir.Model, after: ir.Model, deflate: bool) -> dict:
    raw = {"before": data_bytes(before), "after": data_bytes(after)}
    out = {"constant_bytes": raw, "ratio": round(raw["after"] / raw["before"], 4) if raw["before"] else None}
    if deflate:
        deflated = Deflated()
        d = {"before": deflated(before), "after": deflated(after)}
        out["deflated_bytes"] = d
        out["deflated_ratio"] = round(d["after"] / d["before"], 4) if d["before"] else None
    return out


def folding(model: ir.Model, stored: set[str]) -> dict:
    """Whether ORT_ENABLE_BASIC folds every expansion: no node of ORT's optimized model reads a
    tensor named in `stored` (the codes and codebooks)."""
    try:
        unfolded = _unfolded(model, stored)
    except Exception as exc:  # noqa: BLE001  (ORT raises several private types)
        return {"folds": None, "level": "ORT_ENABLE_BASIC", "error": str(exc).splitlines()[0][:300]}
    report = {"folds": not unfolded, "level": "ORT_ENABLE_BASIC"}
    if unfolded:
        report["unfolded"] = unfolded[:10]
    return report


def _unfolded(model: ir.Model, stored: set[str]) -> list[str]:
    with tempfile.TemporaryDirectory(prefix="graphopt-cluster-") as tmp:
        target = Path(tmp) / "optimized.onnx"
        so = session_options("disable_all")
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        so.optimized_model_filepath = str(target)
        so.add_session_config_entry("session.optimized_model_external_initializers_file_name", "optimized.data")
        so.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "1024")
        _session(model, so)
        optimized = onnx.load(str(target), load_external_data=False)
    read = {name for node in optimized.graph.node for name in node.input}
    return sorted(read & stored)


def _session(model: ir.Model, so: ort.SessionOptions) -> ort.InferenceSession:
    providers = ["CPUExecutionProvider"]
    if needs_file(model):
        with model_file(model) as path:
            return ort.InferenceSession(str(path), so, providers=providers)
    return ort.InferenceSession(ir.serde.serialize_model(model).SerializeToString(), so, providers=providers)


__all__ = ["Deflated", "constant_tensors", "folding", "sizes"]
