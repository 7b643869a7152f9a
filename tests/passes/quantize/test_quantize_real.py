"""`quantize` on the real models (slow; needs the `models` extra): MiniLM keeps its sentence
embeddings within the budget while ONNX Runtime runs integer kernels; PP-OCR cls, whose weights
live in Constant nodes, quantizes after lift-constants with every QLinearConv in place."""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from graphopt import optimize

pytestmark = pytest.mark.slow


def _ort_ops(path, tmp_path) -> Counter:
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.optimized_model_filepath = str(tmp_path / "ort_optimized.onnx")
    so.log_severity_level = 3
    ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    return Counter(n.op_type for n in onnx.load(str(tmp_path / "ort_optimized.onnx")).graph.node)


def _run(path, feed):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feed)


def test_minilm_int8_keeps_embeddings_and_runs_integer_kernels(minilm_path, tmp_path):
    from models.real import MINILM_SENTENCES, minilm_embeddings, minilm_tokenize

    calib = [minilm_tokenize([s], 24) for s in MINILM_SENTENCES[:12]]
    check = [minilm_tokenize(MINILM_SENTENCES[12:16], 24)]
    held = minilm_tokenize(MINILM_SENTENCES[48:56], 32)
    out = tmp_path / "minilm.int8.onnx"
    result = optimize(minilm_path, out, passes="quantize:speed_check=false;cache_dir=off", calib=calib, data=check,
                      budget=["cosine=0.99"])
    stats = result.report["passes"][0]["stats"]
    assert result.report["passes"][0]["applied"] and stats["budget"]["fits"]
    assert stats["quantized_by_op"].get("MatMul", 0) + stats["quantized_by_op"].get("Gemm", 0) >= 30
    ops = _ort_ops(out, tmp_path)
    assert ops["MatMulIntegerToFloat"] + ops["QGemm"] >= 30
    ref = minilm_embeddings(_run(minilm_path, held)[0], held["attention_mask"])
    got = minilm_embeddings(_run(out, held)[0], held["attention_mask"])
    assert float(np.mean(np.sum(ref * got, axis=1))) > 0.99


def test_ppocr_cls_weights_in_constant_nodes(tmp_path):
    pytest.importorskip("rapidocr_onnxruntime")
    from models.real import ppocr_inputs, ppocr_models

    calib = [{"x": ppocr_inputs("cls", 8, seed=1)["x"]}]
    held = ppocr_inputs("cls", 16, seed=2)
    out = tmp_path / "cls.int8.onnx"
    result = optimize(ppocr_models()["cls"], out, passes="lift-constants,quantize:speed_check=false;cache_dir=off",
                      calib=calib, data=[held])
    record = result.report["passes"][1]
    assert record["applied"] and record["stats"]["quantized_by_op"]["Conv"] >= 30
    assert any("opset raised 11 -> 13" in note for note in record["stats"]["notes"])
    assert _ort_ops(out, tmp_path)["QLinearConv"] >= 30
    ref, got = _run(ppocr_models()["cls"], held)[0], _run(out, held)[0]
    assert float(np.mean(ref.argmax(axis=1) == got.argmax(axis=1))) >= 0.9
