"""`cluster`: weight sharing (Deep Compression): each weight's values replaced by a palette of 2^b floats.

The math (kmeans.py, dp.py): per weight W (granularity=tensor) or per output channel
(granularity=channel), a palette c_1 < ... < c_K with K <= 2^b minimizing Σ (w - c_{a(w)})², each
value replaced by its nearest entry: exact 1-D k-means by dynamic programming (grouped for large
tensors, then Lloyd), or Deep Compression's linear init + Lloyd (`method=kmeans`). A weight with
fewer distinct values than 2^b keeps them all (a smaller palette, zero error); `keep_zero` keeps an
exact 0.0 entry for exact zeros (pruned weights stay pruned). The model computes with Ŵ = c[a]
instead of W: its error is the weights' alone.
Storage (graph.py): the codes on ceil(log2 K) bits, packed, and the float codebook, expanded by a
small graph of constants (Cast, Gather, Div, Mod, Reshape, Gather(codebook, codes)) that ONNX
Runtime folds into the float weight when a session starts (ORT_ENABLE_BASIC and above), so the
file shrinks and inference runs the input model's kernels (report.py checks the fold).
Steps, on clones of the model:
1. find the weights (layers.py: MatMul / Gemm / Conv / ConvTranspose weights, Gather tables; each
   clustered once however many nodes read it; the others listed with the reason);
2. with held-out feeds and `search`: the fewest bits per layer that meet the run's budget
   (budget.py); else every layer at `bits`;
3. write the expansions (build.py); a layer whose codes and palette would not be smaller than
   its float tensor stays float.
Stats: per layer bits, palette size, index bits, weight SQNR, bytes before/after; the model's
initializer bytes raw and deflated before/after; whether the expansions fold in ONNX Runtime.
"""

from __future__ import annotations

from collections import Counter
import math

import onnx_ir as ir

from graphopt.lossy import budget_share, effective_budget
from graphopt.pass_api import Pass, PassContext, PassResult, default_opset
from graphopt.passes.cluster.budget import Search, fit_bits
from graphopt.passes.cluster.build import Builder, Clustered, Levels
from graphopt.passes.cluster.layers import Found, find_layers
from graphopt.passes.cluster.options import ClusterOptions
from graphopt.passes.cluster.report import folding, sizes
from graphopt.tolerance import Lossy

NAME = "cluster"
MIN_OPSET = 11  # the expansion: Mod (10), Slice with inputs (10), Gather on INT32 indices


class ClusterWeights(Pass):
    name = NAME
    summary = ("weight sharing: each MatMul/Gemm/Conv weight (and Gather table) as a palette of 2^b floats + "
               "packed b-bit codes, expanded by a graph ONNX Runtime folds at load time; bits sized to the budget")
    Options = ClusterOptions
    tolerance = Lossy()

    def requires(self, model: ir.Model, ctx: PassContext) -> str | None:
        opset = default_opset(model)
        if opset < MIN_OPSET:
            return f"opset {opset} < {MIN_OPSET} (the expansion graph uses Mod and Slice with inputs)"
        found = find_layers(model.graph, self.options)
        return None if found.layers else nothing_to_cluster(found, self.options)

    def run(self, model: ir.Model, ctx: PassContext) -> PassResult:
        if (skipped := self.skip_result(model, ctx)) is not None:
            return skipped
        opts = self.options
        found = find_layers(model.graph, opts)
        for where, reason in sorted(found.kept.items()):
            ctx.no_match(NAME, where, reason)
        builder = Builder(model, found.layers, opts, self._palette_cache())
        levels, fit = _fit(model, builder, ctx)
        rows, kept = _rows(builder, levels, fit)
        if not any(levels.values()):
            return PassResult(model, False, {"skipped": "no layer stays clustered (kept_float says why)",
                                             "budget": fit, "kept_float": {**found.kept, **kept}})
        result, stored = builder.expanded(levels)
        stats = {"granularity": opts.granularity, "method": opts.method, "keep_zero": opts.keep_zero,
                 "layers": rows, "by_bits": _by_bits(levels), "kept_float": {**found.kept, **kept},
                 "already_clustered": found.already_clustered, "budget": fit,
                 "size": sizes(model, result, opts.deflate)}
        if opts.check_folding:
            stats["folding"] = folding(result, stored)
        return PassResult(result, True, stats)


    def _palette_cache(self) -> dict:
        """Palettes kept between runs of this instance (the manager's budget retries): build.py."""
        if not hasattr(self, "_palettes"):
            self._palettes = {}
        return self._palettes


def nothing_to_cluster(found: Found, opts: ClusterOptions) -> str:
    if found.already_clustered:
        return (f"already clustered: {len(found.already_clustered)} weight(s) come from Gather(codebook, indices) "
                "and no other weight is eligible")
    what = "MatMul/Gemm/Conv weight" + (" or Gather table" if opts.embeddings else "")
    reasons = "; ".join(f"{k}: {v}" for k, v in list(found.kept.items())[:3])
    return f"no eligible weights: no constant float32 {what}" + (f" ({reasons})" if reasons else "")


def _fit(model: ir.Model, builder: Builder, ctx: PassContext) -> tuple[Levels, dict]:
    """(levels, report): searched under the run's budget, or every layer at `bits`."""
    opts = builder.options
    fixed = {layer.key: opts.bits for layer in builder.layers}
    if not opts.search:
        return fixed, {"measured": False, "reason": f"search=false: every layer at {opts.bits} bits"}
    if not ctx.holdout and not ctx.search:
        return fixed, {"measured": False, "reason": f"no held-out feeds: every layer at {opts.bits} bits"}
    ev = ctx.evaluator(model)
    budget = effective_budget(ctx.budget)
    if opts.budget_share < 1:
        budget = budget_share(budget, ev.measure(model), opts.budget_share)
    search = Search(builder.dense, ev, budget, ctx.progress)
    search.memo = ctx.search_memo("cluster")
    by_key = {layer.key: layer for layer in builder.layers}
    sizes_ = {layer.key: layer.size for layer in builder.layers}
    return fit_bits(search, sizes_, lambda key, bits: builder.clustered(by_key[key], bits).rel_error,
                    opts.min_bits, opts.max_bits, opts.per_layer)


def _rows(builder: Builder, levels: Levels, fit: dict) -> tuple[list[dict], dict[str, str]]:
    """A stats row per clustered layer; layers that stay float (levels set to 0) with the reason."""
    rows, kept = [], {}
    for layer in builder.layers:
        bits = levels[layer.key]
        if not bits:
            kept[layer.key] = "kept float by the budget search"
            continue
        item = builder.clustered(layer, bits)
        if item.stored_bytes() >= 4 * layer.size:
            levels[layer.key] = 0
            kept[layer.key] = f"at {bits} bits its codes and palette ({item.stored_bytes()} B) are not smaller"
            continue
        rows.append(_row(item))
    return rows, kept


def _row(item: Clustered) -> dict:
    layer, palette = item.layer, item.palette
    row = {"layer": layer.key, "shape": list(layer.shape), "readers": layer.readers, "bits": item.bits,
           "palette_size": item.width, "index_bits": item.index_bits, "palettes": int(palette.codebook.shape[0]),
           "weight_sqnr_db": _db(item.rel_error), "rel_error": round(math.sqrt(item.rel_error), 6),
           "bytes_before": 4 * layer.size, "bytes_after": item.stored_bytes()}
    if item.width < 2**item.bits:
        row["note"] = (f"palette of {item.width} < 2^{item.bits}: "
                       + ("fewer distinct values than entries" if palette.exact.all()
                          else "some rows have fewer distinct values or unused entries were dropped"))
    if palette.zero.any():
        row["zero_entry_rows"] = int(palette.zero.sum())
    return row


def _db(relative: float) -> float:
    return round(-10 * math.log10(relative), 3) if relative > 0 else float("inf")


def _by_bits(levels: Levels) -> dict[str, int]:
    return dict(Counter(f"{bits} bits" if bits else "float" for bits in levels.values()))


__all__ = ["ClusterWeights"]
