"""The pass API: `Pass`, `PassResult`, `PassContext`, and the pass registry.

A pass is a small class with a name, a typed `Options` dataclass, a tolerance class, the
analyses it preserves, `requires(model, ctx)` (why it does not apply, or None) and one
`run(model, ctx)`. It edits the IR only through onnx_ir's
safe primitives and creates new tensors under fresh names (never writing into a shared
buffer), so the manager can roll it back by keeping the pre-pass clone. Logging, timing,
verification and benchmarking are the manager's job, not the pass's.
"""

from __future__ import annotations

import abc
import contextlib
import dataclasses
import logging
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Iterable, Sequence

import numpy as np
import onnx_ir as ir

from graphopt.deadline import Deadline
from graphopt.errors import InputError
from graphopt.options import NoOptions, build_options
from graphopt.tolerance import Budget, Exact, Tolerance

Feed = dict[str, np.ndarray]


def default_opset(model: ir.Model) -> int:
    """The model's opset for the default ONNX domain ("" or its alias "ai.onnx"); 1 if absent."""
    return model.opset_imports.get("", model.opset_imports.get("ai.onnx", 1))


def structure_fingerprint(model: ir.Model) -> tuple:
    """What a pass that reports no change must leave as it was: every graph's nodes (op,
    input and output names, scalar attributes), inputs, outputs and initializers (by name and
    tensor object), the opsets and the IR version. Types, shapes and tensor contents in place
    are not covered; cheap (no data is read)."""
    graphs = []
    for graph in model.graphs():
        nodes = tuple((n.domain, n.op_type, tuple(v.name if v is not None else "" for v in n.inputs),
                       tuple(v.name for v in n.outputs),
                       tuple(sorted((k, repr(a.value)) for k, a in n.attributes.items()
                                    if a.type not in _NESTED_ATTRIBUTES)))
                      for n in graph)
        graphs.append((nodes, tuple(v.name for v in graph.inputs), tuple(v.name for v in graph.outputs),
                       tuple((k, id(v.const_value)) for k, v in graph.initializers.items())))
    return tuple(graphs), tuple(sorted(model.opset_imports.items())), model.ir_version


def types_fingerprint(model: ir.Model) -> tuple:
    """Every value's type and shape, graph by graph (what shape inference may change)."""
    graphs = []
    for graph in model.graphs():
        values = [*graph.inputs, *(v for node in graph for v in node.outputs)]
        graphs.append(tuple((v.name, repr(v.type), repr(v.shape)) for v in values))
    return tuple(graphs)


_NESTED_ATTRIBUTES = frozenset({ir.AttributeType.GRAPH, ir.AttributeType.GRAPHS, ir.AttributeType.TENSOR,
                                ir.AttributeType.TENSORS})


@dataclass
class PassResult:
    model: ir.Model
    modified: bool
    stats: dict[str, Any] = field(default_factory=dict)


class NameAuthority:
    """Hands out value/node names unused anywhere in the model (subgraphs included)."""

    def __init__(self, model: ir.Model):
        self._used = set()
        for node in ir.traversal.RecursiveGraphIterator(model.graph):
            self._used.add(node.name)
            self._used.update(v.name for v in node.outputs)
        self._used.update(v.name for v in model.graph.inputs)
        self._used.update(model.graph.initializers)

    def fresh(self, base: str) -> str:
        name, i = base, 0
        while name in self._used:
            i += 1
            name = f"{base}_{i}"
        self._used.add(name)
        return name


@dataclass
class PassContext:
    """What a pass may use besides the model: analyses, names, seed, logger, data. No globals."""

    seed: int = 0
    logger: logging.Logger = field(default_factory=lambda: logging.getLogger("graphopt"))
    calibration: Callable[[], Iterable[Feed]] | None = None
    budget: Budget = field(default_factory=Budget)
    holdout: Sequence[Feed] = field(default_factory=list)  # verification feeds (the manager sets them)
    reference: list[Feed] | None = None  # the input model's outputs on `holdout`
    search: list[Feed] = field(default_factory=list)  # feeds lossy passes size themselves on (run_data)
    search_reference: list[Feed] | Callable[[], list[Feed]] | None = None  # the input model's outputs on
    # `search`, or a function computing them when a pass first needs them
    progress: Callable[[str], None] | None = None
    retry_memo: dict | None = None  # a lossy pass's measurements across its retries (graphopt.search_memo)
    deadline: Deadline = field(default_factory=Deadline)  # --max-time (graphopt.deadline)
    _analyses: dict[type, Any] = field(default_factory=dict)
    _names: NameAuthority | None = None
    _evaluator: Any = None
    _names_model: ir.Model | None = None

    def analysis(self, analysis_cls: type, model: ir.Model) -> Any:
        """Compute `analysis_cls(model)` once; cached until a pass that does not preserve it."""
        cached = self._analyses.get(analysis_cls)
        if cached is None or cached[0] is not model:
            self._analyses[analysis_cls] = (model, analysis_cls(model))
        return self._analyses[analysis_cls][1]

    def invalidate(self, preserved: frozenset[type]) -> None:
        self._analyses = {k: v for k, v in self._analyses.items() if k in preserved}

    def names(self, model: ir.Model) -> NameAuthority:
        if self._names is None or self._names_model is not model:
            self._names, self._names_model = NameAuthority(model), model
        return self._names

    def calibration_source(self) -> tuple[Callable[[], Iterable[Feed]], str]:
        """Calibration feeds (a re-iterable source) and where they come from; without --calib,
        the verification feeds stand in (synthesized unless the user gave --data)."""
        if self.calibration is not None:
            return self.calibration, "calibration data"
        if not self.holdout:
            raise InputError("this pass needs calibration data (--calib) or feeds to verify with")
        feeds = list(self.holdout)
        return (lambda: iter(feeds)), "verification feeds (no --calib given)"

    def evaluator(self, model: ir.Model):
        """An `Evaluator` against the run's input-model reference on the search feeds, which the
        verification never sees (graphopt.run_data); without them, on the verification feeds. The
        reference is computed from `model` when the run has none (e.g. with --verify off)."""
        from graphopt.lossy import Evaluator

        if self.search and self.search_reference is not None:
            if callable(self.search_reference):
                self.search_reference = self.search_reference()
            feeds, reference = self.search, self.search_reference
        elif self.reference is not None and self.holdout:
            feeds, reference = self.holdout, self.reference
        else:
            return Evaluator.for_model(model, self.holdout)
        cached = self._evaluator
        if cached is None or cached.feeds is not feeds or cached.reference is not reference:
            # one per run: the hard feeds it found stay first for the next search (graphopt.staged)
            self._evaluator = cached = Evaluator(feeds, reference)
        return cached

    def search_memo(self, *namespace):
        """The measurements a budget search keyed by `namespace` made in an earlier try of the
        same pass (graphopt.search_memo); empty outside `run_with_retries`."""
        from graphopt.search_memo import SearchMemo

        label = str(namespace[0]) if namespace else "budget search"
        if self.retry_memo is None:
            return SearchMemo(self.deadline, label)
        return self.retry_memo.setdefault(namespace, SearchMemo(self.deadline, label))

    def across_retries(self, key: tuple, compute: Callable[[], Any]) -> tuple[Any, bool]:
        """(`compute()`, False), or (what it returned in an earlier try of the same pass, True):
        for results a budget retry cannot change (calibration ranges, a latency check of the
        fully quantized variants); computed afresh outside `run_with_retries`."""
        if self.retry_memo is None:
            return compute(), False
        slot = ("across retries",) + key
        if slot in self.retry_memo:
            return self.retry_memo[slot], True
        self.retry_memo[slot] = value = compute()
        return value, False

    def no_match(self, pass_name: str, where: str, reason: str) -> None:
        """Record why a rewrite did not fire (visible with --debug)."""
        self.logger.debug("%s: no match at %s: %s", pass_name, where, reason)


@contextlib.contextmanager
def quiet_libraries(*names: str):
    """onnx_ir and onnxscript log every skipped candidate at INFO/WARNING; keep that for --debug."""
    loggers = [logging.getLogger(n) for n in (names or ("onnx_ir", "onnxscript"))]
    previous = [lg.level for lg in loggers]
    if not logging.getLogger("graphopt").isEnabledFor(logging.DEBUG):
        for lg in loggers:
            lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, previous):
            lg.setLevel(level)


class Pass(abc.ABC):
    """Base class of every graphopt pass."""

    name: ClassVar[str]
    summary: ClassVar[str] = ""
    Options: ClassVar[type] = NoOptions
    tolerance: ClassVar[Tolerance] = Exact()
    preserves: ClassVar[frozenset[type]] = frozenset()
    # its numerics change under ORT's own rewrites (Q/DQ -> integer kernels): verified at
    # ORT_ENABLE_ALL too (graphopt.verify.verify_candidate)
    deployed_numerics: ClassVar[bool] = False

    def __init__(self, options: Any = None, **values: Any):
        if options is not None and values:
            raise TypeError("give either an Options instance or keyword options, not both")
        self.options = options if options is not None else build_options(self.name, self.Options, values)

    def requires(self, model: ir.Model, ctx: PassContext) -> str | None:
        """Why this pass does not apply to `model` (a precondition it lacks: an opset, a target),
        or None. Cheap and read-only. The manager asks before `run` and reports "skipped: reason"."""
        return None

    @abc.abstractmethod
    def run(self, model: ir.Model, ctx: PassContext) -> PassResult:
        """Rewrite `model` (in place or into a new model) and say whether it changed."""

    def skip_result(self, model: ir.Model, ctx: PassContext) -> PassResult | None:
        """For `run` called directly: the unchanged model with `requires`' reason, or None."""
        reason = self.requires(model, ctx)
        if reason is None:
            return None
        ctx.no_match(self.name, "model", reason)
        return PassResult(model, False, {"skipped": reason})

    def declared_growth(self, stats: dict[str, Any]) -> int:
        """Bytes of constant data (`graphopt.size.data_bytes`) this run may add: the `bytes_added`
        its stats report (folding, fusion, opset, lifting), else 0: a pass that reports none
        (pruning, low rank, quantization) must not grow the weights. The manager rolls back a
        pass whose output grows beyond this (plus a small slack for scales and shapes)."""
        added = stats.get("bytes_added", 0)
        return max(int(added), 0) if isinstance(added, (int, float)) else 0

    def describe_options(self) -> dict[str, Any]:
        return dataclasses.asdict(self.options)

