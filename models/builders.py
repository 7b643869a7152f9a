"""Small deterministic models for tests, demos and benchmarks.

Every builder returns an ``onnx.ModelProto`` (opset 17, IR 9, float32) that passes
``onnx.checker.check_model(m, full_check=True)`` and runs on ONNX Runtime's CPU
provider. Weights come from ``numpy.random.default_rng(seed)``: same seed, same bytes.

- ``mlp`` / ``dynamic_batch_mlp``: MatMul+Add+Relu layers, then a Gemm.
- ``cnn``: Conv+BN+Relu blocks, a residual block, a grouped conv, pooling, a Gemm head.
- ``if_model``: an ``If`` whose branches read outer-scope values; one branch output
  is an Identity of an outer-scope value. onnx_ir 1.1's IdentityEliminationPass removes
  that Identity and returns the outer value directly: the onnx checker then rejects the
  model and ONNX Runtime refuses to load it.
- ``redundant_model``: everything a lossless cleanup should remove.

``transformer_block`` lives in ``models.transformer``, ``large_mlp`` in ``models.large``.
"""

from __future__ import annotations

import numpy as np
import onnx

from models._graph import GraphBuilder, gemm, linear


def mlp(batch: int | str = 1, in_features: int = 64, hidden: int = 128,
        out_features: int = 10, seed: int = 0, layers: int = 2) -> onnx.ModelProto:
    """``layers`` x (MatMul + Add + Relu), then a Gemm: "x" [batch, in] -> "logits"."""
    g = GraphBuilder("mlp", seed)
    h = g.input("x", [batch, in_features])
    width = in_features
    for i in range(layers):
        h = g.op("Relu", [linear(g, h, width, hidden, f"fc{i}")])
        width = hidden
    gemm(g, h, width, out_features, "head", out="logits")
    g.output("logits", [batch, out_features])
    return g.model(f"MLP {in_features}-{hidden}x{layers}-{out_features}")


def dynamic_batch_mlp(seed: int = 0) -> onnx.ModelProto:
    """``mlp`` whose input and output have the symbolic first dim "batch"."""
    return mlp(batch="batch", seed=seed)


# --- CNN -------------------------------------------------------------------------

def batch_norm(g: GraphBuilder, x: str, channels: int, prefix: str) -> str:
    """Inference BatchNormalization with non-trivial gamma, beta, mean and variance."""
    gamma = g.uniform(f"{prefix}.bn.weight", [channels], 0.5, 1.5)
    beta = g.weight(f"{prefix}.bn.bias", [channels], scale=0.1)
    mean = g.weight(f"{prefix}.bn.running_mean", [channels], scale=0.2)
    var = g.uniform(f"{prefix}.bn.running_var", [channels], 0.5, 2.0)
    return g.op("BatchNormalization", [x, gamma, beta, mean, var], epsilon=1e-5)


def conv_bn(g: GraphBuilder, x: str, cin: int, cout: int, prefix: str, *, k: int = 3,
            stride: int = 1, group: int = 1, bias: bool = False, relu: bool = True,
            weight: str | None = None) -> str:
    """Conv (same padding) + BatchNormalization (+ Relu); ``weight`` reuses an initializer."""
    weight = weight or g.weight(f"{prefix}.conv.weight", [cout, cin // group, k, k])
    inputs = [x, weight]
    if bias:
        inputs.append(g.weight(f"{prefix}.conv.bias", [cout], scale=0.1))
    y = g.op("Conv", inputs, kernel_shape=[k, k], pads=[k // 2] * 4,
             strides=[stride, stride], group=group)
    y = batch_norm(g, y, cout, prefix)
    return g.op("Relu", [y]) if relu else y


def residual_block(g: GraphBuilder, x: str, channels: int, prefix: str) -> str:
    """Relu(x + BN(Conv(Relu(BN(Conv(x))))))."""
    y = conv_bn(g, x, channels, channels, f"{prefix}.0")
    y = conv_bn(g, y, channels, channels, f"{prefix}.1", relu=False)
    return g.op("Relu", [g.op("Add", [y, x])])


def cnn_features(g: GraphBuilder, x: str) -> str:
    """[1,3,32,32] -> [1,32,8,8]: stem, strided block, residual, grouped conv, MaxPool."""
    y = conv_bn(g, x, 3, 16, "stem")
    y = conv_bn(g, y, 16, 32, "down", stride=2)
    y = residual_block(g, y, 32, "res")
    y = conv_bn(g, y, 32, 32, "grouped", group=4, bias=True)
    return g.op("MaxPool", [y], kernel_shape=[2, 2], strides=[2, 2])


def cnn(seed: int = 0) -> onnx.ModelProto:
    """A ResNet-like classifier: "input" [1,3,32,32] -> "logits" [1,10]."""
    g = GraphBuilder("cnn", seed)
    y = cnn_features(g, g.input("input", [1, 3, 32, 32]))
    y = g.op("Flatten", [g.op("GlobalAveragePool", [y])], axis=1)
    gemm(g, y, 32, 10, "fc", out="logits")
    g.output("logits", [1, 10])
    return g.model("CNN with BatchNorm, a residual block and a grouped conv")


# --- control flow ----------------------------------------------------------------

def if_model(seed: int = 0) -> onnx.ModelProto:
    """"x" [1,8] -> "y" [1,8]; If(sum(x) > 0) picks Relu(h * scale) or Identity(h).

    ``h = x @ W`` is a main-graph intermediate and ``scale`` a main-graph initializer;
    both are read from inside the branches. The else branch's output comes from an
    Identity of the outer value ``h``.
    """
    g = GraphBuilder("if_model", seed)
    x = g.input("x", [1, 8])
    h = g.op("MatMul", [x, g.weight("w", [8, 8], scale=0.5)])
    scale = g.uniform("branch_scale", [8], 1.5, 2.5)
    total = g.op("ReduceSum", [x], keepdims=0)
    cond = g.op("Greater", [total, g.const("zero", np.float32(0.0))])

    then_g = GraphBuilder("then_branch", parent=g)
    then_out = then_g.op("Relu", [then_g.op("Mul", [h, scale])])
    then_g.output(then_out, [1, 8])
    else_g = GraphBuilder("else_branch", parent=g)
    else_out = else_g.op("Identity", [h])
    else_g.output(else_out, [1, 8])

    chosen = g.op("If", [cond], then_branch=then_g.graph(), else_branch=else_g.graph())
    g.op("Add", [chosen, g.weight("bias", [8], scale=0.1)], out="y")
    g.output("y", [1, 8])
    return g.model("If with outer-scope reads and an Identity branch output")


# --- cleanup candidates ------------------------------------------------------------

def redundant_model(seed: int = 0) -> onnx.ModelProto:
    """"x" [1,16] -> "y" [1,16], full of things a lossless cleanup removes.

    - Identity chain on the input, Dropout (inference mode: an identity)
    - ``w_a`` and ``w_a_copy``: same values, different names
    - ``Add(w_base, w_delta)`` feeding a MatMul: foldable at build time
    - ``Relu(m)`` computed twice (CSE), a Sigmoid branch whose result is unused
    - ``Shape -> Gather -> Unsqueeze -> Concat -> Reshape`` on a static shape
    """
    g = GraphBuilder("redundant_model", seed)
    x = g.input("x", [1, 16])
    h = g.op("Identity", [g.op("Identity", [g.op("Identity", [x])])])
    h = g.op("Dropout", [h, g.const("dropout_ratio", np.float32(0.3))])
    w_a = g.weight("w_a", [16, 16], scale=0.25)
    w_a_copy = g.const("w_a_copy", initializer_array(g, w_a))
    a = g.op("MatMul", [h, w_a])
    b = g.op("MatMul", [a, w_a_copy])
    g.op("Mul", [g.op("Sigmoid", [a]), b])  # dead: nothing reads it
    w = g.op("Add", [g.weight("w_base", [16, 16], scale=0.25),
                     g.weight("w_delta", [16, 16], scale=0.05)])
    m = g.op("MatMul", [b, w])
    twice = g.op("Add", [g.op("Relu", [m]), g.op("Relu", [m])])
    reshape_by_own_shape(g, twice, out="y")
    g.output("y", [1, 16])
    return g.model("Redundancy for cleanup passes to remove")


def initializer_array(g: GraphBuilder, name: str) -> np.ndarray:
    """A copy of the values of initializer ``name`` (to make a same-valued duplicate)."""
    tensor = next(t for t in g.initializers if t.name == name)
    return onnx.numpy_helper.to_array(tensor).copy()


def reshape_by_own_shape(g: GraphBuilder, x: str, out: str | None = None) -> str:
    """Reshape(x, Concat(Unsqueeze(Shape(x)[0]), [-1])): a no-op on a static [1, n]."""
    dim0 = g.op("Gather", [g.op("Shape", [x]), g.const("zero_index", np.int64(0))], axis=0)
    dim0 = g.op("Unsqueeze", [dim0, g.const("axes0", np.array([0], np.int64))])
    target = g.op("Concat", [dim0, g.const("minus_one", np.array([-1], np.int64))], axis=0)
    return g.op("Reshape", [x, target], out=out)
