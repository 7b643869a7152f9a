"""Q/DQ placement: which nodes run quantized and which tensors get a Q/DQ pair.

Placement follows the target profile (profiles.py) in three steps:

1. Units. A `compute` node (Conv, MatMul, Gemm, ...) becomes a unit when it is not excluded and
   its weight is constant (or the rule accepts a second activation, as attention's MatMuls).
   An `embedding` Gather with a constant 2-D table becomes a unit (its table is stored as INT8).
2. Tensors. The activation inputs of every unit are quantized, and so are unit outputs whose
   kernel needs an output Q (QLinearConv). Then, to a fixed point: a `shared` op (Reshape,
   Transpose, MaxPool, ...) whose input is quantized gets a quantized output in the same scale
   group; an `elementwise` op (Add, Concat, pooling) all of whose non-constant inputs are
   quantized becomes a unit too (its constant inputs are quantized like activations).
   A rule with `always` (the qnn profile's, and its `default` rule for op types it does not list)
   places its op whatever the neighbours: an elementwise op becomes a unit on every float input
   (constants too) with a Q on every float output, a shared op quantizes its float input and
   outputs; an op with no float input or output (an integer path: shapes, indices) is left alone.
3. Relu folding. When a quantized tensor is the output of a Relu or Clip(0, b) whose input has no
   other use, the Q moves onto that input with the clipped range [max(0, lo), min(b, hi)] and the
   Relu/Clip goes away: with a zero point at the bottom of the range, saturation is the clamp.

Scale groups: tensors joined by `shared` ops or a unit with `shares_scale` (Concat, pooling) get
one (scale, zero point), the union of their ranges, so runtimes drop the Q/DQ pairs around them.

Widening (a profile with `wide`, qnn): the budget search's units are not put back to float but
get their activation tensors (non-constant inputs, quantized outputs) in the wide type; a scale
group with one such member is wide as a whole (`Plan.widened`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx_ir as ir

from graphopt.exclusion import Exclusion
from graphopt.passes.quantize.profiles import OpRule, QuantProfile

FLOAT_TYPES = frozenset({ir.DataType.FLOAT, ir.DataType.FLOAT16, ir.DataType.BFLOAT16})
SHARES_SCALE = frozenset({"Concat", "MaxPool", "AveragePool", "GlobalAveragePool", "Resize"})


@dataclass
class Unit:
    key: str  # the node's name, or op_type_index for an unnamed node (stable across clones)
    node: ir.Node
    rule: OpRule
    activations: list[int]  # input indices quantized as activations
    weight: int | None = None  # input index of the constant weight
    bias: int | None = None
    names: tuple[str, ...] = ()  # the activation inputs' names when planned (before any rewiring)

    def __post_init__(self):
        self.names = tuple(self.node.inputs[i].name for i in self.activations)


@dataclass
class Plan:
    units: dict[str, Unit] = field(default_factory=dict)  # node key -> unit
    tensors: set[str] = field(default_factory=set)  # quantized values (names, before folding)
    folds: dict[str, ir.Node] = field(default_factory=dict)  # quantized value -> Relu/Clip absorbed
    groups: list[set[str]] = field(default_factory=list)  # scale-sharing groups (>1 member)
    skipped: dict[str, str] = field(default_factory=dict)  # node key -> why it stays float
    keys: dict[ir.Node, str] = field(default_factory=dict)
    by_node: dict[ir.Node, Unit] = field(default_factory=dict)

    def add(self, unit: Unit) -> None:
        self.units[unit.key] = unit
        self.by_node[unit.node] = unit
        self.skipped.pop(unit.key, None)

    def unit_of(self, node: ir.Node | None) -> Unit | None:
        return self.by_node.get(node) if node is not None else None

    def widened(self, units: frozenset[str]) -> frozenset[str]:
        """The tensors a budget fallback widens for `units`: their non-constant activation inputs and
        quantized outputs, with every scale group holding one of them (a group is one type)."""
        folded = {fold.inputs[0].name: name for name, fold in self.folds.items()}
        wide: set[str] = set()
        for key in units & self.units.keys():
            node = self.units[key].node
            wide.update(node.inputs[i].name for i in self.units[key].activations if not is_constant(node.inputs[i]))
            wide.update(folded.get(o.name, o.name) for o in node.outputs)
        for group in self.groups:
            if group & wide:
                wide |= group
        return frozenset(wide & self.tensors)

    def physical(self, name: str) -> str:
        """The value that carries the Q for quantized `name` (the Relu input when folded)."""
        fold = self.folds.get(name)
        return fold.inputs[0].name if fold is not None else name


def is_float(value: ir.Value | None) -> bool:
    return value is not None and value.dtype in FLOAT_TYPES


def constant_array(value: ir.Value | None) -> np.ndarray | None:
    """The value's data if it is an initializer or a Constant node's output, else None."""
    tensor = ir.convenience.get_const_tensor(value) if value is not None else None
    return tensor.numpy() if tensor is not None else None


def is_constant(value: ir.Value | None) -> bool:
    return value is not None and (value.const_value is not None or (
        value.producer() is not None and value.producer().op_type == "Constant"))


def _unit_for(key: str, node: ir.Node, rule: OpRule, profile: QuantProfile) -> Unit | str:
    """A unit for a compute/activation/embedding node, or why not."""
    if rule.role == "activation":
        acts = [i for i in rule.activations if i < len(node.inputs) and node.inputs[i] is not None]
        if len(acts) < len(rule.activations) or any(is_constant(node.inputs[i]) for i in acts):
            return "not every operand is an activation (a bias or scale Add stays float)"
        if any(not is_float(node.inputs[i]) for i in acts):
            return "an operand is not float"
        if rule.skip_fused:
            unfused = [i for i in acts if not _computed(node.inputs[i], profile)]
            acts = unfused or acts[-1:]
        return Unit(key, node, rule, acts)
    if rule.role == "embedding":
        table = node.inputs[0]
        if not is_constant(table):
            return "Gather table is not constant (quantized as a shared op instead)"
        if node.attributes.get_int("axis", 0) != 0 or constant_array(table).ndim != 2:
            return "embedding Gather needs a 2-D table gathered on axis 0"
        if not is_float(table):
            return "Gather table is not float"
        if node.outputs[0].is_graph_output():
            return "the gathered rows are a graph output"
        return Unit(key, node, rule, [], weight=0)
    weight = node.inputs[rule.weight] if rule.weight is not None and len(node.inputs) > rule.weight else None
    acts = [i for i in rule.activations if i < len(node.inputs) and node.inputs[i] is not None]
    if any(not is_float(node.inputs[i]) for i in acts) or not acts:
        return "activation input is not float (or its type is unknown)"
    if weight is not None and not is_constant(weight):
        if rule.weight_required:
            producer = weight.producer()
            where = f"computed by {producer.op_type}" if producer is not None else "a graph input"
            return f"weight {weight.name!r} is not constant ({where}); run lift-constants/fold-constants first"
        if not is_float(weight):
            return "second input is not float"
        return Unit(key, node, rule, acts + [rule.weight])
    if weight is None:
        return "no weight input"
    if not rule.depthwise and node.attributes.get_int("group", 1) > 1:
        return "grouped/depthwise Conv: the profile keeps it float (its int8 kernel is slower here)"
    bias = rule.bias if rule.bias is not None and len(node.inputs) > rule.bias and is_constant(node.inputs[rule.bias]) else None
    return Unit(key, node, rule, acts, weight=rule.weight, bias=bias)


def _computed(value: ir.Value, profile: QuantProfile) -> bool:
    """Whether a compute op of the profile (Conv, MatMul, ...) produces `value`."""
    producer = value.producer()
    rule = profile.rule(producer.op_type) if producer is not None else None
    return rule is not None and rule.role == "compute"


def _elementwise_inputs(node: ir.Node, rule: OpRule) -> list[int]:
    indices = rule.activations or tuple(range(len(node.inputs)))
    return [i for i in indices if i < len(node.inputs) and node.inputs[i] is not None]


def build_plan(graph: ir.Graph, profile: QuantProfile, excluded: Exclusion,
               float_tensors: frozenset[str] = frozenset(), disabled: frozenset[str] = frozenset()) -> Plan:
    """Placement on the main graph; `disabled` nodes (budget fallback) stay float."""
    plan = Plan(keys={node: node.name or f"{node.op_type}_{i}" for i, node in enumerate(graph)})
    for node in graph:
        rule = profile.rule(node.op_type)
        if rule is None or node.domain not in ("", "ai.onnx"):
            continue
        key = plan.keys[node]
        reason = excluded(node) or ("kept float by the accuracy budget" if key in disabled else None)
        if reason is None:
            reason = _place(key, node, rule, profile, plan, float_tensors)
        if reason is not None:
            plan.skipped[key] = reason
    _propagate(graph, profile, plan, excluded, float_tensors, disabled)
    plan.tensors -= float_tensors
    _fold_activations(graph, profile, plan)
    plan.groups = _scale_groups(graph, plan)
    return plan


def _place(key: str, node: ir.Node, rule: OpRule, profile: QuantProfile, plan: Plan,
           float_tensors: frozenset[str]) -> str | None:
    """Place a node its own rule quantizes (compute, activation, embedding, or `always`); why not."""
    if rule.always and rule.role in ("shared", "elementwise"):
        _place_always(key, node, rule, profile, plan)
        return None
    if rule.role not in ("compute", "activation", "embedding"):
        return None
    made = _unit_for(key, node, rule, profile)
    if isinstance(made, str):
        return made
    if any(node.inputs[i].name in float_tensors for i in made.activations):
        return "an input is kept float by an override"
    plan.add(made)
    plan.tensors.update(node.inputs[i].name for i in made.activations)
    if rule.output:
        _add_outputs(node, profile, plan)
    return None


def _place_always(key: str, node: ir.Node, rule: OpRule, profile: QuantProfile, plan: Plan) -> None:
    """`always`: a shared op quantizes its float input and outputs (one scale group); an elementwise
    op becomes a unit on its float inputs, constants included, with Qs on its float outputs. An op
    with no float input or output (an integer path) is left alone."""
    outputs = [o for o in node.outputs if is_float(o)]
    if rule.role == "shared":
        source = node.inputs[0] if node.inputs else None
        if is_float(source) and outputs:
            plan.tensors.update([source.name, *(o.name for o in outputs)])
        return
    inputs = [i for i in _elementwise_inputs(node, rule) if is_float(node.inputs[i])]
    if inputs or outputs:
        plan.add(Unit(key, node, rule, inputs))
        plan.tensors.update(node.inputs[i].name for i in inputs)
        if rule.output:
            _add_outputs(node, profile, plan)


def _add_outputs(node: ir.Node, profile: QuantProfile, plan: Plan) -> None:
    """The Q of each float output of a unit whose kernel needs one."""
    plan.tensors.update(_output_tensor(o, profile) for o in node.outputs if is_float(o))


def _propagate(graph, profile, plan, excluded, float_tensors, disabled) -> None:
    """Fixed point: shared ops carry quantized values through; elementwise ops join when fed."""
    changed = True
    while changed:
        changed = False
        for node in graph:
            rule = profile.rule(node.op_type)
            if rule is None or node in plan.by_node or excluded(node) or plan.keys[node] in disabled:
                continue
            if rule.role == "shared" or (rule.role == "embedding" and not is_constant(node.inputs[0])):
                src = node.inputs[0] if node.inputs else None
                if src is not None and src.name in plan.tensors:
                    new = {o.name for o in node.outputs if is_float(o) and o.name not in float_tensors}
                    changed |= not new <= plan.tensors
                    plan.tensors |= new
            elif rule.role == "elementwise" and is_float(node.outputs[0]):
                changed |= _try_elementwise(node, rule, plan, float_tensors, profile)


def _try_elementwise(node: ir.Node, rule: OpRule, plan: Plan, float_tensors, profile: QuantProfile) -> bool:
    inputs = _elementwise_inputs(node, rule)
    live = [i for i in inputs if not is_constant(node.inputs[i])]
    if not live or any(node.inputs[i].name not in plan.tensors for i in live):
        return False
    if any(not is_float(node.inputs[i]) for i in inputs) or node.outputs[0].name in float_tensors:
        return False
    if not rule.constants and len(live) < len(inputs):
        return False
    plan.add(Unit(plan.keys[node], node, rule, inputs))
    plan.tensors.update(node.inputs[i].name for i in inputs)
    if rule.output:
        plan.tensors.add(_output_tensor(node.outputs[0], profile))
    return True


def _output_tensor(value: ir.Value, profile: QuantProfile) -> str:
    """The tensor whose Q serves as `value`'s output Q: a Relu/Clip(0, b) that is value's only
    consumer is absorbed by the Q (folded), so the Q is planned on its output."""
    uses = value.uses()
    if profile.fold_relu and len(uses) == 1 and not value.is_graph_output():
        node = uses[0].node
        if uses[0].idx == 0 and clip_bounds(node) is not None and is_float(node.outputs[0]):
            return node.outputs[0].name
    return value.name


def _fold_activations(graph: ir.Graph, profile: QuantProfile, plan: Plan) -> None:
    if not profile.fold_relu:
        return
    values = {o.name: o for n in graph for o in n.outputs}
    for name in sorted(plan.tensors):
        value = values.get(name)
        node = value.producer() if value is not None else None
        if node is None or clip_bounds(node) is None or node.inputs[0] is None:
            continue
        src = node.inputs[0]
        if len(src.uses()) == 1 and not src.is_graph_output() and src.name not in plan.tensors \
                and not src.is_graph_input():
            plan.folds[name] = node


def clip_bounds(node: ir.Node) -> tuple[float, float] | None:
    """(0, b) for Relu and Clip(0, b) with constant bounds; None for anything else."""
    if node.op_type == "Relu":
        return 0.0, float("inf")
    if node.op_type != "Clip":
        return None
    bounds = [node.attributes.get_float("min", float("-inf")), node.attributes.get_float("max", float("inf"))]
    for index in (1, 2):  # opset >= 11: min and max are inputs
        if len(node.inputs) > index and node.inputs[index] is not None:
            if not is_constant(node.inputs[index]):
                return None
            bounds[index - 1] = float(constant_array(node.inputs[index]).reshape(-1)[0])
    return (bounds[0], bounds[1]) if bounds[0] == 0.0 else None


def _scale_groups(graph: ir.Graph, plan: Plan) -> list[set[str]]:
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        while parent.setdefault(x, x) != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for node in graph:
        unit = plan.unit_of(node)
        shared = unit is not None and node.op_type in SHARES_SCALE
        if not shared and unit is None:
            shared = node.op_type in ("Reshape", "Transpose", "Squeeze", "Unsqueeze", "MaxPool", "Resize",
                                      "Split", "Flatten", "Slice", "Identity", "Gather", "DepthToSpace",
                                      "SpaceToDepth") and bool(node.inputs) and node.inputs[0] is not None \
                and node.inputs[0].name in plan.tensors
        if not shared:
            continue
        members = [v.name for v in list(node.inputs[:1] if unit is None else
                                        [node.inputs[i] for i in unit.activations]) + list(node.outputs)
                   if v is not None and v.name in plan.tensors]
        for other in members[1:]:
            parent[find(other)] = find(members[0])
    groups: dict[str, set[str]] = {}
    for name in parent:
        groups.setdefault(find(name), set()).add(name)
    return [g for g in groups.values() if len(g) > 1]
