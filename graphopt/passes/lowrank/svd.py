"""`svd`: a constant-weight MatMul or Gemm replaced by two thinner ones, x·W ≈ (x·A)·B.

W (K x N, after Gemm's transB) is factored by truncated SVD, plain or data-aware (whitened by
the layer input's second moment; the math is in factor.py): A = U_r Σ_r^½ (K x r),
B = Σ_r^½ V_rᵀ (r x N), un-whitened when data-aware. MACs per output row drop from K·N to
r·(K+N), so only r < K·N/(K+N) saves anything; a rank at or above that break-even is refused.

- MatMul(x, W), x of any rank ≥ 1: MatMul(MatMul(x, A), B).
- Gemm(X, W, C; transA, transB, alpha, beta) = alpha·op(X)·op(W) + beta·C:
  Gemm(MatMul-or-Gemm(X, A; transA), B, C; alpha, beta), so op(X)·A·B = op(X)·op(W) and the bias
  stays on the second factor with its alpha/beta.
The last node takes over the output value (name, dtype, shape); factors are stored in the weight's
dtype (computed in float64).

Rank per layer: `energy` (fraction of W's squared singular values kept; the same rank rule with
or without data, so data-aware only changes which rank-r factors are kept, never r: output energy
would let an activation mean that dominates the second moment pick rank 1), `rank_ratio` (r = ratio·min(K, N)), `rank` (fixed; refused above min(K, N)),
or `budget` (select.py: the largest FLOP saving whose measured held-out error fits the
run's --budget). Refused with a reason: non-constant, shared or non-float weights, a constant
left operand, weights smaller than `min_size`, ranks at the break-even, and (speed gate on)
ranks the ORT CPU EP does not run faster (speed.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx_ir as ir

from graphopt.pass_api import PassContext, default_opset
from graphopt.passes.lowrank.factor import (LowRank, Whitening, break_even_rank, factorize, relative_errors)
from graphopt.passes.lowrank.graph import add_initializer, constant_array, fresh_node, replace_with_chain, \
    weight_refusal
from graphopt.passes.lowrank.run import LayerData, LowRankOptions, LowRankPass
from graphopt.passes.lowrank.select import Level
from graphopt.passes.lowrank.speed import SpeedCache

DEFAULT_ENERGY = 0.95
GRID_SAVINGS = (0.1, 0.15, 0.25, 0.35, 0.45, 0.55, 0.65, 0.75, 0.85)  # fractions of dense MACs saved


@dataclass(frozen=True)
class SvdOptions(LowRankOptions):
    rank_ratio: float | None = None  # r = rank_ratio · min(K, N)
    rank: int | None = None  # the same r for every layer

    def validate(self) -> None:
        if self.rank_ratio is not None and not 0 < self.rank_ratio <= 1:
            raise ValueError(f"rank_ratio must be in (0, 1], got {self.rank_ratio}")
        if self.rank is not None and self.rank < 1:
            raise ValueError(f"rank must be >= 1, got {self.rank}")
        super().validate()


@dataclass
class MatrixLayer:
    index: int  # position in the main graph (stable across clones)
    where: str
    node: ir.Node
    x: ir.Value
    weight: np.ndarray  # K x N, as in y = x·W
    dtype: np.dtype
    channel_axis: int = -1
    rows: int | None = None  # M in the first held-out feed
    plain: LowRank | None = None
    aware: LowRank | None = None
    data: LayerData | None = None
    timings: dict = field(default_factory=dict)  # rank -> micro-benchmark ms
    probe: dict | None = None

    @property
    def k(self) -> int:
        return self.weight.shape[0]

    @property
    def n(self) -> int:
        return self.weight.shape[1]

    @property
    def dense_macs(self) -> int:
        return (self.rows or 1) * self.k * self.n

    @property
    def factors(self) -> LowRank:
        return self.aware or self.plain

    def macs(self, rank: int) -> int:
        return (self.rows or 1) * rank * (self.k + self.n)


class SvdPass(LowRankPass):
    name = "svd"
    summary = "factor constant-weight MatMul/Gemm into two thinner ones (plain or data-aware SVD), where it is faster"
    Options = SvdOptions

    def find_layers(self, model: ir.Model, ctx: PassContext):
        layers, skipped = [], []
        min_size = self.options.min_size
        for index, node in enumerate(model.graph):
            if node.op_type not in ("MatMul", "Gemm") or node.domain not in ("", "ai.onnx"):
                continue
            where = node.name or f"{node.op_type}#{index}"
            found = _matrix_layer(index, where, node, default_opset(model))
            if isinstance(found, str):
                skipped.append((where, found))
            elif found.weight.size < min_size:
                skipped.append((where, f"weight {found.k}x{found.n} has fewer than min_size={min_size} elements"))
            else:
                layers.append(found)
        return layers, skipped

    def prepare(self, layer: MatrixLayer, data: LayerData) -> str | None:
        layer.data = data
        if data.input_shape is not None:
            shape = list(data.input_shape)
            layer.rows = math.prod(shape[:-1] if layer.channel_axis == -1 else shape[1:])
        layer.plain = factorize(layer.weight)
        if data.moment is not None and data.moment.shape[0] == layer.k:
            layer.aware = factorize(layer.weight, Whitening.of(data.moment, self.options.damping))
        return None

    def fixed_level(self, layer: MatrixLayer, mode: str) -> Level | str:
        limit = min(layer.k, layer.n)
        opts = self.options
        if mode == "rank":
            if opts.rank > limit:
                return f"rank {opts.rank} > min(K, N) = {limit} for weight {layer.k}x{layer.n}"
            rank = opts.rank
        elif mode == "rank_ratio":
            rank = max(1, round(opts.rank_ratio * limit))
        else:
            rank = layer.plain.energy_rank(opts.energy if opts.energy is not None else DEFAULT_ENERGY)
        even = break_even_rank(layer.k, layer.n)
        if rank >= even:
            return (f"rank {rank} >= K·N/(K+N) = {even:.1f} for {layer.k}x{layer.n}: factoring would not "
                    "reduce FLOPs")
        return self._level(layer, rank)

    def grid(self, layer: MatrixLayer) -> list[Level]:
        even = break_even_rank(layer.k, layer.n)
        ranks = sorted({_round_rank((1 - saving) * even) for saving in GRID_SAVINGS}, reverse=True)
        return [self._level(layer, r) for r in ranks if 1 <= r < even]

    def _level(self, layer: MatrixLayer, rank: int) -> Level:
        return Level((rank,), layer.macs(rank), layer.factors.residual(rank))

    def time_level(self, layer: MatrixLayer, level: Level, speed: SpeedCache) -> tuple[float, float]:
        return speed.matmul(layer.rows or 1, layer.k, layer.n, level.rank[0], layer.dtype)

    def rewrite(self, model: ir.Model, ctx: PassContext, layer: MatrixLayer, level: Level) -> None:
        node = model.graph.node(layer.index)
        a, b = (f.astype(layer.dtype) for f in layer.factors.factors(level.rank[0]))
        w_name = node.inputs[1].name or "weight"
        a_val = add_initializer(model, ctx, f"{w_name}_svd_a", a)
        b_val = add_initializer(model, ctx, f"{w_name}_svd_b", b)
        x = node.inputs[0]
        if node.op_type == "MatMul":
            first = fresh_node(model, ctx, "MatMul", [x, a_val], base=f"{layer.where}_svd_a")
            second = fresh_node(model, ctx, "MatMul", [first.outputs[0], b_val], base=f"{layer.where}_svd_b")
        else:
            trans_a = node.attributes.get_int("transA", 0)
            first = (fresh_node(model, ctx, "Gemm", [x, a_val], {"transA": 1}, base=f"{layer.where}_svd_a")
                     if trans_a else fresh_node(model, ctx, "MatMul", [x, a_val], base=f"{layer.where}_svd_a"))
            bias = node.inputs[2] if len(node.inputs) > 2 else None
            attrs = {"alpha": node.attributes.get_float("alpha", 1.0), "beta": node.attributes.get_float("beta", 1.0)}
            second = fresh_node(model, ctx, "Gemm", [first.outputs[0], b_val] + ([bias] if bias is not None else []),
                                attrs, base=f"{layer.where}_svd_b")
        replace_with_chain(model, ctx, node, [first, second])

    def layer_stats(self, layer: MatrixLayer, level: Level) -> dict[str, Any]:
        rank = level.rank[0]
        row = {"node": layer.where, "op": layer.node.op_type, "shape": [layer.k, layer.n], "rows": layer.rows,
               "rank": rank, "max_rank": min(layer.k, layer.n),
               "break_even_rank": round(break_even_rank(layer.k, layer.n), 1),
               "flops_before": 2 * layer.dense_macs, "flops_after": 2 * layer.macs(rank),
               "energy_kept": round(1 - layer.factors.residual(rank) ** 2, 6),
               "error": _errors(layer, rank)}
        if level.rank in layer.timings:
            row["latency_ms"] = layer.timings[level.rank]
        if layer.probe:
            row["probe"] = layer.probe
        return row


def _matrix_layer(index: int, where: str, node: ir.Node, opset: int) -> MatrixLayer | str:
    """The layer as x·W (K x N), or why it is not a candidate."""
    if len(node.inputs) < 2 or node.inputs[0] is None:
        return "missing inputs"
    x, w = node.inputs[0], node.inputs[1]
    if node.op_type == "MatMul" and constant_array(x) is not None and constant_array(w) is None:
        return "the constant is the left operand (W·x); only x·W is factored"
    if constant_array(x) is not None:
        return "both operands are constant (a job for fold-constants)"
    reason = weight_refusal(w)
    if reason is not None:
        return reason
    array = constant_array(w)
    if array.ndim != 2:
        return f"weight '{w.name}' is {array.ndim}-D (only 2-D weights are factored)"
    channel_axis = -1
    if node.op_type == "Gemm":
        if node.attributes.get_int("transB", 0):
            array = array.T
        if node.attributes.get_int("transA", 0):
            if opset < 11:
                return "Gemm with transA needs opset >= 11 for a bias-free first factor"
            channel_axis = 0
    return MatrixLayer(index, where, node, x, array, array.dtype, channel_axis)


def _round_rank(rank: float) -> int:
    """Ranks on the budget grid are multiples of 8 when >= 16 (friendlier to GEMM kernels)."""
    r = int(rank)
    return r - r % 8 if r >= 16 else max(r, 1)


def _errors(layer: MatrixLayer, rank: int) -> dict[str, Any]:
    """Weight-space and output-space relative errors, plain vs data-aware, at the same rank."""
    data = layer.data
    result = {}
    for label, factors in (("plain", layer.plain), ("data_aware", layer.aware)):
        if factors is None:
            continue
        approx = factors.approximation(rank)
        errs = relative_errors(layer.weight, approx, data.moment if data else None)
        entry = {"weight": round(errs["weight"], 6)}
        if "output" in errs:
            entry["output_calibration"] = round(errs["output"], 6)
        if data is not None and data.holdout_moment is not None:
            entry["output_holdout"] = round(relative_errors(layer.weight, approx, data.holdout_moment)["output"], 6)
        result[label] = entry
    plain, aware = result.get("plain", {}), result.get("data_aware", {})
    if "output_holdout" in plain and "output_holdout" in aware and plain["output_holdout"] > 0:
        result["holdout_error_ratio"] = round(aware["output_holdout"] / plain["output_holdout"], 4)
    return result
