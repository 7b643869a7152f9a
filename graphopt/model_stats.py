"""Static statistics of an ONNX model: ops, parameters, bytes, opsets, I/O and MACs.

``model_stats(model)`` takes an ``onnx_ir.Model`` and never reads tensor data: sizes come
from each tensor's shape and ``dtype.itemsize``, so a model whose weights live in
external data (memory-mapped or not yet loaded) is measured without materializing them.

What is counted:

- ``op_histogram``: every node, including nodes inside subgraphs (If/Loop/Scan bodies);
  the key is ``op_type`` for the default ONNX domain and ``"domain::op_type"`` otherwise.
  Bodies of model-local functions are not expanded; their call nodes are counted.
- ``param_count`` / ``weight_bytes``: elements and bytes of all initializers (main graph
  and subgraphs) plus tensors held in ``Constant`` nodes.
- ``macs``: multiply-accumulates of Conv, ConvTranspose, MatMul and Gemm, from static
  shapes after ONNX shape inference on a clone (the caller's model is not changed):

      MatMul         prod(Y) * K                  K = A.shape[-1]
      Gemm           prod(Y) * K                  K = A.shape[0 if transA else 1]
      Conv           prod(Y) * prod(W.shape[1:])  W = [M, C/group, k...]
      ConvTranspose  prod(X) * prod(W.shape[1:])  W = [C, M/group, k...]

  Symbolic or unknown dims count as 1 and set ``macs_approximate``; so does a node whose
  shapes could not be inferred (it adds 0) and a node inside a subgraph (an If counts both
  branches, a Loop body one iteration).
"""

from __future__ import annotations

import collections
import dataclasses
import math
from typing import Any

import onnx_ir as ir
from onnx_ir.passes.common import ShapeInferencePass

MAC_OPS = ("Conv", "ConvTranspose", "MatMul", "Gemm")
_DEFAULT_DOMAINS = ("", "ai.onnx")
_SCALAR_CONSTANT_ATTRS = {  # Constant attribute -> bytes per element
    "value_float": 4, "value_floats": 4, "value_int": 8, "value_ints": 8,
}

Dim = int | str | None


@dataclasses.dataclass
class TensorSpec:
    """A graph input or output: dtype name (e.g. "float32") and shape (None if unknown)."""

    name: str
    dtype: str | None
    shape: list[Dim] | None


@dataclasses.dataclass
class ModelStats:
    node_count: int
    op_histogram: collections.Counter[str]
    param_count: int
    weight_bytes: int
    opset_imports: dict[str, int]
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    macs: int
    macs_by_op: dict[str, int]
    macs_approximate: bool
    ir_version: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serializable dict (histogram sorted by count, then name)."""
        data = dataclasses.asdict(self)
        data["op_histogram"] = dict(_sorted_counts(self.op_histogram))
        return data


def model_stats(model: ir.Model) -> ModelStats:
    """Compute ``ModelStats`` for ``model`` without modifying it or loading weights."""
    histogram = collections.Counter(_op_key(node) for node in model.graph.all_nodes())
    params, nbytes = _count_parameters(model)
    macs_by_op, approximate = _count_macs(model)
    initializer_names = set(model.graph.initializers)
    return ModelStats(
        node_count=sum(histogram.values()),
        op_histogram=histogram,
        param_count=params,
        weight_bytes=nbytes,
        opset_imports=dict(model.opset_imports),
        # IR-3 style models also list initializers as inputs: those are not fed by users.
        inputs=[_spec(v) for v in model.graph.inputs if v.name not in initializer_names],
        outputs=[_spec(v) for v in model.graph.outputs],
        macs=sum(macs_by_op.values()),
        macs_by_op=macs_by_op,
        macs_approximate=approximate,
        ir_version=model.ir_version,
    )


def _op_key(node: ir.Node) -> str:
    return node.op_type if node.domain in _DEFAULT_DOMAINS else f"{node.domain}::{node.op_type}"


def _spec(value: ir.Value) -> TensorSpec:
    shape = None if value.shape is None else [_dim(d) for d in value.shape]
    return TensorSpec(value.name or "", _dtype_name(value.dtype), shape)


def _dim(dim: int | ir.SymbolicDim) -> Dim:
    return dim if isinstance(dim, int) else dim.value


def _dtype_name(dtype: ir.DataType | None) -> str | None:
    if dtype is None:
        return None
    try:
        return str(dtype.numpy())
    except (TypeError, ValueError, NotImplementedError):
        return dtype.name.lower()


# --- parameters ------------------------------------------------------------------

def _count_parameters(model: ir.Model) -> tuple[int, int]:
    """Elements and bytes of all initializers and Constant-node tensors."""
    params = nbytes = 0
    for graph in model.graphs():
        for value in graph.initializers.values():
            tensor = value.const_value
            n, b = _tensor_size(tensor) if tensor is not None else _value_size(value)
            params, nbytes = params + n, nbytes + b
    for node in model.graph.all_nodes():
        if node.op_type == "Constant" and node.domain in _DEFAULT_DOMAINS:
            n, b = _constant_size(node)
            params, nbytes = params + n, nbytes + b
    return params, nbytes


def _tensor_size(tensor: ir.TensorProtocol) -> tuple[int, int]:
    """(elements, bytes) from shape and dtype only; no data is read (except strings)."""
    numel = math.prod(tensor.shape.numpy())
    if tensor.dtype == ir.DataType.STRING:
        return numel, 0  # variable-width; not worth loading external data for
    return numel, math.ceil(numel * tensor.dtype.itemsize)


def _value_size(value: ir.Value) -> tuple[int, int]:
    """Size of an initializer whose data is absent, from its declared type."""
    if value.shape is None or not value.shape.is_static() or value.dtype is None:
        return 0, 0
    numel = math.prod(value.shape.numpy())
    if value.dtype == ir.DataType.STRING:
        return numel, 0
    return numel, math.ceil(numel * value.dtype.itemsize)


def _constant_size(node: ir.Node) -> tuple[int, int]:
    for name, attr in node.attributes.items():
        if name == "value" and attr.value is not None:
            return _tensor_size(attr.value)
        if name in _SCALAR_CONSTANT_ATTRS:
            numel = len(attr.value) if name.endswith("s") else 1
            return numel, numel * _SCALAR_CONSTANT_ATTRS[name]
    return 0, 0


# --- MACs ------------------------------------------------------------------------

def _count_macs(model: ir.Model) -> tuple[dict[str, int], bool]:
    """Per-op-type MACs on a shape-inferred clone, and whether any count is approximate."""
    inferred = _shape_inferred_clone(model)
    per_op: dict[str, int] = {}
    approximate = False
    for node in inferred.graph.all_nodes():
        if node.op_type not in MAC_OPS or node.domain not in _DEFAULT_DOMAINS:
            continue
        macs, exact = _node_macs(node)
        approximate |= not exact or node.graph is not inferred.graph
        per_op[node.op_type] = per_op.get(node.op_type, 0) + macs
    return per_op, approximate


def _shape_inferred_clone(model: ir.Model) -> ir.Model:
    clone = model.clone()  # tensors are shared, not copied
    ShapeInferencePass(strict_mode=False)(clone)
    return clone


def _node_macs(node: ir.Node) -> tuple[int, bool]:
    """(MACs, exact) for one MAC op; (0, False) when a needed shape is unknown."""
    inputs = node.inputs
    x = _static_dims(inputs[0] if inputs else None)
    w = _static_dims(inputs[1] if len(inputs) > 1 else None)
    y = _static_dims(node.outputs[0])
    if node.op_type == "ConvTranspose":
        needed = (x, w)
    else:
        needed = (x, y) if node.op_type in ("MatMul", "Gemm") else (y, w)
    if any(dims is None for dims in needed):
        return 0, False
    exact = all(dims[1] for dims in needed)
    if node.op_type == "MatMul":
        return math.prod(y[0]) * x[0][-1], exact
    if node.op_type == "Gemm":
        k = x[0][0] if _int_attr(node, "transA") else x[0][-1]
        return math.prod(y[0]) * k, exact
    kernel = math.prod(w[0][1:])
    if node.op_type == "Conv":
        return math.prod(y[0]) * kernel, exact
    return math.prod(x[0]) * kernel, exact


def _static_dims(value: ir.Value | None) -> tuple[list[int], bool] | None:
    """Dims with symbolic/unknown ones as 1, and whether all were static; None if unknown."""
    if value is None:
        return None
    shape = value.shape
    if shape is None and value.const_value is not None:
        shape = value.const_value.shape
    if shape is None:
        return None
    dims = [d if isinstance(d, int) else 1 for d in shape]
    return dims, all(isinstance(d, int) for d in shape)


def _int_attr(node: ir.Node, name: str) -> int:
    attr = node.attributes.get(name)
    return 0 if attr is None else int(attr.value)


# --- text ------------------------------------------------------------------------

def format_stats(stats: ModelStats) -> str:
    """A plain-text summary: totals, inputs/outputs, MACs by op and the op histogram."""
    opsets = ", ".join(f"{d or 'ai.onnx'} {v}" for d, v in sorted(stats.opset_imports.items()))
    approx = " (approximate)" if stats.macs_approximate else ""
    lines = [
        f"IR version   {stats.ir_version}    opsets: {opsets}",
        f"nodes        {stats.node_count:,}",
        f"parameters   {stats.param_count:,} ({_human_bytes(stats.weight_bytes)})",
        f"MACs         {stats.macs:,} ({_human_count(stats.macs)}){approx}",
    ]
    lines += _section("inputs", [_spec_row(s) for s in stats.inputs])
    lines += _section("outputs", [_spec_row(s) for s in stats.outputs])
    lines += _section("MACs by op", [(op, f"{n:,}") for op, n in _sorted_counts(stats.macs_by_op)])
    lines += _section("ops", [(op, str(n)) for op, n in _sorted_counts(stats.op_histogram)])
    return "\n".join(lines)


def _section(title: str, rows: list[tuple[str, ...]]) -> list[str]:
    if not rows:
        return []
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    body = ["  " + "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
            for row in rows]
    return ["", f"{title}:", *body]


def _spec_row(spec: TensorSpec) -> tuple[str, str, str]:
    return spec.name, spec.dtype or "?", _shape_text(spec.shape)


def _sorted_counts(counts: dict[str, int]) -> list[tuple[str, int]]:
    return sorted(counts.items(), key=lambda item: (-item[1], item[0]))


def _shape_text(shape: list[Dim] | None) -> str:
    if shape is None:
        return "?"
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"


def _human_bytes(n: int) -> str:
    if n < 1000:
        return f"{n} B"
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


def _human_count(n: int) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f}{unit}"
    return str(n)
