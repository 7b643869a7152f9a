"""Load-time checks of tensor metadata: refuse malformed weights with one readable line.

A model file can declare a tensor whose data cannot exist or does not match: a negative
dim, a shape of 2^40 elements backed by a few bytes, raw data of the wrong length, typed
data (`float_data`, `int64_data`, ...) with too few entries, an unknown data type, an
external tensor without a location, a sparse tensor whose indices point outside its dense
shape. Left alone, each surfaces later as a numpy error deep inside a pass (a bug report
instead of a message). These checks read sizes and metadata only: external data is never
read, and embedded data is measured, not decoded, except the indices of sparse tensors.

Covered: initializers and TENSOR/TENSORS attributes (Constant nodes and others) of the main
graph, every subgraph and every model-local function; sparse initializers are checked on
the protobuf (`check_sparse_proto`), since onnx_ir does not represent them.
"""

from __future__ import annotations

import math
from typing import Iterator

import numpy as np
import onnx
import onnx_ir as ir
from onnx import numpy_helper

from graphopt.errors import InputError

# No real weight comes near this (the largest LLM embedding tables hold ~1e9 elements);
# a declared shape past it is corrupt, and its byte count would overflow later arithmetic.
MAX_TENSOR_ELEMENTS = 1 << 34


def check_tensors(model: ir.Model, where: str) -> None:
    """Raise InputError naming the first tensor whose metadata cannot be right."""
    for label, tensor in _all_tensors(model):
        if tensor is None:
            continue
        problem = tensor_problem(tensor)
        if problem is not None:
            raise InputError(f"{where}: {label} '{tensor.name}': {problem}")


def _all_tensors(model: ir.Model) -> Iterator[tuple[str, ir.TensorProtocol | None]]:
    for graph in model.graphs():
        for value in graph.initializers.values():
            yield "initializer", value.const_value
        yield from _attribute_tensors(graph)
    for function in model.functions.values():
        yield from _attribute_tensors(function)


def _attribute_tensors(nodes) -> Iterator[tuple[str, ir.TensorProtocol]]:
    for node in nodes:
        for attr in node.attributes.values():
            label = f"{node.op_type} node '{node.name or _first_output(node)}' tensor"
            if attr.type == ir.AttributeType.TENSOR:
                yield label, attr.value
            elif attr.type == ir.AttributeType.TENSORS:
                for tensor in attr.value:
                    yield label, tensor


def _first_output(node: ir.Node) -> str:
    return node.outputs[0].name if node.outputs and node.outputs[0].name else "(unnamed)"


def tensor_problem(tensor: ir.TensorProtocol) -> str | None:
    """Why this tensor's metadata is impossible, or None when it is consistent."""
    try:
        dtype = tensor.dtype
    except ValueError:
        code = tensor.raw.data_type if isinstance(tensor, ir.serde.TensorProtoTensor) else "?"
        return f"unknown data type {code}"
    dims = [int(d) for d in tensor.shape.dims] if all(isinstance(d, int) for d in tensor.shape.dims) else None
    if dims is None:
        return f"shape {tensor.shape} is not static"
    problem = dims_problem(dims)
    if problem is not None:
        return problem
    if dtype == ir.DataType.UNDEFINED:
        return "has no data type (UNDEFINED)"
    if isinstance(tensor, ir.ExternalTensor):
        return _external_problem(tensor, dims, dtype)
    if isinstance(tensor, ir.serde.TensorProtoTensor):
        return _embedded_problem(tensor.raw, dims, dtype)
    if isinstance(tensor, ir.StringTensor) and np.size(tensor.raw) != math.prod(dims):
        return f"holds {np.size(tensor.raw)} strings, its shape {dims} needs {math.prod(dims)}"
    return None


def dims_problem(dims: list[int]) -> str | None:
    """Negative dims, or more elements than any real tensor holds."""
    negative = [d for d in dims if d < 0]
    if negative:
        return f"negative dim {negative[0]} in shape {dims}"
    count = math.prod(dims)
    if count > MAX_TENSOR_ELEMENTS:
        return f"shape {dims} holds {count} elements, more than graphopt accepts ({MAX_TENSOR_ELEMENTS})"
    return None


def _data_bytes(count: int, dtype: ir.DataType) -> int:
    return math.ceil(count * dtype.bitwidth / 8)


def _external_problem(tensor: ir.ExternalTensor, dims: list[int], dtype: ir.DataType) -> str | None:
    if not str(tensor.location):
        return "external data without a location (the file its data lives in)"
    if tensor.offset is not None and tensor.offset < 0:
        return f"external data offset {tensor.offset} is negative"
    if dtype == ir.DataType.STRING:
        return "string tensors cannot be stored as external data"
    needed = _data_bytes(math.prod(dims), dtype)
    if tensor.length is not None and tensor.length != needed:
        return (f"external data length {tensor.length} does not match the {needed} bytes its shape "
                f"{dims} of {dtype.name} needs")
    return None


def _embedded_problem(proto: onnx.TensorProto, dims: list[int], dtype: ir.DataType) -> str | None:
    count = math.prod(dims)
    if dtype == ir.DataType.STRING:
        if len(proto.string_data) != count:
            return f"holds {len(proto.string_data)} strings, its shape {dims} needs {count}"
        return None
    if proto.HasField("raw_data"):
        needed = _data_bytes(count, dtype)
        if len(proto.raw_data) != needed:
            return (f"raw data holds {len(proto.raw_data)} bytes, its shape {dims} of {dtype.name} "
                    f"needs {needed}")
        return None
    field = onnx.helper.tensor_dtype_to_field(int(dtype))
    have = len(getattr(proto, field))
    if dtype in (ir.DataType.COMPLEX64, ir.DataType.COMPLEX128):
        count *= 2
    allowed = {count, _data_bytes(count, dtype)} if dtype.bitwidth < 8 else {count}
    if have not in allowed:
        return f"{field} holds {have} entries, its shape {dims} of {dtype.name} needs {min(allowed)}"
    return None


def check_sparse_proto(proto: onnx.ModelProto, where: str) -> None:
    """Sparse initializers of every graph in a protobuf: dims, values, and indices in range."""
    for graph in proto_graphs(proto.graph):
        for sparse in graph.sparse_initializer:
            problem = sparse_problem(sparse)
            if problem is not None:
                raise InputError(f"{where}: sparse initializer '{sparse.values.name}': {problem}")


def proto_graphs(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    """`graph` and every subgraph in it (If/Loop/Scan bodies, at any depth)."""
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                yield from proto_graphs(sub)


def sparse_problem(sparse: onnx.SparseTensorProto) -> str | None:
    """Why a sparse tensor cannot be densified, or None."""
    dims = list(sparse.dims)
    problem = dims_problem(dims)
    if problem is not None:
        return problem
    for part, tensor in (("values", sparse.values), ("indices", sparse.indices)):
        problem = tensor_problem(ir.serde.TensorProtoTensor(tensor))
        if problem is not None:
            return f"{part}: {problem}"
    if onnx.TensorProto.EXTERNAL in (sparse.values.data_location, sparse.indices.data_location):
        return "stored as external data (graphopt reads sparse tensors only when embedded)"
    nnz = math.prod(sparse.values.dims) if len(sparse.values.dims) == 1 else None
    if nnz is None:
        return f"values must be 1-D, got shape {list(sparse.values.dims)}"
    return _indices_problem(numpy_helper.to_array(sparse.indices), nnz, dims)


def _indices_problem(indices: np.ndarray, nnz: int, dims: list[int]) -> str | None:
    if indices.dtype.kind not in "iu":
        return f"indices must be integers, got {indices.dtype}"
    if indices.ndim == 1 and indices.shape[0] == nnz:
        bad = indices[(indices < 0) | (indices >= math.prod(dims))]
        if bad.size:
            return f"index {int(bad[0])} is out of range for its dense shape {dims} ({math.prod(dims)} elements)"
        return None
    if indices.ndim == 2 and indices.shape == (nnz, len(dims)):
        bad = (indices < 0) | (indices >= np.asarray(dims, np.int64))
        if bad.any():
            row = int(np.argwhere(bad)[0][0])
            return f"coordinate {indices[row].tolist()} is out of range for its dense shape {dims}"
        return None
    return f"indices of shape {list(indices.shape)} do not fit {nnz} values of a rank-{len(dims)} tensor"
