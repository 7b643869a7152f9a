"""The vocabulary of the channel analysis: `Piece`, `Dim`, `Site` and the `Tracker` state.

A tensor that carries seed channels on one axis has a `Dim`: the axis, the tensor's rank and
the layout along the axis as `Piece`s (a range of one seed's channels, `inner` consecutive
positions per channel). A `Site` is a constant (weight, bias, per-channel parameter, split
sizes, shape entry) that indexes those positions and must be rewritten when channels go.
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx_ir as ir

from graphopt.passes.prune.common import const_array


@dataclass(frozen=True)
class Piece:
    """Channels [start, stop) of one seed (None: channels nobody prunes), `inner` positions each."""

    seed: int | None
    start: int
    stop: int
    inner: int = 1

    @property
    def length(self) -> int:
        return (self.stop - self.start) * self.inner


@dataclass(frozen=True)
class Dim:
    """The axis of a tensor that carries seed channels, and their layout along it."""

    axis: int
    rank: int
    pieces: tuple[Piece, ...]

    @property
    def size(self) -> int:
        return sum(p.length for p in self.pieces)


@dataclass(frozen=True)
class Site:
    """Something to rewrite when channels go: `kind` says what, `pieces` the positions.

    weight_in / grouped_in: slice input 1 of a layer along `axis` (its input channels);
    depthwise: slice input 1 along 0 and update `group`; const: slice input `index` along
    `axis`; split: new sizes from `parts`; reshape / resize: entry `axis` of input `index`.
    """

    kind: str
    node: ir.Node
    index: int
    axis: int
    pieces: tuple[Piece, ...]
    value: ir.Value | None = None  # the activation read (statistics for importance/compensation)
    value_axis: int = 0
    parts: tuple[tuple[Piece, ...], ...] = ()

    def all_pieces(self) -> tuple[Piece, ...]:
        return self.pieces + tuple(p for part in self.parts for p in part)


class Tracker:
    """State shared by the rules: tracked dims, sites, ties and block constraints."""

    def __init__(self, model: ir.Model):
        self.graph = model.graph
        self.opset = model.opset_imports.get("", model.opset_imports.get("ai.onnx", 1))
        self.dims: dict[ir.Value, Dim] = {}
        self.sites: list[Site] = []
        self.ties: list[tuple[int, int]] = []
        self.block_needs: list[tuple[int, int]] = []

    def seed(self, seed_id: int):
        raise NotImplementedError

    def refuse(self, dim: Dim, reason: str) -> None:
        for piece in dim.pieces:
            if piece.seed is not None:
                self.seed(piece.seed).refusals.append(reason)

    @staticmethod
    def rank(value: ir.Value | None) -> int | None:
        if value is None:
            return None
        if value.shape is not None:
            return value.shape.rank()
        array = const_array(value)
        return None if array is None else array.ndim

    @staticmethod
    def size(value: ir.Value, axis: int) -> int | None:
        array = const_array(value)
        if array is not None:
            return int(array.shape[axis])
        dim = value.shape[axis] if value.shape is not None else None
        return dim if isinstance(dim, int) else None

    def tie(self, a: tuple[Piece, ...], b: tuple[Piece, ...]) -> str | None:
        """Operands carrying channels in the same place must carry the same index map."""
        if a == b:
            return None
        if len(a) != len(b):
            return "operands carry channel layouts that do not line up"
        for p, q in zip(a, b):
            if p == q:
                continue
            full = [x.seed is not None and x.start == 0 and x.stop == self.seed(x.seed).channels for x in (p, q)]
            if not all(full) or p.stop != q.stop or p.inner != q.inner:
                return "operands carry channel ranges that do not line up"
            self.ties.append((p.seed, q.seed))
        return None
