"""Per-channel Mul / Add after a Conv, folded into the Conv's weight and bias.

With y = W∗x + B (output channel axis 1) and constants s, t that broadcast along the channel
axis only (scalar, [C], [C,1,...,1] or [1,C,1,...,1]):
    y·s = (W·s_c)∗x + B·s_c      (W scaled per output channel: W'[c] = W[c]·s_c)
    y + t = W∗x + (B + t_c)
A Conv without bias has B = 0. The Conv's output must have no other consumer (the matcher
refuses otherwise), and new weight/bias tensors are created under fresh names.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
from onnxscript.rewriter import MatchResult, pattern


def channel_vector(value: ir.Value, conv_out: ir.Value, weight: ir.Value) -> np.ndarray | None:
    """The constant as a length-C vector, or None if it broadcasts over other axes too."""
    if value.const_value is None or weight.const_value is None:
        return None
    data = value.const_value.numpy()
    channels = weight.const_value.shape[0]
    rank = len(weight.const_value.shape)  # Conv output rank equals weight rank
    if data.ndim > rank or data.dtype != np.float32 and data.dtype != weight.const_value.numpy().dtype:
        return None
    shape = (1,) * (rank - data.ndim) + data.shape
    if any(d != 1 for i, d in enumerate(shape) if i != 1) or shape[1] not in (1, channels):
        return None
    if data.ndim == 1 and rank > 2 and data.shape[0] != 1:
        return None  # [C] would broadcast along the last (spatial) axis, not the channel axis
    return np.broadcast_to(data.reshape(-1) if data.size > 1 else data.reshape(1), (channels,))


class _ConvChannelOp(pattern.RewriteRuleClassBase):
    def __init__(self, op_type: str, with_bias: bool):
        super().__init__(f"Conv{'Bias' if with_bias else ''}{op_type}Channel")
        self.op_type, self.with_bias = op_type, with_bias

    def pattern(self, op, x, w, b, c):
        inputs = [x, w, b] if self.with_bias else [x, w]
        conv = op.Conv(*inputs, _allow_other_attributes=True, _outputs=["conv_out"])
        return getattr(op, self.op_type)(conv, c)

    def check(self, context, x, w, b, c, conv_out) -> MatchResult:
        result = MatchResult()
        if w.const_value is None or (self.with_bias and b.const_value is None):
            return result.fail("Conv weight/bias is not constant")
        if channel_vector(c, conv_out, w) is None:
            return result.fail(f"{self.op_type} operand is not a constant per-channel or scalar value")
        return result

    def rewrite(self, op, x, w, b, c, conv_out):
        weight = w.const_value.numpy()
        vector = channel_vector(c, conv_out, w).astype(weight.dtype)
        bias = b.const_value.numpy() if self.with_bias else np.zeros(weight.shape[0], weight.dtype)
        if self.op_type == "Mul":
            weight = weight * vector.reshape((-1,) + (1,) * (weight.ndim - 1))
            bias = bias * vector
        else:
            bias = bias + vector
        new_w = op.initializer(ir.tensor(weight), f"{w.name}_fused")
        new_b = op.initializer(ir.tensor(bias), f"{w.name}_fused_bias")
        return op.Conv(x, new_w, new_b, **conv_out.producer().attributes)


def conv_channel_rules() -> list:
    rules = []
    for op_type in ("Mul", "Add"):
        for with_bias in (True, False):
            rules += _ConvChannelOp.rule(op_type, with_bias).commute()
    return rules
