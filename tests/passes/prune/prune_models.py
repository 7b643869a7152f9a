"""Small models for the pruning tests, with *dead* channels where asked.

A dead channel has an all-zero weight row and zero bias, so it is 0 everywhere and every
consumer ignores it: removing exactly the dead channels must leave every output unchanged,
which checks that the rewrite sliced producers, consumers, residual partners, Concat/Split
pieces, BN parameters, grouped/depthwise convolutions and Flatten→Gemm consistently.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

RNG = np.random.default_rng(0)


class Net:
    """Collects nodes and initializers; `conv`/`dense` take the channels to kill."""

    def __init__(self, x_shape, x_name: str = "x"):
        self.nodes, self.inits, self.count = [], [], 0
        self.inputs = [helper.make_tensor_value_info(x_name, TensorProto.FLOAT, list(x_shape))]

    def name(self, base: str) -> str:
        self.count += 1
        return f"{base}{self.count}"

    def const(self, array: np.ndarray, base: str = "c") -> str:
        name = self.name(base)
        self.inits.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def op(self, op_type: str, inputs, n_out: int = 1, **attrs):
        outs = [self.name(op_type.lower()) for _ in range(n_out)]
        self.nodes.append(helper.make_node(op_type, list(inputs), outs, name=self.name(f"{op_type}_"), **attrs))
        return outs[0] if n_out == 1 else outs

    def conv(self, x: str, cin: int, cout: int, k: int = 3, group: int = 1, dead=(), bias: bool = True) -> str:
        w = RNG.standard_normal((cout, cin // group, k, k)).astype(np.float32) * 0.3
        b = RNG.standard_normal(cout).astype(np.float32) * 0.1
        w[list(dead)] = 0
        b[list(dead)] = 0
        inputs = [x, self.const(w, "w")] + ([self.const(b, "b")] if bias else [])
        return self.op("Conv", inputs, kernel_shape=[k, k], pads=[k // 2] * 4, group=group)

    def dense(self, x: str, fan_in: int, fan_out: int, dead=()) -> str:
        w = (RNG.standard_normal((fan_in, fan_out)) / np.sqrt(fan_in)).astype(np.float32)
        b = RNG.standard_normal(fan_out).astype(np.float32) * 0.1
        w[:, list(dead)] = 0
        b[list(dead)] = 0
        return self.op("Add", [self.op("MatMul", [x, self.const(w, "w")]), self.const(b, "b")])

    def bn(self, x: str, channels: int, dead=()) -> str:
        gamma = RNG.uniform(0.5, 1.5, channels).astype(np.float32)
        beta = RNG.standard_normal(channels).astype(np.float32) * 0.1
        mean = RNG.standard_normal(channels).astype(np.float32) * 0.1
        var = RNG.uniform(0.5, 2.0, channels).astype(np.float32)
        beta[list(dead)] = 0
        mean[list(dead)] = 0
        return self.op("BatchNormalization", [x] + [self.const(a, "bn") for a in (gamma, beta, mean, var)])

    def model(self, out: str, out_shape, opset: int = 17) -> onnx.ModelProto:
        outputs = [helper.make_tensor_value_info(out, TensorProto.FLOAT, list(out_shape))]
        graph = helper.make_graph(self.nodes, "g", self.inputs, outputs, self.inits)
        proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=9)
        onnx.checker.check_model(proto, full_check=True)
        return proto


X = [1, 4, 8, 8]


def residual() -> onnx.ModelProto:
    """a = BN(Conv1 x); b = Conv2(Relu a); Relu(a + b) -> Conv3: Conv1 and Conv2 are tied."""
    n = Net(X)
    a = n.bn(n.conv("x", 4, 8, dead=(2, 5)), 8, dead=(2, 5))
    b = n.conv(n.op("Relu", [a]), 8, 8, dead=(2, 5))
    y = n.conv(n.op("Relu", [n.op("Add", [a, b])]), 8, 6)
    return n.model(y, [1, 6, 8, 8])


def concat() -> onnx.ModelProto:
    """Concat(ConvA x [6 ch], ConvB x [4 ch]) -> Conv: the consumer's input pieces at offsets 0 and 6."""
    n = Net(X)
    a = n.op("Relu", [n.conv("x", 4, 6, dead=(1,))])
    b = n.op("Relu", [n.conv("x", 4, 4, dead=(0,))])
    y = n.conv(n.op("Concat", [a, b], axis=1), 10, 5)
    return n.model(y, [1, 5, 8, 8])


def split() -> onnx.ModelProto:
    """Conv [8 ch] split into 3 + 5 channels, each to its own conv, summed."""
    n = Net(X)
    parts = n.op("Split", [n.conv("x", 4, 8, dead=(1, 6)), n.const(np.array([3, 5], np.int64), "split")],
                 n_out=2, axis=1)
    y = n.op("Add", [n.conv(parts[0], 3, 3), n.conv(parts[1], 5, 3)])
    return n.model(y, [1, 3, 8, 8])


def grouped() -> onnx.ModelProto:
    """Conv [8] -> grouped Conv (group 2) -> depthwise Conv (group 8) -> 1x1 Conv."""
    n = Net(X)
    h = n.op("Relu", [n.conv("x", 4, 8, dead=(1, 5))])
    g = n.conv(h, 8, 8, group=2, dead=(0, 7))
    d = n.conv(g, 8, 8, group=8, dead=(0, 7))
    y = n.conv(d, 8, 3, k=1)
    return n.model(y, [1, 3, 8, 8])


def flatten_gemm() -> onnx.ModelProto:
    """Conv [8] -> Relu -> MaxPool -> Flatten -> Gemm(transB): channel c spans 16 Gemm inputs."""
    n = Net(X)
    h = n.op("MaxPool", [n.op("Relu", [n.conv("x", 4, 8, dead=(3, 4))])], kernel_shape=[2, 2], strides=[2, 2])
    w = RNG.standard_normal((5, 8 * 16)).astype(np.float32) * 0.1
    y = n.op("Gemm", [n.op("Flatten", [h], axis=1), n.const(w, "w"), n.const(np.zeros(5, np.float32), "b")],
             transB=1)
    return n.model(y, [1, 5])


def ffn(dead=(1, 3, 5, 10, 17, 22, 27, 30)) -> onnx.ModelProto:
    """Transformer FFN with a residual and LayerNorm: x + W2·Gelu(W1·x + b1) + b2."""
    n = Net([1, 6, 16])
    h = n.dense("x", 16, 32, dead=dead)
    scaled = n.op("Div", [h, n.const(np.float32(np.sqrt(2.0)), "s")])
    erf = n.op("Add", [n.op("Erf", [scaled]), n.const(np.float32(1.0), "one")])
    gelu = n.op("Mul", [n.op("Mul", [h, erf]), n.const(np.float32(0.5), "half")])
    y = n.op("Add", ["x", n.dense(gelu, 32, 16)])
    out = n.op("LayerNormalization", [y, n.const(np.ones(16, np.float32), "g"),
                                      n.const(np.zeros(16, np.float32), "beta")], axis=-1)
    return n.model(out, [1, 6, 16])


def feed(proto: onnx.ModelProto, batch: int = 1, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    shape = [d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim]
    shape[0] = batch
    return {proto.graph.input[0].name: rng.standard_normal(shape).astype(np.float32)}
