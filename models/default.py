"""The bundled demo model, ``models/default.onnx`` (what the README's first command optimizes).

A CNN classifier like ``models.cnn`` ("input" [1,3,32,32] -> "logits" [1,10]) with the
cleanup opportunities a real export tends to carry:

- input normalization ``(x - mean) / Sqrt(var)``: ``Sqrt`` of an initializer folds away
- an Identity chain after the normalization and a Dropout (inference) before the head
- tied weights stored twice: the residual block's second conv weight is a same-valued copy
  of the first (dedupable), as is the ``[-1]`` shape constant
- a Reshape to [-1] and straight back (a no-op pair)
- Flatten spelled ``Shape -> Gather -> Unsqueeze -> Concat -> Reshape`` on a static shape

Regenerate the file with ``python -m models.build_default``; the bytes are deterministic.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx

from models._graph import GraphBuilder, gemm
from models.builders import conv_bn, initializer_array, reshape_by_own_shape

DEFAULT_SEED = 0


def default_model_path() -> Path:
    """Path of the bundled ``models/default.onnx``."""
    return Path(__file__).resolve().parent / "default.onnx"


def build_default(seed: int = DEFAULT_SEED) -> onnx.ModelProto:
    """Build the model stored in ``models/default.onnx``."""
    g = GraphBuilder("default_cnn", seed)
    x = _normalize(g, g.input("input", [1, 3, 32, 32]))
    x = g.op("Identity", [g.op("Identity", [x])])
    y = conv_bn(g, x, 3, 16, "stem")
    y = conv_bn(g, y, 16, 32, "down", stride=2)
    y = _tied_residual_block(g, y, 32, "res")
    y = conv_bn(g, y, 32, 32, "grouped", group=4, bias=True)
    y = g.op("MaxPool", [y], kernel_shape=[2, 2], strides=[2, 2])
    y = reshape_by_own_shape(g, g.op("GlobalAveragePool", [y]))
    y = g.op("Dropout", [y, g.const("dropout_ratio", np.float32(0.2))])
    gemm(g, y, 32, 10, "fc", out="logits")
    g.output("logits", [1, 10])
    return g.model("graphopt demo CNN with cleanup opportunities")


def write_default(path: str | Path | None = None) -> Path:
    """(Re)write the default model to ``path`` (default: the bundled location)."""
    path = Path(path) if path is not None else default_model_path()
    path.write_bytes(build_default().SerializeToString())
    return path


def _normalize(g: GraphBuilder, x: str) -> str:
    mean = g.const("pixel_mean", np.array([0.485, 0.456, 0.406], np.float32).reshape(1, 3, 1, 1))
    var = g.const("pixel_var", np.array([0.229, 0.224, 0.225], np.float32).reshape(1, 3, 1, 1) ** 2)
    return g.op("Div", [g.op("Sub", [x, mean]), g.op("Sqrt", [var])])


def _tied_residual_block(g: GraphBuilder, x: str, channels: int, prefix: str) -> str:
    """Like ``residual_block`` but the second conv's weight duplicates the first's."""
    first = g.weight(f"{prefix}.0.conv.weight", [channels, channels, 3, 3])
    second = g.const(f"{prefix}.1.conv.weight", initializer_array(g, first))
    y = conv_bn(g, x, channels, channels, f"{prefix}.0", weight=first)
    y = conv_bn(g, y, channels, channels, f"{prefix}.1", relu=False, weight=second)
    y = g.op("Relu", [g.op("Add", [y, x])])
    minus_one = g.const("flat_minus_one", np.array([-1], np.int64))
    return g.op("Reshape", [g.op("Reshape", [y, minus_one]),
                            g.const("res_out_shape", np.array([1, channels, 16, 16], np.int64))])
