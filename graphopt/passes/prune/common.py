"""What the three pruning passes share: weight discovery, activation statistics, edits, budget.

- Layers: Conv, ConvTranspose, Gemm and MatMul whose weight (input 1) is constant (an
  initializer or a Constant node). The weight's *reduction axis* indexes the layer's input
  channels: MatMul W[K, N] axis 0; Gemm axis 1 if transB else 0; Conv W[M, C/g, k…] axis 1;
  ConvTranspose W[C, M/g, k…] axis 0.
- Activation statistics: per-channel Σx, Σx² and count of a tensor over the calibration
  feeds (streamed batch by batch), from which mean μ_c, second moment E[x_c²] and variance.
- Budget search: candidates ordered by pruning level have (approximately) decreasing
  fidelity, so the largest level that fits the budget is found by binary search, each step
  one held-out measurement; the result is always a measured, fitting model (or none).
- Sensitivity of an item (a layer, a channel group) is its measured loss in the budget's
  primary metric when pruned alone, normalised by the room the budget leaves:
  (m₀ − m) / (m₀ − L) for a higher-is-better metric m with limit L (mirrored for max_abs).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import onnx_ir as ir

from graphopt.activations import stream_activations
from graphopt.lossy import budget_share, effective_budget, summarize, worst
from graphopt.model_stats import _node_macs
from graphopt.pass_api import PassContext
from graphopt.tolerance import BUDGET_METRICS, Budget

LAYER_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
FLOAT_KINDS = "f"


def const_array(value: ir.Value | None) -> np.ndarray | None:
    """The value's constant data (initializer or Constant node), else None."""
    if value is None:
        return None
    try:
        tensor = ir.convenience.get_const_tensor(value)
    except ValueError:
        return None
    return None if tensor is None else tensor.numpy()


def reduction_axis(node: ir.Node) -> int:
    """Axis of the node's weight (input 1) that indexes its input channels."""
    if node.op_type == "Gemm":
        return 1 if node.attributes.get_int("transB", 0) else 0
    return 1 if node.op_type == "Conv" else 0


def weight_refusal(node: ir.Node, weight: np.ndarray | None, min_elements: int = 0) -> str | None:
    """Why this layer's weight cannot be pruned, or None."""
    if weight is None:
        return "weight is not constant (a graph input or computed at run time)"
    if weight.dtype.kind not in FLOAT_KINDS:
        return f"weight dtype {weight.dtype} is not floating point"
    if node.op_type in ("MatMul", "Gemm") and weight.ndim != 2:
        return f"{node.op_type} weight has rank {weight.ndim}, expected 2"
    if node.op_type == "Gemm" and node.attributes.get_int("transA", 0):
        return "Gemm with transA=1"
    if weight.size < min_elements:
        return f"{weight.size} elements < min_elements={min_elements}"
    return None


def layer_nodes(model: ir.Model) -> list[ir.Node]:
    """Main-graph layer nodes (topological order) whose input 1 exists."""
    return [n for n in model.graph if n.op_type in LAYER_OPS and n.domain in ("", "ai.onnx")
            and len(n.inputs) > 1 and n.inputs[1] is not None]


def describe(node: ir.Node) -> str:
    return node.name or f"{node.op_type}->{node.outputs[0].name}"


def node_macs(node: ir.Node) -> int:
    """MACs of one layer from the (inferred) static shapes; 0 when unknown."""
    try:
        return int(_node_macs(node)[0])
    except (TypeError, ValueError, IndexError):
        return 0


# --- activation statistics ---------------------------------------------------------

@dataclass
class ChannelStats:
    """Running per-channel sums of a tensor along `axis`."""

    axis: int
    total: np.ndarray | None = None
    squares: np.ndarray | None = None
    count: int = 0
    cross: np.ndarray | None = None  # Σ x xᵀ over samples, when covariance was asked for
    want_cross: bool = False

    def add(self, array: np.ndarray) -> None:
        moved = np.moveaxis(array.astype(np.float64), self.axis, 0)
        flat = moved.reshape(moved.shape[0], -1)
        if self.total is None:
            self.total, self.squares = np.zeros(flat.shape[0]), np.zeros(flat.shape[0])
            if self.want_cross:
                self.cross = np.zeros((flat.shape[0], flat.shape[0]))
        self.total += flat.sum(axis=1)
        self.squares += np.square(flat).sum(axis=1)
        if self.cross is not None:
            self.cross += flat @ flat.T
        self.count += flat.shape[1]

    @property
    def covariance(self) -> np.ndarray | None:
        if self.cross is None:
            return None
        return self.cross / max(self.count, 1) - np.outer(self.mean, self.mean)

    @property
    def mean(self) -> np.ndarray:
        return self.total / max(self.count, 1)

    @property
    def second_moment(self) -> np.ndarray:
        return self.squares / max(self.count, 1)

    @property
    def variance(self) -> np.ndarray:
        return np.maximum(self.second_moment - np.square(self.mean), 0.0)


def channel_statistics(model: ir.Model, ctx: PassContext, requests: dict[str, int],
                       covariance: set[str] = frozenset()) -> tuple[dict[str, ChannelStats], str]:
    """Per-channel statistics of each `{value name: axis}` over the calibration feeds (and the
    channel covariance of the names in `covariance`)."""
    feeds, origin = ctx.calibration_source()
    stats = {name: ChannelStats(axis, want_cross=name in covariance) for name, axis in requests.items()}

    def consume(_: int, arrays: dict[str, np.ndarray]) -> None:
        for name, array in arrays.items():
            stats[name].add(array)

    if requests:
        stream_activations(model, list(requests), feeds, consume, progress=ctx.progress)
    return stats, origin


# --- edits ---------------------------------------------------------------------------

def new_initializer(model: ir.Model, ctx: PassContext, array: np.ndarray, base: str) -> ir.Value:
    name = ctx.names(model).fresh(base)
    value = ir.Value(name=name, shape=ir.Shape(array.shape), type=ir.TensorType(ir.DataType.from_numpy(array.dtype)),
                     const_value=ir.tensor(np.ascontiguousarray(array), name=name))
    model.graph.register_initializer(value)
    return value


def set_input(node: ir.Node, index: int, value: ir.Value | None) -> None:
    """Point one input of `node` at `value` (growing the input list for an optional input)."""
    if index >= len(node.inputs):
        node.resize_inputs(index + 1)
    node.replace_input_with(index, value)


def drop_unused(model: ir.Model, values: Sequence[ir.Value]) -> None:
    """Remove initializers and Constant nodes that nothing reads any more."""
    for value in values:
        if value is None or value.uses() or value.is_graph_output() or value.is_graph_input():
            continue
        if value.name in model.graph.initializers and model.graph.initializers[value.name] is value:
            del model.graph.initializers[value.name]
            continue
        producer = value.producer()
        if producer is not None and producer.op_type == "Constant" and producer.graph is model.graph:
            model.graph.remove(producer, safe=True)


# --- budget --------------------------------------------------------------------------

@dataclass
class BudgetContext:
    """The held-out evaluator, the pass's share of the budget, and the starting metrics."""

    evaluator: object
    budget: Budget
    start: dict
    evaluations: int = 0
    trace: list = field(default_factory=list)

    @classmethod
    def create(cls, model: ir.Model, ctx: PassContext, share: float, ev=None) -> BudgetContext:
        ev = ev if ev is not None else ctx.evaluator(model)
        start = ev.measure(model)
        return cls(ev, budget_share(effective_budget(ctx.budget), start, share), start, 1)

    def measure(self, model: ir.Model) -> tuple[bool, dict]:
        self.evaluations += 1
        ok, metrics = self.evaluator.fits(model, self.budget)
        return ok, metrics

    def primary(self) -> str:
        return next(iter(self.budget.limits))

    def loss(self, metrics: dict) -> float:
        """Loss in the primary metric, as a fraction of the room the budget leaves."""
        metric = self.primary()
        m0, m, limit = worst(self.start, metric), worst(metrics, metric), self.budget.limits[metric]
        sign = 1.0 if BUDGET_METRICS[metric] == "min" else -1.0
        room = max(sign * (m0 - limit), 1e-12)
        value = sign * (m0 - m) / room
        return float(value) if np.isfinite(value) else 1e6


def largest_fitting(levels: Sequence, build: Callable[[object], ir.Model], bctx: BudgetContext,
                    max_evals: int) -> tuple[int, ir.Model | None, dict | None]:
    """Binary search for the largest index whose candidate fits (fidelity assumed monotone).

    Returns (index, model, metrics); index -1 and None when not even levels[0] fits.
    """
    lo, hi, best = 0, len(levels) - 1, (-1, None, None)
    while lo <= hi and max_evals > 0:
        mid = (lo + hi) // 2
        candidate = build(levels[mid])
        ok, metrics = bctx.measure(candidate)
        max_evals -= 1
        bctx.trace.append({"level": levels[mid], "fits": ok, **summarize(metrics)})
        if ok:
            best, lo = (mid, candidate, metrics), mid + 1
        else:
            hi = mid - 1
    return best


def capped_global_selection(scores: list[np.ndarray], fraction: float, caps: list[int]) -> list[int]:
    """How many lowest-scored elements to remove from each array so that `fraction` of all
    elements go, removing at most caps[i] from array i (one global threshold, then caps)."""
    total = sum(s.size for s in scores)
    target = int(round(fraction * total))
    if target <= 0:
        return [0] * len(scores)
    pooled = np.concatenate([np.sort(s.ravel())[:cap] for s, cap in zip(scores, caps)])
    if target >= pooled.size:
        return list(caps)
    threshold = np.partition(pooled, target - 1)[target - 1]
    counts = [min(int(np.count_nonzero(s <= threshold)), cap) for s, cap in zip(scores, caps)]
    excess = sum(counts) - target  # ties at the threshold: take them back from the largest
    for i in np.argsort([-c for c in counts]):
        if excess <= 0:
            break
        give = min(excess, counts[i])
        counts[i] -= give
        excess -= give
    return counts


def value_map(model: ir.Model) -> dict[str, ir.Value]:
    """Main-graph values by name (inputs, initializers, node outputs)."""
    values = {v.name: v for v in model.graph.inputs}
    values.update(model.graph.initializers)
    for node in model.graph:
        values.update((out.name, out) for out in node.outputs)
    return values


def can_measure(ctx: PassContext) -> bool:
    return bool(ctx.holdout)


def check_fraction(name: str, value: float) -> None:
    """Options validation: a pruning fraction must lie in [0, 1)."""
    if not 0.0 <= value < 1.0:
        raise ValueError(f"{name} must be in [0, 1), got {value}")


def check_budget_options(max_evals: int, share: float) -> None:
    if max_evals < 1:
        raise ValueError(f"max_evals must be >= 1, got {max_evals}")
    if not 0.0 < share <= 1.0:
        raise ValueError(f"budget_share must be in (0, 1], got {share}")


def fill_unknown_ranks(model: ir.Model, ctx: PassContext) -> int:
    """Give values whose shape inference left them unknown a rank (dims unknown), observed in
    one run on the first calibration feed: exports with run-time Reshape targets otherwise
    hide the rank of everything downstream. Returns how many values got one."""
    unknown = [out for node in model.graph for out in node.outputs
               if out.shape is None and (out.uses() or out.is_graph_output())]
    if not unknown:
        return 0
    feeds, _ = ctx.calibration_source()
    first = next(iter(feeds() if callable(feeds) else feeds), None)
    if first is None:
        return 0
    by_name = {v.name: v for v in unknown}
    ranks: dict[str, int] = {}
    stream_activations(model, list(by_name), lambda: [first],
                       lambda _, arrays: ranks.update((n, np.ndim(a)) for n, a in arrays.items()))
    for name, rank in ranks.items():
        by_name[name].shape = ir.Shape([None] * rank)
    return len(ranks)
