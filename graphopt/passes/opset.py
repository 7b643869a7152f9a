"""Raise the default-domain (ai.onnx) opset of a model, so fusions into newer ops can fire.

Version conversion replaces each op by its definition in the target opset with the same
semantics: an attribute that became an input (ReduceMean axes at 18, Split split at 13,
Clip min/max at 11, ...) becomes a constant input, an op whose meaning changed (Softmax's
axis at 13, GroupNormalization's per-group scale at 21, GridSample's mode names at 20) is
rewritten to keep the old meaning. The values computed are those of the same kernels, hence
`exact`.

Two converters, measured on graphopt's builders, If models and external-data models:

- onnxscript's `version_converter` edits the onnx_ir model in place (no serialization, weights
  untouched, subgraphs converted) but only between opsets 18 and 25; below 18 it would only
  relabel nodes (it has no adapters for the older changes). Its adapters need shapes (without
  them GroupNormalization 20 -> 21 is silently left with the old meaning), so shape inference
  runs first; a node it reports as skipped fails the pass.
- ONNX's C++ converter covers every opset (and If/Loop bodies) but needs a ModelProto, and it
  gets GroupNormalization 20 -> 21 wrong (it keeps the per-group scale; ORT then refuses the
  model). The model goes to it without the data of large or external initializers (they
  become graph inputs for the call, as onnx_ir's `call_onnx_api` does) and the converted
  graph gets the original tensors back by name: nothing is read from disk or copied.

So the conversion runs in steps: ONNX up to opset 18, onnxscript from 18 up to 25, ONNX above.
The IR version is raised to the minimum the target opset needs. Lowering the opset is
refused (a no-op with the reason, visible with --debug): newer ops have no older equivalent
in general.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass

import onnx
import onnx.version_converter
import onnx_ir as ir
from onnx_ir.passes import common as irp
from graphopt.upstream import onnxscript_version_converter as onnxscript_vc

from graphopt.analyses import infer_shapes
from graphopt.declared_shapes import repair_exposed
from graphopt.pass_api import Pass, PassContext, PassResult, default_opset
from graphopt.size import data_bytes
from graphopt.tolerance import Exact

MAX_OPSET = onnx.defs.onnx_opset_version()
ONNXSCRIPT_RANGE = (onnxscript_vc.SUPPORTED_MIN_ONNX_OPSET, onnxscript_vc.SUPPORTED_MAX_ONNX_OPSET)
INLINE_LIMIT = 1024  # initializers with more elements than this do not travel to the C++ converter
NOT_IN_MEMORY = (ir.ExternalTensor, ir.LazyTensor)  # nor do these (reading them would load them)


@dataclass(frozen=True)
class OpsetOptions:
    target: int = 20

    def validate(self) -> None:
        if not 7 <= self.target <= MAX_OPSET:
            raise ValueError(f"target must be in [7, {MAX_OPSET}] (the installed onnx's newest opset)")


class RaiseOpset(Pass):
    name = "opset"
    summary = "raise the ai.onnx opset to `target` (ONNX / onnxscript version converters)"
    Options = OpsetOptions
    tolerance = Exact()

    def requires(self, model: ir.Model, ctx: PassContext) -> str | None:
        current, target = default_opset(model), self.options.target
        if current == target:
            return f"already at opset {current}"
        if current > target:
            return f"opset {current} > target {target}; lowering an opset is not supported"
        return None

    def run(self, model: ir.Model, ctx: PassContext) -> PassResult:
        if (skipped := self.skip_result(model, ctx)) is not None:
            return skipped
        current, target = default_opset(model), self.options.target
        bytes_before = data_bytes(model)
        irp.InlinePass()(model)  # both converters convert the main graph and its subgraphs only
        steps = conversion_steps(current, target)
        for converter, version in steps:
            CONVERTERS[converter](model, version)
        _raise_ir_version(model, target)
        # attributes that became inputs (Reshape shape, Unsqueeze axes, Clip bounds) are new constants
        stats = {"from": current, "to": target, "steps": [f"{c}:{v}" for c, v in steps],
                 "bytes_added": data_bytes(model) - bytes_before}
        repaired = repair_exposed(model)  # the new opset's inference may see wrong declarations
        if repaired:
            stats["declarations_repaired"] = repaired
        return PassResult(model, True, stats)


def conversion_steps(current: int, target: int) -> list[tuple[str, int]]:
    """[(converter, opset to reach)]: ONNX below onnxscript's range, onnxscript in it, ONNX above."""
    low, high = ONNXSCRIPT_RANGE
    steps = []
    for converter, end in (("onnx", low), ("onnxscript", high), ("onnx", target)):
        end = min(end, target)
        if end > current:
            steps.append((converter, end))
            current = end
    return steps


def convert_with_onnxscript(model: ir.Model, target: int) -> None:
    """In place, in the IR; raises where onnxscript reports a node it could not convert."""
    infer_shapes(model, strict=False)  # onnx_ir's pass would give sequence values tensor types
    with _captured_warnings(onnxscript_vc.logger.name) as skipped:
        onnxscript_vc.convert_version(model, target)
    if skipped:
        raise RuntimeError(f"onnxscript's version converter left nodes unconverted: {'; '.join(skipped[:3])}")


def convert_with_onnx(model: ir.Model, target: int) -> None:
    """ONNX's C++ converter on a proto without the large weights; they are put back by name."""
    light, held_back = _without_large_initializers(model)
    converted = onnx.version_converter.convert_version(ir.serde.serialize_model(light), target)
    graph = ir.serde.deserialize_model(converted).graph
    inputs_by_name = {value.name: value for value in graph.inputs}
    for name, was_input in held_back.items():
        value = inputs_by_name[name]
        value.const_value = model.graph.initializers[name].const_value
        graph.register_initializer(value)
        if not was_input:
            graph.inputs.remove(value)
    model.graph = graph


CONVERTERS = {"onnx": convert_with_onnx, "onnxscript": convert_with_onnxscript}


def _without_large_initializers(model: ir.Model) -> tuple[ir.Model, dict[str, bool]]:
    """A clone (tensors shared) whose large or not-in-memory initializers are data-less inputs.

    Returns the clone and {name: whether it was a graph input already}.
    """
    light = model.clone()
    held_back: dict[str, bool] = {}
    for name, value in list(light.graph.initializers.items()):
        tensor = value.const_value
        if tensor is None or (tensor.size <= INLINE_LIMIT and not isinstance(tensor, NOT_IN_MEMORY)):
            continue
        value.dtype = value.dtype or tensor.dtype
        value.shape = value.shape or ir.Shape(tensor.shape)
        held_back[name] = value.is_graph_input()
        light.graph.initializers.pop(name)
        value.const_value = None
        if not held_back[name]:
            light.graph.inputs.append(value)
    return light, held_back


class _ListHandler(logging.Handler):
    def __init__(self, messages: list[str]):
        super().__init__(logging.WARNING)
        self.messages = messages

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@contextlib.contextmanager
def _captured_warnings(logger_name: str):
    """Collect (instead of printing) the warnings a library logs, e.g. the nodes it skipped."""
    lib, messages = logging.getLogger(logger_name), []
    handler, saved = _ListHandler(messages), (lib.level, lib.propagate)
    lib.addHandler(handler)
    lib.setLevel(logging.WARNING)
    lib.propagate = False
    try:
        yield messages
    finally:
        lib.removeHandler(handler)
        lib.setLevel(saved[0])
        lib.propagate = saved[1]


def _raise_ir_version(model: ir.Model, target: int) -> None:
    needed = onnx.helper.find_min_ir_version_for([onnx.helper.make_opsetid("", target)])
    if model.ir_version is None or model.ir_version < needed:
        model.ir_version = needed
