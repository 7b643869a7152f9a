"""Calibration engine: ranges over streamed batches, bad input, cache, splitting, masks."""

import dataclasses
import json

import numpy as np
import onnx_ir as ir
import pytest

import graphopt.passes.quantize.calibration.engine as calibration
from graphopt.passes.quantize.calibration.engine import CalibrationOptions, TensorRange, cache_key, calibrate
from graphopt.errors import InputError
from tests.conftest import parse

MODEL = """
<ir_version: 9, opset_import: ["" : 17]>
g (float[N, S] x) => (float[N, S] y) <float two = {2.0}, float zero = {0.0}> {
    a = Mul(x, two)
    b = Relu(a)
    z = Mul(x, zero)
    y = Add(b, z)
}
"""
MASKED = """
<ir_version: 9, opset_import: ["" : 17]>
g (float[N, S] scores, float[N, S] mask) => (float[N, S] y) {
    masked = Add(scores, mask)
    y = Softmax(masked)
}
"""


@pytest.fixture(autouse=True)
def _cache_in_tmp(tmp_path, monkeypatch):
    monkeypatch.setenv("GRAPHOPT_CACHE_DIR", str(tmp_path / "cache"))


def _model(text=MODEL):
    return ir.serde.deserialize_model(parse(text))


def _feeds(seed=0, shapes=((4, 16), (2, 7), (5, 30))):
    """Batches with different batch sizes and sequence lengths."""
    rng = np.random.default_rng(seed)
    return [{"x": (rng.standard_normal(s) * (i + 1)).astype(np.float32)} for i, s in enumerate(shapes)]


def test_minmax_equals_numpy_over_all_batches_of_any_shape():
    feeds = _feeds()
    ranges = calibrate(_model(), ["x", "a", "b"], feeds, CalibrationOptions())
    every = np.concatenate([f["x"].ravel() for f in feeds])
    assert (ranges["x"].min, ranges["x"].max) == (every.min(), every.max())
    assert (ranges["a"].lo, ranges["a"].hi) == (2 * every.min(), 2 * every.max())
    assert ranges["b"].lo == 0.0 and ranges["b"].hi == 2 * every.max()
    assert ranges["a"].samples == every.size and ranges["a"].nonfinite == 0
    symmetric = calibrate(_model(), ["a"], feeds, CalibrationOptions(symmetric=True))["a"]
    assert symmetric.hi == -symmetric.lo == 2 * np.abs(every).max()


def test_percentile_matches_numpy_within_a_bin_width():
    rng = np.random.default_rng(1)
    feeds = [{"x": rng.standard_normal((8, 500)).astype(np.float32)} for _ in range(6)]
    options = CalibrationOptions(method="percentile", percentile=99.9, symmetric=True)
    r = calibrate(_model(), ["a"], feeds, options)["a"]
    values = np.abs(np.concatenate([2 * f["x"].ravel() for f in feeds]))
    width = 2.0 ** np.ceil(np.log2(values.max() / options.bins))
    ordered, k = np.sort(values), int(np.floor(0.999 * (values.size - 1)))
    assert ordered[k] - width <= r.hi <= ordered[k + 1] + width and r.lo == -r.hi
    assert abs(r.hi - np.percentile(values, 99.9)) <= ordered[k + 1] - ordered[k] + width


def test_entropy_and_percentile_clip_rare_outliers():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((20, 5000)).astype(np.float32)
    x[0, :20] = 60.0
    feeds = [{"x": x[i:i + 4]} for i in range(0, 20, 4)]
    for method in ("entropy", "percentile"):
        options = CalibrationOptions(method=method, percentile=99.9, symmetric=True)
        r = calibrate(_model(), ["a"], feeds, options)["a"]
        assert 2 * 2.5 < r.hi < 0.3 * 120 and r.max == 120.0, method


def test_mse_keeps_about_the_full_range_of_uniform_data():
    rng = np.random.default_rng(4)
    feeds = [{"x": rng.uniform(-1, 1, (4, 5000)).astype(np.float32)} for _ in range(3)]
    r = calibrate(_model(), ["a"], feeds, CalibrationOptions(method="mse"))["a"]
    assert r.min * 0.99 >= r.lo >= r.min and r.max * 0.99 < r.hi <= r.max


def test_nonfinite_activations_are_counted_and_ranges_stay_finite():
    ratio = _model(MODEL.replace("z = Mul(x, zero)", "z = Div(x, x)"))  # 0/0 is NaN
    x = np.array([[1.0, 0.0, -3.0, 3e38]], np.float32)  # 2 * 3e38 overflows to inf
    for method in ("minmax", "percentile", "entropy", "mse"):
        r = calibrate(ratio, ["a", "z"], [{"x": x}], CalibrationOptions(method=method))
        assert r["a"].nonfinite == 1 and (r["a"].min, r["a"].max) == (-6.0, 2.0)
        assert np.isfinite([r["a"].lo, r["a"].hi]).all() and r["a"].lo <= 0 <= r["a"].hi
        assert r["z"].nonfinite == 1 and r["z"].max == 1.0


@pytest.mark.parametrize("method", ["minmax", "percentile", "entropy", "mse"])
@pytest.mark.parametrize("symmetric", [False, True])
def test_constant_zero_tensor_gets_a_safe_nonzero_range(method, symmetric):
    r = calibrate(_model(), ["z"], _feeds(), CalibrationOptions(method=method, symmetric=symmetric))["z"]
    assert r.hi - r.lo == (2.0 if symmetric else 1.0) and r.lo <= 0 <= r.hi
    assert (r.min, r.max) == (0.0, 0.0) and "constant" in r.note


def test_constant_nonzero_tensor_range_holds_the_value():
    feeds = [{"x": np.full((2, 3), 1.5, np.float32)}]
    for method in ("minmax", "percentile", "entropy", "mse"):
        r = calibrate(_model(), ["a"], feeds, CalibrationOptions(method=method))["a"]
        assert r.lo == 0.0 and r.hi == pytest.approx(3.0, rel=1e-3), method


def test_attention_mask_sentinels_are_reported_and_clipped_by_histogram_methods():
    rng = np.random.default_rng(3)
    scores = rng.standard_normal((4, 64)).astype(np.float32) * 3
    mask = np.zeros((4, 64), np.float32)
    mask[:, 40:] = np.finfo(np.float32).min
    feeds = [{"scores": scores, "mask": mask}]
    minmax = calibrate(_model(MASKED), ["masked"], feeds, CalibrationOptions())["masked"]
    assert minmax.extreme and minmax.sentinels == 4 * 24 and "sentinel" in minmax.note
    assert minmax.lo < -1e38
    for method in ("percentile", "entropy", "mse"):
        r = calibrate(_model(MASKED), ["masked"], feeds, CalibrationOptions(method=method))["masked"]
        assert r.extreme and r.sentinels == 4 * 24
        assert -20 < r.lo < 0 < r.hi < 20, method


@pytest.mark.parametrize("feed, message", [
    ({"y": np.ones((2, 3), np.float32)}, "missing input(s) x; unknown name(s) y"),
    ({"x": np.ones((2, 3), np.float64)}, "input 'x' expects float32, data has float64"),
    ({"x": np.ones((2, 3, 1), np.float32)}, "input 'x' expects rank 2"),
])
def test_bad_feeds_are_readable_input_errors(feed, message):
    with pytest.raises(InputError, match=r"calibration feed 1: .*" + message.replace("(", r"\(").replace(")", r"\)")):
        calibrate(_model(), ["a"], [_feeds()[0], feed], CalibrationOptions())


def test_empty_data_unknown_names_and_bad_options_are_input_errors():
    with pytest.raises(InputError, match="holds no feeds"):
        calibrate(_model(), ["a"], [], CalibrationOptions())
    with pytest.raises(InputError, match="no value named 'nope'"):
        calibrate(_model(), ["nope"], _feeds(), CalibrationOptions())
    with pytest.raises(InputError, match="percentile must be in"):
        calibrate(_model(), ["a"], _feeds(), CalibrationOptions(method="percentile", percentile=120.0))
    with pytest.raises(InputError, match="not a single dict"):
        calibrate(_model(), ["a"], _feeds()[0], CalibrationOptions())
    with pytest.raises(ValueError, match="num_quant_bins"):
        CalibrationOptions(num_quant_bins=4096).validate()


def test_cache_hit_returns_identical_ranges_without_running_ort(tmp_path, monkeypatch):
    options = CalibrationOptions(method="entropy")
    first = calibrate(_model(), ["a", "b"], _feeds(), options, cache_dir=tmp_path)
    assert len(list(tmp_path.glob("*.json"))) == 1

    def no_ort(*args, **kwargs):
        raise AssertionError("ORT ran on a cache hit")

    monkeypatch.setattr(calibration, "stream_activations", no_ort)
    monkeypatch.setattr(calibration.ingraph, "exposed_session", no_ort)
    monkeypatch.setattr(calibration.segmented, "exposed_session", no_ort)
    again = calibrate(_model(), ["b", "a"], iter(_feeds()), options, cache_dir=tmp_path)
    assert again == first and all(isinstance(r, TensorRange) for r in again.values())
    with pytest.raises(AssertionError, match="ORT ran"):  # other data: a miss
        calibrate(_model(), ["a", "b"], _feeds(seed=1), options, cache_dir=tmp_path)


def test_cache_key_covers_graph_weights_data_names_and_options():
    model, feeds = _model(), _feeds()
    key = cache_key(model, ["a"], feeds, CalibrationOptions())
    assert key == cache_key(_model(), ["a"], list(feeds), CalibrationOptions(max_bytes=1))
    assert key != cache_key(model, ["b"], feeds, CalibrationOptions())
    assert key != cache_key(model, ["a"], _feeds(seed=5), CalibrationOptions())
    assert key != cache_key(model, ["a"], feeds, CalibrationOptions(method="mse"))
    heavier = _model(MODEL.replace("two = {2.0}", "two = {3.0}"))
    assert key != cache_key(heavier, ["a"], feeds, CalibrationOptions())
    relu_free = _model(MODEL.replace("b = Relu(a)", "b = Abs(a)"))
    assert key != cache_key(relu_free, ["a"], feeds, CalibrationOptions())


def test_corrupt_cache_file_is_recomputed(tmp_path):
    options = CalibrationOptions(method="mse")
    key = cache_key(_model(), ["a"], _feeds(), options)
    expected = calibrate(_model(), ["a"], _feeds(), options, cache_dir=tmp_path / "fresh")
    for junk in ("{not json", json.dumps({"version": "x"}), json.dumps({"version": calibration.CACHE_VERSION,
                                                                         "ranges": {"a": {"lo": 1}}})):
        (tmp_path / f"{key}.json").write_text(junk)
        assert calibrate(_model(), ["a"], _feeds(), options, cache_dir=tmp_path) == expected
    assert json.loads((tmp_path / f"{key}.json").read_text())["ranges"]["a"]["hi"] == expected["a"].hi


def test_cache_can_be_turned_off(tmp_path, monkeypatch):
    monkeypatch.setenv("GRAPHOPT_CACHE_DIR", "off")
    calibrate(_model(), ["a"], _feeds(), CalibrationOptions())
    monkeypatch.setenv("GRAPHOPT_CACHE_DIR", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    calibrate(_model(), ["a"], _feeds(), CalibrationOptions(), cache_dir="off")  # the argument, too
    assert list(tmp_path.iterdir()) == []
    calibrate(_model(), ["a"], _feeds(), CalibrationOptions())
    assert len(list(tmp_path.glob("*.json"))) == 1


@pytest.mark.parametrize("method", ["percentile", "mse"])
def test_split_batches_and_chunked_names_give_the_same_ranges(method, monkeypatch):
    runs = []
    real = calibration.stream_activations

    def counting(model, names, feeds, consume, **kwargs):
        runs.append((list(names), [f["x"].shape[0] for f in feeds()]))
        return real(model, names, lambda: iter(list(feeds())), consume, **kwargs)

    monkeypatch.setattr(calibration, "stream_activations", counting)
    monkeypatch.setattr(calibration.ingraph, "usable", lambda model, names: False)  # exposure planning
    _no_segments(monkeypatch)
    monkeypatch.setenv("GRAPHOPT_CACHE_DIR", "off")
    model, feeds = _model(), _feeds(shapes=((6, 40), (3, 40)))
    whole = calibrate(model, ["a", "b"], feeds, CalibrationOptions(method=method), cache_dir=None)
    assert runs == [(["a", "b"], [6, 3])]
    runs.clear()
    split = calibrate(model, ["a", "b"], feeds, CalibrationOptions(method=method, max_bytes=2 * 40 * 4 * 2),
                      cache_dir=None)
    assert runs == [(["a", "b"], [2, 2, 2, 2, 1])]
    runs.clear()
    chunked = calibrate(model, ["a", "b"], feeds, CalibrationOptions(method=method, max_bytes=40 * 4),
                        cache_dir=None)
    assert [names for names, _ in runs] == [["a"], ["b"]] and runs[0][1] == [1] * 9
    assert whole == split == chunked


def test_one_shot_iterator_and_progress_messages(monkeypatch):
    messages = []
    generator = (feed for feed in _feeds())
    ranges = calibrate(_model(), ["a"], generator, CalibrationOptions(), progress=messages.append)
    assert ranges["a"].samples == sum(f["x"].size for f in _feeds())
    assert messages[0] == "calibration (minmax): 1 tensors, 1 pass over the data (in-graph summaries)"
    assert messages[-1] == "calibration pass 1/1: batch 3"
    messages.clear()
    calibrate(_model(), ["a"], _feeds(), CalibrationOptions(method="percentile"), progress=messages.append)
    assert messages[0] == "calibration (percentile): 1 tensors, 1 pass over the data in 1 model segments"
    assert messages[-1] == "calibration pass 1/1: batch 3"
    messages.clear()
    _no_segments(monkeypatch)
    calibrate(_model(), ["a"], _feeds(), CalibrationOptions(method="percentile"), progress=messages.append,
              cache_dir="off")
    assert messages[0] == "calibration (percentile): 1 tensors, 1 pass(es) over the data"  # exposure
    assert messages[-1] == "calibration pass 1/1: batch 3"


def _no_segments(monkeypatch) -> None:
    """Make the segmented route refuse, as ORT may: the histogram methods then expose tensors."""
    def refuse(*args, **kwargs):
        raise calibration.ingraph.Refused("refused for the test")

    monkeypatch.setattr(calibration.segmented, "collect", refuse)


def _exposures(monkeypatch) -> list:
    runs = []
    real = calibration.stream_activations

    def counting(model, names, feeds, consume, **kwargs):
        held = list(feeds())
        runs.append((sorted(names), len(held)))
        return real(model, names, lambda: iter(held), consume, **kwargs)

    monkeypatch.setattr(calibration, "stream_activations", counting)
    monkeypatch.setattr(calibration.ingraph, "stream_activations", counting)
    return runs


@pytest.mark.parametrize("opset", [11, 17])  # reductions take axes as an attribute / input
def test_minmax_summaries_equal_exposed_tensors_and_rerun_only_nonfinite_batches(opset, monkeypatch):
    rng = np.random.default_rng(3)
    feeds = _feeds(shapes=((4, 3000), (2, 7), (3, 5000)))
    feeds[1]["x"][0, 2] = np.inf  # a, b, y non-finite in this batch (y = b + inf·0 = NaN)
    feeds[2]["x"][1, 0] = -1e31  # a mask-style sentinel (finite in a = 2x too)
    feeds[0]["x"] *= rng.uniform(0.5, 1.5, size=feeds[0]["x"].shape).astype(np.float32)
    runs = _exposures(monkeypatch)
    model = _model(MODEL.replace('"" : 17', f'"" : {opset}'))
    summarized = calibrate(model, ["x", "a", "b", "y"], feeds, CalibrationOptions(), cache_dir="off")
    assert runs == [(["a", "b", "y"], 1)]  # only the batch holding the Inf is exposed again
    monkeypatch.setattr(calibration.ingraph, "usable", lambda model, names: False)
    runs.clear()
    exposed = calibrate(model, ["x", "a", "b", "y"], feeds, CalibrationOptions(), cache_dir="off")
    assert runs == [(["a", "b", "y"], 3)]
    # identical statistics, except that the summaries estimate the sentinel count from the sample
    assert exposed["a"].sentinels == 1 and summarized["a"].sentinels == 2  # 1 of 7,500 sampled of 15,000
    assert {n: dataclasses.replace(r, sentinels=0) for n, r in summarized.items()} == \
        {n: dataclasses.replace(r, sentinels=0) for n, r in exposed.items()}
    assert summarized["a"].nonfinite == 1 and summarized["a"].extreme


@pytest.mark.parametrize("method", ["percentile", "entropy", "mse"])
@pytest.mark.parametrize("opset", [12, 17])
def test_segmented_histograms_equal_exposed_ones_with_nonfinite_values_and_sentinels(method, opset, monkeypatch):
    feeds = _feeds(shapes=((4, 3000), (2, 7), (3, 5000)))
    feeds[0]["x"][0, :3] = [0.0, 40.0, -1e-3]
    masked = [{"scores": f["x"], "mask": np.where(f["x"] > 1.5, -1e31, 0).astype(np.float32)} for f in feeds]
    feeds[1]["x"][0, 2] = np.inf  # a, b, y non-finite in this batch (y = b + inf·0 = NaN)
    options = CalibrationOptions(method=method, bins=256)
    segment_runs = []
    real = calibration.segmented.segments.SegmentedRun.run

    def counting(self, feed):
        segment_runs.append(len(self.segments))
        return real(self, feed)

    monkeypatch.setattr(calibration.segmented.segments.SegmentedRun, "run", counting)
    monkeypatch.setattr(calibration, "SEGMENT_BYTES", 4 * 3000)  # a segment per tensor or two
    runs = _exposures(monkeypatch)
    model = _model(MODEL.replace('"" : 17', f'"" : {opset}'))
    mask_model = _model(MASKED.replace('"" : 17', f'"" : {opset}'))
    segmented = calibrate(model, ["x", "a", "b", "y"], feeds, options, cache_dir="off")
    masked_segmented = calibrate(mask_model, ["scores", "masked", "y"], masked, options, cache_dir="off")
    assert runs == [] and len(segment_runs) == 6 and max(segment_runs) >= 2
    _no_segments(monkeypatch)
    assert segmented == calibrate(model, ["x", "a", "b", "y"], feeds, options, cache_dir="off")
    assert masked_segmented == calibrate(mask_model, ["scores", "masked", "y"], masked, options, cache_dir="off")
    assert len(runs) == 2  # the same ranges came from exposing the tensors
    assert segmented["y"].nonfinite == 1 and segmented["y"].hi < 100
    assert masked_segmented["masked"].sentinels > 0 and masked_segmented["masked"].lo > -100


@pytest.mark.parametrize("method", ["minmax", "percentile"])
def test_a_model_with_subgraphs_reading_outer_values_is_calibrated_in_one_pass(method, monkeypatch):
    text = """
    <ir_version: 9, opset_import: ["" : 17]>
    g (float[N, S] x, bool c) => (float[N, S] y) {
        a = Relu(x)
        b = If (c) <then_branch = t () => (float[N, S] o) { o = Mul(a, x) },
                    else_branch = f () => (float[N, S] o) { o = Neg(a) }>
        y = Add(b, a)
    }
    """
    feeds = [{**f, "c": np.array(i % 2 == 0)} for i, f in enumerate(_feeds(shapes=((4, 3000), (2, 7), (3, 5000))))]
    monkeypatch.setattr(calibration, "SEGMENT_BYTES", 4 * 3000)  # the If reads `a` across a cut
    runs = _exposures(monkeypatch)
    options = CalibrationOptions(method=method, bins=256)
    ranges = calibrate(_model(text), ["a", "b", "y"], feeds, options, cache_dir="off")
    assert runs == []
    _no_segments(monkeypatch)
    monkeypatch.setattr(calibration.ingraph, "usable", lambda model, names: False)
    assert ranges == calibrate(_model(text), ["a", "b", "y"], feeds, options, cache_dir="off")
    assert len(runs) == 1


def test_minmax_below_opset_10_is_calibrated_by_exposure(monkeypatch):
    runs = _exposures(monkeypatch)
    old = _model(MODEL.replace('"" : 17', '"" : 9'))
    ranges = calibrate(old, ["a"], _feeds(), CalibrationOptions(), cache_dir="off")
    every = np.concatenate([f["x"].ravel() for f in _feeds()])
    assert runs == [(["a"], 3)] and (ranges["a"].lo, ranges["a"].hi) == (2 * every.min(), 2 * every.max())


@pytest.mark.slow
def test_minilm_mask_tensors_are_flagged(minilm_path):
    from models.real import MINILM_SENTENCES, minilm_tokenize

    model = ir.load(str(minilm_path))
    data = minilm_tokenize(MINILM_SENTENCES[:8], max_len=32)
    feeds = [{k: v[i:i + 4] for k, v in data.items()} for i in (0, 4)]
    adds = [n for n in model.graph if n.op_type == "Add"]
    names = [v.name for n in adds for v in n.inputs if v is not None and v.const_value is None]
    ranges = calibrate(model, names, feeds, CalibrationOptions(method="percentile"))
    flagged = [n for n, r in ranges.items() if r.sentinels]
    assert flagged and all(ranges[n].extreme and ranges[n].lo > -1e4 for n in flagged)
    assert all(np.isfinite([r.lo, r.hi]).all() and r.hi - r.lo > 0 for r in ranges.values())


def test_minmax_summaries_do_not_rerun_a_mask_whose_sum_overflows(monkeypatch):
    feeds = _feeds(shapes=((4, 300), (2, 70)))
    masked = [{"scores": f["x"], "mask": np.where(f["x"] > 0, np.float32(-3.4e38), 0).astype(np.float32)}
              for f in feeds]
    assert np.isinf(np.sum(masked[0]["mask"], dtype=np.float32))  # the flag's sum overflows to -inf
    runs = _exposures(monkeypatch)
    ranges = calibrate(_model(MASKED), ["mask", "masked"], masked, CalibrationOptions(), cache_dir="off")
    assert runs == [] and ranges["masked"].nonfinite == 0 and ranges["masked"].sentinels > 0
    masked[1]["scores"][0, 0] = np.inf  # now `masked` holds -3.4e38 + inf... and an Inf: exact re-run
    calibrate(_model(MASKED), ["mask", "masked"], masked, CalibrationOptions(), cache_dir="off")
    assert runs == [(["masked"], 1)]
