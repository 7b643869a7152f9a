"""Pruning on real models: what prune-channels buys (params, FLOPs, latency, fidelity) at fixed
ratios and under a budget, and what unstructured `prune` buys in file size.

Models (the `models` extra): PP-OCRv4 det and rec from rapidocr-onnxruntime, all-MiniLM-L6-v2
(its FFNs are the only channels prunable there). Each model first goes through the `lossless`
recipe (its weights live in Constant nodes); that output is the baseline every row compares
with. Calibration and held-out data are real and disjoint: rendered pages (det), rendered text
lines (rec), MiniLM's first 48 sentences for calibration and the other 24 held out.

Structured table, per model: baseline, `prune-channels` at `--ratios` (scope=global, fixed),
and budget mode at cosine >= `--budget`; every variant runs through graphopt.optimize, so the
manager verifies it (structure + numerics; fixed rows are given no budget, the budget row must
pass the budget). Params and FLOPs (2·MACs, with the bench feed's static shapes), ORT CPU
latency (ORT_ENABLE_ALL, `--threads` threads, median of `--runs` runs, all variants of a model
timed interleaved in one loop), held-out cosine against the baseline (MiniLM also: mean cosine of
the sentence embeddings), and onnx.checker's full check.

Unstructured table: `prune` at `--sparsity` with storage=sparse: raw and deflate (zlib level 6,
the "download size") bytes of the dense and the sparse file, whether ORT loads the sparse file
and whether its outputs equal the dense pruned model's exactly.

Usage: python tools/bench_prune.py [--models det,rec,minilm] [--ratios 0.1,0.2,0.3]
       [--budget 0.98] [--cap 0.6] [--round-to 8] [--sparsity 0.8] [--runs 30] [--threads 1] [--int8]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from graphopt import optimize  # noqa: E402
from graphopt.bench import interleaved_p50  # noqa: E402
from graphopt.io import load_path  # noqa: E402
from graphopt.lossy import summarize  # noqa: E402
from graphopt.metrics import compare_outputs  # noqa: E402
from graphopt.model_stats import model_stats  # noqa: E402
from graphopt.registry import registered_passes  # noqa: E402
from graphopt.runtime import create_session, run_model  # noqa: E402

MINILM_LEN = 64  # the 72 sentences are short; 64 tokens hold every one of them

# --- HOOK: prune + int8 -----------------------------------------------------------------------
# The int8 `quantize` pass is being written in parallel. When it is registered, the budget row is
# repeated with it appended (the two passes split the budget); the lead sets the spec here.
QUANTIZE_SPEC = "quantize"
PRUNE_SHARE_WITH_INT8 = 0.6  # prune-channels' share of the budget when quantize follows it
# ----------------------------------------------------------------------------------------------


@dataclass
class Case:
    name: str
    path: Path
    calib: list[dict]
    holdout: list[dict]
    bench: dict


@dataclass
class Variant:
    label: str
    path: Path
    note: str = ""
    stats: dict = field(default_factory=dict)


def load_cases(names: list[str], tmp: Path) -> list[Case]:
    from models.real import MINILM_SENTENCES, minilm_onnx, minilm_tokenize, ppocr_inputs, ppocr_models

    cases = []
    for name in names:
        if name == "minilm":
            path = Path("/tmp/graphopt-models/minilm.onnx")
            path = path if path.is_file() else minilm_onnx(tmp / "minilm.onnx")
            tok = lambda lo, hi: minilm_tokenize(MINILM_SENTENCES[lo:hi], MINILM_LEN)  # noqa: E731
            cases.append(Case(name, path, [tok(i, i + 8) for i in range(0, 48, 8)], [tok(48, 72)], tok(48, 56)))
        else:
            count = 1 if name == "det" else 8
            cases.append(Case(name, ppocr_models()[name], [ppocr_inputs(name, count, seed=s) for s in range(4)],
                              [ppocr_inputs(name, count, seed=100 + s) for s in range(2)],
                              ppocr_inputs(name, count, seed=200)))
    return cases


def run_variant(case: Case, base: Path, out: Path, label: str, spec: str, budget: float | None) -> Variant | None:
    try:
        res = optimize(str(base), str(out), passes=spec, calib=case.calib, data=case.holdout,
                       budget={"cosine": budget if budget is not None else -1.0})
    except Exception as exc:  # noqa: BLE001  (a failed variant is reported, the others still run)
        print(f"{case.name}: {label} ({spec}) failed: {type(exc).__name__}: {exc}")
        return None
    records = res.report["passes"]
    failed = [r["name"] for r in records if r["rolled_back"] or r["error"]]
    stats = next((r["stats"] for r in records if r["name"] == "prune-channels"), {})
    return Variant(label, out, "rolled back: " + ", ".join(failed) if failed else "", stats)


def static_macs(path: Path, feed: dict) -> int:
    model = load_path(path)
    for value in model.graph.inputs:
        if value.name in feed:
            value.shape = ir.Shape(feed[value.name].shape)
    return model_stats(model).macs


def fidelity(case: Case, base_out: list[dict], path: Path) -> tuple[float, float | None]:
    outs = run_model(path, case.holdout)
    cos = summarize(compare_outputs(base_out, outs))["cosine"]
    if case.name != "minilm":
        return cos, None
    from models.real import minilm_embeddings

    mask = case.holdout[0]["attention_mask"]
    a, b = (minilm_embeddings(next(iter(o[0].values())), mask) for o in (base_out, outs))
    return cos, float(np.mean(np.sum(a * b, axis=1)))


def structured(case: Case, base: Path, tmp: Path, args) -> list[Variant]:
    variants = [Variant("lossless baseline", base)]
    for ratio in args.ratios:
        variants.append(run_variant(case, base, tmp / f"{case.name}_r{ratio}.onnx", f"ratio {ratio:g}",
                                    f"prune-channels:ratio={ratio};scope=global;round_to={args.round_to}", None))
    budget_spec = f"prune-channels:ratio={args.cap};mode=budget;scope=global;round_to={args.round_to}"
    variants.append(run_variant(case, base, tmp / f"{case.name}_budget.onnx", f"budget cos>={args.budget:g}",
                                budget_spec, args.budget))
    if args.int8:
        variants.append(int8_variant(case, base, tmp, budget_spec, args.budget))
    return [v for v in variants if v is not None]


def int8_variant(case: Case, base: Path, tmp: Path, prune_spec: str, budget: float) -> Variant | None:
    """HOOK: prune + int8 in one run, splitting the budget (see QUANTIZE_SPEC above)."""
    if "quantize" not in registered_passes():
        print(f"{case.name}: `quantize` is not registered; prune + int8 row skipped")
        return None
    spec = f"{prune_spec};budget_share={PRUNE_SHARE_WITH_INT8},{QUANTIZE_SPEC}"
    return run_variant(case, base, tmp / f"{case.name}_int8.onnx", "budget + int8", spec, budget)


def structured_table(case: Case, variants: list[Variant], args) -> None:
    base_out = run_model(variants[0].path, case.holdout)
    sessions = [create_session(v.path, "cpu", "enable_all", args.threads) for v in variants]
    latency = interleaved_p50(sessions, case.bench, args.runs)
    del sessions
    print(f"\n{case.name}: prune-channels (ORT CPU ENABLE_ALL, {args.threads} thread(s), median of {args.runs} runs, "
          f"interleaved; bench feed {[list(a.shape) for a in case.bench.values()]})")
    cols = ["variant", "params", "GFLOPs", "ms", "vs base", "cosine", "emb cos", "checker", "note"]
    rows = []
    base_params = base_flops = None
    for v, ms in zip(variants, latency):
        params = model_stats(load_path(v.path)).param_count
        flops = 2 * static_macs(v.path, case.bench) / 1e9
        base_params, base_flops = base_params or params, base_flops or flops
        cos, emb = fidelity(case, base_out, v.path)
        onnx.checker.check_model(str(v.path), full_check=True)
        comp = v.stats.get("fidelity_without_compensation", {}).get("cosine")
        note = v.note or (f"without compensation cos {comp:.4f}" if comp is not None else "")
        if "fraction" in v.stats:
            note += f"; {v.stats['fraction']:g} of channels, {v.stats['evaluations']} evaluations"
        rows.append([v.label, f"{params / 1e6:.3f}M ({params / base_params:.0%})",
                     f"{flops:.3f} ({flops / base_flops:.0%})", f"{ms:.2f}", f"{ms / latency[0]:.2f}",
                     f"{cos:.4f}", "" if emb is None else f"{emb:.4f}", "ok", note])
    print_table(cols, rows)


def unstructured(case: Case, base: Path, tmp: Path, args) -> None:
    out = tmp / f"{case.name}_sparse.onnx"
    res = optimize(str(base), str(out), passes=f"prune:sparsity={args.sparsity};storage=sparse;scope=global",
                   calib=case.calib, data=case.holdout, budget={"cosine": -1.0})
    record = res.report["passes"][0]
    sizes = record["stats"].get("file", {})
    dense = tmp / f"{case.name}_dense_pruned.onnx"
    onnx.save(ir.serde.serialize_model(res.model), str(dense))
    same = all(np.array_equal(a, b) for x, y in zip(run_model(dense, case.holdout), run_model(out, case.holdout))
               for a, b in zip(x.values(), y.values()))
    base_bytes = base.stat().st_size
    base_deflate = len(zlib.compress(base.read_bytes(), 6))
    print(f"\n{case.name}: prune {args.sparsity:g} (global, first/last layers and tensors < 4096 kept dense), "
          f"storage=sparse; cosine {record['stats'].get('fidelity', {}).get('cosine', float('nan')):.4f}")
    print_table(["file", "raw KB", "vs base", "deflate KB", "vs base raw"], [
        ["lossless baseline", f"{base_bytes / 1e3:.0f}", "100%", f"{base_deflate / 1e3:.0f}",
         f"{base_deflate / base_bytes:.0%}"],
        ["pruned, dense", f"{sizes['dense_bytes'] / 1e3:.0f}", f"{sizes['dense_bytes'] / base_bytes:.0%}",
         f"{sizes['dense_deflate_bytes'] / 1e3:.0f}", f"{sizes['dense_deflate_bytes'] / base_bytes:.0%}"],
        ["pruned, sparse initializers", f"{out.stat().st_size / 1e3:.0f}", f"{out.stat().st_size / base_bytes:.0%}",
         f"{sizes['sparse_deflate_bytes'] / 1e3:.0f}", f"{sizes['sparse_deflate_bytes'] / base_bytes:.0%}"]])
    print(f"weight sparsity {record['stats']['sparsity']:.2f} of prunable weights; ORT loads the sparse file: yes; "
          f"outputs equal to the dense pruned model: {'exactly' if same else 'NO'}")


def print_table(cols: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(str(x)) for x in [c] + [r[i] for r in rows]) for i, c in enumerate(cols)]
    print("  ".join(c.ljust(w) for c, w in zip(cols, widths)).rstrip())
    print("  ".join("-" * w for w in widths))
    for r in rows:
        print("  ".join(str(x).ljust(w) for x, w in zip(r, widths)).rstrip())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="det,rec,minilm")
    parser.add_argument("--ratios", default="0.1,0.2,0.3", type=lambda s: [float(x) for x in s.split(",")])
    parser.add_argument("--budget", type=float, default=0.98)
    parser.add_argument("--cap", type=float, default=0.6, help="budget mode: most of one group it may remove")
    parser.add_argument("--round-to", type=int, default=8, help="kept channel counts are multiples of this")
    parser.add_argument("--sparsity", type=float, default=0.8)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--skip-unstructured", action="store_true")
    parser.add_argument("--int8", action="store_true", help="also prune + quantize (the int8 hook; slow)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench_prune_") as folder:
        tmp = Path(folder)
        for case in load_cases(args.models.split(","), tmp):
            base = tmp / f"{case.name}_lossless.onnx"
            optimize(str(case.path), str(base), recipe="lossless", verify="off")
            structured_table(case, structured(case, base, tmp, args), args)
            if not args.skip_unstructured:
                unstructured(case, base, tmp, args)


if __name__ == "__main__":
    main()
