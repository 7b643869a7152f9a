"""Model I/O: accept any model kind, hand passes an `onnx_ir.Model`, give back the same kind.

Paths are loaded with onnx_ir, which memory-maps external data instead of reading it, so
models over 2 GB never become one protobuf in memory. Saving is atomic: the model (and
its external data, if any) is staged next to the target and renamed into place only after
the write succeeded (graphopt.transaction, which a run shares with its reports), so a failed
or interrupted save never leaves a half-written file and never touches the input.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx
import onnx_ir as ir
from google.protobuf.message import DecodeError

from graphopt import sparse_storage
from graphopt.errors import InputError
from graphopt.transaction import Transaction, name_max
from graphopt.tensor_checks import check_sparse_proto, check_tensors

# Models whose weights exceed this are saved with external data (protobuf's hard cap is 2 GB).
EXTERNAL_DATA_THRESHOLD_BYTES = 1 << 30
# Tensors at least this large go to the external data file when external data is used.
EXTERNAL_TENSOR_MIN_BYTES = 1024


@dataclass(frozen=True)
class LoadedModel:
    """An IR model plus how it came in, so `to_kind` can give back the same kind."""

    model: ir.Model
    kind: str  # "path" | "proto" | "ir" | "gs"
    path: Path | None = None


def load_model(source: Any) -> LoadedModel:
    """Load a path, `onnx.ModelProto`, `onnx_ir.Model` or `gs.Graph` into the IR."""
    if isinstance(source, ir.Model):
        check_tensors(source, "model")
        return LoadedModel(source, "ir")
    if isinstance(source, onnx.ModelProto):
        check_sparse_proto(source, "model")
        model = _deserialize(source, "model")
        check_tensors(model, "model")
        return LoadedModel(model, "proto")
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        return LoadedModel(load_path(path), "path", path)
    if type(source).__name__ == "Graph" and type(source).__module__.startswith("onnx_graphsurgeon"):
        import onnx_graphsurgeon as gs

        model = _deserialize(gs.export_onnx(source), "graph")
        check_tensors(model, "graph")
        return LoadedModel(model, "gs")
    raise InputError(f"cannot load a model from {type(source).__name__}: expected a path, "
                     "onnx.ModelProto, onnx_ir.Model or onnx_graphsurgeon.Graph")


def _deserialize(proto: onnx.ModelProto, where: str) -> ir.Model:
    try:
        return ir.serde.deserialize_model(proto)
    except (RuntimeError, ValueError) as exc:
        raise InputError(f"{where}: not a valid ONNX model ({_load_failure(exc)})") from None


def load_path(path: Path) -> ir.Model:
    """Load an .onnx file lazily (external data memory-mapped), with readable errors."""
    if not path.exists():
        raise InputError(f"{path}: no such file")
    if path.is_dir():
        raise InputError(f"{path}: is a directory, expected an .onnx file")
    if path.stat().st_size == 0:
        raise InputError(f"{path}: file is empty, not an ONNX model")
    try:
        model = ir.load(path)
    except (DecodeError, RuntimeError, ValueError, onnx.onnx_cpp2py_export.checker.ValidationError) as exc:
        raise InputError(f"{path}: not a valid ONNX model ({_load_failure(exc)})") from None
    if not model.graph.outputs and len(model.graph) == 0:
        raise InputError(f"{path}: not a valid ONNX model (parsed, but holds no graph)")
    check_versions(model, path)
    if sparse_storage.has_dangling_inputs(model):  # onnx_ir drops sparse_initializer: densify them
        model = _load_densified(path)
    check_tensors(model, str(path))  # before anything decodes or maps tensor data
    check_external_data(model, path)
    materialize_embedded_tensors(model)
    return model


def _load_densified(path: Path) -> ir.Model:
    """The model with its main graph's sparse initializers made dense (indices checked first);
    external data stays unread, resolved against the model's directory as `ir.load` does."""
    proto = onnx.load(str(path), load_external_data=False)
    check_sparse_proto(proto, str(path))
    sparse_storage.densify_proto(proto)
    model = _deserialize(proto, str(path))
    ir.external_data.set_base_dir(model.graph, os.path.dirname(path))
    return model


def materialize_embedded_tensors(model: ir.Model) -> None:
    """Turn weights still backed by the parsed protobuf into numpy-backed tensors, once.

    onnx_ir's proto-backed tensors decode their bytes on every `.numpy()` (a fresh copy each
    time: calibration, hashing and every session would each pay one), and the parsed protobuf
    stays alive as long as any of them does. After this the protobuf is freed and each weight
    lives once, as an array that sessions can borrow (graphopt.shared_session). Covers the
    initializers and TENSOR attributes of every graph; string tensors are left as they are.
    """
    for graph in model.graphs():
        for value in graph.initializers.values():
            if isinstance(value.const_value, ir.serde.TensorProtoTensor):
                value.const_value = _as_numpy_tensor(value.const_value)
        for node in graph:
            for attr in node.attributes.values():
                if attr.type == ir.AttributeType.TENSOR and isinstance(attr.value, ir.serde.TensorProtoTensor):
                    node.attributes[attr.name] = ir.AttrTensor(attr.name, _as_numpy_tensor(attr.value))


def _as_numpy_tensor(tensor) -> ir.TensorProtocol:
    if tensor.dtype == ir.DataType.STRING:
        return tensor
    return ir.Tensor(tensor.numpy(), tensor.dtype, shape=tensor.shape, name=tensor.name,
                     doc_string=tensor.doc_string, metadata_props=dict(tensor.metadata_props))


def _load_failure(exc: BaseException) -> str:
    """Why ir.load failed: a protobuf that does not parse, or a graph onnx_ir cannot build
    (then the innermost cause names the problem, e.g. a value produced twice)."""
    if isinstance(exc, ir.serde.SerdeError):
        while exc.__cause__ is not None:
            exc = exc.__cause__
        return f"invalid graph: {str(exc).strip().splitlines()[0]}"
    return f"cannot parse protobuf: {exc}"


def check_versions(model: ir.Model, path: Path) -> None:
    """IR version and default-domain opset must be ones the installed onnx knows (graphopt
    checks, infers shapes and converts with it); a graph must have outputs."""
    if not model.ir_version or model.ir_version < 1:
        raise InputError(f"{path}: not a valid ONNX model (no IR version set)")
    if model.ir_version > onnx.IR_VERSION:
        raise InputError(f"{path}: IR version {model.ir_version} is newer than the installed onnx "
                         f"{onnx.__version__} supports (up to {onnx.IR_VERSION})")
    opset, newest = model.opset_imports.get("", model.opset_imports.get("ai.onnx")), onnx.defs.onnx_opset_version()
    if opset is not None and opset > newest:
        raise InputError(f"{path}: opset {opset} is newer than the installed onnx {onnx.__version__} "
                         f"knows (up to {newest})")
    if not model.graph.outputs:
        raise InputError(f"{path}: the graph has no outputs (nothing to compute)")


def check_external_data(model: ir.Model, path: Path) -> None:
    """Fail early, naming the file, if any external tensor's data file is missing or short, or
    lies outside the model's directory (ONNX Runtime refuses such paths, and reading them would
    let a model file point graphopt at any file on the machine)."""
    sizes: dict[str, int] = {}
    for tensor in _external_tensors(model):
        data_path = Path(tensor.path)
        key = str(data_path)
        base = os.path.realpath(str(tensor.base_dir))
        if os.path.commonpath([base, os.path.realpath(key)]) != base:
            raise InputError(f"{path}: external data location '{tensor.location}' for tensor "
                             f"'{tensor.name}' points outside the model's directory")
        if key not in sizes:
            if not data_path.exists():
                raise InputError(f"{path}: external data file '{tensor.location}' for tensor "
                                 f"'{tensor.name}' not found next to the model")
            sizes[key] = data_path.stat().st_size
        end = (tensor.offset or 0) + (tensor.length if tensor.length is not None else tensor.nbytes)
        if end > sizes[key]:
            raise InputError(f"{path}: external data file '{tensor.location}' is too short for "
                             f"tensor '{tensor.name}' (needs {end} bytes, has {sizes[key]})")


def _external_tensors(model: ir.Model):
    for value in _all_initializers(model):
        if isinstance(value.const_value, ir.ExternalTensor):
            yield value.const_value


def _all_initializers(model: ir.Model):
    for graph in model.graphs():  # main graph and every subgraph
        yield from graph.initializers.values()


def release_tensor(tensor: ir.TensorProtocol | None) -> None:
    """Unmap one external tensor's file (it re-maps on next access); others are left alone."""
    if isinstance(tensor, ir.ExternalTensor):
        try:
            tensor.release()
        except BufferError:  # someone still holds a view of the data; leave it mapped
            pass


def release_mappings(model: ir.Model) -> None:
    """Unmap external tensors' files (they re-map on next access).

    Each ExternalTensor keeps an mmap whose touched pages count as resident memory; a pass
    that reads every weight (hashing, saving) would otherwise keep the whole file resident.
    """
    for tensor in _external_tensors(model):
        release_tensor(tensor)


def external_base_dirs(model: ir.Model) -> set[str]:
    """Directories the model's external tensors resolve their locations against."""
    return {os.path.realpath(str(t.base_dir)) for t in _external_tensors(model)}


def in_memory_bytes(model: ir.Model) -> int:
    """Bytes of initializers held in memory (not external): what a saved proto would embed."""
    return sum(v.const_value.nbytes for v in _all_initializers(model)
               if v.const_value is not None and not isinstance(v.const_value, ir.ExternalTensor))


def weight_bytes(model: ir.Model) -> int:
    """Bytes of all initializers (main graph and subgraphs), without reading any data."""
    total = 0
    for value in _all_initializers(model):
        tensor = value.const_value
        if tensor is not None:
            total += tensor.nbytes
    return total


def save_model(model: ir.Model, path: str | os.PathLike, *, external_data: bool | None = None) -> Path:
    """Write `model` to `path` atomically; weights go to `<name>.data` when large (`external_data=None`
    decides by `uses_external_data`). Returns the written path."""
    target = Path(path)
    with Transaction() as txn:
        stage_model(txn, model, target, external_data)
        txn.commit()
    return target


def uses_external_data(model: ir.Model) -> bool:
    """Whether a save writes `<name>.data`: over 1 GB of weights, or any external tensor."""
    return weight_bytes(model) > EXTERNAL_DATA_THRESHOLD_BYTES or any(True for _ in _external_tensors(model))


def external_data_files(model: ir.Model) -> set[Path]:
    """The files the model's external tensors read (locations resolved against their base dirs)."""
    return {Path(tensor.path) for tensor in _external_tensors(model)}


def stage_model(txn: Transaction, model: ir.Model, target: Path, external_data: bool | None = None) -> None:
    """Write `model` into `txn`'s staging; it appears at `target` (with `<name>.data`) on commit."""
    if external_data is None:
        external_data = uses_external_data(model)
    data_name = f"{target.name}.data" if external_data else None
    staged = txn.stage(target)
    try:
        write_to_dir(model, staged, data_name)
    finally:
        release_mappings(model)
    if data_name and (staged.parent / data_name).exists():
        txn.stage(target.parent / data_name)  # written where the transaction stages it


def write_to_dir(model: ir.Model, path: Path, data_name: str | None) -> None:
    """Serialize `model` to `path` (no atomicity); external tensors go to `data_name`."""
    if data_name is None:
        if sparse_storage.has_sparse_marks(model):  # pruned tensors asked to be stored sparse
            sparse_storage.save_sparse(model, path)
        else:
            ir.save(model, path)
    elif len(os.fsencode(data_name)) + 10 > name_max(path.parent):  # onnx_ir's temp ".<name>.XXXXXXXX"
        _save_relocated(model, path, data_name)
    else:
        ir.save(model, path, external_data=data_name,
                size_threshold_bytes=EXTERNAL_TENSOR_MIN_BYTES, alignment=65536)


def _save_relocated(model: ir.Model, path: Path, data_name: str) -> None:
    """Save with a short data file name, then rename the file to `data_name` and point the
    locations at it: for a name too long for onnx_ir's temporary directory."""
    short = "weights.data" if path.name != "weights.data" else "w.data"
    ir.save(model, path, external_data=short, size_threshold_bytes=EXTERNAL_TENSOR_MIN_BYTES, alignment=65536)
    proto = onnx.load_model(str(path), load_external_data=False)
    for tensor in _proto_initializers(proto.graph):
        for entry in tensor.external_data:
            if entry.key == "location" and entry.value == short:
                entry.value = data_name
    onnx.save_model(proto, str(path))
    if (path.parent / short).exists():
        os.replace(path.parent / short, path.parent / data_name)


def _proto_initializers(graph: onnx.GraphProto):
    yield from graph.initializer  # onnx_ir writes initializers (of every graph) as external data
    for attr in (a for node in graph.node for a in node.attribute):
        for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
            yield from _proto_initializers(sub)


def to_kind(model: ir.Model, loaded: LoadedModel) -> Any:
    """Convert the optimized IR back to the kind the caller gave."""
    if loaded.kind in ("ir", "path"):
        return model
    proto = ir.serde.serialize_model(model)
    if loaded.kind == "proto":
        return proto
    import onnx_graphsurgeon as gs

    return gs.import_onnx(proto)
