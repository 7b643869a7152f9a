import numpy as np
import onnx_ir as ir

from graphopt.activations import stream_activations
from graphopt.value_bytes import packed, symbol_sizes, value_sizes
from tests.conftest import parse

CONV = """
<ir_version: 9, opset_import: ["" : 17]>
g (float[N, 3, H, W] x) => (float[N, 4, P, Q] y) {
    w = Constant <value = float[4, 3, 1, 1] {0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.1, 1.2}>()
    c = Conv <strides = [2, 2]> (x, w)
    r = Relu(c)
    s = Sigmoid(r)
    y = Mul(s, r)
}
"""


def _conv():
    return ir.serde.deserialize_model(parse(CONV))


def test_symbolic_dims_are_sized_from_the_feed():
    model = ir.serde.deserialize_model(parse("""
<ir_version: 9, opset_import: ["" : 17]>
g (float[B, 5] x) => (float[B, 5] y) { y = Relu(x) }
"""))
    feed = {"x": np.zeros((3, 5), np.float32)}
    assert symbol_sizes(model, feed) == ({"B": 3}, 3)
    assert value_sizes(model, ["x", "y"], feed) == {"x": 60, "y": 60}


def test_convolution_outputs_are_sized_by_inference_at_the_feed_shapes():
    model = _conv()
    feed = {"x": np.zeros((2, 3, 16, 20), np.float32)}
    sizes = value_sizes(model, ["c", "r", "s"], feed)
    assert sizes == {"c": 2 * 4 * 8 * 10 * 4, "r": 2 * 4 * 8 * 10 * 4, "s": 2 * 4 * 8 * 10 * 4}
    assert model.graph.node(1).outputs[0].shape is None or not all(
        isinstance(d, int) for d in model.graph.node(1).outputs[0].shape)  # the model itself is left alone


def test_packed_keeps_order_and_gives_an_oversized_name_its_own_chunk():
    assert packed(["a", "b", "c", "d"], {"a": 3, "b": 3, "c": 9, "d": 1}, 6) == [["a", "b"], ["c"], ["d"]]


def test_stream_plans_chunks_on_the_first_feeds_real_sizes():
    feeds = [{"x": np.ones((1, 3, 16, 16), np.float32)} for _ in range(2)]
    seen = []
    stats = stream_activations(_conv(), ["c", "r", "s"], lambda: iter(feeds),
                               lambda i, arrays: seen.append(sorted(arrays)), max_bytes=4096)
    # each tensor is 4*8*8*4 = 1 KiB: one pass; sized as 128 per unknown dim, three
    assert stats.runs == 1 and seen == [["c", "r", "s"]] * 2
