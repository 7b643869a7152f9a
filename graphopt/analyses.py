"""Analyses passes can ask the context for: computed lazily, cached, invalidated unless preserved.

- `Shapes`: ONNX shape inference run on the model (value types and shapes filled in, in
  place; symbolic dims stay symbolic). Holding it means "shapes are current".
"""

from __future__ import annotations

import onnx
import onnx_ir as ir

from graphopt.upstream import call_onnx_api
from graphopt.phases import timed


class Shapes:
    def __init__(self, model: ir.Model):
        self.modified = infer_shapes(model)


@timed("shape inference")
def infer_shapes(model: ir.Model, strict: bool = True) -> bool:
    """ONNX shape inference merged into the model in place; True if anything changed.

    onnx_ir 1.1's ShapeInferencePass merges only dtype and shape, so a value inferred as a
    sequence or optional of tensors was given a *tensor* type (its element type): the checker
    then rejects the model ("input_sequence ... has unsupported type: tensor(float)"). Here a
    non-tensor inferred type replaces the value's type as a whole. If inference fails, the
    model is left unchanged (as onnx_ir does)."""
    def infer(proto: onnx.ModelProto) -> onnx.ModelProto:
        return onnx.shape_inference.infer_shapes(proto, check_type=True, strict_mode=strict, data_prop=True)

    try:
        inferred = ir.serde.deserialize_model(call_onnx_api(infer, model))
    except Exception:  # noqa: BLE001  (inference is best-effort, as in onnx_ir)
        return False
    modified = False
    for graph, inferred_graph in zip(model.graphs(), inferred.graphs()):
        known = ir.convenience.create_value_mapping(inferred_graph)
        for name, value in ir.convenience.create_value_mapping(graph).items():
            if name in known:
                modified |= _merge_value(value, known[name])
    return modified


def _merge_value(value: ir.Value, inferred: ir.Value) -> bool:
    if inferred.type is not None and not isinstance(inferred.type, ir.TensorType):
        if value.type == inferred.type:
            return False
        value.type = inferred.type
        return True
    modified = False
    if inferred.shape is not None and value.shape != inferred.shape:
        value.shape, modified = inferred.shape, True
    if inferred.dtype is not None and value.dtype != inferred.dtype:
        value.dtype, modified = inferred.dtype, True
    return modified

