"""Building an ORT session from an in-memory model without serializing its large weights.

Every candidate a budget search measures, and every verification, builds a session. Serializing
the model to bytes copies each weight into the protobuf, and ORT parses it back out: for a 54 MB
recognizer that was most of a session build. ORT's `SessionOptions.add_external_initializers`
takes the tensors directly instead: an initializer the model marks as external data is replaced
by the given OrtValue before any graph optimization, so the session computes exactly what it
would from the serialized weights. Here each in-memory initializer of the main graph of at
least `SHARED_MIN_BYTES`, of a dtype numpy holds natively and read by a node or a graph output
(ORT drops unread initializers before replacing any), is written as an external-data
placeholder (no bytes) and handed over as an OrtValue over its numpy array (no copy; ORT copies
it into the session). The model is left as it was (each placeholder is swapped back at once).
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import onnxruntime as ort

SHARED_MIN_BYTES = 1 << 16
PLACEHOLDER = "graphopt-in-memory-weight"  # never read: ORT replaces the tensor before loading data
NUMPY_DTYPES = frozenset({ir.DataType.FLOAT, ir.DataType.FLOAT16, ir.DataType.DOUBLE, ir.DataType.INT8,
                          ir.DataType.UINT8, ir.DataType.INT16, ir.DataType.UINT16, ir.DataType.INT32,
                          ir.DataType.UINT32, ir.DataType.INT64, ir.DataType.UINT64, ir.DataType.BOOL})


def _shareable(tensor) -> bool:
    return (tensor is not None and not isinstance(tensor, ir.ExternalTensor)
            and tensor.dtype in NUMPY_DTYPES and tensor.nbytes >= SHARED_MIN_BYTES)


def serialize_sharing_weights(model: ir.Model) -> tuple[bytes, list[str], list[ort.OrtValue]]:
    """(model bytes without the large in-memory weights, their names, their OrtValues) for
    `SessionOptions.add_external_initializers` (module docstring)."""
    shared = [(value, value.const_value) for value in model.graph.initializers.values()
              if _shareable(value.const_value) and (value.uses() or value.is_graph_output())]
    arrays = []
    try:
        for value, tensor in shared:
            array = np.ascontiguousarray(tensor.numpy())
            arrays.append(array)
            value.const_value = ir.ExternalTensor(PLACEHOLDER, 0, array.nbytes, tensor.dtype,
                                                  shape=tensor.shape, name=value.name)
        data = ir.serde.serialize_model(model).SerializeToString()
    finally:
        for value, tensor in shared:
            value.const_value = tensor
    return data, [value.name for value, _ in shared], [ort.OrtValue.ortvalue_from_numpy(a) for a in arrays]
