"""Verification instruments: is the model still valid, and does it still compute the same thing?

Structural: onnx.checker full check (large and external tensors stripped first, `checker_problem`),
topological order, unique value names, ONNX Runtime loads it. Numeric: run the candidate on
the run's feeds (ORT, graph optimizations disabled, so the graph is checked as written) and
compare with reference outputs computed once on the input model. What each output is (class
scores, embedding, ...; graphopt.output_kinds) is inferred from the input model's outputs, so
the per-sample and top-1 metrics mean the same for every candidate; a lossy verdict carries the
budget statement (graphopt.lossy.budget_statement) for the report.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
import onnx_ir as ir

from graphopt.lossy import budget_statement
from graphopt.metrics import OutputMetrics, compare_outputs
from graphopt.output_kinds import infer_kinds
from graphopt.runtime import run_model
from graphopt.tolerance import Budget, Lossy, Tolerance
from graphopt.upstream import call_onnx_api
from graphopt.phases import timed

Feed = dict[str, np.ndarray]


@dataclass
class Verdict:
    """`metrics`: this pass's change (candidate vs the model before it); `cumulative`: the
    candidate vs the input model. `outputs`: the candidate's outputs, reused as the next
    pass's baseline."""

    ok: bool
    problems: list[str]
    metrics: dict[str, OutputMetrics]
    cumulative: dict[str, OutputMetrics] = field(default_factory=dict)
    outputs: list[Feed] | None = None
    budget: dict | None = None  # lossy verdicts: graphopt.lossy.budget_statement

    def summary(self) -> dict:
        """Worst case over outputs, for the report."""
        if not self.metrics:
            return {"ok": self.ok, "problems": self.problems}
        extra = {"budget": self.budget} if self.budget is not None else {}
        return {"ok": self.ok, "problems": self.problems, **worst_case(self.metrics),
                "vs_input": worst_case(self.cumulative or self.metrics),
                "outputs": {name: m.to_dict() for name, m in self.metrics.items()}, **extra}


def worst_case(metrics: dict[str, OutputMetrics]) -> dict:
    """Whole-tensor statistics (cosine, snr_db, ...) and the per-sample ones the budget judges."""
    ms = list(metrics.values())

    def lowest(attr: str):
        values = [getattr(m, attr) for m in ms if getattr(m, attr) is not None]
        return min(values) if values else None

    return {"max_abs": max(m.max_abs for m in ms), "mean_abs": max(m.mean_abs for m in ms),
            "cosine": min(m.cosine for m in ms), "snr_db": min(m.snr_db for m in ms),
            "max_ulps": max(m.max_ulps for m in ms), "top1": lowest("top1"),
            "top1_dist": lowest("top1_dist"), "sample_cosine": lowest("sample_cosine"),
            "samples": max(m.samples for m in ms)}


@timed("checker")
def structural_problems(model: ir.Model, checked: bool = False) -> list[str]:
    """Problems that make the file invalid, without running it (empty list when fine);
    `checked`: onnx.checker already passed on this model (the input, after declared_shapes)."""
    problems = []
    if not checked and (problem := checker_problem(model)) is not None:
        problems.append(f"onnx.checker: {problem}")
    problems += _order_and_name_problems(model)
    problems += ir3_initializer_problems(model)
    return problems[:5]


def checker_problem(model: ir.Model) -> str | None:
    """onnx.checker's (full check) first problem with the model, or None. Large tensors are
    stripped (onnx_ir's call_onnx_api) and tensors kept in external files are checked as typed
    graph inputs, not read: the checker resolves their locations against the current directory,
    not the model's, and their contents were checked at load (graphopt.tensor_checks)."""
    def check(proto: onnx.ModelProto) -> None:
        _drop_external_initializers(proto.graph)
        onnx.checker.check_model(proto, full_check=True)

    try:
        call_onnx_api(check, model)
    except Exception as exc:  # noqa: BLE001  (the checker raises several types)
        return _first_line(exc)
    return None


def _drop_external_initializers(graph: onnx.GraphProto) -> None:
    """call_onnx_api lists every initializer as a graph input too; external ones leave the list."""
    kept = [t for t in graph.initializer if t.data_location != onnx.TensorProto.EXTERNAL]
    if len(kept) != len(graph.initializer):
        del graph.initializer[:]
        graph.initializer.extend(kept)


def ir3_initializer_problems(model: ir.Model) -> list[str]:
    """IR version < 4 requires every initializer to be listed as a graph input too.

    The checker above cannot see this: onnx_ir's CheckerPass lists initializers as inputs
    while it checks (to strip large tensors), so a pass that adds an initializer to an IR-3
    model would pass it and the saved file would fail `onnx.checker`."""
    if model.ir_version is None or model.ir_version >= 4:
        return []
    inputs = {v.name for v in model.graph.inputs}
    missing = [name for name in model.graph.initializers if name not in inputs]
    if not missing:
        return []
    return [f"onnx.checker: initializer '{missing[0]}' is not a graph input (IR version "
            f"{model.ir_version} requires it; {len(missing)} such initializer(s))"]


def _order_and_name_problems(model: ir.Model) -> list[str]:
    problems, names = [], set()
    for graph in model.graphs():
        done: set[ir.Node] = set()
        for node in graph:
            for value in node.inputs:
                producer = value.producer() if value is not None else None
                if producer is not None and producer.graph is graph and producer not in done:
                    problems.append(f"not in topological order: '{node.name}' uses '{value.name}' "
                                    "before it is produced")
            for value in node.outputs:
                if value.name in names:
                    problems.append(f"value name '{value.name}' is produced twice")
                names.add(value.name)
            done.add(node)
    return problems



@timed("reference outputs")
def reference_outputs(source, feeds: list[Feed]) -> list[Feed]:
    """Outputs of the input model (a path or an IR model) on every feed."""
    return run_model(source, feeds)


@timed("verification")
def verify_candidate(model: ir.Model, feeds: list[Feed], previous: list[Feed], tolerance: Tolerance,
                     budget: Budget, known: frozenset[str] = frozenset(),
                     reference: list[Feed] | None = None, kinds: dict | None = None,
                     deployed: bool = False) -> Verdict:
    """Full check of one candidate.

    Exact and reassoc tolerances judge the pass's own change (against `previous`, the outputs
    of the model before it); lossy ones judge the accumulated change against `reference`
    (the input model's outputs) with the run's budget. `known` holds structural problems
    the input model already had; only new ones count. `kinds`: what each output is, inferred
    once per run by the caller (inferred here from the reference when not given).

    The graph is run as written (ORT_DISABLE_ALL). `deployed` (a lossy pass whose numerics ORT's
    own rewrites change: Q/DQ becomes QLinearConv / MatMulInteger kernels that round once, not
    twice) also judges the budget on the model as deployments run it (ORT_ENABLE_ALL); a miss
    there is a problem like any other, named "(ORT_ENABLE_ALL)".
    """
    problems = [p for p in structural_problems(model) if p not in known]
    if problems:
        return Verdict(False, problems, {})
    try:
        outputs = run_model(model, feeds)
    except Exception as exc:
        return Verdict(False, [str(exc)], {})
    if kinds is None:
        kinds = infer_kinds(reference if reference is not None else previous, feeds)
    delta = compare_outputs(previous, outputs, kinds)
    same = reference is None or reference is previous  # a run's first change: one comparison
    cumulative = delta if same else compare_outputs(reference, outputs, kinds)
    problems = [f"{name}: output shape changed" for name, m in delta.items() if not m.shape_match]
    problems += tolerance.violations(cumulative if isinstance(tolerance, Lossy) else delta, budget)
    if deployed and isinstance(tolerance, Lossy) and reference is not None:
        problems += _deployed_problems(model, feeds, reference, kinds, tolerance, budget)
    statement = None
    if isinstance(tolerance, Lossy):
        statement = budget_statement(budget if budget.limits else tolerance.default, cumulative,
                                     explicit=bool(budget.limits))
    return Verdict(not problems, problems, delta, cumulative, outputs, statement)


def _deployed_problems(model: ir.Model, feeds: list[Feed], reference: list[Feed], kinds: dict,
                       tolerance: Tolerance, budget: Budget) -> list[str]:
    """The budget's misses on the model run at ORT_ENABLE_ALL (see verify_candidate)."""
    try:
        outputs = run_model(model, feeds, opt_level="enable_all")
    except Exception as exc:  # noqa: BLE001  (ORT raises several private types)
        return [f"(ORT_ENABLE_ALL) {_first_line(exc)}"]
    return [f"(ORT_ENABLE_ALL) {p}" for p in tolerance.violations(compare_outputs(reference, outputs, kinds), budget)]


def _first_line(exc: Exception) -> str:
    lines = [line for line in str(exc).strip().splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__
