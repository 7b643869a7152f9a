"""Valid in, valid out: repair declared shapes that contradict ONNX shape inference, or refuse.

Exporters and hand edits leave `value_info` and graph-output shapes that contradict what ONNX
shape inference derives from the graph (an output declared [2, 4] that is computed as [1, 4]).
ONNX Runtime runs such a model, but `onnx.checker` (full check) rejects it, and every pass
would carry the contradiction into the output file. As onnxsim users expect, the contradicted
declarations are dropped on the loaded IR before any pass runs (the input file is never
touched): an intermediate value's contradicted shape is dropped (its type kept), and one whose
declared element type is contradicted loses its declaration altogether. A graph output must keep
a shape (the checker requires the field), so its contradicted dims take the inferred values and
its other dims (symbolic names included) stay as declared; its element type is the model's
interface and is never changed. An unsorted graph is sorted (the checker
requires topological order; the nodes and what they compute stay the same).

`check_input` does the repair and reports what was dropped, plus the checker's first problem
that is left (None when the model is now valid); the caller refuses the model when one is left.
A contradiction is a rank that differs, or a static dim or element type that differs; a symbolic
dim against a static one is not.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import onnx
import onnx_ir as ir

from graphopt.errors import InputError
from graphopt.tensor_checks import proto_graphs
from graphopt.upstream import call_onnx_api
from graphopt.verify import checker_problem


@dataclass
class InputCheck:
    repaired: list[str] = field(default_factory=list)  # one line per change made to the loaded IR
    problem: str | None = None  # onnx.checker's first problem left after the repair

    def refuse_if_invalid(self, path) -> None:
        """Invalid in, said so: raise InputError (exit 2) naming the problem left, if any."""
        if self.problem is not None:
            where = f"{path}: " if path is not None else ""
            after = " (left after dropping contradicted declarations)" if self.repaired else ""
            raise InputError(f"{where}invalid ONNX model, onnx.checker: {self.problem}{after}")


def check_input(model: ir.Model) -> InputCheck:
    """Repair `model` in place where its declarations contradict inference; see the module doc."""
    problem = checker_problem(model)
    result = InputCheck(problem=problem)
    if problem is None:
        return result
    if "topologically sorted" in problem:
        try:
            model.graph.sort()
            result.repaired.append("nodes sorted into topological order")
        except ValueError:  # a cycle: nothing to repair
            pass
    result.repaired += drop_contradicted(model)
    if result.repaired:
        result.problem = checker_problem(model)
    return result


def repair_exposed(model: ir.Model) -> list[str]:
    """After a rewrite that lets shape inference see further (a raised opset, a Reshape target
    resolved to a constant), declarations the input carried unnoticed can contradict inference
    and fail the checker (ddddocr's CRNN declares its [T, 1, 8210] logits as [1, seqlen]). Only
    when the checker fails, the contradicted declarations are dropped or corrected as at load
    time (`drop_contradicted`), one line each for the pass's stats."""
    if checker_problem(model) is None:
        return []
    return drop_contradicted(model)


def drop_contradicted(model: ir.Model) -> list[str]:
    """Drop declared shapes (and intermediate types) that inference contradicts; one line each."""
    inferred = _inferred_without_declarations(model)
    if inferred is None:
        return []
    dropped = []
    for graph, inferred_graph in zip(model.graphs(), inferred.graphs()):
        known = ir.convenience.create_value_mapping(inferred_graph, include_subgraphs=False)
        outputs = set(graph.outputs)
        declared = [v for node in graph for v in node.outputs] + [v for v in graph.outputs if v.producer() is None]
        for value in declared:
            if value.name in known:
                line = _drop_one(value, known[value.name], value in outputs)
                if line:
                    dropped.append(line)
    return dropped


def _drop_one(value: ir.Value, inferred: ir.Value, is_output: bool) -> str | None:
    if not isinstance(value.type, ir.TensorType) or not isinstance(inferred.type, ir.TensorType):
        return None
    if value.dtype != inferred.dtype and inferred.dtype is not None and not is_output:
        value.type, value.shape = None, None
        return f"'{value.name}': declared type {value.dtype} contradicts the inferred {inferred.dtype}; dropped"
    if not _contradicts(value.shape, inferred.shape):
        return None
    declared = value.shape
    if not is_output:
        value.shape = None
        return f"value '{value.name}': declared shape {declared} contradicts the inferred {inferred.shape}; dropped"
    value.shape = _merged(declared, inferred.shape)  # the checker requires an output's shape field
    return f"output '{value.name}': declared shape {declared} contradicts the inferred {inferred.shape}; now {value.shape}"


def _merged(declared: ir.Shape, inferred: ir.Shape) -> ir.Shape:
    """The inferred shape, keeping each declared dim it does not contradict (symbolic names stay)."""
    if len(declared) != len(inferred):
        return ir.Shape(inferred.dims)
    return ir.Shape([b if isinstance(a, int) and isinstance(b, int) else a for a, b in zip(declared.dims, inferred.dims)])


def _contradicts(declared: ir.Shape | None, inferred: ir.Shape | None) -> bool:
    if declared is None or inferred is None:
        return False
    if len(declared) != len(inferred):
        return True
    return any(isinstance(a, int) and isinstance(b, int) and a != b for a, b in zip(declared.dims, inferred.dims))


def _inferred_without_declarations(model: ir.Model) -> ir.Model | None:
    """The model as ONNX inference types it from its inputs and weights alone (no value_info,
    no output types), or None when inference itself fails."""
    def infer(proto: onnx.ModelProto) -> onnx.ModelProto:
        for graph in proto_graphs(proto.graph):
            del graph.value_info[:]
            for output in graph.output:
                output.ClearField("type")
        return onnx.shape_inference.infer_shapes(proto, check_type=False, strict_mode=False, data_prop=True)

    try:
        return ir.serde.deserialize_model(call_onnx_api(infer, model))
    except Exception:  # noqa: BLE001  (best effort: without inference nothing is dropped)
        return None
