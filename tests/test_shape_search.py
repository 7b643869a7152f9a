"""Synthesized inputs get shapes the input model runs on (graphopt.shape_search).

Symbolic dims are sized by kind (batch 1, image sides 32..640, sequences 16..128, signals 512..),
the model is run on candidates cheapest first and the first it runs on is kept; --shape wins and
is never searched over; static models open no session; nothing that runs is exit 2 in one line.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import pytest

import graphopt.shape_search as shape_search
from conftest import parse, run_ort
from graphopt.cli import main
from graphopt.data import InputSpec
from graphopt.errors import InputError
from graphopt.io import load_model
from graphopt.run_data import run_feeds

HEADER = '<ir_version: 9, opset_import: ["" : 17]>'

# Two 2x2 MaxPools and a 3x3 Conv without padding: needs sides >= 12 (a 1x1 input is refused).
CONV_NET = HEADER + """
g (float[N, 1, ?, ?] x) => (float[N, 2, ?, ?] y) {
    p1 = MaxPool <kernel_shape = [2, 2], strides = [2, 2]> (x)
    p2 = MaxPool <kernel_shape = [2, 2], strides = [2, 2]> (p1)
    w = Constant <value = float[2, 1, 3, 3] {%s}> ()
    y = Conv <kernel_shape = [3, 3]> (p2, w)
}
""" % ",".join(["0.1"] * 18)

# Reflect padding by 1 on each side: the padded axis needs >= 2 values.
REFLECT_SIGNAL = HEADER + """
g (float[1, L] x) => (float[1, M] y) {
    pads = Constant <value = int64[4] {0, 1, 0, 1}> ()
    y = Pad <mode = "reflect"> (x, pads)
}
"""
REFLECT_FRAMES = HEADER + """
g (float[1, 4, time] x) => (float[1, 4, M] y) {
    pads = Constant <value = int64[6] {0, 0, 1, 0, 0, 1}> ()
    y = Pad <mode = "reflect"> (x, pads)
}
"""

# Only 100 samples reshape to [1, 100]: no candidate runs.
FIXED_LENGTH = HEADER + """
g (float[1, L] x) => (float[1, 100] y) {
    shape = Constant <value = int64[2] {1, 100}> ()
    y = Reshape(x, shape)
}
"""


def _unet(levels: int, height: str = "height", width: str = "width") -> str:
    """`levels` 2x2 MaxPools down, then Resize x2 + Concat with each skip on the way up: the sides
    must divide by 2**levels (as a YOLO/DBNet neck needs 32)."""
    down = [f"d{i + 1} = MaxPool <kernel_shape = [2, 2], strides = [2, 2]> (d{i})" for i in range(levels)]
    up, last = [], f"d{levels}"
    for i in range(levels, 0, -1):
        up += [f'r{i} = Resize <mode = "nearest"> ({last}, , scales)', f"u{i} = Concat <axis = 1> (r{i}, d{i - 1})"]
        last = f"u{i}"
    body = "\n    ".join(["scales = Constant <value = float[4] {1, 1, 2, 2}> ()", *down, *up,
                          f"y = Identity({last})"])
    return HEADER + f"\ng (float[1, 1, {height}, {width}] d0) => (float[1, {levels + 1}, {height}, {width}] y) {{\n" \
        f"    {body}\n}}\n"


def _save(tmp_path: Path, text: str, name: str = "m.onnx") -> Path:
    path = tmp_path / name
    onnx.save(parse(text), path)
    return path


def _synthetic(path: Path, shapes=None):
    return run_feeds(load_model(path), None, None, shapes or [], seed=0, calibrates=False)


def _ort_refuses(text: str, shape: tuple[int, ...]) -> bool:
    """Whether ONNX Runtime refuses the model's only input at this shape."""
    name = parse(text).graph.input[0].name
    try:
        run_ort(parse(text), {name: np.ones(shape, np.float32)})
    except Exception:  # noqa: BLE001
        return True
    return False


@pytest.fixture
def sessions(monkeypatch) -> list:
    """Every session the search opens."""
    opened = []
    real = shape_search.create_session

    def counting(source, *args, **kwargs):
        opened.append(source)
        return real(source, *args, **kwargs)

    monkeypatch.setattr(shape_search, "create_session", counting)
    return opened


def test_conv_net_that_fails_at_1_runs_at_32(tmp_path, sessions):
    assert _ort_refuses(CONV_NET, (1, 1, 1, 1))  # what synthesizing 1 for every symbolic dim gave
    run = _synthetic(_save(tmp_path, CONV_NET))
    assert run.info["shapes"] == {"x": [1, 1, 32, 32]}
    assert run.info["shape_search"] == {"tried": 1, "chosen": "N=1, x[2]=32, x[3]=32"}
    assert run.verification[0]["x"].shape == (1, 1, 32, 32) and len(sessions) == 1


@pytest.mark.parametrize("text, shape, chosen", [
    (REFLECT_SIGNAL, [1, 512], "L=512"),  # a float [N, L] is a signal
    (REFLECT_FRAMES, [1, 4, 16], "time=16"),
], ids=["signal", "frames"])
def test_reflect_pad_gets_a_length_it_runs_on(tmp_path, text, shape, chosen):
    assert _ort_refuses(text, tuple(1 for _ in shape))
    run = _synthetic(_save(tmp_path, text))
    assert run.info["shapes"] == {"x": shape}
    assert run.info["shape_search"] == {"tried": 1, "chosen": chosen}


def test_resize_concat_needs_divisible_sides(tmp_path, capfd):
    text = _unet(6)  # divisible by 64: 32 fails, 64 runs
    assert _ort_refuses(text, (1, 1, 32, 32))
    capfd.readouterr()  # ORT's log line for that refusal
    run = _synthetic(_save(tmp_path, text))
    assert run.info["shapes"] == {"d0": [1, 1, 64, 64]}
    assert run.info["shape_search"] == {"tried": 2, "chosen": "height=64, width=64"}
    assert "onnxruntime" not in capfd.readouterr().err  # ORT's own log line for the failed try is silenced


def test_static_side_gives_the_other_an_aspect(tmp_path):
    """A text line 32 high: widths 32, 64, 128, 256; three pools then a 1x9 Conv need 72."""
    text = HEADER + """
g (float[1, 1, 32, image_width] x) => (float[1, 1, 4, M] y) {
    p1 = MaxPool <kernel_shape = [2, 2], strides = [2, 2]> (x)
    p2 = MaxPool <kernel_shape = [2, 2], strides = [2, 2]> (p1)
    p3 = MaxPool <kernel_shape = [2, 2], strides = [2, 2]> (p2)
    w = Constant <value = float[1, 1, 1, 9] {%s}> ()
    y = Conv <kernel_shape = [1, 9]> (p3, w)
}
""" % ",".join(["0.1"] * 9)
    run = _synthetic(_save(tmp_path, text))
    assert run.info["shapes"] == {"x": [1, 1, 32, 128]}
    assert run.info["shape_search"] == {"tried": 3, "chosen": "image_width=128"}


def test_metadata_size_goes_first(tmp_path):
    model = parse(_unet(3))
    onnx.helper.set_model_props(model, {"imgsz": "[96, 160]", "stride": "32"})
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    run = _synthetic(path)
    assert run.info["shapes"] == {"d0": [1, 1, 96, 160]} and run.info["shape_search"]["tried"] == 1


def test_given_shape_is_used_as_is(tmp_path, sessions):
    path = _save(tmp_path, _unet(6))
    run = _synthetic(path, ["d0=1,1,128,64"])
    assert run.info["shapes"] == {"d0": [1, 1, 128, 64]} and "shape_search" not in run.info
    assert len(sessions) == 1  # one run to check it, no candidates
    with pytest.raises(InputError) as caught:
        _synthetic(path, ["d0=1,1,96,96"])  # not divisible by 64
    message = str(caught.value)
    assert message.startswith("--shape d0=1,1,96,96: the input model does not run on this shape (ONNX Runtime: ")
    assert "\n" not in message and len(sessions) == 2


def test_nothing_runs_is_exit_2_in_one_line(tmp_path, capsys):
    out = tmp_path / "out.onnx"
    code = main(["optimize", str(_save(tmp_path, FIXED_LENGTH)), "-o", str(out), "--quiet"])
    _, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert code == 2 and not out.exists() and len(lines) == 1
    assert "runs on none of the 4 input shapes tried (L=512,1024,4096,16000; last ONNX Runtime error:" in lines[0]
    assert lines[0].endswith("give --shape NAME=DIMS or --data DATA")


def test_static_model_is_not_searched(tmp_path, sessions):
    run = _synthetic(_save(tmp_path, CONV_NET.replace("[N, 1, ?, ?]", "[1, 1, 32, 32]")
                           .replace("[N, 2, ?, ?]", "[1, 2, 6, 6]")))
    assert run.info["shapes"] == {"x": [1, 1, 32, 32]} and "shape_search" not in run.info
    assert sessions == []


def test_batch_alone_is_not_run(tmp_path, sessions):
    run = _synthetic(_save(tmp_path, CONV_NET.replace("[N, 1, ?, ?]", "[N, 1, 32, 32]")
                           .replace("[N, 2, ?, ?]", "[N, 2, 6, 6]")))
    assert run.info["shapes"] == {"x": [1, 1, 32, 32]} and "shape_search" not in run.info
    assert sessions == []  # nothing to choose


def test_cli_summary_names_the_chosen_shapes(tmp_path, capsys):
    out, report = tmp_path / "out.onnx", tmp_path / "r.json"
    code = main(["optimize", str(_save(tmp_path, _unet(6))), "-o", str(out), "--quiet", "--report", str(report)])
    stdout, _ = capsys.readouterr()
    assert code == 0 and out.exists()
    assert ("data: 2 feeds (2 samples) synthesized verify; shapes d0 [1, 1, 64, 64] (symbolic dims height=64, "
            "width=64, found by running the input model: 2 tried; --shape NAME=DIMS sets them)\n") in stdout
    data = json.loads(report.read_text())["data"]
    assert data["shapes"] == {"d0": [1, 1, 64, 64]} and data["shape_search"]["tried"] == 2


def test_shared_dim_param_takes_one_size(tmp_path):
    text = HEADER + """
g (int64[batch, seq] ids, int64[batch, seq] mask) => (int64[batch, seq] y) {
    y = Add(ids, mask)
}
"""
    run = _synthetic(_save(tmp_path, text))
    assert run.info["shapes"] == {"ids": [1, 16], "mask": [1, 16]}


@pytest.mark.parametrize("name, axis, shape, dtype, kind", [
    ("batch_size", 0, ("batch_size", 3, "h", "w"), np.float32, "batch"),
    ("image_width", 3, (1, 1, 64, "image_width"), np.float32, "spatial"),
    (None, 1, (None, None, None, 3), np.float32, "spatial"),  # NHWC
    ("sequence_length", 1, ("b", "sequence_length"), np.int64, "sequence"),
    ("sequence", 1, ("b", "sequence"), np.float32, "samples"),  # a float [N, L] is a signal
    ("sequence_length", 0, ("sequence_length", 576), np.float32, "sequence"),
    (None, 2, (None, 1, None), np.float32, "samples"),  # mono audio [N, 1, L]
    (None, 2, (None, 80, None), np.float32, "sequence"),  # features [N, mel, T]
    (None, 1, (2, None, 128), np.float32, "batch"),  # a recurrent state [layers, batch, hidden]
    ("unk__7", 1, (1, "unk__7", 80), np.float32, "sequence"),
    ("p2o.DynamicDimension.0", 0, ("p2o.DynamicDimension.0",), np.int64, "sequence"),
])
def test_dim_kinds(name, axis, shape, dtype, kind):
    assert shape_search.dim_kind(name, axis, InputSpec("x", np.dtype(dtype), shape)) == kind


def test_candidates_respect_the_element_cap(monkeypatch):
    model = ir.serde.deserialize_model(parse(_unet(3)))
    monkeypatch.setattr(shape_search, "MAX_ELEMENTS", 128 * 128)
    spec = InputSpec("d0", np.dtype(np.float32), (1, 1, "height", "width"))
    patterns, slots = shape_search.dim_slots([spec], {}, model)
    sides = [c["height"] for c in shape_search.candidate_sizes(patterns, slots, model)]
    assert sides == [32, 64, 128]
    model.metadata_props["imgsz"] = "[640, 640]"  # what the model states is capped too
    assert [c["height"] for c in shape_search.candidate_sizes(patterns, slots, model)] == [32, 64, 128]
    model.metadata_props["imgsz"] = "[96, 96]"
    assert [c["height"] for c in shape_search.candidate_sizes(patterns, slots, model)] == [96, 32, 64, 128]


def test_compare_and_bench_without_data_use_shapes_the_model_runs_on(tmp_path, capsys):
    """`graphopt compare` / `bench` synthesize like `optimize`: a conv net refused at 1x1 runs."""
    path = _save(tmp_path, CONV_NET)
    assert main(["compare", str(path), str(path)]) == 0
    out = capsys.readouterr().out
    assert "on 2 feed(s) (synthesized, shapes x [1, 1, 32, 32] (found by running the model))" in out
    assert main(["bench", str(path), "--runs", "3", "--providers", "cpu"]) == 0
    assert "feed synthesized, shapes x [1, 1, 32, 32]" in capsys.readouterr().out


# A KV-cache step: the cached keys grow by the new tokens and meet the mask, so the mask's
# length must be past + seq (sizing every dim alike never runs it).
KV_STEP = HEADER + """
g (float[batch, seq, 4] x, float[batch, %s, 4] past, int64[batch, %s] mask) => (float[batch, T, 4] y) {
    keys = Concat <axis = 1> (past, x)
    m = Cast <to = 1> (mask)
    axes = Constant <value = int64[1] {-1}> ()
    m3 = Unsqueeze (m, axes)
    y = Mul (keys, m3)
}"""


@pytest.mark.parametrize("past, total, chosen", [
    ("past", "total", "batch=1, seq=16, past=16, total=32"),
    ("past_sequence_length", "past_sequence_length + seq",
     "batch=1, seq=16, past_sequence_length=16, past_sequence_length + seq=32"),
], ids=["total-beside-past", "expression"])
def test_a_mask_length_follows_past_and_seq(tmp_path, past, total, chosen):
    proto = parse(KV_STEP % (past, "total"))
    proto.graph.input[2].type.tensor_type.shape.dim[1].dim_param = total  # the text parser takes names only
    path = tmp_path / "kv.onnx"
    onnx.save(proto, path)
    run = _synthetic(path)
    assert run.info["shape_search"]["chosen"] == chosen
    assert run.verification[0]["mask"].shape == (1, 32) and run.verification[0]["past"].shape == (1, 16, 4)


def test_a_model_that_fails_on_its_only_candidate_is_one_line_without_ort_log(tmp_path, capfd):
    """A Gather past its table on the synthesized feed: one line from graphopt, no ORT log line."""
    text = HEADER + """
g (int64[1] i) => (float[1, 2] y) {
    t = Constant <value = float[3, 2] {0, 0, 0, 0, 0, 0}> ()
    five = Constant <value = int64[1] {5}> ()
    j = Add (i, five)
    y = Gather (t, j)
}"""
    code = main(["optimize", str(_save(tmp_path, text)), "-o", str(tmp_path / "o.onnx")])
    _, err = capfd.readouterr()
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("graphopt: error: ONNX Runtime failed"), err
