"""ONNX Runtime sessions that borrow the model's weights instead of copying them.

A session built from serialized bytes holds a second copy of every weight (ORT parses the
protobuf into its own buffers), so calibration would hold every weight twice: the IR's copy plus ORT's.
Here each large main-graph initializer held in memory as a numpy array is handed to ORT with
`SessionOptions.add_initializer(name, OrtValue)`: ORT uses that buffer for the session's lifetime
and the serialized graph only declares the tensor. The declaration is an external-data entry
pointing into an *empty* placeholder file, so if ORT ever read a stand-in instead of the borrowed
buffer it would fail loudly ("out of bounds") rather than compute with wrong weights. Weights held by
Constant nodes (Paddle and TF exports) are lifted into initializers first (onnx_ir's
LiftConstantsToInitializersPass; in a clone, or in the model itself when the caller made it for
this session), so they are borrowed as well, which lowers calibration's peak on exports that keep
their weights in Constants (PP-OCR rec). Otherwise no clone is made: the placeholders are swapped in
for serialization only, because cloning made building a session markedly slower.

Returns None, and the caller builds an ordinary session, when borrowing does not apply: weights
already in external data (ORT maps those in place anyway), nothing large enough to borrow, or
ORT refusing the session (e.g. an optimization level whose rewrites read initializers).

Weight pre-packing (ORT's MLAS copies MatMul/Conv weights into a blocked layout at session
start) is off unless asked for: it would bring the second copy back, and the time per batch it
saves is small next to the memory it costs (measured: docs/design-measurements.md).
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import numpy as np
import onnx_ir as ir
import onnxruntime as ort
from onnx_ir.passes.common import LiftConstantsToInitializersPass

from graphopt import runtime

BORROW_MIN_BYTES = 4096  # smaller weights are simply serialized
PLACEHOLDER = "graphopt-borrowed.bin"  # empty file: a stand-in that ORT cannot read data from
log = logging.getLogger("graphopt.shared_session")


def shared_weight_session(model: ir.Model, opt_level: str = "disable_all", threads: int = 0,
                          prepack: bool = False, low_memory: bool = False,
                          many_sessions: bool = False, owned: bool = False) -> ort.InferenceSession | None:
    """A CPU session over `model` whose large weights are the IR's own numpy buffers (or None).
    `model` is left as it was, unless `owned` (a throwaway copy the caller made for this session):
    then its weight Constants are lifted in place instead of in a clone."""
    lifting = _has_large_constants(model)
    declared = model if owned or not lifting else model.clone()  # tensors shared
    if lifting:
        LiftConstantsToInitializersPass(size_limit=BORROW_MIN_BYTES // 4)(declared)
    arrays = _borrowable(declared)
    if not arrays:
        return None
    proto = _declaring_bytes(declared, arrays)
    so = runtime.session_options(opt_level, threads, low_memory, many_sessions)
    if not prepack:
        so.add_session_config_entry("session.disable_prepacking", "1")
    values = {name: ort.OrtValue.ortvalue_from_numpy(array) for name, array in arrays.items()}
    for name, value in values.items():
        so.add_initializer(name, value)
    with tempfile.TemporaryDirectory(prefix="graphopt-borrow-") as folder:
        Path(folder, PLACEHOLDER).touch()
        so.add_session_config_entry("session.model_external_initializers_file_folder_path", folder)
        try:
            session = ort.InferenceSession(proto, so, providers=["CPUExecutionProvider"])
        except Exception as exc:  # noqa: BLE001  (ORT raises private types; the caller falls back)
            log.debug("borrowed-weight session refused (%s); using a copying session", exc)
            return None
    session.graphopt_borrowed = (arrays, values)  # the buffers must outlive the session
    return session


def _declaring_bytes(model: ir.Model, arrays: dict[str, np.ndarray]) -> bytes:
    """The model serialized with each of `arrays` declared as a placeholder external tensor; the
    initializers get their own tensors back afterwards (no clone of the graph needed)."""
    initializers = model.graph.initializers
    held = {name: initializers[name].const_value for name in arrays}
    try:
        for name, array in arrays.items():
            initializers[name].const_value = ir.ExternalTensor(
                PLACEHOLDER, 0, array.nbytes, ir.DataType.from_numpy(array.dtype),
                shape=ir.Shape(array.shape), name=name)
        return ir.serde.serialize_model(model).SerializeToString()
    finally:
        for name, tensor in held.items():
            initializers[name].const_value = tensor


def _has_large_constants(model: ir.Model) -> bool:
    """Weights held by main-graph Constant nodes (Paddle and TF exports): they are lifted
    into initializers so that they are borrowed too (ORT would copy them out of the bytes)."""
    for node in model.graph:
        value = node.attributes.get("value") if node.op_type == "Constant" and node.domain in ("", "ai.onnx") else None
        if value is not None and value.type == ir.AttributeType.TENSOR and value.value.nbytes >= BORROW_MIN_BYTES:
            return True
    return False


def _borrowable(model: ir.Model) -> dict[str, np.ndarray]:
    """{name: C-contiguous array} of the main graph's large in-memory numeric initializers;
    {} when any weight lives in external data (that path already avoids the copy)."""
    arrays = {}
    for name, value in model.graph.initializers.items():
        tensor = value.const_value
        if tensor is None:
            continue
        if isinstance(tensor, ir.ExternalTensor):
            return {}
        if tensor.nbytes < BORROW_MIN_BYTES or tensor.dtype in _NOT_NUMPY:
            continue
        array = tensor.numpy()
        if array.dtype.kind not in "fiub" or array.dtype.itemsize != tensor.dtype.itemsize:
            continue
        arrays[name] = np.ascontiguousarray(array)
    return arrays


_NOT_NUMPY = {ir.DataType.STRING, ir.DataType.BFLOAT16, ir.DataType.FLOAT8E4M3FN, ir.DataType.FLOAT8E4M3FNUZ,
              ir.DataType.FLOAT8E5M2, ir.DataType.FLOAT8E5M2FNUZ, ir.DataType.INT4, ir.DataType.UINT4,
              ir.DataType.FLOAT4E2M1}
