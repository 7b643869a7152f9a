"""How a clustered weight is stored, and the small graph that expands it when the model loads.

Stored: the float32 codebook ([K], or [C·K] with channel c's palette at c·K.. for one palette per
channel) and the codes on b = max(1, ceil(log2 K)) bits. b = 8: uint8 codes of the weight's
shape. b < 8: the codes in row-major order, padded to a multiple of 8, each group of 8 codes
packed into b bytes [G, b], code j at bit offset j·b of its group, least significant bits first.
Expansion, from constants only (opset >= 11):
    x    = Cast(packed, INT32)                                      [G, b]
    word = Gather(x, lo, axis=1) + 256·Gather(x, hi, axis=1)       [G, 8]
           lo_j = floor(j·b/8), hi_j = min(lo_j + 1, b - 1)
    code = Mod(Div(word, 2^(j·b mod 8)), 2^b)                        (integer Div, Mod)
    idx  = Reshape(Slice(Reshape(code, [-1]), 0, n), shape)   [+ c·K along the channel axis]
    W    = Gather(codebook, idx)                                    the weight, float32
(hi_j is clamped to the group's last byte: when code j ends inside byte lo_j, 256·x_hi/2^off is a
multiple of 2^b and the Mod removes it.) Every input is a constant, so ONNX Runtime's constant
folding (ORT_ENABLE_BASIC and above) replaces the chain by the float weight at session start;
fold.py checks that on the result. The small constants (lo, hi, powers, shapes) are shared by
every expansion of a graph. New tensors only, under fresh names; the old weight is dropped once
nothing reads it.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import onnx_ir as ir

Fresh = Callable[[str], str]
INT32 = int(ir.DataType.INT32)


def index_bits(width: int) -> int:
    """Bits per stored code for a palette of `width` entries (at least 1)."""
    return max(1, int(np.ceil(np.log2(max(width, 1)))))


def pack_codes(codes: np.ndarray, bits: int) -> np.ndarray:
    """Flat codes (< 2^bits) -> [G, bits] uint8, 8 codes per group, least significant bit first."""
    flat = np.asarray(codes, np.uint8).reshape(-1)
    groups = -(-flat.size // 8)
    padded = np.zeros(groups * 8, np.uint8)
    padded[:flat.size] = flat
    bit_planes = (padded.reshape(groups, 8, 1) >> np.arange(bits, dtype=np.uint8)) & 1  # [G, 8, b]
    return np.packbits(bit_planes.reshape(groups, 8 * bits), axis=1, bitorder="little")


def unpack_codes(packed: np.ndarray, bits: int, count: int) -> np.ndarray:
    """The inverse of `pack_codes` (numpy, the same arithmetic as the expansion graph)."""
    x = packed.astype(np.int32)
    lo, hi, shift = _unpack_tables(bits)
    word = x[:, lo] + 256 * x[:, hi]
    return ((word // shift) % (1 << bits)).reshape(-1)[:count].astype(np.uint8)


def _unpack_tables(bits: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    offsets = np.arange(8) * bits
    lo = offsets // 8
    return lo, np.minimum(lo + 1, bits - 1), (1 << (offsets % 8)).astype(np.int32)


class Writer:
    """Adds initializers and nodes to one graph; equal small constants are shared. `stored`: the
    names of the tensors written per weight (codes, codebooks, dense weights)."""

    def __init__(self, graph: ir.Graph, fresh: Fresh):
        self.graph, self.fresh = graph, fresh
        self.stored: set[str] = set()
        self._constants: dict[tuple, ir.Value] = {}

    def initializer(self, base: str, array: np.ndarray, stored: bool = True) -> ir.Value:
        name = self.fresh(base)
        tensor = ir.tensor(np.ascontiguousarray(array), name=name)
        value = ir.Value(name=name, shape=ir.Shape(tensor.shape), type=ir.TensorType(tensor.dtype),
                         const_value=tensor)
        self.graph.register_initializer(value)
        if stored:
            self.stored.add(name)
        return value

    def constant(self, array, dtype) -> ir.Value:
        array = np.asarray(array, dtype)
        key = (array.dtype.str, array.shape, array.tobytes())
        if key not in self._constants:
            self._constants[key] = self.initializer("cluster_const", array, stored=False)
        return self._constants[key]

    def node(self, nodes: list[ir.Node], op: str, inputs: list[ir.Value], base: str, dtype: ir.DataType,
             **attributes) -> ir.Value:
        node = ir.node(op, inputs, attributes, name=self.fresh(f"{base}_{op.lower()}"))
        out = node.outputs[0]
        out.name, out.type = self.fresh(f"{base}_{op.lower()}"), ir.TensorType(dtype)
        nodes.append(node)
        return out


def write_expansion(writer: Writer, base: str, codes: np.ndarray, codebook: np.ndarray, bits: int,
                    offsets: np.ndarray | None) -> tuple[ir.Value, list[ir.Node]]:
    """The expansion of one weight (codes of its shape, codebook [K] or [C, K]; `offsets` c·K
    shaped to broadcast along the channel axis): its output value and nodes, in order."""
    nodes: list[ir.Node] = []
    index = _indices(writer, nodes, base, codes, bits)
    if offsets is not None:
        index = writer.node(nodes, "Add", [index, writer.constant(offsets, np.int32)], base, ir.DataType.INT32)
    book = writer.initializer(f"{base}_codebook", np.ascontiguousarray(codebook, np.float32).reshape(-1))
    out = writer.node(nodes, "Gather", [book, index], base, ir.DataType.FLOAT, axis=0)
    out.shape = ir.Shape(codes.shape)
    return out, nodes


def _indices(writer: Writer, nodes: list[ir.Node], base: str, codes: np.ndarray, bits: int) -> ir.Value:
    """INT32 codes of the weight's shape, unpacked in the graph."""
    if bits == 8:
        stored = writer.initializer(f"{base}_codes", np.ascontiguousarray(codes, np.uint8))
        return writer.node(nodes, "Cast", [stored], base, ir.DataType.INT32, to=INT32)
    stored = writer.initializer(f"{base}_codes{bits}", pack_codes(codes, bits))
    lo, hi, shift = _unpack_tables(bits)
    x = writer.node(nodes, "Cast", [stored], base, ir.DataType.INT32, to=INT32)
    low = writer.node(nodes, "Gather", [x, writer.constant(lo, np.int64)], base, ir.DataType.INT32, axis=1)
    high = writer.node(nodes, "Gather", [x, writer.constant(hi, np.int64)], base, ir.DataType.INT32, axis=1)
    high = writer.node(nodes, "Mul", [high, writer.constant(256, np.int32)], base, ir.DataType.INT32)
    word = writer.node(nodes, "Add", [low, high], base, ir.DataType.INT32)
    word = writer.node(nodes, "Div", [word, writer.constant(shift, np.int32)], base, ir.DataType.INT32)
    code = writer.node(nodes, "Mod", [word, writer.constant(1 << bits, np.int32)], base, ir.DataType.INT32)
    flat = writer.node(nodes, "Reshape", [code, writer.constant([-1], np.int64)], base, ir.DataType.INT32)
    if codes.size % 8:
        flat = writer.node(nodes, "Slice", [flat, writer.constant([0], np.int64),
                                            writer.constant([codes.size], np.int64)], base, ir.DataType.INT32)
    return writer.node(nodes, "Reshape", [flat, writer.constant(codes.shape, np.int64)], base, ir.DataType.INT32)


def rewire(graph: ir.Graph, old: ir.Value, new: ir.Value, nodes: list[ir.Node]) -> None:
    """Insert `nodes` before the first reader of `old`, point every reader at `new`, drop `old`."""
    order = {id(node): i for i, node in enumerate(graph)}
    uses = list(old.uses())
    if nodes:
        first = min((node for node, _ in uses), key=lambda n: order[id(n)])
        graph.insert_before(first, nodes)
    for node, index in uses:
        node.replace_input_with(index, new)
    producer = old.producer()
    if producer is not None and producer.op_type == "Constant" and producer.graph is graph:
        graph.remove(producer, safe=True)
    elif old.name in graph.initializers and not old.uses():
        graph.initializers.pop(old.name)


__all__ = ["Writer", "index_bits", "pack_codes", "rewire", "unpack_codes", "write_expansion"]
