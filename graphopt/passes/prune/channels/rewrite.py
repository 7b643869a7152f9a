"""Apply a channel selection to a model: slice every site, then recompute shapes.

Given the kept channels of each pruned group, every `Site` of the analysis becomes a new
initializer (fresh name; the old tensor is never written) or a new attribute value:
producers lose weight rows (and bias entries), per-channel constants and BatchNorm parameters
lose entries, depthwise Convs lose filters and `group` shrinks, Split sizes and Reshape/Resize
entries shrink, and consumers lose input channels (weight_in). Afterwards every intermediate
shape is cleared and ONNX shape inference recomputes them.

Bias compensation at a consumer y = W·x + b: a removed input channel r whose activation has
mean μ_r over the calibration data contributed W[:, r]·μ_r on average, so
b' = b + Σ_{r removed} W[:, r]·μ_r  keeps the consumer's mean output (for a Conv the sum runs
over the kernel taps too, exact away from zero-padded borders; Gemm adds α/β of it to C;
MatMul adds it to the following constant Add, or a new Add). ConvTranspose is not
compensated (its output pattern is not uniform in space). With `refit_dense`, a MatMul, Gemm or
1x1 Conv consumer is instead refit on its kept inputs by ridge least squares (`refit`), which
contains the mean term.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from graphopt.pass_api import PassContext, default_opset
from graphopt.passes.prune.channels.dims import Piece, Site
from graphopt.passes.prune.channels.groups import ChannelAnalysis
from graphopt.passes.prune.common import ChannelStats, const_array, describe, drop_unused, new_initializer, set_input


def kept_positions(pieces: tuple[Piece, ...], keep: dict[int, np.ndarray]) -> np.ndarray:
    """Positions along a tracked axis that survive, given the kept channels of each seed."""
    out, pos = [], 0
    for p in pieces:
        if p.seed is None or p.seed not in keep:
            out.append(np.arange(pos, pos + p.length))
        else:
            k = keep[p.seed]
            local = k[(k >= p.start) & (k < p.stop)] - p.start
            out.append((pos + local[:, None] * p.inner + np.arange(p.inner)).reshape(-1))
        pos += p.length
    return np.concatenate(out) if out else np.zeros(0, np.int64)


RIDGE = 0.1  # ridge of the refit, relative to the mean input variance (few calibration samples)


def as_matrix(node: ir.Node, weight: np.ndarray, axis: int) -> np.ndarray | None:
    """The weight as [input positions, outputs] for dense layers and 1x1 Convs, else None."""
    if node.op_type in ("MatMul", "Gemm"):
        return weight if axis == 0 else weight.T
    if node.op_type == "Conv" and node.attributes.get_int("group", 1) == 1 and weight[0, 0].size == 1:
        return weight.reshape(weight.shape[0], weight.shape[1]).T
    return None


def from_matrix(node: ir.Node, matrix: np.ndarray, like: np.ndarray, axis: int) -> np.ndarray:
    if node.op_type == "Conv":
        return matrix.T.reshape((like.shape[0], matrix.shape[0]) + like.shape[2:]).astype(like.dtype)
    return (matrix if axis == 0 else matrix.T).astype(like.dtype)


def refit(matrix: np.ndarray, kept: np.ndarray, removed: np.ndarray, stats: ChannelStats):
    """Least-squares refit of a consumer on its kept inputs, and the matching bias delta.

    With input covariance Σ and mean μ: W'_S = W_S + Σ_SS⁻¹ Σ_SR W_R minimises
    E‖(x−μ)ᵀW − (x_S−μ_S)ᵀW'‖², and δ = μ_R W_R − μ_S Σ_SS⁻¹ Σ_SR W_R keeps the mean output.
    Σ_SS gets a ridge λ·mean(diag Σ_SS) (λ = `RIDGE`): calibration sets are small next to wide
    layers, and a strong ridge refit MiniLM's FFNs much better than a weak one (measured:
    docs/design-measurements.md).
    """
    cov, mu = stats.covariance, stats.mean
    matrix = matrix.astype(np.float64)
    s_s = cov[np.ix_(kept, kept)]
    s_s = s_s + np.eye(len(kept)) * (RIDGE * float(np.mean(np.diag(s_s))) + 1e-12)
    correction = np.linalg.solve(s_s, cov[np.ix_(kept, removed)] @ matrix[removed])
    return matrix[kept] + correction, mu[removed] @ matrix[removed] - mu[kept] @ correction


class Rewriter:
    def __init__(self, model: ir.Model, ctx: PassContext, keep: dict[int, np.ndarray],
                 stats: dict[str, ChannelStats] | None, refit_dense: bool = False):
        self.model, self.ctx, self.keep, self.stats = model, ctx, keep, stats
        self.refit_dense = refit_dense
        self.replaced: list[ir.Value] = []
        self.notes: list[str] = []

    def replace(self, node: ir.Node, index: int, array: np.ndarray, base: str) -> None:
        old = node.inputs[index] if index < len(node.inputs) else None
        self.replaced.append(old)
        set_input(node, index, new_initializer(self.model, self.ctx, array, base))

    def take(self, node: ir.Node, index: int, axis: int, kept: np.ndarray) -> None:
        array = const_array(node.inputs[index])
        if len(kept) != array.shape[axis]:
            self.replace(node, index, np.take(array, kept, axis=axis), f"{node.inputs[index].name}_pruned")

    def site(self, site: Site) -> None:
        kept = kept_positions(site.pieces, self.keep)
        node = site.node
        if site.kind == "const":
            self.take(node, site.index, site.axis, kept)
        elif site.kind == "depthwise":
            self.take(node, 1, 0, kept)
            node.attributes["group"] = ir.AttrInt64("group", len(kept))
        elif site.kind in ("reshape", "resize"):
            entries = const_array(node.inputs[site.index]).copy()
            if entries[site.axis] != len(kept):
                entries[site.axis] = len(kept)
                self.replace(node, site.index, entries, f"{node.inputs[site.index].name}_pruned")
        elif site.kind == "split":
            self.split(site)
        elif site.kind == "weight_in":
            self.weight_in(site, kept)
        elif site.kind == "grouped_in":
            self.grouped_in(site, kept)

    def split(self, site: Site) -> None:
        sizes = np.array([len(kept_positions(part, self.keep)) for part in site.parts], np.int64)
        if not sizes.all():
            raise ValueError(f"Split '{describe(site.node)}': a part would lose every channel")
        node = site.node
        if site.index == 1 or default_opset(self.model) >= 13:
            node.attributes.pop("num_outputs", None)
            self.replace(node, 1, sizes, f"{describe(node)}_split")
        else:
            node.attributes["split"] = ir.AttrInt64s("split", sizes.tolist())

    def weight_in(self, site: Site, kept: np.ndarray) -> None:
        node, weight = site.node, const_array(site.node.inputs[1])
        if len(kept) == weight.shape[site.axis]:
            return
        removed = np.setdiff1d(np.arange(weight.shape[site.axis]), kept)
        stats = self.stats.get(site.value.name) if self.stats and site.value is not None else None
        matrix = as_matrix(node, weight, site.axis)
        if stats is not None and self.refit_dense and matrix is not None and stats.covariance is not None:
            new, delta = refit(matrix, kept, removed, stats)
            self.compensate(node, delta)
            self.replace(node, 1, from_matrix(node, new, weight, site.axis), f"{node.inputs[1].name}_refit")
            return
        if stats is not None:
            if node.op_type == "ConvTranspose":
                self.notes.append(f"{describe(node)}: ConvTranspose is not bias-compensated")
            else:
                mu = stats.mean[removed]
                removed_w = np.take(weight, removed, axis=site.axis).astype(np.float64)
                if node.op_type == "Conv":
                    delta = removed_w.reshape(removed_w.shape[0], len(removed), -1).sum(axis=2) @ mu
                else:
                    delta = mu @ (removed_w if site.axis == 0 else removed_w.T)
                self.compensate(node, delta)
        self.take(node, 1, site.axis, kept)

    def grouped_in(self, site: Site, kept: np.ndarray) -> None:
        node, weight = site.node, const_array(site.node.inputs[1])
        groups, per_block = node.attributes.get_int("group", 1), weight.shape[1]
        out_block = weight.shape[0] // groups
        locals_ = [kept[(kept >= b * per_block) & (kept < (b + 1) * per_block)] - b * per_block
                   for b in range(groups)]
        if len({len(x) for x in locals_}) != 1:
            raise ValueError(f"grouped Conv '{describe(node)}': blocks would keep different channel counts")
        if len(locals_[0]) == per_block:
            return
        blocks = [weight[b * out_block:(b + 1) * out_block] for b in range(groups)]
        if self.stats is not None and site.value.name in self.stats:
            mu = self.stats[site.value.name].mean
            delta = np.concatenate([
                blk[:, np.setdiff1d(np.arange(per_block), loc)].reshape(out_block, per_block - len(loc), -1)
                .sum(axis=2).astype(np.float64) @ mu[b * per_block + np.setdiff1d(np.arange(per_block), loc)]
                for b, (blk, loc) in enumerate(zip(blocks, locals_))])
            self.compensate(node, delta)
        new = np.concatenate([blk[:, loc] for blk, loc in zip(blocks, locals_)])
        self.replace(node, 1, new, f"{node.inputs[1].name}_pruned")

    def compensate(self, node: ir.Node, delta: np.ndarray) -> None:
        """Add `delta` (one entry per output channel of `node`) to its bias."""
        dtype = const_array(node.inputs[1]).dtype
        if node.op_type == "MatMul":
            self.matmul_bias(node, delta.astype(dtype))
            return
        if node.op_type == "Gemm":
            alpha = node.attributes.get_float("alpha", 1.0)
            beta = node.attributes.get_float("beta", 1.0)
            delta = delta * alpha / (beta if beta else 1.0)
        bias = const_array(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2] is not None else None
        new = delta if bias is None else bias.astype(np.float64) + delta
        self.replace(node, 2, np.asarray(new, dtype), f"{describe(node)}_compensated_bias")

    def matmul_bias(self, node: ir.Node, delta: np.ndarray) -> None:
        out = node.outputs[0]
        users = out.uses()
        if out.is_graph_output():
            self.notes.append(f"{describe(node)}: output is a graph output; not compensated")
            return
        if len(users) == 1 and users[0][0].op_type == "Add":
            add, index = users[0]
            other = 1 - index
            bias = const_array(add.inputs[other])
            if bias is not None and bias.shape[-1:] == delta.shape and bias.size == delta.size:
                self.replace(add, other, (bias.astype(np.float64) + delta.reshape(bias.shape)).astype(bias.dtype),
                             f"{add.inputs[other].name}_compensated")
                return
        name = self.ctx.names(self.model).fresh(f"{out.name}_compensated")
        constant = new_initializer(self.model, self.ctx, delta, f"{out.name}_compensation")
        add = ir.Node("", "Add", [out, constant], outputs=[ir.Value(name=name, type=out.type)])
        for user, index in users:
            user.replace_input_with(index, add.outputs[0])
        self.model.graph.insert_after(node, add)


def apply_selection(model: ir.Model, ctx: PassContext, analysis: ChannelAnalysis, keep: dict[int, np.ndarray],
                    stats: dict[str, ChannelStats] | None, refit_dense: bool = False) -> list[str]:
    """Prune `model` in place: `keep` maps group id -> kept channel indices (sorted); with
    `stats`, consumers are bias-compensated (and refit by least squares when `refit_dense`)."""
    seed_keep = {s.id: keep[g.id] for g in analysis.groups if g.id in keep for s in g.seeds}
    rw = Rewriter(model, ctx, seed_keep, stats, refit_dense)
    for seed in analysis.seeds:
        if seed.id in seed_keep:
            rw.take(seed.node, 1, seed.weight_axis, seed_keep[seed.id])
    late = ("weight_in", "grouped_in")  # after producers and biases, so compensation sees final shapes
    for site in [s for s in analysis.sites if s.kind not in late] + [s for s in analysis.sites if s.kind in late]:
        rw.site(site)
    drop_unused(model, rw.replaced)
    refresh_shapes(model)
    return rw.notes


def refresh_shapes(model: ir.Model) -> None:
    """Clear every intermediate shape and let ONNX shape inference recompute them."""
    from onnx_ir.passes.common import ShapeInferencePass

    for node in model.graph:
        for out in node.outputs:
            if not out.is_graph_output():
                out.shape = None
    ShapeInferencePass()(model)
