"""`float16`: weights and compute in float16 (or bfloat16), overflow-safe by measurement, sized to
the run's budget.

The rule: a float32 x is stored and computed as round(x) in the low type (lowtypes.py: float16
keeps 11 significant bits and |x| <= 65504; bfloat16 8 bits over float32's range), so every
converted tensor carries a relative error up to 2^-11 (2^-8), and a value beyond the range
becomes ±inf. Steps, on a typed clone of the model:
1. candidates (select.py, slots.py): the ops whose ONNX schema lets their float32 tensors take
   the low type; integer paths, shape computations, indices, fixed-type inputs, Casts to other
   types and If/Loop/Scan (bodies left float32 as a whole) stay as they are;
2. ranges (ranges.py): the calibration feeds streamed through the float32 model; an op whose
   tensors exceed range_margin x the type's max stays float32 with the measured value;
3. underflow (underflow.py): the divisor paths of normalisations and softmax sums stay float32
   when an epsilon rounds to 0 or a measured value falls below the type's smallest normal;
4. budget (budget.py, rank.py): if the converted model misses the run's budget on the search
   feeds, the fewest ops back to float32, most error-adding first;
5. the result (casts.py): converted weights under fresh names, Casts only at the boundaries of
   float32 islands and, with keep_io_types, at the graph's inputs and outputs.
ONNX Runtime's CPU provider has few float16 kernels and inserts its own Casts around the other
ops; it has fewer bfloat16 ones and inserts none, so a bfloat16 model may not load there
(kernels.py): the stats say which ops are which, and the manager's verification rolls back a
model ORT cannot run, with its reason.
"""

from __future__ import annotations

from collections import Counter

import onnx_ir as ir

from graphopt.analyses import Shapes
from graphopt.errors import InputError
from graphopt.exclusion import exclusion
from graphopt.lossy import budget_share, effective_budget
from graphopt.pass_api import Pass, PassContext, PassResult, default_opset
from graphopt.passes.precision.budget import Search, fit_budget
from graphopt.passes.precision.build import Builder
from graphopt.passes.precision.kernels import cpu_report
from graphopt.passes.precision.lowtypes import LOW_DTYPES, LowType, low_type
from graphopt.passes.precision.options import Float16Options
from graphopt.passes.precision.rank import rank_by_added_error
from graphopt.passes.precision.ranges import measure, out_of_range
from graphopt.passes.precision.select import Selection, node_keys, select
from graphopt.passes.precision.slots import has_float32
from graphopt.passes.precision.underflow import divisor_paths, path_values, underflowing
from graphopt.runtime import create_session
from graphopt.size import data_bytes
from graphopt.tolerance import Lossy

NAME = "float16"
BFLOAT16_OPSET = 13  # Add, Mul, MatMul, Conv, Relu, ... list tensor(bfloat16) from their opset-13 versions


class Float16(Pass):
    name = NAME
    summary = ("weights and compute in float16 or bfloat16; ops whose measured values leave the type's range, "
               "and the fewest others the budget needs, stay float32")
    Options = Float16Options
    tolerance = Lossy()

    def requires(self, model: ir.Model, ctx: PassContext) -> str | None:
        if any(node.op_type != "Cast" and has_float32(node) for node in model.graph):
            return None
        found = sorted({d.name.lower() for d in _dtypes(model) if d in LOW_DTYPES})
        if found:
            return f"already {'/'.join(found)}: nothing to convert"
        return "no float32 computation: nothing to convert"

    def run(self, model: ir.Model, ctx: PassContext) -> PassResult:
        if (skipped := self.skip_result(model, ctx)) is not None:
            return skipped
        opts, low = self.options, low_type(self.options.dtype)
        work = model.clone()  # typed here; tensors shared, never written
        ctx.analysis(Shapes, work)
        found = select(work, low, exclusion(opts.exclude_nodes, opts.exclude_ops, opts.exclude_regex))
        for key, reason in sorted(found.kept.items()):
            ctx.no_match(NAME, key, reason)
        if not found.candidates:
            return PassResult(model, False, {"skipped": _nothing_to_convert(model, low), "kept_float32": found.kept})
        measured = _measure(work, found, low, ctx, opts.range_margin)
        candidates = {k: s for k, s in found.candidates.items() if k not in found.kept}
        if not candidates:
            return PassResult(model, False, {"skipped": "every op stays float32 (kept_float32 says why)",
                                             "kept_float32": found.kept, "ranges": measured})
        builder = Builder(work, candidates, low)
        fallbacks, fit = _fit(model, builder, ctx, opts)
        if fallbacks is None or len(fallbacks) == len(candidates):
            reason = fit.get("reason", "the budget holds only with every op in float32")
            return PassResult(model, False, {"skipped": reason, "kept_float32": found.kept, "budget": fit})
        best = builder(fallbacks, opts.keep_io_types)
        if (grows := _grows(model, best)) is not None:
            return PassResult(model, False, {"skipped": grows, "kept_float32": found.kept, "budget": fit})
        for key, why in fit.get("fallbacks", {}).items():
            found.kept[key] = why
        return PassResult(best, True, _stats(model, best, builder, found, fallbacks, measured, fit, opts))


NODE_BYTES = 96  # a serialized Cast node with its names, about
MIN_CASTS_JUDGED = 16  # a few Casts around a small model's islands are not judged by bytes


def _grows(model: ir.Model, best: ir.Model) -> str | None:
    """Why converting would make the file larger, or None: a model whose weights are computed at
    run time (ConstantOfShape generators, the zoo's light graphs) halves few stored bytes and gains
    a Cast per float32 island boundary (densenet121: 12 KB of weights halved, 97 KB of Casts)."""
    saved = data_bytes(model) - data_bytes(best)
    added = sum(1 for _ in best.graph) - sum(1 for _ in model.graph)
    if added >= MIN_CASTS_JUDGED and saved <= added * NODE_BYTES:
        return (f"float16 would grow the file: {saved} bytes of stored weights halved, {added} Cast nodes "
                f"added (~{added * NODE_BYTES} bytes); its weights are mostly computed at run time")
    return None


def _nothing_to_convert(model: ir.Model, low: LowType) -> str:
    opset = default_opset(model)
    if low.name == "bfloat16" and opset < BFLOAT16_OPSET:
        return (f"no op can compute in bfloat16 at opset {opset}: most ops take bfloat16 from opset "
                f"{BFLOAT16_OPSET} (run opset:target={BFLOAT16_OPSET} first)")
    return f"no op can compute in {low.name} (kept_float32 says why)"


def _dtypes(model: ir.Model):
    graph = model.graph
    for value in (*graph.inputs, *graph.outputs, *graph.initializers.values()):
        yield value.dtype
    for node in graph:
        for value in node.outputs:
            yield value.dtype


def _measure(work: ir.Model, found: Selection, low: LowType, ctx: PassContext, margin: float) -> dict:
    """Steps 2 and 3: candidates kept float32 by the range and underflow rules join `found.kept`."""
    source, where = ctx.calibration_source()
    paths = divisor_paths(work.graph)
    ranges = measure(work, found, path_values(paths), source, ctx.progress)
    by_range = out_of_range(work, found, ranges, low, margin)
    by_underflow = {k: v for k, v in underflowing(paths, ranges, low, found.candidates).items() if k not in by_range}
    found.kept.update(by_range)
    found.kept.update(by_underflow)
    return {"source": where, "batches": ranges.batches, "tensors": len(ranges.max_abs),
            "limit": margin * low.max, "kept_by_range": len(by_range), "divisor_paths": len(paths),
            "kept_by_underflow": len(by_underflow)}


def _fit(model: ir.Model, builder: Builder, ctx: PassContext, opts: Float16Options) -> tuple[frozenset | None, dict]:
    """(ops to put back in float32, or None when no fallback fits; the budget report)."""
    if not ctx.holdout and not ctx.search:
        return frozenset(), {"measured": False, "reason": "no held-out feeds"}
    ev = ctx.evaluator(model)
    budget = effective_budget(ctx.budget)
    if opts.budget_share < 1:
        budget = budget_share(budget, ev.measure(model), opts.budget_share)
    search = Search(builder, ev, budget, ctx.progress or (lambda message: None))
    search.memo = ctx.search_memo("float16")
    ranking: dict = {}

    def rank() -> list[str]:
        order, added = rank_by_added_error(builder.work, builder(), builder.candidates, ev.feeds)
        ranking.update(list(added.items())[:16])
        return order

    try:
        if not opts.fallback:
            ok = search.try_(frozenset())
            return frozenset(), {"measured": True, "fits": ok, "fallback": False,
                                 "all_converted": {search.metric: round(search.value(frozenset()), 6)}}
        kept, report = fit_budget(search, rank, opts.max_fallback)
    except InputError as exc:  # ORT cannot run the candidate (bfloat16 on CPU): verification will say so
        return frozenset(), {"measured": False, "reason": f"ONNX Runtime cannot run the {builder.low.name} "
                                                          f"candidate here: {exc}"}
    if ranking:
        report["added_error"] = ranking
    return kept, report


def _stats(model, best, builder: Builder, found: Selection, fallbacks, measured: dict, fit: dict,
           opts: Float16Options) -> dict:
    low, rewritten = builder.low, builder.last
    chosen = builder.chosen(fallbacks)
    nodes = node_keys(builder.work.graph)
    before, after = data_bytes(model), data_bytes(best)
    return {"dtype": low.name, "keep_io_types": opts.keep_io_types, "converted": len(chosen),
            "converted_by_op": dict(sorted(Counter(nodes[k].op_type for k in chosen).items())),
            "kept_float32": dict(sorted(found.kept.items())),
            "bytes": {"before": before, "after": after, "ratio": round(after / before, 4) if before else None},
            "bytes_added": rewritten.dual_bytes, "casts_inserted": rewritten.casts,
            "constants_converted": rewritten.constants, "ranges": measured,
            "subgraphs": (f"{found.control_flow} If/Loop/Scan node(s): left float32 as a whole, bodies untouched"
                          if found.control_flow else "none"),
            "ort_cpu": {**cpu_report(nodes, chosen, low.name), **_runs(best, fit)}, "budget": fit}


def _runs(best: ir.Model, fit: dict) -> dict:
    """Whether ONNX Runtime's CPU provider loads the result (known when the budget was measured)."""
    if fit.get("measured"):
        return {"runs": True}
    try:
        create_session(best)
    except InputError as exc:
        return {"runs": False, "error": str(exc)}
    return {"runs": True}


__all__ = ["Float16"]
