"""Feeds are read when used: rows of .npy/.npz arrays read in place, directories per file, API
iterables spilled; memory does not grow with the number of feeds."""

from __future__ import annotations

import gc
import tracemalloc

import numpy as np
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper

from graphopt.array_files import npy_array, npz_arrays
from graphopt.arguments import check_optimize_arguments
from graphopt.data_files import load_feeds
from graphopt.errors import InputError
from graphopt.lazy_feeds import LazyFeeds, count_samples, subset


def _model(shape=("N", 3, 64, 64)) -> ir.Model:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, list(shape))
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, list(shape))
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y])
    return ir.serde.deserialize_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))


def _data(count: int) -> np.ndarray:
    return np.arange(count * 3 * 64 * 64, dtype=np.float32).reshape(count, 3, 64, 64)


@pytest.mark.parametrize("save", [np.savez, np.savez_compressed])
def test_npz_rows_are_read_in_place_or_from_an_inflated_copy(tmp_path, save):
    data = _data(5)
    save(tmp_path / "d.npz", x=data, s=np.float32(2.5))
    arrays = npz_arrays(tmp_path / "d.npz", tmp_path)
    assert arrays["x"].shape == (5, 3, 64, 64) and arrays["x"].dtype == np.float32
    np.testing.assert_array_equal(arrays["x"].rows(2, 4), data[2:4])
    assert arrays["s"].whole() == np.float32(2.5) and arrays["s"].whole().shape == ()
    inflated = list(tmp_path.glob("*.npy"))
    assert (len(inflated) == 2) == (save is np.savez_compressed)


def test_npy_fortran_order_is_loaded_whole_and_still_right(tmp_path):
    data = np.asfortranarray(_data(4))
    np.save(tmp_path / "f.npy", data)
    array = npy_array(tmp_path / "f.npy")
    assert array.loaded is not None
    np.testing.assert_array_equal(array.rows(1, 3), data[1:3])


def test_a_truncated_npy_is_refused_with_one_line(tmp_path):
    np.save(tmp_path / "t.npy", _data(4))
    raw = (tmp_path / "t.npy").read_bytes()
    (tmp_path / "t.npy").write_bytes(raw[:-100])
    with pytest.raises(InputError, match=r"t\.npy: not a readable \.npy file \(holds fewer bytes"):
        npy_array(tmp_path / "t.npy")


@pytest.mark.parametrize("form", ["npz", "npz-compressed", "npy", "dir"])
def test_load_feeds_is_lazy_and_gives_the_same_feeds(tmp_path, form):
    data = _data(6)
    if form == "dir":
        (tmp_path / "d").mkdir()
        for i in range(6):
            np.savez(tmp_path / "d" / f"{i:02d}.npz", x=data[i:i + 1])
        path = tmp_path / "d"
    elif form == "npy":
        np.save(path := tmp_path / "d.npy", data)
    else:
        (np.savez if form == "npz" else np.savez_compressed)(path := tmp_path / "d.npz", x=data)
    feeds = load_feeds(path, _model())
    assert isinstance(feeds, LazyFeeds) and len(feeds) == 6 and count_samples(feeds) == 6
    for i in (0, 5, 3):
        np.testing.assert_array_equal(feeds[i]["x"], data[i:i + 1])
    assert feeds[0]["x"] is not feeds[0]["x"]  # read again, never cached
    tail = feeds[4:]
    assert isinstance(tail, LazyFeeds) and len(tail) == 2 and tail.samples == 2
    np.testing.assert_array_equal(subset(feeds, [5, 1])[1]["x"], data[1:2])


def test_reading_every_feed_holds_one_feed_at_a_time(tmp_path):
    """Loading (each feed is checked once) and a pass over all 128 feeds peak near one feed's
    size, not near the file's: an eager load held 128 of them."""
    data = np.ones((128, 3, 128, 128), np.float32)
    one_feed = data[:1].nbytes
    np.savez(tmp_path / "d.npz", x=data)
    del data
    gc.collect()
    tracemalloc.start()
    try:
        feeds = load_feeds(tmp_path / "d.npz", _model(("N", 3, 128, 128)))
        total = sum(float(feed["x"].sum()) for feed in feeds)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert total > 0 and len(feeds) == 128
    assert peak < 4 * one_feed, (peak, one_feed)


def test_an_api_generator_is_spilled_and_read_back_lazily(tmp_path):
    data = _data(5)

    def generate():
        for i in range(5):
            yield {"x": data[i:i + 1]}

    _, calib, _ = check_optimize_arguments({"calib": generate()})
    assert isinstance(calib, LazyFeeds) and len(calib) == 5
    np.testing.assert_array_equal(calib[3]["x"], data[3:4])
    folder = calib._scratch.path
    assert len(list(folder.glob("*.npy"))) == 5
    del calib
    gc.collect()
    assert not folder.exists()  # the scratch folder goes with its last reader


def test_an_api_generator_that_raises_is_one_line():
    def broken():
        yield {"x": np.zeros((1, 3, 64, 64), np.float32)}
        raise RuntimeError("disk gone")

    with pytest.raises(InputError, match=r"^calib: the data iterable raised RuntimeError: disk gone$"):
        check_optimize_arguments({"calib": broken()})


def test_a_list_from_the_api_is_kept_as_given():
    feeds = [{"x": np.zeros((1, 3, 64, 64), np.float32)}]
    _, calib, _ = check_optimize_arguments({"calib": feeds})
    assert isinstance(calib, list) and calib[0]["x"] is feeds[0]["x"]


LOADER = '''
import numpy as np

def load_data():
    for i in range(3):
        yield {"x": np.full((1, 3, 64, 64), i, np.float32)}

def two():
    return [{"x": np.ones((1, 3, 64, 64), np.float32)}] * 2

def broken():
    yield {"x": np.ones((1, 3, 64, 64), np.float32)}
    raise ValueError("bad sample 1")

def wrong_type():
    yield {"x": np.ones((1, 3, 64, 64), np.int64)}
'''


@pytest.fixture
def loader(tmp_path):
    path = tmp_path / "loader.py"
    path.write_text(LOADER)
    return path


def test_a_polygraphy_data_loader_script_gives_lazy_feeds(loader):
    feeds = load_feeds(str(loader), _model())
    assert isinstance(feeds, LazyFeeds) and len(feeds) == 3 and float(feeds[2]["x"][0, 0, 0, 0]) == 2.0
    assert len(load_feeds(f"{loader}:two", _model())) == 2


@pytest.mark.parametrize("spec, message", [
    (":broken", r"loader\.py:broken: the data iterable raised ValueError: bad sample 1$"),
    (":wrong_type", r"loader\.py:wrong_type \(feed 0\): input 'x' expects float32, data has int64$"),
    (":missing", r"loader\.py: defines no function missing\(\) \(a data loader script defines a function"),
])
def test_a_data_loader_script_that_fails_is_one_line(loader, spec, message):
    with pytest.raises(InputError, match=message):
        load_feeds(f"{loader}{spec}", _model())


def test_the_cli_runs_a_data_loader_script_and_never_writes_over_it(loader, tmp_path, capsys):
    from onnx import save

    from graphopt.cli import main

    model_path = tmp_path / "m.onnx"
    save(ir.serde.serialize_model(_model()), model_path)
    assert main(["optimize", str(model_path), "-o", str(tmp_path / "o.onnx"), "--data", f"{loader}:two"]) == 0
    assert "2 feeds (2 samples) read from --data verify" in capsys.readouterr().out
    code = main(["optimize", str(model_path), "-o", str(loader), "--data", str(loader)])
    assert code == 2 and "loader.py" in capsys.readouterr().err
    assert loader.read_text() == LOADER
