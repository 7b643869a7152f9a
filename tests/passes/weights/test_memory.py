"""What `quantize-weights` holds in memory: layers read their weights in place (no float copy),
the input statistics are streamed in groups under a cap (several passes give the same model as
one), and the budget search's candidates share each layer's quantized arrays."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import onnx_ir as ir

from graphopt.passes.weights import quantize_weights as qw
from graphopt.passes.weights.build import Builder
from graphopt.passes.weights.layers import find_layers
from graphopt.passes.weights.options import QuantizeWeightsOptions
from graphopt.passes.weights.stats import gram_bytes, groups, layer_units
from tests.passes.weights.test_quantize_weights import K, _feeds, _model, _weights, run_pass


def _layer(name: str, inputs: tuple[str, ...], k: int):
    return SimpleNamespace(key=name, inputs=inputs, reduction=k)


def test_layers_sharing_an_input_are_one_unit_and_a_bridge_merges_units():
    q, k, v = (_layer(n, ("x",), 64) for n in "qkv")
    o, up = _layer("o", ("a",), 64), _layer("up", ("b",), 128)
    bridge = _layer("both", ("a", "b"), 64)
    embed = _layer("embed", (), 0)
    units = layer_units([q, k, v, o, up, embed, bridge])
    assert [[layer.key for layer in unit[0]] for unit in units] == [["q", "k", "v"], ["o", "up", "both"], ["embed"]]
    assert units[0][1] == {"x": 64} and set(units[1][1]) == {"a", "b"}


def test_groups_stay_under_the_cap_and_an_oversized_unit_is_alone():
    units = [([f"l{i}"], {f"x{i}": k}) for i, k in enumerate([32, 32, 32, 128, 32])]
    cap = 2 * gram_bytes(32)
    packed = groups(units, cap)
    assert [names for names, _ in packed] == [["l0", "l1"], ["l2"], ["l3"], ["l4"]]
    assert all(sum(gram_bytes(k) for k in inputs.values()) <= cap for names, inputs in packed if len(names) > 1)


def test_statistics_streamed_in_several_passes_give_the_same_model(monkeypatch):
    proto, feeds = _model(_weights()), _feeds(6)
    one, one_result = run_pass(proto, feeds, algorithm="gptq")
    monkeypatch.setattr(qw, "STATS_MIN_BYTES", 0)
    cap = 0.25  # x the weight bytes (~60 KB): less than the two H (80² and 96² floats) together
    several, several_result = run_pass(proto, feeds, algorithm="gptq", stats_memory=cap)
    assert one_result.stats["calibration"]["passes"] == 1
    assert several_result.stats["calibration"]["passes"] == 2
    first = {t.name: ir.serde.deserialize_tensor(t).numpy() for t in one.graph.initializer}
    second = {t.name: ir.serde.deserialize_tensor(t).numpy() for t in several.graph.initializer}
    assert first.keys() == second.keys()
    for name, array in first.items():
        np.testing.assert_array_equal(array, second[name], err_msg=name)


def test_layers_read_external_weights_in_place_and_release_them(tmp_path):
    path = tmp_path / "model.onnx"
    ir.save(ir.serde.deserialize_model(_model(_weights())), path, external_data="model.onnx.data")
    model = ir.load(path)
    found = find_layers(model.graph, QuantizeWeightsOptions(min_elements=0))
    assert len(found.layers) == 3
    for layer in found.layers:
        assert np.shares_memory(layer.stored, layer.stored)  # two reads: views of one file mapping
        expected = _weights()[layer.key]
        assert layer.shape == expected.shape and layer.size == expected.size
        layer.release()
        np.testing.assert_array_equal(layer.stored, expected)  # mapped again after the release
    assert {layer.key: layer.reduction for layer in found.layers} == {"w1": K, "w2": 96, "table": 72}


def test_candidates_share_each_layers_quantized_arrays():
    model = ir.serde.deserialize_model(_model(_weights()))
    opts = QuantizeWeightsOptions(min_elements=0, form="matmulnbits")
    found = find_layers(model.graph, opts)
    builder = Builder(model, found.layers, opts)
    levels = {layer.key: 4 for layer in found.layers}
    first, second = builder(levels), builder({**levels, "w2": 0})

    def arrays(m: ir.Model) -> dict[str, np.ndarray]:
        return {name: v.const_value.numpy() for name, v in m.graph.initializers.items() if "_q" in name}

    shared = arrays(first)
    assert set(shared) == {"w1_q", "w2_q", "table_q"} and set(arrays(second)) == {"w1_q", "table_q"}
    for name, array in arrays(second).items():
        assert np.shares_memory(array, shared[name])
    floats = sum(layer.size * 4 for layer in found.layers)
    assert builder.cached_bytes < 0.2 * floats  # int4 codes, scales, zero points: not a float copy
