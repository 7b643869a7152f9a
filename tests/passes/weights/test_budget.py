"""The fallback order of `quantize-weights`' budget search: one measurement per layer, or with
many layers one per contiguous part (graph order), parts by measured gain, layers in a part by
the proxy."""

from __future__ import annotations

from graphopt.passes.weights.budget import contiguous_parts, ranking


class FakeSearch:
    """The metric (cosine-like, higher is better) falls by each quantized layer's sensitivity."""

    def __init__(self, sensitivity: dict[str, float]):
        self.sensitivity, self.calls = sensitivity, 0

    def try_(self, levels):
        self.calls += 1
        return False, 1.0 - sum(s for k, s in self.sensitivity.items() if levels[k])

    def gain(self, better: float, base: float) -> float:
        return better - base


def test_parts_are_contiguous_cover_every_key_and_absorb_a_large_key():
    sizes = {"embed": 60, **{f"l{i}": 10 for i in range(30)}, "head": 60}
    parts = contiguous_parts(sizes, 8)
    assert [k for part in parts for k in part] == list(sizes)
    assert len(parts) == 8 and parts[0] == ["embed"] and parts[-1] == ["head"]
    middle = [sum(sizes[k] for k in part) for part in parts[1:-1]]
    assert max(middle) - min(middle) <= 10  # equal runs after the large first key
    assert contiguous_parts({"a": 1, "b": 1}, 5) == [["a"], ["b"]]


def test_few_layers_are_measured_one_by_one():
    sizes = {"a": 10, "b": 10, "c": 10}
    search = FakeSearch({"a": 0.01, "b": 0.05, "c": 0.02})
    order, gains = ranking(search, sizes, 4, {"a": 3.0, "b": 1.0, "c": 2.0}, "measured", max_measured=3)
    assert order == ["b", "c", "a"]  # by measured gain, not by the proxy
    assert gains == {"a": 0.01, "b": 0.05, "c": 0.02}
    assert search.calls == 4  # the base and one per layer


def test_many_layers_are_measured_by_part_and_ordered_by_proxy_inside():
    keys = [f"l{i}" for i in range(12)]
    sizes = dict.fromkeys(keys, 10)
    sensitivity = dict.fromkeys(keys, 0.001) | {"l9": 0.1, "l10": 0.01}  # the part l9..l11 matters
    proxy = {k: float(i) for i, k in enumerate(keys)}  # larger index: larger proxy error
    search = FakeSearch(sensitivity)
    order, gains = ranking(search, sizes, 4, proxy, "measured", max_measured=4)
    assert search.calls == 1 + 4
    assert order[:3] == ["l11", "l10", "l9"]  # the sensitive part first, its layers by proxy
    assert len(gains) == 4 and "l9 .. l11 (3 layers)" in gains
    assert sorted(order) == sorted(keys)


def test_proxy_rank_measures_nothing():
    search = FakeSearch({"a": 0.1, "b": 0.2})
    order, gains = ranking(search, {"a": 1, "b": 1}, 4, {"a": 2.0, "b": 1.0}, "proxy", 32)
    assert (order, gains, search.calls) == (["a", "b"], {}, 0)
