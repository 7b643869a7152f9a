"""A budget that sees the task (issue 19): a CTC-style recognizer with a logits head keeps its
per-position classes under the default budget; a budget without a top-1 bound warns by name."""

from __future__ import annotations

import logging

import numpy as np
import onnx
import onnx_ir as ir
import pytest

from graphopt import optimize
from models._graph import GraphBuilder, linear
from tests.conftest import run_ort

PRUNE = "prune-channels:mode=budget;round_to=1;ratio=0.5"


def tiny_crnn(seed: int = 0, classes: int = 12) -> onnx.ModelProto:
    """x [N, 1, 8, 24] -> two 3x3 convs -> mean over height -> [N, T=24, 16] -> MLP -> "logits"
    [N, 24, classes]. A common offset of -20 (as in real CTC logits, mostly large negatives)
    keeps the cosine of the logits high whatever the argmax does."""
    g = GraphBuilder("crnn", seed)
    x = g.input("x", ["N", 1, 8, 24])
    for i, cin in enumerate((1, 16)):
        w, b = g.weight(f"conv{i}.w", [16, cin, 3, 3]), g.weight(f"conv{i}.b", [16], 0.1)
        x = g.op("Relu", [g.op("Conv", [x, w, b], pads=[1, 1, 1, 1])])
    h = g.op("Transpose", [g.op("ReduceMean", [x], axes=[2], keepdims=0)], perm=[0, 2, 1])
    h = g.op("Relu", [linear(g, h, 16, 48, "fc1")])
    g.op("Add", [linear(g, h, 48, classes, "fc2"), g.const("offset", np.float32(-20.0))], out="logits")
    g.output("logits", ["N", 24, classes])
    return g.model()


def _feeds(seed: int, count: int = 3) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [{"x": rng.standard_normal((8, 1, 8, 24)).astype(np.float32)} for _ in range(count)]


def _classes(model: onnx.ModelProto, feeds) -> np.ndarray:
    return np.concatenate([run_ort(model, f)[0].argmax(axis=-1) for f in feeds])


def _prune(budget, caplog):
    proto, held = tiny_crnn(), _feeds(2)
    with caplog.at_level(logging.WARNING, logger="graphopt"):
        result = optimize(proto, passes=PRUNE, calib=_feeds(1), data=held, budget=budget)
    record = result.report["passes"][-1]
    agree = float(np.mean(_classes(proto, held) == _classes(result.model, held)))
    return record, agree


def test_default_budget_keeps_every_position_class_of_a_logits_head(caplog):
    record, agree = _prune(None, caplog)
    assert agree >= 0.999 and "no top-1 bound" not in caplog.text
    entries = {e["entry"]: e for e in record["verify"]["budget"]["entries"]}
    top1 = entries["top1_dist>=0.999"]
    assert (top1["output"], top1["statistic"], top1["samples"], top1["positions"]) == \
        ("logits", "per-position top-1 agreement", 24, 24 * 24)
    assert entries["cosine>=0.99"]["statistic"] == "worst-sample cosine"


def test_cosine_only_budget_warns_and_is_blind_to_changed_classes(caplog):
    record, agree = _prune(["cosine=0.98"], caplog)
    assert "output 'logits' (class scores per position [N, T, C], logits)" in caplog.text
    assert "'logits'" in record["verify"]["budget"]["uncovered"][0]
    assert record["applied"] and record["verify"]["vs_input"]["sample_cosine"] >= 0.98
    assert agree < 0.99  # what the warning is about: cosine held, the classes did not


def test_per_output_top1_entry_covers_the_head(caplog):
    record, agree = _prune(["cosine=0.98", "logits:top1=0.999"], caplog)
    assert "no top-1 bound" not in caplog.text and record["verify"]["budget"]["uncovered"] == []
    assert agree >= 0.999


# --- PP-OCR rec with a logits head (slow; needs the models extra) ----------------------------

def ppocr_rec_logits(path) -> str:
    """PP-OCR rec without its final Softmax: the graph output is the Softmax's input (logits)."""
    from models.real import ppocr_models

    model = onnx.load(str(ppocr_models()["rec"]))
    softmax = next(n for n in model.graph.node if n.output[0] == model.graph.output[0].name)
    assert softmax.op_type == "Softmax"
    model.graph.node.remove(softmax)
    model.graph.output[0].name = softmax.input[0]
    onnx.save(model, path)
    return str(path)


@pytest.mark.slow
def test_ppocr_rec_logits_decoded_strings_survive_prune_channels(tmp_path, caplog):
    pytest.importorskip("rapidocr_onnxruntime")
    from models.real import ppocr_inputs, ppocr_rec_decode

    src = ppocr_rec_logits(tmp_path / "rec_logits.onnx")
    # the budget search runs on the 32 calibration lines, the verification on 16 others
    calib = [ppocr_inputs("rec", 16, seed=1), ppocr_inputs("rec", 16, seed=3)]
    held = [ppocr_inputs("rec", 16, seed=2)]
    result = optimize(src, passes="lift-constants,prune-channels:mode=budget", calib=calib, data=held)
    record = result.report["passes"][-1]
    sizes = record["stats"]["model"]
    assert record["applied"] and sizes["params_after"] < sizes["params_before"]
    want = ppocr_rec_decode(run_ort(src, held[0])[0])
    got = ppocr_rec_decode(run_ort(ir.serde.serialize_model(result.model), held[0])[0])
    assert sum(a == b for a, b in zip(want, got)) >= 0.9 * len(want)
    with caplog.at_level(logging.WARNING, logger="graphopt"):
        checked = optimize(src, passes="cleanup", data=held, budget=["cosine=0.98"])
    output = onnx.load(src).graph.output[0].name
    assert f"no top-1 bound on output '{output}'" in caplog.text
    assert output in checked.report["summary"]["final_verify"]["budget"]["uncovered"][0]
