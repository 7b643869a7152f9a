"""Candidates of the budget search: the prepared model with each layer at its level.

The prepared model is the pass's working copy (opset raised for the dq form, AWQ's input Muls
in place); each candidate is a clone of it (tensors shared) in which every layer is written
at its bits (rewrite.py) or left float. A layer is quantized once per bit width: the
algorithm's result at the pass's bits (RTN, AWQ's scaled RTN or GPTQ), RTN at 8 bits for the
int8 fallback; embeddings always by RTN (they have no input statistics).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx_ir as ir

from graphopt.pass_api import NameAuthority
from graphopt.passes.weights.blocks import BlockFormat, BlockQuantized, quantize_rtn
from graphopt.passes.weights.gptq import quantize_gptq
from graphopt.passes.weights.layers import Layer
from graphopt.passes.weights.options import QuantizeWeightsOptions
from graphopt.passes.weights.rewrite import Encoded, encode, write_dq, write_float, write_matmulnbits
from graphopt.passes.weights.stats import InputStats


def layer_gram(layer: Layer, stats: InputStats | None) -> np.ndarray | None:
    """E[xxᵀ] over every input the layer multiplies (rows pooled), or None without statistics."""
    if stats is None or layer.kind != "linear":
        return None
    moments = [stats.get(name) for name in layer.inputs]
    if not moments or any(m is None for m in moments):
        return None
    return sum(m.gram for m in moments) / sum(m.rows for m in moments)


@dataclass
class Builder:
    prepared: ir.Model
    layers: list[Layer]
    options: QuantizeWeightsOptions
    stats: InputStats | None = None
    accuracy_level: int = 0
    _cache: dict[tuple[str, int], Encoded] = field(default_factory=dict)

    def quantized(self, layer: Layer, bits: int) -> BlockQuantized:
        """The layer at `bits` (computed each call; `keep` stores its written form)."""
        opts = self.options
        fmt = BlockFormat(bits, opts.block_size, opts.symmetric)
        gram = layer_gram(layer, self.stats)
        if bits == opts.bits and opts.algorithm == "gptq" and gram is not None:
            return quantize_gptq(layer.matrix, gram, fmt, opts.gptq_damping, opts.scale_search)
        return quantize_rtn(layer.matrix, fmt, opts.scale_search)

    def keep(self, layer: Layer, bits: int, bq: BlockQuantized) -> None:
        self._cache[(layer.key, bits)] = encode(layer, bq, self.options.form)

    def encoded(self, layer: Layer, bits: int) -> Encoded:
        """The layer's arrays at `bits`, made once (the float weight read again if needed)."""
        if (layer.key, bits) not in self._cache:
            self.keep(layer, bits, self.quantized(layer, bits))
            layer.release()
        return self._cache[(layer.key, bits)]

    @property
    def cached_bytes(self) -> int:
        return sum(enc.nbytes for enc in self._cache.values())

    def __call__(self, levels: dict[str, int]) -> ir.Model:
        position = {id(node): i for i, node in enumerate(self.prepared.graph)}  # AWQ may have added nodes
        model = self.prepared.clone()
        nodes = list(model.graph)
        fresh = NameAuthority(model).fresh
        for layer in self.layers:
            mine = [nodes[position[id(use.node)]] for use in layer.uses]
            bits = levels.get(layer.key, 0)
            if bits == 0:
                write_float(model.graph, fresh, layer, mine)
            elif self.options.form == "dq":
                write_dq(model.graph, fresh, layer, self.encoded(layer, bits), mine)
            else:
                write_matmulnbits(model.graph, fresh, layer, self.encoded(layer, bits), mine, self.accuracy_level)
        return model
