"""Weight-only INT4 benchmark: graphopt's `int4` recipe vs ONNX Runtime's MatMulNBitsQuantizer on MiniLM.

Rows (tools/quant_cases.py's minilm case: calibration sentences, held-out sentences, the worst
held-out sentence-embedding cosine, the batch-1 latency feed):
- FP32: the input model.
- graphopt int4 ALG (budget): the `int4` recipe for `--target ort` (modern, quantize-weights in
  the MatMulNBits / GatherBlockQuantized form, ort-fusions) with `algorithm=ALG`, `--calib` = the
  calibration sentences (the last quarter held out by graphopt for its budget), budget cosine=0.99.
- graphopt int4 ALG (all int4): the same with `fallback=false` and no budget: every eligible
  weight at int4, so algorithms compare at one file size.
- graphopt int4 gptq, dq form: the `int4` recipe for `--target portable` (DequantizeLinear with
  block_size, opset 21), run by ONNX Runtime.
- ORT MatMulNBits (sym|asym, acc=None|4, MatMul[+Gather]): MatMulNBitsQuantizer, default RTN
  algorithm, same bits and block size.
Columns: file size / FP32, worst held-out sentence cosine, p50 latency in ms (ORT CPU EP,
ORT_ENABLE_ALL, batch 1, all rows timed in interleaved blocks: graphopt.bench.interleaved_p50) on
one sentence padded to 128 tokens and on the first held-out sentence at its own length, wall time
of the quantization (graphopt: the whole optimize call, with the pass's own seconds in the notes).

Usage: python tools/bench_weights.py [--model minilm.onnx] [--algorithms rtn,gptq,awq] [--bits 4]
       [--block 32] [--runs 30] [--threads 0] [--out-dir DIR]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import onnx
import onnxruntime as ort

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))

from graphopt.report import cpu_line  # noqa: E402
from graphopt import optimize  # noqa: E402
from graphopt.bench import interleaved_p50  # noqa: E402
from graphopt.recipes import RECIPES  # noqa: E402
from graphopt.targets import adapt_recipe, get_target  # noqa: E402
from quant_cases import QuantCase, minilm_case  # noqa: E402


def session(path: Path, threads: int) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.intra_op_num_threads = threads
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def graphopt_int4(case: QuantCase, out: Path, options: str, target: str, budget: list[str]) -> dict:
    """The int4 recipe for `target` with extra quantize-weights options; the row's record."""
    items = tuple(f"quantize-weights:{options}" if i == "quantize-weights" else i for i in RECIPES["int4"])
    spec = ",".join(adapt_recipe(items, get_target(target)))
    start = time.perf_counter()
    result = optimize(case.source, out, passes=spec, calib=case.calib, budget=budget)
    seconds = time.perf_counter() - start
    record = next(p for p in result.report["passes"] if p["name"] == "quantize-weights")
    stats = record.get("stats", {})
    if not record.get("applied"):
        return {"path": out, "seconds": seconds, "what": f"not applied: {record.get('error') or stats.get('skipped')}"}
    level = stats.get("accuracy_level", {}).get("accuracy_level", "-")
    what = f"{stats.get('by_bits')}, accuracy_level {level}, pass {record['seconds']:.1f} s"
    return {"path": out, "seconds": seconds, "what": what}


def ort_nbits(case: QuantCase, out: Path, bits: int, block: int, symmetric: bool, level, gather: bool) -> dict:
    from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer

    ops = ("MatMul", "Gather") if gather else ("MatMul",)
    config = DefaultWeightOnlyQuantConfig(block_size=block, is_symmetric=symmetric, accuracy_level=level, bits=bits,
                                          op_types_to_quantize=ops, quant_axes=(("MatMul", 0), ("Gather", 1)))
    start = time.perf_counter()
    quantizer = MatMulNBitsQuantizer(onnx.load(str(case.source)), algo_config=config)
    quantizer.process()
    quantizer.model.save_model_to_file(str(out), False)
    return {"path": out, "seconds": time.perf_counter() - start, "what": "RTN (DefaultWeightOnlyQuantConfig)"}


def build_rows(case: QuantCase, tmp: Path, args) -> dict[str, dict]:
    rows = {"FP32": {"path": case.source, "seconds": 0.0, "what": "input model"}}
    base = f"bits={args.bits};block_size={args.block}"
    for alg in args.algorithms:
        rows[f"graphopt int4 {alg} (budget)"] = graphopt_int4(
            case, tmp / f"go_{alg}.onnx", f"{base};algorithm={alg}", "ort", ["cosine=0.99"])
        rows[f"graphopt int4 {alg} (all int4)"] = graphopt_int4(
            case, tmp / f"go_{alg}_all.onnx", f"{base};algorithm={alg};fallback=false", "ort", ["cosine=-1"])
    rows["graphopt int4 gptq, dq form (budget)"] = graphopt_int4(case, tmp / "go_dq.onnx", f"{base};algorithm=gptq",
                                                                 "portable", ["cosine=0.99"])
    configs = [(False, None, False), (False, None, True), (False, 4, True), (True, None, True), (True, 4, True)]
    for symmetric, level, gather in configs:
        label = (f"ORT MatMulNBits ({'sym' if symmetric else 'asym'}, acc={level}, "
                 f"{'MatMul+Gather' if gather else 'MatMul'})")
        name = label.replace(" ", "_").replace("(", "").replace(")", "").replace(",", "").replace("=", "")
        rows[label] = ort_nbits(case, tmp / f"{name}.onnx", args.bits, args.block, symmetric, level, gather)
    return rows


def measure(case: QuantCase, rows: dict[str, dict], args) -> None:
    sessions = {label: session(row["path"], args.threads) for label, row in rows.items()}
    outputs = {label: [s.run(None, feed) for feed in case.holdout] for label, s in sessions.items()}
    size = case.source.stat().st_size
    for label, row in rows.items():
        row["fidelity"] = case.fidelity(outputs["FP32"], outputs[label])
        row["size"] = Path(row["path"]).stat().st_size / size
    for key, feed in (("ms", case.latency_feed), ("ms_short", one_sentence(case))):
        for row, ms in zip(rows.values(), interleaved_p50(list(sessions.values()), feed, args.runs)):
            row[key] = ms


def one_sentence(case: QuantCase) -> dict:
    """The first held-out sentence at its own length (batch 1, no padding)."""
    batch = case.holdout[0]
    length = int(batch["attention_mask"][0].sum())
    return {k: v[:1, :length] for k, v in batch.items()}


def print_table(rows: dict[str, dict], args) -> None:
    print(f"\nMiniLM (all-MiniLM-L6-v2), int{args.bits} block {args.block}; ORT {ort.__version__}; {cpu_line()}; "
          f"threads {args.threads or 'default'}; p50 of {args.runs} runs\n")
    print("| variant | file / FP32 | worst sentence cosine | p50 ms (128 tokens) | p50 ms (one sentence) | "
          "quantize s | notes |")
    print("|---|---|---|---|---|---|---|")
    for label, row in rows.items():
        print(f"| {label} | {row['size']:.3f} | {row['fidelity']:.4f} | {row['ms']:.2f} | {row['ms_short']:.2f} | "
              f"{row['seconds']:.1f} | {row['what']} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="an exported MiniLM (default: models.real's export)")
    parser.add_argument("--algorithms", default="rtn,gptq,awq")
    parser.add_argument("--bits", type=int, default=4)
    parser.add_argument("--block", type=int, default=32)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--out-dir", type=Path, help="keep the quantized models here (default: a temporary folder)")
    args = parser.parse_args()
    args.algorithms = args.algorithms.split(",")
    with tempfile.TemporaryDirectory(prefix="graphopt-bench-weights-") as tmp:
        folder = args.out_dir or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        case = minilm_case(folder)
        if args.model is not None:
            case.source = args.model
        rows = build_rows(case, folder, args)
        measure(case, rows, args)
        print_table(rows, args)


if __name__ == "__main__":
    main()
