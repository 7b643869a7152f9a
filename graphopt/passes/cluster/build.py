"""Candidates of the budget search and the final model: every layer at its bits, or left float.

A layer is clustered once per bit width (kmeans.py) and cached; the cache (the pass's) outlives one
run, so a run repeated by the manager on the same weights (lossy.run_with_retries: the budget
missed on the verification feeds) reuses it: an entry is used only for the very tensor object it
was computed from (the manager's clones share tensors), and entries for tensors the model no
longer holds are dropped when a builder starts. Two forms of the same weights:
- `dense(levels)`: each clustered weight written back as a float tensor (codebook[codes]); what
  the budget search measures. Gather copies floats exactly, so its weights equal the expanded
  form's bit for bit, and ONNX Runtime need not unpack anything at every search run.
- `expanded(levels)`: codes + codebook + the expansion graph (graph.py); the pass's result.
Both are clones of the input model (tensors shared), edited with new tensors under fresh names.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx_ir as ir

from graphopt.pass_api import NameAuthority
from graphopt.passes.cluster.graph import Writer, index_bits, rewire, write_expansion
from graphopt.passes.cluster.kmeans import Palette, cluster_rows
from graphopt.passes.cluster.layers import Layer
from graphopt.passes.cluster.options import ClusterOptions

Levels = dict[str, int]  # layer key -> bits (0: float)


@dataclass
class Clustered:
    layer: Layer
    bits: int  # requested: a palette of at most 2^bits entries
    palette: Palette
    granularity: str
    signal: float  # Σ w²
    noise: float  # Σ (w - ŵ)²

    @property
    def width(self) -> int:
        return self.palette.width

    @property
    def index_bits(self) -> int:
        return index_bits(self.width)

    @property
    def rel_error(self) -> float:
        """||W - Ŵ||² / ||W||² (0 for a zero weight)."""
        return self.noise / self.signal if self.signal > 0 else 0.0

    def weight(self) -> np.ndarray:
        return self.layer.from_rows(self.palette.values(), self.granularity)

    def codes(self) -> np.ndarray:
        return self.layer.from_rows(self.palette.codes, self.granularity)

    def offsets(self) -> np.ndarray | None:
        """c·K shaped to broadcast along the channel axis (one palette per channel), else None."""
        axis = self.layer.channel_axis(self.granularity)
        if axis is None:
            return None
        shape = [1] * len(self.layer.shape)
        shape[axis] = self.layer.shape[axis]
        return (np.arange(self.layer.shape[axis], dtype=np.int64) * self.width).reshape(shape)

    def stored_bytes(self) -> int:
        """Codes, codebook and channel offsets as stored (the shared small constants not counted)."""
        size, bits = self.layer.size, self.index_bits
        codes = size if bits == 8 else -(-size // 8) * bits
        rows = self.palette.codebook.shape[0]
        return codes + 4 * rows * self.width + (4 * rows if self.offsets() is not None else 0)


@dataclass
class Builder:
    model: ir.Model  # the input model, never edited
    layers: list[Layer]
    options: ClusterOptions
    cache: dict[tuple[str, int], tuple[object, Clustered]] = field(default_factory=dict)

    def __post_init__(self):
        self._values = _values_by_name(self.model.graph)
        held = {id(self._tensor(layer)) for layer in self.layers}
        for key in [k for k, (tensor, _) in self.cache.items() if id(tensor) not in held]:
            del self.cache[key]

    def _tensor(self, layer: Layer):
        return ir.convenience.get_const_tensor(self._values[layer.key])

    def clustered(self, layer: Layer, bits: int) -> Clustered:
        key, tensor = (layer.key, bits), self._tensor(layer)
        cached = self.cache.get(key)
        if cached is None or cached[0] is not tensor:
            cached = (tensor, self._cluster(layer, bits, tensor.numpy()))
            self.cache[key] = cached
        return cached[1]

    def _cluster(self, layer: Layer, bits: int, array: np.ndarray) -> Clustered:
        opts = self.options
        array = np.asarray(array, np.float32)
        rows = layer.rows(array, opts.granularity)
        palette = cluster_rows(rows, 2**bits, opts.method, opts.keep_zero, opts.iterations)
        w = rows.astype(np.float64)
        noise = float(np.sum(np.square(w - palette.values())))
        return Clustered(layer, bits, palette, opts.granularity, float(np.sum(w * w)), noise)

    def dense(self, levels: Levels) -> ir.Model:
        return self._build(levels, expand=False)[0]

    def expanded(self, levels: Levels) -> tuple[ir.Model, set[str]]:
        """The model with every layer at its level, and the names of the stored codes and codebooks."""
        return self._build(levels, expand=True)

    def _build(self, levels: Levels, expand: bool) -> tuple[ir.Model, set[str]]:
        model = self.model.clone()
        values = _values_by_name(model.graph)
        writer = Writer(model.graph, NameAuthority(model).fresh)
        for layer in self.layers:
            bits = levels.get(layer.key, 0)
            if not bits:
                continue
            item = self.clustered(layer, bits)
            base = _base(layer.key)
            if expand:
                new, nodes = write_expansion(writer, base, item.codes(), item.palette.codebook, item.index_bits,
                                             item.offsets())
            else:
                new, nodes = writer.initializer(f"{base}_clustered", item.weight()), []
            rewire(model.graph, values[layer.key], new, nodes)
        return model, writer.stored


def _values_by_name(graph: ir.Graph) -> dict[str, ir.Value]:
    values = {name: value for name, value in graph.initializers.items()}
    for node in graph:
        for value in node.inputs:
            if value is not None and value.name:
                values.setdefault(value.name, value)
    return values


def _base(name: str) -> str:
    """A readable prefix for the new tensors of weight `name`."""
    cleaned = "".join(ch if ch.isalnum() or ch in "._-" else "_" for ch in name)
    return cleaned[-80:] or "weight"


__all__ = ["Builder", "Clustered", "Levels"]
