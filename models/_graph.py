"""A small helper for writing ONNX graphs readably with ``onnx.helper``.

``GraphBuilder`` collects nodes, initializers, inputs and outputs, hands out unique
names (shared with any subgraph builders, so If/Loop bodies never shadow an outer
name) and draws weights from one ``numpy.random.default_rng(seed)`` stream, so a
builder called twice with the same seed produces a bitwise-identical model.

Every model uses opset 17 and IR version 9 (what ONNX Runtime and the onnx
checker of this project's pinned versions both accept).
"""

from __future__ import annotations

import collections
from collections.abc import Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
IR_VERSION = 9
PRODUCER = "graphopt.models"

Dims = Sequence[int | str | None]


class GraphBuilder:
    """Accumulates one graph; ``op`` adds a node and returns its output name(s)."""

    def __init__(self, name: str, seed: int = 0, parent: GraphBuilder | None = None):
        self.name = name
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.inputs: list[onnx.ValueInfoProto] = []
        self.outputs: list[onnx.ValueInfoProto] = []
        if parent is None:
            self.rng = np.random.default_rng(seed)
            self._counts: collections.Counter[str] = collections.Counter()
        else:  # a subgraph shares the name authority and weight stream
            self.rng = parent.rng
            self._counts = parent._counts

    def fresh(self, prefix: str) -> str:
        """A name not handed out before in this builder family: prefix, prefix_1, ..."""
        n = self._counts[prefix]
        self._counts[prefix] += 1
        return prefix if n == 0 else f"{prefix}_{n}"

    def input(self, name: str, shape: Dims, dtype: int = TensorProto.FLOAT) -> str:
        self.inputs.append(helper.make_tensor_value_info(name, dtype, list(shape)))
        self._counts[name] += 1
        return name

    def output(self, name: str, shape: Dims | None, dtype: int = TensorProto.FLOAT) -> str:
        """Declare ``name`` (already produced by a node) as a graph output."""
        dims = None if shape is None else list(shape)
        self.outputs.append(helper.make_tensor_value_info(name, dtype, dims))
        return name

    def const(self, prefix: str, array: np.ndarray | float | int | Sequence) -> str:
        """Add an initializer; Python floats become float32, ints become int64."""
        arr = np.asarray(array)
        if arr.dtype == np.float64:
            arr = arr.astype(np.float32)
        name = self.fresh(prefix)
        self.initializers.append(numpy_helper.from_array(arr, name))
        return name

    def weight(self, prefix: str, shape: Sequence[int], scale: float | None = None) -> str:
        """A float32 normal initializer.

        The default scale is He init with fan-in ``prod(shape[1:])``, right for Conv
        ``[out, in/group, k...]`` and Gemm ``[out, in]`` weights; pass ``scale`` otherwise.
        """
        fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else int(shape[0])
        std = np.float32(scale if scale is not None else np.sqrt(2.0 / fan_in))
        data = self.rng.standard_normal(tuple(shape), dtype=np.float32) * std
        return self.const(prefix, data)

    def uniform(self, prefix: str, shape: Sequence[int], low: float, high: float) -> str:
        data = self.rng.uniform(low, high, size=tuple(shape)).astype(np.float32)
        return self.const(prefix, data)

    def op(self, op_type: str, inputs: Sequence[str], *, out: str | None = None,
           n_out: int = 1, **attrs) -> str | list[str]:
        """Add a node. ``out`` names a single output; otherwise names are fresh."""
        prefix = op_type.lower()
        outputs = [out] if out is not None else [self.fresh(prefix) for _ in range(n_out)]
        if out is not None:
            self._counts[out] += 1
        node = helper.make_node(op_type, list(inputs), outputs,
                                name=self.fresh(f"{op_type}_node"), **attrs)
        self.nodes.append(node)
        return outputs[0] if n_out == 1 else outputs

    def graph(self) -> onnx.GraphProto:
        return helper.make_graph(self.nodes, self.name, self.inputs, self.outputs,
                                 initializer=self.initializers)

    def model(self, doc: str = "") -> onnx.ModelProto:
        model = helper.make_model(
            self.graph(),
            opset_imports=[helper.make_opsetid("", OPSET)],
            ir_version=IR_VERSION,
            producer_name=PRODUCER,
            doc_string=doc,
        )
        return model


def linear(g: GraphBuilder, x: str, fan_in: int, fan_out: int, prefix: str) -> str:
    """``x @ W + b`` as MatMul + Add (how PyTorch exports nn.Linear on 3-D inputs)."""
    w = g.weight(f"{prefix}.weight", [fan_in, fan_out], scale=float(np.sqrt(2.0 / fan_in)))
    b = g.weight(f"{prefix}.bias", [fan_out], scale=0.1)
    return g.op("Add", [g.op("MatMul", [x, w]), b])


def gemm(g: GraphBuilder, x: str, fan_in: int, fan_out: int, prefix: str,
         out: str | None = None) -> str:
    """``x @ W.T + b`` as one Gemm with transB=1 (PyTorch's nn.Linear on 2-D inputs)."""
    w = g.weight(f"{prefix}.weight", [fan_out, fan_in])
    b = g.weight(f"{prefix}.bias", [fan_out], scale=0.1)
    return g.op("Gemm", [x, w, b], out=out, transB=1)
