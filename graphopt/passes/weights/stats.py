"""Streamed statistics of the layers' inputs, and the layer output error they give.

For a layer y = x·W with x's channels on the reduction axis, the calibration rows x (every
position of every feed) are folded into running sums as they stream by
(graphopt.activations.stream_activations, one batch at a time):
    H = Σ x xᵀ  [K, K],    a = Σ |x|  [K],    n = number of rows,
so E[x xᵀ] = H/n and E|x_k| = a_k/n. At most FLUSH_ROWS rows per input wait in a buffer and are
folded in with one float32 product (H kept in float32, the small sums in float64): memory stays
bounded whatever the size of the calibration set, and no activation is kept. The H matrices of
a large model can outweigh its weights (a Llama layer's are as large as the layer), so the
layers are streamed in groups whose H fit a memory cap (`groups`), one pass over the data each.
The squared output error of a weight approximation Ŵ over the calibration rows is then exact
without the rows:
    Σ ||x(W - Ŵ)||² = tr(ΔWᵀ H ΔW),  and  e(Ŵ) = tr(ΔWᵀ H ΔW) / tr(Wᵀ H W)
is the layer's relative output error (its output SQNR is -10·log10 e).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable

import networkx as nx
import numpy as np
import onnx_ir as ir

from graphopt.activations import stream_activations

FLUSH_ROWS = 2048


class InputMoments:
    """Running Σ xxᵀ and Σ|x| over rows x of one layer input. Rows wait in a buffer of at most
    FLUSH_ROWS rows and are folded in together (one large product instead of one per batch)."""

    def __init__(self, features: int):
        self.gram = np.zeros((features, features), np.float32)
        self.abs_sum = np.zeros(features, np.float64)
        self.rows = 0
        self._pending: list[np.ndarray] = []
        self._pending_rows = 0

    def add(self, rows: np.ndarray) -> None:
        finite = np.isfinite(rows).all(axis=1)
        if not finite.all():  # a non-finite row would poison every sum
            rows = rows[finite]
        self._pending.append(np.asarray(rows, np.float32))
        self._pending_rows += rows.shape[0]
        if self._pending_rows >= FLUSH_ROWS:
            self.flush()

    def flush(self) -> None:
        if not self._pending:
            return
        rows = np.concatenate(self._pending)
        self._pending, self._pending_rows = [], 0
        self.gram += rows.T @ rows
        self.abs_sum += np.abs(rows).sum(axis=0, dtype=np.float64)
        self.rows += rows.shape[0]

    @property
    def second_moment(self) -> np.ndarray:
        return self.gram / max(self.rows, 1)

    @property
    def mean_abs(self) -> np.ndarray:
        return self.abs_sum / max(self.rows, 1)


def gram_bytes(features: int) -> int:
    return 4 * features * features


def layer_units(layers: list) -> list[tuple[list, dict[str, int]]]:
    """Layers joined by the inputs they share (q/k/v read one activation; a layer reading several
    pools them): the connected components of the layer-input graph, ([layers], {input: K}) per
    unit, in the order of each unit's first layer."""
    graph = nx.Graph()
    for i, layer in enumerate(layers):
        graph.add_node(i)
        graph.add_edges_from((i, ("input", name)) for name in layer.inputs)
    members = sorted(sorted(n for n in component if isinstance(n, int)) for component in nx.connected_components(graph))
    return [([layers[i] for i in unit], {name: layers[i].reduction for i in unit for name in layers[i].inputs})
            for unit in members]


def groups(units: list[tuple[list, dict[str, int]]], cap: int) -> list[tuple[list, dict[str, int]]]:
    """Units packed in order into groups whose H bytes stay under `cap` (a unit larger than the
    cap is a group of its own); the data is streamed once per group."""
    packed: list[tuple[list, dict[str, int]]] = []
    used = 0
    for layers, inputs in units:
        need = sum(gram_bytes(k) for k in inputs.values())
        if not packed or (used and used + need > cap):
            packed.append(([], {}))
            used = 0
        packed[-1][0].extend(layers)
        packed[-1][1].update(inputs)
        used += need
    return packed


@dataclass
class InputStats:
    moments: dict[str, InputMoments] = field(default_factory=dict)
    batches: int = 0

    def get(self, name: str) -> InputMoments | None:
        moments = self.moments.get(name)
        return moments if moments is not None and moments.rows else None


def rows_of(x: np.ndarray, axis: int) -> np.ndarray:
    """[rows, K] view of an activation whose channels are on `axis`."""
    return np.moveaxis(x, axis, -1).reshape(-1, x.shape[axis])


def collect(model: ir.Model, axes: dict[str, tuple[int, int]], feeds: Callable[[], Iterable],
            progress=None) -> InputStats:
    """Stream the inputs named in `axes` ({name: (channel axis, K)}) over `feeds`."""
    stats = InputStats()

    def consume(index: int, arrays: dict[str, np.ndarray]) -> None:
        for name, array in arrays.items():
            axis, features = axes[name]
            if array.dtype.kind != "f" or not array.size or array.shape[axis] != features:
                continue
            stats.moments.setdefault(name, InputMoments(features)).add(rows_of(array, axis))

    if axes:
        stats.batches = stream_activations(model, list(axes), feeds, consume, progress=progress).batches
    for moments in stats.moments.values():
        moments.flush()
    return stats


def output_error(w: np.ndarray, approx: np.ndarray, second_moment: np.ndarray) -> tuple[float, float]:
    """(relative, absolute) output error of Ŵ: tr(ΔWᵀ H ΔW) / tr(Wᵀ H W), and with H = E[xxᵀ] the
    mean squared error of one output element, tr(ΔWᵀ H ΔW) / N (float32 products)."""
    h = second_moment.astype(np.float32)
    w32 = np.asarray(w, np.float32)
    delta = w32 - np.asarray(approx, np.float32)
    signal = float(np.sum((h @ w32) * w32, dtype=np.float64))
    noise = float(np.sum((h @ delta) * delta, dtype=np.float64))
    return (noise / signal if signal > 0 else 0.0), noise / max(w32.shape[1], 1)


def error_db(relative: float) -> float:
    """A relative squared error as an SQNR in dB (inf for none)."""
    return round(float(-10 * np.log10(relative)), 3) if relative > 0 else float("inf")
