"""A large MLP written straight to disk with external data, one weight at a time.

``large_mlp(path)`` with the defaults (24 layers of width 2048) has
24 x (2048 x 2048 + 2048) = 100,712,448 parameters, about 403 MB of float32 weights,
stored in ``<name>.data`` next to ``path``. Each weight is an ``onnx_ir.LazyTensor``
whose function draws it from ``default_rng([seed, layer])`` only when ``ir.save``
writes it, so peak memory stays near one weight (16 MiB at width 2048) plus the
interpreter: measured 96 MB peak RSS (74 MB of it is the imports) and 2.3 s
for the default model.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx_ir as ir

OPSET = 17
IR_VERSION = 9


def large_mlp(path: str | os.PathLike, layers: int = 24, width: int = 2048,
              seed: int = 0, batch: int | str = 1, redundant: bool = False) -> Path:
    """Write ``layers`` x (MatMul + Add + Relu) to ``path`` and ``<stem>.data``.

    "x" [batch, width] -> "y" [batch, width]. Returns ``path`` as a ``Path``.
    ``redundant=True`` adds what a lossless cleanup removes, so that a benchmark exercises
    verification of real candidates: an Identity after every Relu, and each odd layer's
    bias a same-valued copy of the even layer's before it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    x = ir.val("x", ir.DataType.FLOAT, [batch, width])
    h, nodes, initializers = x, [], []
    for layer in range(layers):
        w = _lazy_initializer(f"fc{layer}.weight", (width, width), seed, layer, 0)
        b = _lazy_initializer(f"fc{layer}.bias", (width,), seed,
                              layer - layer % 2 if redundant else layer, 1)
        initializers += [w, b]
        matmul = ir.node("MatMul", [h, w], name=f"fc{layer}/MatMul")
        add = ir.node("Add", [matmul.outputs[0], b], name=f"fc{layer}/Add")
        relu = ir.node("Relu", [add.outputs[0]], name=f"fc{layer}/Relu")
        nodes += [matmul, add, relu]
        h = relu.outputs[0]
        if redundant:
            nodes.append(ir.node("Identity", [h], name=f"fc{layer}/Identity"))
            h = nodes[-1].outputs[0]
    _name_outputs(nodes)
    h.name, h.dtype, h.shape = "y", ir.DataType.FLOAT, ir.Shape([batch, width])
    graph = ir.Graph([x], [h], nodes=nodes, initializers=initializers,
                     opset_imports={"": OPSET}, name="large_mlp")
    model = ir.Model(graph, ir_version=IR_VERSION, producer_name="graphopt.models")
    ir.save(model, path, external_data=f"{path.stem}.data")
    return path


def _lazy_initializer(name: str, shape: tuple[int, ...], seed: int, layer: int,
                      slot: int) -> ir.Value:
    """An initializer whose data is generated (He init) each time it is read."""
    def generate() -> ir.Tensor:
        rng = np.random.default_rng([seed, layer, slot])
        data = rng.standard_normal(shape, dtype=np.float32)
        data *= np.float32(np.sqrt(2.0 / shape[0]) if slot == 0 else 0.01)
        return ir.tensor(data, name=name)

    tensor = ir.LazyTensor(generate, dtype=ir.DataType.FLOAT, shape=ir.Shape(shape),
                           name=name)
    return ir.Value(name=name, shape=ir.Shape(shape), type=ir.TensorType(ir.DataType.FLOAT),
                    const_value=tensor)


def _name_outputs(nodes: list[ir.Node]) -> None:
    for node in nodes:
        for out in node.outputs:
            if out.name is None:
                out.name = f"{node.name}/out"
