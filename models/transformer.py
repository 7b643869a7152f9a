"""A post-LayerNorm transformer encoder block written the way exporters spell it.

"hidden" [1, seq, d_model] -> "output" [1, seq, d_model]:

    a = LN1(x + Wo · Attention(x))          multi-head self-attention
    y = LN2(a + W2 · GELU(W1 · a + b1) + b2)

LayerNorm is decomposed (ReduceMean, Sub, Pow, ReduceMean, Add eps, Sqrt, Div, Mul
gamma, Add beta) and GELU is x * 0.5 * (1 + Erf(x / sqrt(2))), the primitive patterns
that fusion passes look for.
"""

from __future__ import annotations

import numpy as np
import onnx

from models._graph import GraphBuilder, linear


def transformer_block(seq: int = 16, d_model: int = 64, heads: int = 4, ffn: int = 256,
                      seed: int = 0) -> onnx.ModelProto:
    """One encoder block; ``d_model`` must be divisible by ``heads``."""
    if d_model % heads:
        raise ValueError(f"d_model={d_model} is not divisible by heads={heads}")
    g = GraphBuilder("transformer_block", seed)
    x = g.input("hidden", [1, seq, d_model])
    attn = self_attention(g, x, seq, d_model, heads)
    a = layer_norm(g, g.op("Add", [x, attn]), d_model, "ln1")
    f = linear(g, gelu(g, linear(g, a, d_model, ffn, "ffn.up")), ffn, d_model, "ffn.down")
    layer_norm(g, g.op("Add", [a, f]), d_model, "ln2", out="output")
    g.output("output", [1, seq, d_model])
    return g.model(f"Transformer encoder block d={d_model} heads={heads} ffn={ffn}")


def self_attention(g: GraphBuilder, x: str, seq: int, d_model: int, heads: int) -> str:
    """softmax(Q Kᵀ / sqrt(d_head)) V over ``heads`` heads, then the output projection."""
    d_head = d_model // heads
    split = g.const("split_heads_shape", np.array([1, seq, heads, d_head], np.int64))
    q, k, v = (g.op("Reshape", [linear(g, x, d_model, d_model, f"attn.{n}"), split])
               for n in "qkv")
    q = g.op("Transpose", [q], perm=[0, 2, 1, 3])      # [1, h, s, dh]
    k = g.op("Transpose", [k], perm=[0, 2, 3, 1])      # [1, h, dh, s]
    v = g.op("Transpose", [v], perm=[0, 2, 1, 3])      # [1, h, s, dh]
    scores = g.op("MatMul", [q, k])
    scores = g.op("Div", [scores, g.const("sqrt_d_head", np.sqrt(np.float32(d_head)))])
    probs = g.op("Softmax", [scores], axis=-1)
    ctx = g.op("Transpose", [g.op("MatMul", [probs, v])], perm=[0, 2, 1, 3])
    merge = g.const("merge_heads_shape", np.array([1, seq, d_model], np.int64))
    ctx = g.op("Reshape", [ctx, merge])
    return linear(g, ctx, d_model, d_model, "attn.out")


def layer_norm(g: GraphBuilder, x: str, d_model: int, prefix: str,
               out: str | None = None) -> str:
    """(x - mean) / sqrt(var + eps) * gamma + beta over the last axis, as primitives."""
    mean = g.op("ReduceMean", [x], axes=[-1], keepdims=1)
    centered = g.op("Sub", [x, mean])
    var = g.op("ReduceMean", [g.op("Pow", [centered, g.const("two", np.float32(2.0))])],
               axes=[-1], keepdims=1)
    std = g.op("Sqrt", [g.op("Add", [var, g.const(f"{prefix}.eps", np.float32(1e-5))])])
    normed = g.op("Div", [centered, std])
    gamma = g.uniform(f"{prefix}.weight", [d_model], 0.8, 1.2)
    beta = g.weight(f"{prefix}.bias", [d_model], scale=0.05)
    return g.op("Add", [g.op("Mul", [normed, gamma]), beta], out=out)


def gelu(g: GraphBuilder, x: str) -> str:
    """x * 0.5 * (1 + Erf(x / sqrt(2))), in PyTorch's export order."""
    scaled = g.op("Div", [x, g.const("sqrt_two", np.sqrt(np.float32(2.0)))])
    one_plus = g.op("Add", [g.op("Erf", [scaled]), g.const("one", np.float32(1.0))])
    return g.op("Mul", [g.op("Mul", [x, one_plus]), g.const("half", np.float32(0.5))])
