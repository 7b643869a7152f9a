"""Feeds: .npz loading and validation, and synthesized inputs that are valid for the model."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest

from conftest import ADD_RELU, parse
from graphopt.data import input_specs, parse_shapes, synthesize_feeds
from graphopt.data_files import load_feeds
from graphopt.errors import InputError

EMBED = """
<ir_version: 9, opset_import: ["" : 17]>
g (int64[B, S] input_ids, int64[B, S] attention_mask) => (float[B, S, 8] y) {
    table = Constant <value = float[50, 8] {%s}> ()
    e = Gather(table, input_ids)
    m = Cast <to = 1> (attention_mask)
    axes = Constant <value = int64[1] {-1}> ()
    mu = Unsqueeze(m, axes)
    y = Mul(e, mu)
}
""" % ",".join(["0.5"] * 400)


def _model(text):
    return ir.serde.deserialize_model(parse(text))


def test_npz_first_axis_is_samples(tmp_path):
    model = _model(ADD_RELU)
    np.savez(tmp_path / "d.npz", x=np.ones((5, 3, 4), np.float32))
    feeds = load_feeds(tmp_path / "d.npz", model)
    assert len(feeds) == 5 and feeds[0]["x"].shape == (3, 4)


def test_npz_directory_one_feed_each(tmp_path):
    model = _model(ADD_RELU)
    for i in range(3):
        np.savez(tmp_path / f"{i}.npz", x=np.full((2, 4), i, np.float32))
    feeds = load_feeds(tmp_path, model)
    assert [float(f["x"][0, 0]) for f in feeds] == [0.0, 1.0, 2.0]


@pytest.mark.parametrize("arrays, message", [
    ({"y": np.ones((2, 4), np.float32)}, r"missing input\(s\) x; unknown name\(s\) y"),
    ({"x": np.ones((2, 4), np.float64)}, "input 'x' expects float32, data has float64"),
    ({"x": np.ones((2, 5), np.float32)}, r"input 'x' expects shape \[N, 4\], data has shape \[1, 5\]"),
    ({"x": np.ones((2, 2, 2, 4), np.float32)}, "expects rank 2"),
])
def test_mismatched_data(tmp_path, arrays, message):
    np.savez(tmp_path / "d.npz", **arrays)
    with pytest.raises(InputError, match=message):
        load_feeds(tmp_path / "d.npz", _model(ADD_RELU))


def test_unreadable_and_empty_data(tmp_path):
    (tmp_path / "junk.npz").write_bytes(b"junk")
    with pytest.raises(InputError, match="not a readable .npz"):
        load_feeds(tmp_path / "junk.npz", _model(ADD_RELU))
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="holds no .npz"):
        load_feeds(tmp_path / "empty", _model(ADD_RELU))


def test_shape_option_validation():
    specs = input_specs(_model(ADD_RELU))
    assert parse_shapes(["x=3,4"], specs) == {"x": (3, 4)}
    assert parse_shapes(["x=3x4"], specs) == {"x": (3, 4)}
    assert parse_shapes(["x:[3,4]"], specs) == parse_shapes(["x:3,4"], specs) == {"x": (3, 4)}  # Polygraphy's
    with pytest.raises(InputError, match=r"expected NAME=DIMS, e\.g\. input=1,3,224,224 \(or Polygraphy's"):
        parse_shapes(["x:[3;4]"], specs)
    with pytest.raises(InputError, match="the model has no input 'nope'"):
        parse_shapes(["nope=1,4"], specs)
    with pytest.raises(InputError, match="has rank 2, got 3 dims"):
        parse_shapes(["x=1,2,4"], specs)


def test_synthesized_integer_inputs_are_valid():
    model = _model(EMBED)
    feeds = synthesize_feeds(model, count=3, shapes={"input_ids": (2, 7), "attention_mask": (2, 7)})
    ids = np.concatenate([f["input_ids"].ravel() for f in feeds])
    assert ids.min() >= 0 and ids.max() < 50 and len(np.unique(ids)) > 10
    assert all((f["attention_mask"] == 1).all() for f in feeds)
    assert feeds[0]["input_ids"].dtype == np.int64


def test_synthesis_is_deterministic():
    model = _model(ADD_RELU)
    a = synthesize_feeds(model, 2, seed=3)
    b = synthesize_feeds(model, 2, seed=3)
    np.testing.assert_array_equal(a[1]["x"], b[1]["x"])
    assert a[0]["x"].shape == (1, 4)


def test_initializers_listed_as_inputs_are_not_fed():
    text = """
    <ir_version: 3, opset_import: ["" : 9]>
    g (float[1, 4] x, float[4] w) => (float[1, 4] y) {
        y = Add(x, w)
    }
    """
    proto = parse(text)
    import onnx
    proto.graph.initializer.append(onnx.numpy_helper.from_array(np.ones(4, np.float32), "w"))
    model = ir.serde.deserialize_model(proto)
    assert [s.name for s in input_specs(model)] == ["x"]


def test_negative_dims_are_dynamic_not_sizes(tmp_path):
    """Paddle exports write -1 for a dynamic dimension (PP-OCR's cls input is [-1, 3, ?, ?])."""
    model = ir.serde.deserialize_model(parse(ADD_RELU))
    model.graph.inputs[0].shape = ir.Shape([-1, 4])
    assert input_specs(model)[0].shape == (None, 4)
    np.savez(tmp_path / "d.npz", x=np.ones((2, 5, 4), np.float32))
    assert load_feeds(tmp_path / "d.npz", model)[0]["x"].shape == (5, 4)
    assert synthesize_feeds(model, 1)[0]["x"].shape == (1, 4)


def test_npy_is_the_one_input_of_a_one_input_model(tmp_path):
    np.save(tmp_path / "d.npy", np.ones((5, 3, 4), np.float32))
    feeds = load_feeds(tmp_path / "d.npy", _model(ADD_RELU))
    assert len(feeds) == 5 and set(feeds[0]) == {"x"} and feeds[0]["x"].shape == (3, 4)
    np.save(tmp_path / "ids.npy", np.ones((2, 5), np.int64))
    with pytest.raises(InputError, match=r"ids\.npy: a \.npy holds one array, the model has 2 inputs "
                                         r"\(input_ids, attention_mask\); give an \.npz keyed by input name"):
        load_feeds(tmp_path / "ids.npy", _model(EMBED))
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(InputError, match=r"obj\.npy: not a readable \.npy file"):
        load_feeds(tmp_path / "obj.npy", _model(ADD_RELU))


def _polygraphy_array(array: np.ndarray) -> dict:
    import base64
    import io

    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return {"array": base64.b64encode(buffer.getvalue()).decode(), "polygraphy_class": "ndarray"}


def test_polygraphy_json_inputs_are_whole_feeds(tmp_path):
    import json

    feeds = [{"x": np.full((3, 4), i, np.float32)} for i in range(3)]
    path = tmp_path / "inputs.json"
    path.write_text(json.dumps([{k: _polygraphy_array(v) for k, v in f.items()} for f in feeds]))
    got = load_feeds(path, _model(ADD_RELU))
    assert len(got) == 3 and all(np.array_equal(a["x"], b["x"]) for a, b in zip(got, feeds))
    path.write_text(json.dumps([{"x": {"polygraphy_class": "ndarray", "array": "%%%"}}]))
    with pytest.raises(InputError, match=r"feed 0, input 'x': not base64 \.npy data"):
        load_feeds(path, _model(ADD_RELU))
    path.write_text(json.dumps([{"x": [1, 2]}]))
    with pytest.raises(InputError, match=r"feed 0, input 'x' is not a Polygraphy ndarray"):
        load_feeds(path, _model(ADD_RELU))
    path.write_text("{")
    with pytest.raises(InputError, match=r"not a readable JSON input file"):
        load_feeds(path, _model(ADD_RELU))
