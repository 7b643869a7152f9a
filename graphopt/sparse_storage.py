"""Sparse storage of pruned initializers: ONNX `sparse_initializer`, written at save time.

A tensor with k non-zeros out of n elements of b bytes each is stored as its k values plus
k linear indices; the ONNX checker accepts only INT64 indices, so the sparse form takes
k·(b + 8) bytes against n·b dense: smaller once the sparsity 1 − k/n exceeds 8/(b + 8)
(2/3 for float32). ONNX Runtime densifies sparse initializers when it loads the model, so
the loaded model computes exactly what the dense pruned model computes.

onnx_ir 1.1 does not represent sparse initializers (its deserializer drops them and its
serializer never writes them). So a pass marks a tensor it wants stored sparse
(`mark_sparse`: a `metadata_props` entry on the tensor, which travels with the tensor through
clones), and the save path converts marked initializers in the serialized proto
(`sparsify_proto`). Loading goes the other way: `densify_proto` turns sparse initializers
into dense ones before onnx_ir sees the model. ONNX's full check (with shape inference)
types a sparse initializer as `sparse_tensor` and then rejects standard ops that read it
("Input tensors of wrong rank (0)"); the structural check passes. Models with external
data are always written dense.

"Download size" is the zlib (deflate, level 6: what gzip and zip use by default) size of
the serialized file.
"""

from __future__ import annotations

import os
import zlib
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
from onnx import helper, numpy_helper

SPARSE_KEY = "graphopt.storage"
SPARSE_VALUE = "sparse"
INDEX_BYTES = 8  # INT64 linear indices (the only index type the ONNX checker accepts)


def sparse_nbytes(array: np.ndarray) -> int:
    """Bytes of `array` as a sparse tensor (values + INT64 linear indices)."""
    return int(np.count_nonzero(array)) * (array.dtype.itemsize + INDEX_BYTES)


def sparse_is_smaller(array: np.ndarray) -> bool:
    return sparse_nbytes(array) < array.nbytes


def mark_sparse(tensor: ir.TensorProtocol) -> None:
    """Ask the save path to write this initializer as a sparse_initializer."""
    tensor.metadata_props[SPARSE_KEY] = SPARSE_VALUE


def has_sparse_marks(model: ir.Model) -> bool:
    return any(_is_marked(v.const_value) for v in model.graph.initializers.values())


def _is_marked(tensor) -> bool:
    return tensor is not None and tensor.metadata_props.get(SPARSE_KEY) == SPARSE_VALUE


def to_sparse_tensor(proto: onnx.TensorProto) -> onnx.SparseTensorProto:
    array = numpy_helper.to_array(proto)
    flat = array.reshape(-1)
    indices = np.flatnonzero(flat).astype(np.int64)
    values = numpy_helper.from_array(flat[indices], proto.name)
    return helper.make_sparse_tensor(values, numpy_helper.from_array(indices, f"{proto.name}_indices"),
                                     list(array.shape))


def sparsify_proto(proto: onnx.ModelProto) -> int:
    """Move marked main-graph initializers to `sparse_initializer` (in place); returns how many."""
    graph = proto.graph
    keep, moved = [], []
    for tensor in graph.initializer:
        marked = any(p.key == SPARSE_KEY and p.value == SPARSE_VALUE for p in tensor.metadata_props)
        (moved if marked else keep).append(tensor)
    if not moved:
        return 0
    names = {t.name for t in moved}
    sparse = [to_sparse_tensor(_without_marks(t)) for t in moved]
    del graph.initializer[:]
    graph.initializer.extend(keep)
    graph.sparse_initializer.extend(sparse)
    # a dense value_info for a sparse initializer conflicts with its sparse type
    infos = [vi for vi in graph.value_info if vi.name not in names]
    del graph.value_info[:]
    graph.value_info.extend(infos)
    return len(sparse)


def _without_marks(tensor: onnx.TensorProto) -> onnx.TensorProto:
    copy = onnx.TensorProto()
    copy.CopyFrom(tensor)
    kept = [p for p in copy.metadata_props if p.key != SPARSE_KEY]
    del copy.metadata_props[:]
    copy.metadata_props.extend(kept)
    return copy


def densify_proto(proto: onnx.ModelProto) -> int:
    """Turn every sparse_initializer of the main graph into a dense initializer (in place)."""
    graph = proto.graph
    dense = []
    for sparse in graph.sparse_initializer:
        values = numpy_helper.to_array(sparse.values)
        indices = numpy_helper.to_array(sparse.indices).astype(np.int64)
        array = np.zeros(int(np.prod(sparse.dims)), dtype=values.dtype)
        if indices.ndim == 2:  # [nnz, rank] coordinates
            indices = np.ravel_multi_index(tuple(indices.T), tuple(sparse.dims))
        array[indices] = values
        dense.append(numpy_helper.from_array(array.reshape(tuple(sparse.dims)), sparse.values.name))
    count = len(dense)
    del graph.sparse_initializer[:]
    graph.initializer.extend(dense)
    return count


def sparse_model_proto(model: ir.Model) -> onnx.ModelProto:
    proto = ir.serde.serialize_model(model)
    sparsify_proto(proto)
    return proto


def save_sparse(model: ir.Model, path: str | os.PathLike) -> Path:
    """Write `model` (weights embedded) with its marked initializers stored sparse."""
    target = Path(path)
    onnx.save_model(sparse_model_proto(model), str(target))
    return target


def has_dangling_inputs(model: ir.Model) -> bool:
    """A main-graph node reads a value nothing defines: what onnx_ir makes of a sparse initializer."""
    defined = {v.name for v in model.graph.inputs} | set(model.graph.initializers)
    for node in model.graph:
        for value in node.inputs:
            if value is not None and value.producer() is None and value.name not in defined:
                return True
    return False


def load_densified(path: str | os.PathLike) -> ir.Model:
    proto = onnx.load(str(path))
    densify_proto(proto)
    return ir.serde.deserialize_model(proto)


def file_sizes(model: ir.Model) -> dict[str, int]:
    """Serialized bytes of the model, dense and with marked initializers sparse, raw and deflated."""
    dense = ir.serde.serialize_model(model).SerializeToString()
    sparse = sparse_model_proto(model).SerializeToString()
    return {"dense_bytes": len(dense), "dense_deflate_bytes": len(zlib.compress(dense, 6)),
            "sparse_bytes": len(sparse), "sparse_deflate_bytes": len(zlib.compress(sparse, 6))}
