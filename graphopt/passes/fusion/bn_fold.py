"""BatchNormalization (inference mode) folded into the producer's weights.

With constant parameters, s = γ/√(σ²+ε) and t = β − μ·s, BN(y) = y·s + t per channel c
(axis 1). Folding into the producer of y:
- Conv:           W'[c] = W[c]·s[c],          B' = B·s + t      (B = 0 if absent)
- ConvTranspose:  W is [Cin, Cout/g, k...]; output channel c = gi·(Cout/g) + j, so
                  W'[gi·Cin/g:(gi+1)·Cin/g, j] = W[..., j]·s[c],  B' = B·s + t
- Gemm:           column c of op(B) scaled by s[c], C' = (β·C)·s + t, attribute beta := 1
- MatMul (2-D output [N, C], BN channel axis = last axis): W'[:, c] = W[:, c]·s[c], then + t
The fused tensors are new initializers named after the BN output (unique), so a weight
shared with other nodes is left untouched for them. Refused, with a reason: non-constant
parameters or weights, training mode, used running-statistics outputs, MatMul outputs of
rank other than 2.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
from onnxscript.rewriter import MatchResult, pattern


def _bn_scale_shift(bn: ir.Node) -> tuple[np.ndarray, np.ndarray]:
    gamma, beta, mean, var = (v.const_value.numpy().astype(np.float64) for v in bn.inputs[1:5])
    eps = bn.attributes.get_float("epsilon", 1e-5)
    scale = gamma / np.sqrt(var + eps)
    return scale, beta - mean * scale


def _bn_refusal(bn: ir.Node) -> str | None:
    if any(v is None or v.const_value is None for v in bn.inputs[1:5]):
        return "BatchNormalization parameters are not all constant"
    if bn.attributes.get_int("training_mode", 0):
        return "BatchNormalization is in training mode (uses batch statistics)"
    if any(out.uses() or out.is_graph_output() for out in bn.outputs[1:]):
        return "BatchNormalization's running-statistics outputs are used"
    return None


def _scale_weight(op_type: str, node: ir.Node, weight: np.ndarray, scale: np.ndarray) -> np.ndarray:
    if op_type == "Conv":
        return weight * scale.reshape((-1,) + (1,) * (weight.ndim - 1))
    if op_type == "ConvTranspose":
        groups = node.attributes.get_int("group", 1)
        per_group = weight.shape[1]
        grouped = weight.reshape((groups, weight.shape[0] // groups) + weight.shape[1:])
        s = scale.reshape((groups, 1, per_group) + (1,) * (weight.ndim - 2))
        return (grouped * s).reshape(weight.shape)
    if op_type == "Gemm" and node.attributes.get_int("transB", 0):
        return weight * scale.reshape(-1, 1)
    return weight * scale.reshape(1, -1)  # Gemm without transB, MatMul: columns


class FoldBatchNorm(pattern.RewriteRuleClassBase):
    def __init__(self, op_type: str):
        super().__init__(f"FoldBatchNormInto{op_type}")
        self.op_type = op_type

    def pattern(self, op, x, w):
        inner = getattr(op, self.op_type)(x, w, _allow_other_inputs=True, _allow_other_attributes=True,
                                          _outputs=["inner"])
        return op.BatchNormalization(inner, _allow_other_inputs=True, _allow_other_attributes=True,
                                     _outputs=["out"])

    def check(self, context, x, w, inner, out) -> MatchResult:
        result = MatchResult()
        node = inner.producer()
        reason = _bn_refusal(out.producer())
        if reason is None and w.const_value is None:
            reason = f"the {self.op_type} weight is not constant"
        if reason is None and len(node.inputs) > 2 and node.inputs[2] is not None and node.inputs[2].const_value is None:
            reason = f"the {self.op_type} bias is not constant"
        if reason is None and self.op_type == "MatMul" and (w.const_value.shape.rank() != 2 or inner.shape is None
                                                           or inner.shape.rank() != 2):
            reason = "MatMul+BN folds only for a 2-D product (BN's channel axis must be the last axis)"
        if reason is None and self.op_type == "Gemm" and node.attributes.get_int("transA", 0) not in (0, 1):
            reason = "unexpected transA"
        return result.fail(reason) if reason else result

    def rewrite(self, op, x, w, inner, out):
        node, bn = inner.producer(), out.producer()
        scale, shift = _bn_scale_shift(bn)
        weight = w.const_value.numpy()
        dtype = weight.dtype
        new_w = op.initializer(ir.tensor(_scale_weight(self.op_type, node, weight, scale).astype(dtype)),
                               f"{out.name}_folded_weight")
        bias_in = node.inputs[2] if len(node.inputs) > 2 else None
        bias = bias_in.const_value.numpy().astype(np.float64) if bias_in is not None else 0.0
        attrs = dict(node.attributes)
        if self.op_type == "Gemm":
            bias = bias * attrs.pop("beta").as_float() if "beta" in attrs else bias
        new_b = op.initializer(ir.tensor(np.broadcast_to(bias * scale + shift, scale.shape).astype(dtype)),
                               f"{out.name}_folded_bias")
        if self.op_type == "MatMul":
            return op.Add(op.MatMul(x, new_w), new_b)
        return op.op(self.op_type, x, new_w, new_b, **attrs)


def bn_fold_rules() -> dict:
    return {op_type.lower(): FoldBatchNorm.rule(op_type) for op_type in ("Conv", "ConvTranspose", "Gemm", "MatMul")}
