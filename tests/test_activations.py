"""Streaming activations: values exposed in chunks, every batch seen once per name."""

import numpy as np
import onnx_ir as ir
import pytest

from graphopt.activations import plan_chunks, stream_activations
from graphopt.errors import InputError
from tests.conftest import parse

MODEL = """
<ir_version: 9, opset_import: ["" : 17]>
g (float[N, 4] x) => (float[N, 4] y) {
    a = Add(x, x)
    b = Relu(a)
    y = Mul(b, a)
}
"""


def _model():
    return ir.serde.deserialize_model(parse(MODEL))


def test_streams_each_batch_with_exact_values():
    feeds = [{"x": np.full((2, 4), i - 1.0, np.float32)} for i in range(3)]
    seen = {}
    stats = stream_activations(_model(), ["a", "b"], lambda: iter(feeds),
                               lambda i, arrays: seen.setdefault(i, {}).update(arrays))
    assert stats.batches == 3 and stats.runs == 1
    for i, feed in enumerate(feeds):
        np.testing.assert_array_equal(seen[i]["a"], feed["x"] * 2)
        np.testing.assert_array_equal(seen[i]["b"], np.maximum(feed["x"] * 2, 0))


def test_chunks_when_over_the_memory_cap():
    feeds = [{"x": np.ones((2, 4), np.float32)}]
    seen = []
    stats = stream_activations(_model(), ["a", "b", "y"], lambda: iter(feeds),
                               lambda i, arrays: seen.append(sorted(arrays)), max_bytes=1)
    assert stats.runs == 3 and seen == [["a"], ["b"], ["y"]]


def test_plan_chunks_packs_greedily():
    model = _model()
    values = [model.graph.node(i).outputs[0] for i in range(3)]
    for v in values:
        v.shape = ir.Shape([2, 4])
    assert plan_chunks(values, 64) == [["a", "b"], ["y"]]


def test_empty_feeds_and_unknown_names_are_input_errors():
    with pytest.raises(InputError, match="no feeds"):
        stream_activations(_model(), ["a"], lambda: iter([]), lambda i, a: None)
    with pytest.raises(InputError, match="no such value"):
        stream_activations(_model(), ["nope"], lambda: iter([]), lambda i, a: None)


def test_bad_feed_is_a_readable_error():
    feeds = [{"x": np.ones((2, 5), np.float32)}]
    with pytest.raises(InputError, match="calibration feed 0"):
        stream_activations(_model(), ["a"], lambda: iter(feeds), lambda i, a: None)
