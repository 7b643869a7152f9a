"""Which tensors of a node change type when the node computes in the low-precision type.

The rule comes from the op's ONNX schema at the model's opset, not from a list of ops: each
input and output is bound to a type parameter (T, T1, ...) or to a fixed type. A parameter can
convert when every present value bound to it is float32 and the schema allows tensor(float16)
(or bfloat16) for it. The node converts when such a parameter is bound to one of its present
outputs; then its *slots* are the inputs and outputs of every parameter that can convert (input-
only ones too: BatchNormalization's scale and mean, Pow's exponent). The others keep their type:
integer paths, shape and index inputs (Reshape's shape, Slice/Gather indices: int64), fixed
float32 inputs (Resize's scales). An op whose float results are not float (comparisons: bool)
does not convert: its operands are handed float32.

Special cases: Cast to float32 converts by its `to` (its input may be of any type); a Cast to
any other type is untouched. Ops with subgraphs (If, Loop, Scan) are left float32 as a whole,
bodies included. Range and ConstantOfShape (shape computations) and ops whose output type is
set by an attribute (random generators, EyeLike) are untouched. Shape, Size and Cast read any
type: they never need a Cast in front.
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx
import onnx_ir as ir

from graphopt.passes.precision.lowtypes import LowType

UNTOUCHED = {
    "Range": "shape computation (Range): untouched",
    "ConstantOfShape": "shape computation (ConstantOfShape): untouched",
    "EyeLike": "output type set by an attribute",
    "RandomNormal": "random generator: untouched",
    "RandomUniform": "random generator: untouched",
    "RandomNormalLike": "random generator: untouched",
    "RandomUniformLike": "random generator: untouched",
    "Bernoulli": "random generator: untouched",
    "Multinomial": "random generator: untouched",
}
ANY_TYPE_READERS = {("Cast", 0), ("CastLike", 0), ("Shape", 0), ("Size", 0)}
DEFAULT_DOMAINS = ("", "ai.onnx")


@dataclass(frozen=True)
class Slots:
    inputs: frozenset[int]
    outputs: frozenset[int]
    since_version: int  # the schema version the node resolves to


def reads_any_type(node: ir.Node, index: int) -> bool:
    return node.domain in DEFAULT_DOMAINS and (node.op_type, index) in ANY_TYPE_READERS


def has_float32(node: ir.Node) -> bool:
    return any(v is not None and v.dtype == ir.DataType.FLOAT for v in (*node.inputs, *node.outputs))


def node_slots(node: ir.Node, opset: int, low: LowType) -> Slots | str | None:
    """The node's slots; a reason (str) when it touches float32 but cannot convert; None when it
    touches no float32 tensor (nothing to say)."""
    if not has_float32(node) or (node.op_type == "Constant" and node.domain in DEFAULT_DOMAINS):
        return None  # constants are data: converted where a low-precision node reads them
    if node.domain not in DEFAULT_DOMAINS:
        return f"domain {node.domain!r}: no ONNX schema to check {low.name} support"
    if any(a.type in (ir.AttributeType.GRAPH, ir.AttributeType.GRAPHS) for a in node.attributes.values()):
        return f"control flow ({node.op_type}): subgraphs left float32 as a whole"
    if node.op_type in UNTOUCHED:
        return UNTOUCHED[node.op_type]
    try:
        schema = onnx.defs.get_schema(node.op_type, opset, "")
    except onnx.defs.SchemaError:
        return f"no ONNX schema for {node.op_type} at opset {opset}"
    if node.op_type == "Cast":
        return _cast_slots(node, schema.since_version)
    return _schema_slots(node, schema, low)


def _cast_slots(node: ir.Node, since: int) -> Slots | None:
    to = node.attributes.get_int("to", 0)
    if to != ir.DataType.FLOAT:
        return None  # a Cast whose target is not float32 is untouched
    return Slots(frozenset(), frozenset({0}), since)


def _formal(params, index: int):
    if index < len(params):
        return params[index]
    last = params[-1] if params else None
    variadic = last is not None and last.option == onnx.defs.OpSchema.FormalParameterOption.Variadic
    return last if variadic else None


def _bindings(node: ir.Node, schema) -> dict[str, list[tuple[str, int, ir.Value]]]:
    """Type parameter -> [("in"|"out", index, value)] of the present values bound to it."""
    bound: dict[str, list] = {}
    for kind, params, values in (("in", schema.inputs, node.inputs), ("out", schema.outputs, node.outputs)):
        for i, value in enumerate(values):
            formal = _formal(params, i)
            if value is None or formal is None:
                continue
            bound.setdefault(formal.type_str, []).append((kind, i, value))
    return bound


def _schema_slots(node: ir.Node, schema, low: LowType) -> Slots | str | None:
    allowed = {c.type_param_str: set(c.allowed_type_strs) for c in schema.type_constraints}
    wanted = f"tensor({low.name})"
    converting, input_only, refused = [], [], []
    for param, values in _bindings(node, schema).items():
        if param not in allowed:
            continue  # a fixed type (Resize's scales: tensor(float))
        dtypes = {v.dtype for _, _, v in values}
        if dtypes != {ir.DataType.FLOAT}:
            if ir.DataType.FLOAT in dtypes:
                refused.append(f"{param} binds float32 with {sorted(str(d) for d in dtypes)}")
        elif wanted not in allowed[param]:
            refused.append(f"{node.op_type}-{schema.since_version} has no {low.name} for {param}")
        elif any(kind == "out" for kind, _, _ in values):
            converting.append(values)
        else:
            input_only.append(values)
    if converting:
        bound = [item for values in converting + input_only for item in values]
        return Slots(frozenset(i for kind, i, _ in bound if kind == "in"),
                     frozenset(i for kind, i, _ in bound if kind == "out"), schema.since_version)
    if refused:
        return "; ".join(refused)
    return None if not any(v is not None and v.dtype == ir.DataType.FLOAT for v in node.outputs) \
        else f"{node.op_type}-{schema.since_version}: its float32 output is not bound to a {low.name} type"


__all__ = ["ANY_TYPE_READERS", "Slots", "UNTOUCHED", "has_float32", "node_slots", "reads_any_type"]
