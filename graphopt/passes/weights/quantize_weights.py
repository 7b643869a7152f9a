"""`quantize-weights`: weight-only block-wise INT4/INT8 of MatMul/Gemm weights and embedding tables.

The math (blocks.py): each weight W [K, N] (K the reduction axis; an embedding table [V, D] is
quantized along D) is cut into blocks of B rows per column, each block with its own scale s and,
asymmetric, zero point z: ŵ = (q - z)·s with q on b bits. Activations stay float: the model
computes x·Ŵ (and Ŵ[indices]) instead of x·W, so its error is that of the weights alone.
Algorithms: round-to-nearest with a per-block clipping search (blocks.py); AWQ, a per-input-
channel scale s searched on the layer input's statistics, x·W = (x/s)·(diag(s)W) (awq.py); GPTQ,
rounding row by row with the error spread over the rows not yet rounded through the inverse of
H = Σxxᵀ (gptq.py). The input statistics are streamed from the calibration data (stats.py); the
data-aware algorithms refuse to run without --calib (exit 2); `algorithm=auto` (the default) is
GPTQ when calibration data is given and RTN otherwise.

Steps, on a clone of the model:
1. form `dq`: raise the opset to 21 (blocked and INT4 DequantizeLinear);
2. find the layers (layers.py: constant float32 2-D weights, each quantized once however many
   nodes read it; the others are listed with the reason they stay float);
3. stream the layer inputs' statistics (needed by awq/gptq; used by rtn, when feeds exist, for the
   per-layer output error in the report), in groups of layers whose H fit `stats_memory`; per
   group AWQ inserts its x/s Muls, each layer is quantized at `bits`, and the H are dropped;
4. form `matmulnbits` with accuracy_level=-1: time the fully quantized model at accuracy levels 0
   and 4 and keep 4 if measurably faster here (speed.py), so the search below measures the level
   the result will run at;
5. write every layer at `bits` in the chosen form (rewrite.py, build.py); if the result misses the
   run's budget (held-out feeds, against the input model), the most sensitive layers go to int8,
   then to float, until it fits (budget.py).
Stats: every layer's bits, block size, algorithm, weight error and output error on the calibration
rows; every fallback with its measured effect; every weight kept float and why.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from typing import Callable

import onnx_ir as ir

from graphopt.errors import InputError
from graphopt.io import weight_bytes
from graphopt.lossy import budget_share, effective_budget
from graphopt.pass_api import Pass, PassContext, PassResult, default_opset
from graphopt.passes.weights.awq import search_scales
from graphopt.passes.weights.blocks import BlockFormat, weight_error
from graphopt.passes.weights.budget import Search, fit_levels
from graphopt.passes.weights.build import Builder, layer_gram
from graphopt.passes.weights.layers import Layer, find_layers
from graphopt.passes.weights.options import QuantizeWeightsOptions
from graphopt.passes.weights.rewrite import scale_input
from graphopt.passes.weights.speed import choose_accuracy_level
from graphopt.passes.weights.stats import InputStats, collect, error_db, groups, layer_units, output_error
from graphopt.tolerance import Lossy

NAME = "quantize-weights"
STATS_MIN_BYTES = 256 * 2**20  # input statistics held at once, whatever the model's size
DQ_OPSET = 21  # DequantizeLinear with block_size and INT4/UINT4


class QuantizeWeights(Pass):
    name = NAME
    summary = ("weight-only block-wise INT4/INT8 of MatMul/Gemm weights and embeddings "
               "(MatMulNBits / GatherBlockQuantized, or DequantizeLinear at opset 21), sized to the budget")
    Options = QuantizeWeightsOptions
    tolerance = Lossy()
    deployed_numerics = True  # ORT_ENABLE_ALL runs integer kernels: verified there too

    def requires(self, model: ir.Model, ctx: PassContext) -> str | None:
        opset = default_opset(model)
        if self.options.form == "dq" and opset < DQ_OPSET and not self.options.raise_opset:
            return f"opset {opset} < {DQ_OPSET} has no blocked INT4 DequantizeLinear (raise_opset=false)"
        ms = model.opset_imports.get("com.microsoft")
        if self.options.form == "matmulnbits" and ms not in (None, 1):
            return f"com.microsoft opset {ms} (MatMulNBits is defined in version 1)"
        return None

    def run(self, model: ir.Model, ctx: PassContext) -> PassResult:
        if (skipped := self.skip_result(model, ctx)) is not None:
            return skipped
        opts = self.options
        if opts.algorithm == "auto":
            opts = replace(opts, algorithm="gptq" if ctx.calibration is not None else "rtn")
        if opts.data_aware and ctx.calibration is None:
            raise InputError(f"pass '{NAME}': algorithm={opts.algorithm} needs calibration data (--calib)")
        work, note = _prepared(model, ctx, opts)
        if work is None:
            return PassResult(model, False, {"skipped": note})
        found = find_layers(work.graph, opts)
        for where, reason in sorted(found.skipped.items()):
            ctx.no_match(NAME, where, reason)
        if not found.layers:
            reason = ("nothing to quantize: no eligible constant float32 2-D MatMul/Gemm weight"
                      + (" or Gather table" if opts.embeddings else "") + " (kept_float says why)")
            return PassResult(model, False, {"skipped": reason, "kept_float": found.skipped,
                                             "already_quantized": found.already_quantized})
        builder = Builder(work, found.layers, opts, None, max(opts.accuracy_level, 0))
        rows, awq, source = _quantize_layers(work, builder, ctx, opts)
        speed = _accuracy_level(builder, ctx) if opts.form == "matmulnbits" and opts.accuracy_level == -1 else {}
        levels, fit = _fit(model, builder, ctx, rows)
        if not any(levels.values()):
            return PassResult(model, False, {"skipped": "every layer had to stay float to meet the budget",
                                             "budget": fit, "layers": list(rows.values())})
        best = builder(levels)
        _finish_rows(rows, levels, fit, builder)
        result = {"form": opts.form, "bits": opts.bits, "block_size": opts.block_size, "symmetric": opts.symmetric,
                  "algorithm": opts.algorithm, "layers": list(rows.values()), "by_bits": _by_bits(levels),
                  "kept_float": found.skipped, "already_quantized": found.already_quantized, "budget": fit,
                  "calibration": source, "awq": awq, "accuracy_level": speed, "notes": [note] if note else []}
        return PassResult(best, True, result)


def _prepared(model: ir.Model, ctx: PassContext, opts: QuantizeWeightsOptions) -> tuple[ir.Model | None, str]:
    """A clone to quantize (at opset 21 for the dq form), and a note; (None, reason) if the
    opset cannot be raised."""
    work, current = model.clone(), default_opset(model)
    if opts.form != "dq" or current >= DQ_OPSET:
        return work, ""
    from graphopt.passes.opset import RaiseOpset

    try:
        RaiseOpset(target=DQ_OPSET).run(work, ctx)
    except Exception as exc:  # noqa: BLE001  (a converter gap: the pass does not apply)
        return None, f"raising opset {current} -> {DQ_OPSET} failed ({exc}): blocked DequantizeLinear needs 21"
    return work, f"opset raised {current} -> {DQ_OPSET} (blocked INT4 DequantizeLinear)"


def _feeds(ctx: PassContext, opts: QuantizeWeightsOptions) -> tuple[Callable | None, str]:
    """The calibration feeds, or (None, why) for rtn when there are none."""
    try:
        return ctx.calibration_source()
    except InputError:
        if opts.data_aware:
            raise
        return None, "none (no feeds): output errors not measured"


def _quantize_layers(work: ir.Model, builder: Builder, ctx: PassContext,
                     opts: QuantizeWeightsOptions) -> tuple[dict, dict, dict]:
    """Every layer quantized at the pass's bits, with its report row. The input statistics are
    streamed in groups whose H fit `stats_memory` (stats.groups); per group: AWQ's scales, each
    layer quantized and measured, then the group's H dropped and its weights' pages unmapped."""
    feeds, source = _feeds(ctx, opts)
    cap = max(STATS_MIN_BYTES, int(opts.stats_memory * weight_bytes(work)))
    plan = groups(layer_units(builder.layers), cap)
    rows, awq, passes, batches = {}, {}, 0, 0
    for index, (layers, inputs) in enumerate(plan):
        stats = None
        if feeds is not None and inputs:
            if len(plan) > 1 and ctx.progress:
                ctx.progress(f"{NAME}: input statistics, group {index + 1}/{len(plan)}")
            stats = collect(work, {name: (-1, k) for name, k in inputs.items()}, feeds, ctx.progress)
            passes, batches = passes + 1, stats.batches
        if opts.algorithm == "awq":
            awq.update(_apply_awq(work, ctx, layers, stats, opts))
        builder.stats = stats
        for layer in layers:
            rows[layer.key] = _layer_row(builder, layer)
            layer.release()
    builder.stats = None
    report = {"source": source} if feeds is None else {"source": source, "batches": batches, "passes": passes}
    return rows, awq, report


def _apply_awq(work: ir.Model, ctx: PassContext, layers: list[Layer], stats: InputStats | None,
               opts: QuantizeWeightsOptions) -> dict:
    """Search s per shared input, scale the weights (Layer.scale) and insert the x/s Muls."""
    order = {id(node): i for i, node in enumerate(work.graph)}
    by_input: dict[str, list[Layer]] = {}
    report = {}
    for layer in layers:
        if len(layer.inputs) == 1:
            by_input.setdefault(layer.inputs[0], []).append(layer)
        elif layer.kind == "linear":
            report[layer.key] = {"not_scaled": "the weight is read with several inputs"}
    fmt = BlockFormat(opts.bits, opts.block_size, opts.symmetric)
    fresh = ctx.names(work).fresh
    for name, group in by_input.items():
        moments = stats.get(name) if stats is not None else None
        if moments is None:
            report[name] = {"not_scaled": "no statistics for this input"}
            continue
        choice = search_scales([layer.matrix for layer in group], moments.second_moment, moments.mean_abs, fmt,
                               opts.scale_search)
        report[name] = {"alpha": choice.alpha, "layers": [layer.key for layer in group],
                        "error": {str(a): round(e, 8) for a, e in choice.errors.items()}}
        if choice.scales is None:
            continue
        readers = sorted((use.node for layer in group for use in layer.uses), key=lambda n: order[id(n)])
        scale_input(work.graph, fresh, readers[0].inputs[0], 1.0 / choice.scales, readers)
        for layer in group:
            layer.scale = choice.scales
    return report


def _layer_row(builder: Builder, layer: Layer) -> dict:
    """The layer at the pass's bits: weight error, output error on the calibration rows."""
    opts = builder.options
    bq = builder.quantized(layer, opts.bits)
    builder.keep(layer, opts.bits, bq)
    original, approx = layer.matrix, bq.dequantize()
    if layer.scale is not None:  # errors of the effective weight diag(1/s)·Ŵ against W
        original, approx = original / layer.scale[:, None], approx / layer.scale[:, None]
    row = {"layer": layer.key, "op": layer.uses[0].node.op_type, "uses": len(layer.uses),
           "shape": list(layer.shape), "block_size": opts.block_size, **weight_error(original, approx)}
    if opts.form == "matmulnbits" and layer.kind == "linear" and original.shape[0] % opts.block_size:
        row["k_padded"] = True  # MatMulNBits needs whole blocks: K padded, the padding decodes to 0
    gram = layer_gram(layer, builder.stats)
    if gram is not None:
        row["output_error"], row["output_mse"] = output_error(original, approx, gram)
        row["output_sqnr_db"] = error_db(row["output_error"])
    row["algorithm"] = _algorithm(builder, layer, gram is not None)
    return row


def _algorithm(builder: Builder, layer: Layer, has_gram: bool) -> str:
    algorithm = builder.options.algorithm
    if algorithm == "gptq" and has_gram:
        return "gptq"
    return "awq" if layer.scale is not None else "rtn"


def _fit(model: ir.Model, builder: Builder, ctx: PassContext, rows: dict[str, dict]) -> tuple[dict, dict]:
    """(levels, report) under the run's budget (no search without held-out feeds)."""
    opts = builder.options
    keys = list(rows)
    if not opts.fallback or not ctx.holdout:
        return {k: opts.bits for k in keys}, {"measured": False}
    ev = ctx.evaluator(model)
    budget = effective_budget(ctx.budget)
    if opts.budget_share < 1:
        budget = budget_share(budget, ev.measure(model), opts.budget_share)
    search = Search(builder, ev, budget, ctx.progress)
    search.memo = ctx.search_memo("quantize-weights", builder.accuracy_level)
    proxy = {k: row.get("output_error", row["rel_error"] ** 2) for k, row in rows.items()}
    sizes = {layer.key: layer.size for layer in builder.layers}
    levels, report = fit_levels(search, sizes, opts.bits, proxy, opts.rank, opts.rank_measurements)
    report["measurements"] = len(search.measured)
    return levels, report


def _accuracy_level(builder: Builder, ctx: PassContext) -> dict:
    """Time the fully quantized model at accuracy levels 0 and 4; the builder takes the winner."""
    feed = ctx.holdout[0] if ctx.holdout else next(iter(ctx.calibration_source()[0]()), None)
    if feed is None:
        return {"accuracy_level": 0, "reason": "no feed to time on"}
    opts = builder.options
    builder.accuracy_level = 0
    level, report = choose_accuracy_level(builder({layer.key: opts.bits for layer in builder.layers}), feed,
                                          opts.speed_runs, opts.speed_margin)
    builder.accuracy_level = level
    return report


def _finish_rows(rows: dict[str, dict], levels: dict[str, int], fit: dict, builder: Builder) -> None:
    gains = fit.get("measured_gain", {})
    for key, row in rows.items():
        row["bits"] = levels[key]
        if levels[key] != builder.options.bits:
            row["algorithm"] = "rtn" if levels[key] else "float"
        if key in gains:
            row["measured_gain_in_float"] = gains[key]


def _by_bits(levels: dict[str, int]) -> dict[str, int]:
    return dict(Counter(f"int{bits}" if bits else "float" for bits in levels.values()))


__all__ = ["QuantizeWeights"]
