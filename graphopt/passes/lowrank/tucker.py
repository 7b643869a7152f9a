"""`tucker`: a constant-weight Conv (group 1) replaced by a chain of thinner convolutions.

k x k kernels (k > 1): Tucker-2 on the channel modes (factor.py),
W[Cout, Cin, kh, kw] ≈ G ×₀ U_out ×₁ U_in, as 1x1 conv (U_inᵀ, Cin → r_in) → kh x kw conv (core G,
r_in → r_out, the original strides/pads/dilations) → 1x1 conv (U_out, r_out → Cout, the bias).
Per output pixel the MACs go from Cout·Cin·kh·kw to r_out·r_in·kh·kw + r_out·Cout, plus Cin·r_in per
*input* pixel for the first 1x1 (it runs before any stride). A mode kept at full rank gets no 1x1
conv (its factor is folded into the core). 1x1 kernels are matrices: two 1x1 convs through rank r
(the first takes the original strides/pads), the SVD of the `svd` pass.

Ranks: `energy` (each mode keeps that fraction of the weight unfolding's squared singular values,
HOSVD, then HOOI refines the factors for those ranks; with or without data the ranks come from the
weight, data-aware only changes the factors) or `budget` (select.py). A layer is
refused when the chain is not cheaper than the dense conv, and, with the speed gate, when ORT
does not run it faster (speed.py). Data-aware (calibration data): the input-channel mode
is whitened by the channel second moment of the conv input (pixels as rows) — exact output-error
minimization for 1x1 kernels, an approximation that ignores spatial correlation for larger ones.

Why Tucker-2 and not CP: CP (rank-R sum of outer products, as 1x1 → kh x 1 depthwise → 1 x kw
depthwise → 1x1) cuts more FLOPs per rank, but its ALS fit is non-convex and often degenerate, it
needs fine-tuning to recover accuracy, and ORT's depthwise kernels are memory-bound on CPU, so its
FLOP savings rarely become time. Tucker-2 is computed in closed form (SVDs), keeps a dense core that
runs on the same fast conv kernels, and its error is known exactly (‖W‖² − ‖G‖²).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import onnx_ir as ir

from graphopt.pass_api import PassContext
from graphopt.passes.lowrank.factor import (LowRank, Tucker2, Whitening, break_even_rank, energy_rank,
                                            factorize, mode_spectra, tucker2)
from graphopt.passes.lowrank.graph import add_initializer, fresh_node, replace_with_chain, weight_refusal, \
    constant_array
from graphopt.passes.lowrank.run import LayerData, LowRankOptions, LowRankPass
from graphopt.passes.lowrank.select import Level
from graphopt.passes.lowrank.speed import SpeedCache

DEFAULT_ENERGY = 0.95
GRID_ENERGIES = (0.995, 0.99, 0.98, 0.97, 0.95, 0.92, 0.9, 0.85, 0.8, 0.7)
GRID_SAVINGS = (0.15, 0.3, 0.45, 0.6, 0.75)  # 1x1 kernels
SPATIAL_ATTRS = ("strides", "pads", "dilations", "auto_pad", "kernel_shape")


@dataclass(frozen=True)
class TuckerOptions(LowRankOptions):
    select: Literal["auto", "energy", "budget"] = "auto"  # auto: budget with --budget, else energy
    min_size: int = 4096  # conv weights are small; their cost is in the pixels

    def validate(self) -> None:
        if self.select not in ("auto", "energy", "budget"):
            raise ValueError(f"select must be auto, energy or budget, got {self.select}")
        super().validate()


@dataclass
class ConvLayer:
    index: int
    where: str
    node: ir.Node
    x: ir.Value
    weight: np.ndarray  # [Cout, Cin, kh, kw]
    dtype: np.dtype
    attrs: dict
    channel_axis: int = 1
    input_shape: tuple[int, ...] | None = None
    out_pixels: int = 1  # N·Ho·Wo in the first held-out feed (1 when unknown: MACs per pixel)
    in_pixels: int = 1
    whitening: Whitening | None = None
    matrix: LowRank | None = None  # 1x1 kernels
    spectra: tuple[np.ndarray, ...] | None = None  # plain singular values per factored mode
    cache: dict = field(default_factory=dict)
    data: LayerData | None = None
    timings: dict = field(default_factory=dict)  # rank -> micro-benchmark ms
    probe: dict | None = None

    @property
    def pointwise(self) -> bool:
        return self.weight.shape[2:] == (1, 1)

    @property
    def dense_macs(self) -> int:
        return self.out_pixels * int(np.prod(self.weight.shape))

    def macs(self, ranks: tuple[int, ...]) -> int:
        cout, cin, kh, kw = self.weight.shape
        if self.pointwise:
            return self.out_pixels * ranks[0] * (cin + cout)
        r_out, r_in = ranks
        first = self.in_pixels * cin * r_in if r_in < cin else 0
        last = self.out_pixels * r_out * cout if r_out < cout else 0
        return first + self.out_pixels * r_out * r_in * kh * kw + last

    def tucker(self, ranks: tuple[int, int]) -> Tucker2:
        if ranks not in self.cache:
            self.cache[ranks] = tucker2(self.weight, ranks[0], ranks[1], self.whitening)
        return self.cache[ranks]


class TuckerPass(LowRankPass):
    name = "tucker"
    summary = "factor constant-weight Conv (group 1): Tucker-2 (1x1 → core → 1x1) or two 1x1s, where it is faster"
    Options = TuckerOptions

    def find_layers(self, model: ir.Model, ctx: PassContext):
        layers, skipped = [], []
        for index, node in enumerate(model.graph):
            if node.op_type != "Conv" or node.domain not in ("", "ai.onnx"):
                continue
            where = node.name or f"Conv#{index}"
            found = _conv_layer(index, where, node)
            if isinstance(found, str):
                skipped.append((where, found))
            elif found.weight.size < self.options.min_size:
                skipped.append((where, f"weight {list(found.weight.shape)} has fewer than "
                                       f"min_size={self.options.min_size} elements"))
            else:
                layers.append(found)
        return layers, skipped

    def prepare(self, layer: ConvLayer, data: LayerData) -> str | None:
        layer.data = data
        if data.input_shape is not None:
            if len(data.input_shape) != 4:
                return f"input is {len(data.input_shape)}-D (only 2-D convolutions)"
            layer.input_shape = data.input_shape
            layer.in_pixels, layer.out_pixels = _pixels(data.input_shape, layer.weight.shape, layer.attrs)
        if data.moment is not None and data.moment.shape[0] == layer.weight.shape[1]:
            layer.whitening = Whitening.of(data.moment, self.options.damping)
        if layer.pointwise:
            matrix = layer.weight[:, :, 0, 0].T
            layer.matrix = factorize(matrix, layer.whitening)
            layer.spectra = (np.linalg.svd(matrix.astype(np.float64), compute_uv=False),)
        else:
            layer.spectra = mode_spectra(layer.weight)  # ranks from the weight, with or without data
        return None

    def fixed_level(self, layer: ConvLayer, mode: str) -> Level | str:
        energy = self.options.energy if self.options.energy is not None else DEFAULT_ENERGY
        ranks = self._energy_ranks(layer, energy)
        level = self._level(layer, ranks)
        if level.macs >= layer.dense_macs:
            return (f"energy {energy} keeps ranks {'x'.join(map(str, ranks))} of {list(layer.weight.shape)}: "
                    "the factored convolutions would not reduce FLOPs")
        return level

    def _energy_ranks(self, layer: ConvLayer, energy: float) -> tuple[int, ...]:
        return tuple(energy_rank(s, energy) for s in layer.spectra)

    def grid(self, layer: ConvLayer) -> list[Level]:
        if layer.pointwise:
            cout, cin = layer.weight.shape[:2]
            even = break_even_rank(cin, cout)
            ranks = {(max(1, int((1 - s) * even)),) for s in GRID_SAVINGS}
        else:
            ranks = {self._energy_ranks(layer, e) for e in GRID_ENERGIES}
        levels = [self._level(layer, r) for r in ranks]
        return sorted((lv for lv in levels if lv.macs < layer.dense_macs), key=lambda lv: -lv.macs)

    def _level(self, layer: ConvLayer, ranks: tuple[int, ...]) -> Level:
        error = layer.matrix.residual(ranks[0]) if layer.pointwise else layer.tucker(ranks).residual
        return Level(ranks, layer.macs(ranks), error)

    def time_level(self, layer: ConvLayer, level: Level, speed: SpeedCache) -> tuple[float, float]:
        ranks = (level.rank[0], level.rank[0]) if layer.pointwise else level.rank
        return speed.conv(layer.input_shape, layer.weight.shape, layer.attrs, ranks, layer.dtype)

    def rewrite(self, model: ir.Model, ctx: PassContext, layer: ConvLayer, level: Level) -> None:
        node = model.graph.node(layer.index)
        bias = node.inputs[2] if len(node.inputs) > 2 else None
        weights = self._chain_weights(layer, level)
        base = node.inputs[1].name or "weight"
        chain, current = [], node.inputs[0]
        for i, (array, attrs) in enumerate(weights):
            value = add_initializer(model, ctx, f"{base}_tucker_{i}", array.astype(layer.dtype))
            inputs = [current, value] + ([bias] if i == len(weights) - 1 and bias is not None else [])
            chain.append(fresh_node(model, ctx, "Conv", inputs, attrs, base=f"{layer.where}_tucker_{i}"))
            current = chain[-1].outputs[0]
        replace_with_chain(model, ctx, node, chain)

    def _chain_weights(self, layer: ConvLayer, level: Level) -> list[tuple[np.ndarray, dict]]:
        if layer.pointwise:
            a, b = layer.matrix.factors(level.rank[0])
            return [(a.T[:, :, None, None], layer.attrs), (b.T[:, :, None, None], {})]
        first, core, last = layer.tucker(level.rank).layer_weights()
        cout, cin = layer.weight.shape[:2]
        chain = []
        if level.rank[1] < cin:
            chain.append((first, {}))
        else:  # full input rank: fold U_in into the core
            core = np.einsum("abhw,ib->aihw", core, layer.tucker(level.rank).u_in)
        if level.rank[0] < cout:
            return chain + [(core, layer.attrs), (last, {})]
        return chain + [(np.einsum("abhw,oa->obhw", core, layer.tucker(level.rank).u_out), layer.attrs)]

    def layer_stats(self, layer: ConvLayer, level: Level) -> dict[str, Any]:
        row = {"node": layer.where, "op": "Conv", "shape": list(layer.weight.shape),
               "input_shape": list(layer.input_shape) if layer.input_shape else None,
               "rank": list(level.rank), "flops_before": 2 * layer.dense_macs, "flops_after": 2 * level.macs,
               "error": {("data_aware" if layer.whitening is not None else "plain"): self._errors(layer, level)}}
        if level.rank in layer.timings:
            row["latency_ms"] = layer.timings[level.rank]
        if layer.probe:
            row["probe"] = layer.probe
        return row

    def _errors(self, layer: ConvLayer, level: Level) -> dict[str, float]:
        approx = _approximation(layer, level)
        w = layer.weight.astype(np.float64)
        errors = {"weight": _rel(w - approx, w), "factored_space": round(level.error, 6)}
        if layer.data is not None and layer.data.holdout_moment is not None:
            errors["output_holdout_pointwise"] = _channel_error(w, approx, layer.data.holdout_moment)
        return errors


def _approximation(layer: ConvLayer, level: Level) -> np.ndarray:
    if layer.pointwise:
        return layer.matrix.approximation(level.rank[0]).T[:, :, None, None]
    return layer.tucker(level.rank).approximation()


def _rel(err: np.ndarray, ref: np.ndarray) -> float:
    den = float(np.sum(ref**2))
    return round(float(np.sqrt(np.sum(err**2) / den)), 6) if den > 0 else 0.0


def _channel_error(w: np.ndarray, approx: np.ndarray, moment: np.ndarray) -> float:
    """Output error on held-out channel statistics, each kernel tap treated as a 1x1 conv."""
    err = np.moveaxis(w - approx, 1, -1).reshape(-1, w.shape[1])
    ref = np.moveaxis(w, 1, -1).reshape(-1, w.shape[1])
    num = float(np.sum((err @ moment) * err))
    den = float(np.sum((ref @ moment) * ref))
    return round(math.sqrt(max(num, 0.0) / den), 6) if den > 0 else 0.0


def _conv_layer(index: int, where: str, node: ir.Node) -> ConvLayer | str:
    if len(node.inputs) < 2 or node.inputs[0] is None:
        return "missing inputs"
    groups = node.attributes.get_int("group", 1)
    if groups != 1:
        return f"grouped convolution (group={groups}); Tucker-2 here needs group=1"
    reason = weight_refusal(node.inputs[1])
    if reason is not None:
        return reason
    weight = constant_array(node.inputs[1])
    if weight.ndim != 4:
        return f"weight is {weight.ndim}-D (only 2-D convolutions are factored)"
    attrs = {k: a.value for k, a in node.attributes.items() if k in SPATIAL_ATTRS}
    attrs = {k: (list(v) if isinstance(v, (tuple, list)) else v) for k, v in attrs.items()}
    return ConvLayer(index, where, node, node.inputs[0], weight, weight.dtype, attrs)


def _pixels(x_shape: tuple[int, ...], w_shape: tuple[int, ...], attrs: dict) -> tuple[int, int]:
    """(N·H·W, N·Ho·Wo) of a 2-D conv, from the ONNX output-size rules."""
    n, _, h, w = x_shape
    strides = attrs.get("strides", [1, 1])
    dilations = attrs.get("dilations", [1, 1])
    pads = attrs.get("pads", [0, 0, 0, 0])
    auto_pad = attrs.get("auto_pad", "NOTSET")
    out = []
    for i, size in enumerate((h, w)):
        k = w_shape[2 + i]
        if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
            out.append(-(-size // strides[i]))
        else:
            pad = 0 if auto_pad == "VALID" else pads[i] + pads[i + 2]
            out.append((size + pad - dilations[i] * (k - 1) - 1) // strides[i] + 1)
    return n * h * w, n * out[0] * out[1]
