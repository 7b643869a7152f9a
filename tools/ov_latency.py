"""Run FP32 and INT8 models on ONNX Runtime's OpenVINO EP (CPU device); called by bench_quantize.py.

Runs in the interpreter that has onnxruntime-openvino (e.g. /tmp/venv-ov/bin/python), so it
imports nothing from graphopt. Arguments: FP32.onnx INT8.onnx FEEDS.npz RUNS OUTPUTS.npz.
FEEDS.npz holds `latency__<input>` (the batch-1 feed) and `h<i>__<input>` (held-out feeds).
Writes every held-out output to OUTPUTS.npz (`fp32__<i>__<k>`, `int8__<i>__<k>`) and prints one JSON
line: median latency of each model (interleaved blocks of 5 runs), the EP actually used, and
how many nodes OpenVINO took.
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np
import onnxruntime as ort


def session(path: str) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    return ort.InferenceSession(path, so, providers=[("OpenVINOExecutionProvider", {"device_type": "CPU"}),
                                                     "CPUExecutionProvider"])


def feeds_from(npz) -> tuple[dict, list[dict]]:
    latency, holdout = {}, {}
    for key in npz.files:
        prefix, name = key.split("__", 1)
        if prefix == "latency":
            latency[name] = npz[key]
        else:
            holdout.setdefault(int(prefix[1:]), {})[name] = npz[key]
    return latency, [holdout[i] for i in sorted(holdout)]


def interleaved(sessions, feed, runs: int, block: int = 5) -> list[float]:
    """graphopt.bench.interleaved_p50 (this script runs under another venv's onnxruntime): a
    pause before each block so the previous session's spinning threads do not steal cores."""
    for s in sessions:
        for _ in range(3):
            s.run(None, feed)
    samples = [[] for _ in sessions]
    while len(samples[0]) < runs:
        for s, times in zip(sessions, samples):
            time.sleep(0.02)
            for _ in range(block):
                start = time.perf_counter()
                s.run(None, feed)
                times.append((time.perf_counter() - start) * 1e3)
    return [float(np.median(t)) for t in samples]


def main() -> None:
    fp32_path, int8_path, feeds_path, runs, outputs_path = sys.argv[1:6]
    latency, holdout = feeds_from(np.load(feeds_path))
    sessions = {"fp32": session(fp32_path), "int8": session(int8_path)}
    outputs = {}
    for label, s in sessions.items():
        for i, feed in enumerate(holdout):
            for k, array in enumerate(s.run(None, feed)):
                outputs[f"{label}__{i}__{k}"] = array
    np.savez(outputs_path, **outputs)
    fp32_ms, int8_ms = interleaved(list(sessions.values()), latency, int(runs))
    print(json.dumps({"fp32_ms": fp32_ms, "int8_ms": int8_ms, "ort": ort.__version__,
                      "device": "OpenVINO EP (CPU), " + ",".join(sessions["int8"].get_providers()[:1])}))


if __name__ == "__main__":
    main()
