"""The lossless and modern recipes on the real models (slow; needs the `models` extra).

MiniLM: every GELU becomes the standard Gelu under `modern` (opset 20) and embeddings stay
equal within reassoc tolerance; PP-OCR det/rec/cls: fewer nodes, no rollback, same outputs.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import pytest

from graphopt import optimize

pytestmark = pytest.mark.slow


def _ops(path) -> Counter:
    return Counter(n.op_type for n in onnx.load(str(path), load_external_data=False).graph.node)


def _run(path, feed):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"]).run(None, feed)


def test_minilm_modern_recipe_fuses_every_gelu(minilm_path, tmp_path):
    from models.real import MINILM_SENTENCES, minilm_embeddings, minilm_tokenize

    feed = minilm_tokenize(MINILM_SENTENCES[48:52], max_len=32)
    out = tmp_path / "minilm.opt.onnx"
    result = optimize(minilm_path, out, recipe="modern", data=[feed])
    assert not result.report["summary"]["passes_rolled_back"]
    before, after = _ops(minilm_path), _ops(out)
    assert before["Erf"] == 6 and after["Erf"] == 0 and after["Gelu"] == 6
    assert after["LayerNormalization"] == 13
    ref = minilm_embeddings(_run(minilm_path, feed)[0], feed["attention_mask"])
    got = minilm_embeddings(_run(out, feed)[0], feed["attention_mask"])
    assert float(np.min(np.sum(ref * got, axis=1))) > 0.99999


@pytest.mark.parametrize("kind", ["det", "rec", "cls"])
def test_ppocr_lossless_recipe(kind, tmp_path):
    pytest.importorskip("rapidocr_onnxruntime")
    from models.real import ppocr_inputs, ppocr_models

    src = ppocr_models()[kind]
    feed = ppocr_inputs(kind, 1)
    out = tmp_path / f"{kind}.onnx"
    result = optimize(src, out, data=[feed])
    assert not result.report["summary"]["passes_rolled_back"]
    assert sum(_ops(out).values()) < 0.7 * sum(_ops(src).values())
    for got, ref in zip(_run(out, feed), _run(src, feed)):
        assert got.shape == ref.shape
        np.testing.assert_allclose(got, ref, rtol=1e-3, atol=1e-4)
