"""Quantization target profiles, as data: which ops get Q/DQ, with which types, for which runtime.

A profile says, per op type, what the runtime fuses into integer kernels:

- `compute` ops (Conv, MatMul, Gemm, ...) always get Q/DQ on their activation inputs and an
  INT8 weight behind a DequantizeLinear; `output=True` means the kernel only exists with a
  QuantizeLinear on the output too (ONNX Runtime turns DQ→Conv→Q into QLinearConv, but a Conv
  without the output Q stays a float Conv behind a runtime DequantizeLinear, which is slower
  than no quantization at all).
- `activation` ops (TensorRT's residual Add) get Q/DQ on their inputs whenever every operand is an
  activation (a bias or scale Add with a constant stays float).
- `elementwise` ops (Add, Mul, Concat, pooling) are quantized only when every activation input
  is quantized anyway, i.e. when running them on integers saves a dequantize/requantize pair
  (QLinearAdd between two QLinearConvs, a residual Add in TensorRT).
- `shared` ops move values without arithmetic (Reshape, Transpose, MaxPool, Resize, ...): their
  output shares the input's scale and zero point, so runtimes drop the Q/DQ pair around them and
  no needless requantization happens.
- `embedding`: Gather from a constant table: the table is stored as INT8 and the gathered rows
  are dequantized (y = (Gather(q, idx) - z)·s).
- `always` (a flag of any rule): the op is quantized whatever its neighbours: every float input,
  constants included, is read through a DequantizeLinear and every float output goes through a
  QuantizeLinear (a graph output then reads the DQ); a `shared` op quantizes its float input too.

Everything not listed stays float (LayerNormalization, Softmax, GELU, attention-mask arithmetic),
unless the profile has a `default` rule: then every op type it does not list takes that rule,
except the ops that do no float arithmetic (NO_FLOAT_MATH: Shape, Range, Constant, Q/DQ, If, ...).

- `qnn` (Qualcomm QNN HTP, its QDQ format): every op that computes on floats runs quantized, so
  there is no float island between the first Q and the last DQ: Conv/MatMul/Gemm with INT8
  per-channel weights and an output Q, every other float op (Add, Mul, Softmax,
  LayerNormalization, Gelu, Erf, Pow, ReduceMean, Concat, pooling, Resize, ...) by the `default`
  rule with its constant operands as 8-bit constants behind a DequantizeLinear, data movement
  (Reshape, Transpose, Squeeze, Slice, Split, MaxPool, Flatten, ...) sharing its input's scale;
  integer paths (shapes, indices) untouched. Its budget fallback is `wide`: a unit the search
  picks keeps Q/DQ but with UINT16 activations (inputs and outputs, whole scale groups; opset 21,
  float bias) instead of going back to float; no latency check (no QNN runtime here).

Types: activations are asymmetric UINT8 (real range [lo, hi] -> s = (hi-lo)/255, z = round(-lo/s))
or symmetric INT8 (s = max|x|/127, z = 0); weights are symmetric per output channel with
`weight_bits` of magnitude (8: [-127, 127]; 7: [-63, 63]).

The `ort-cpu` weight type depends on the CPU's int8 instructions (`ort_cpu_weights`): without
VNNI, ONNX Runtime's u8×s8 kernel multiplies with `vpmaddubsw`, whose int16 pair sums saturate
when both operands are large (255·127·2 > 32767), so outputs are wrong, not just noisy. With 7-bit
weights (|w| <= 63: 255·63·2 = 32130 fits) the same fast kernel is exact (ORT's `reduce_range`);
the alternative exact kernel (u8×u8, widened to int16) is slower. With VNNI (`vpdpbusd`, 32-bit
accumulation) or AMX, full 8-bit weights are exact.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Mapping

import ml_dtypes
import numpy as np

from graphopt.runtime import cpu_flags


@dataclass(frozen=True)
class OpRule:
    role: str  # compute | activation | elementwise | shared | embedding
    activations: tuple[int, ...] = (0,)  # input indices quantized as activations
    weight: int | None = None  # input index of a constant weight (compute ops)
    bias: int | None = None  # input index of a bias stored as INT32 with scale s_x·s_w
    output: bool = False  # the fused kernel needs a Q on the output as well
    weight_required: bool = True  # False: a non-constant "weight" input is quantized as an activation
    depthwise: bool = True  # grouped/depthwise Conv quantized too
    constants: bool = True  # elementwise: constant operands may be quantized (else two activations needed)
    skip_fused: bool = False  # activation ops: leave operands a compute op produces to the runtime's fusion
    always: bool = False  # quantized whatever its neighbours: float inputs (constants too) via DQ, outputs via Q


FLOAT8 = {"float8e4m3fn": np.dtype(ml_dtypes.float8_e4m3fn)}  # name -> numpy dtype (ml_dtypes)


@dataclass(frozen=True)
class TensorType:
    dtype: str  # uint8 | int8 | uint16 | int16 (activations) | float8e4m3fn
    symmetric: bool
    bits: int = 8  # magnitude bits of symmetric integer weights (7 = ORT's reduce_range)

    @property
    def np_dtype(self):
        return FLOAT8.get(self.dtype) or np.dtype(self.dtype)

    @property
    def is_float8(self) -> bool:
        return self.dtype in FLOAT8

    @property
    def beyond_int8(self) -> bool:
        """FP8 or 16-bit: types ONNX Runtime's CPU EP has no integer kernels for, whose Q/DQ
        needs a newer opset than 8-bit's."""
        return self.is_float8 or self.dtype in ("uint16", "int16")


@dataclass(frozen=True)
class QuantProfile:
    name: str
    description: str
    activation: TensorType
    weight: TensorType
    ops: Mapping[str, OpRule]
    fold_relu: bool  # Relu/Clip(0, b) before a Q of the producer's output are absorbed by the Q
    bias_int32: bool = True
    min_opset: int = 13  # per-channel DequantizeLinear (axis) exists from opset 13
    latency_check: bool = False  # the target runs here: measure that int8 is faster (speed.py)
    latency_provider: str = "cpu"  # graphopt.runtime.PROVIDERS key the speed check times on
    gemm_bias: bool = False  # MatMul + bias before a Reshape -> 2-D Gemm, bias in the kernel (gemm.py)
    notes: tuple[str, ...] = field(default_factory=tuple)
    default: OpRule | None = None  # the rule of op types `ops` does not list (but NO_FLOAT_MATH)
    wide: TensorType | None = None  # budget fallback: a unit's activations widen to this type, not float

    def rule(self, op_type: str) -> OpRule | None:
        rule = self.ops.get(op_type)
        return self.default if rule is None and op_type not in NO_FLOAT_MATH else rule


def _compute(weight: int, bias: int | None, output: bool, activations=(0,)) -> OpRule:
    return OpRule("compute", activations, weight, bias, output)


SHARED = OpRule("shared")
# ops that do no float arithmetic: a profile's `default` rule never applies to them
NO_FLOAT_MATH = frozenset({"Shape", "Size", "Constant", "ConstantOfShape", "Range", "NonZero", "EyeLike",
                           "QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "If", "Loop", "Scan",
                           "RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Bernoulli",
                           "Multinomial"})
ORT_CPU_ELEMENTWISE = OpRule("elementwise", activations=(0, 1), output=True, constants=False)

# ONNX Runtime CPU: DQ→Conv→Q becomes QLinearConv, DQ→MatMul (no Q) MatMulIntegerToFloat, DQ→Gemm
# QGemm, DQ→Add/Mul→Q QLinearAdd/QLinearMul. On AVX2 without VNNI its int8 depthwise kernel is
# slower than the float NCHWc one, and an Add/Mul with a constant costs more as QLinear op +
# requantization than in float, so neither is quantized (measured: docs/design-measurements.md).
ORT_CPU_OPS = {
    "Conv": OpRule("compute", (0,), 1, 2, output=True, depthwise=False),
    # activation x activation (attention's QK^T, P·V) stays float: measured on MiniLM, the four
    # extra QuantizeLinear per layer cost what the integer kernels save
    "MatMul": OpRule("compute", (0,), 1, None, output=False),
    "Gemm": _compute(1, 2, output=False),
    "Add": ORT_CPU_ELEMENTWISE,
    "Mul": ORT_CPU_ELEMENTWISE,
    "Concat": OpRule("elementwise", activations=(), output=True),  # () = every input: QLinearConcat
    "AveragePool": OpRule("elementwise", output=True),
    "GlobalAveragePool": OpRule("elementwise", output=True),
    "Sigmoid": OpRule("elementwise", output=True),  # QLinearSigmoid
    "LeakyRelu": OpRule("elementwise", output=True),
    "Gather": OpRule("embedding", activations=(), weight=0),
    **{op: SHARED for op in ("Reshape", "Transpose", "Squeeze", "Unsqueeze", "MaxPool", "Resize", "Split")},
}

# TensorRT (Model Optimizer / pytorch-quantization placement): symmetric INT8 everywhere, Q/DQ on
# the inputs of Conv/ConvTranspose/MatMul/Gemm and on the residual input of an Add whose other
# operand a Conv produces (TensorRT fuses that Add into the Conv as its int8 residual); TensorRT
# fuses outputs, activations and BN itself, so outputs get no Q (an output Q before a Relu or a
# Sigmoid would stop TensorRT's Conv+act fusion and cost a reformat).
TENSORRT_OPS = {
    "Conv": _compute(1, None, output=False),
    "ConvTranspose": _compute(1, None, output=False),
    "MatMul": OpRule("compute", (0,), 1, None, output=False, weight_required=False),
    "Gemm": _compute(1, None, output=False),
    "Add": OpRule("activation", activations=(0, 1), skip_fused=True),
    "Concat": OpRule("elementwise", activations=(), output=False),
    "AveragePool": OpRule("elementwise", output=False),
    "GlobalAveragePool": OpRule("elementwise", output=False),
    "Gather": OpRule("embedding", activations=(), weight=0),
    **{op: SHARED for op in ("MaxPool", "Reshape", "Transpose", "Squeeze", "Unsqueeze", "Resize", "Flatten")},
}

# OpenVINO (NNCF's placement for its CPU plugin): asymmetric UINT8 activations and symmetric
# INT8 per-channel weights (8 bits: the plugin's kernels handle u8 x s8 without the AVX2
# saturation); Q/DQ on the inputs of Conv/ConvTranspose/MatMul/Gemm with constant weights,
# pooling and Concat. OpenVINO's LPT propagates the FakeQuantize through shape ops itself.
# Residual Adds stay float: on MiniLM with the OpenVINO EP, quantizing them (NNCF's CNN preset
# does) dropped the embedding cosine far lower than ONNX Runtime's CPU EP did, so the budget,
# measured on ORT, could not catch it (measured: docs/design-measurements.md).
OPENVINO_OPS = {
    "Conv": _compute(1, None, output=False),
    "ConvTranspose": _compute(1, None, output=False),
    "MatMul": OpRule("compute", (0,), 1, None, output=False),
    "Gemm": _compute(1, None, output=False),
    "Concat": OpRule("elementwise", activations=(), output=False),
    "AveragePool": OpRule("elementwise", output=False),
    "GlobalAveragePool": OpRule("elementwise", output=False),
    "Gather": OpRule("embedding", activations=(), weight=0),
    **{op: SHARED for op in ("MaxPool", "Reshape", "Transpose", "Squeeze", "Unsqueeze", "Resize")},
}

# Qualcomm QNN HTP (its QDQ format, what qnn-onnx-converter and ONNX Runtime's QNN EP read): every
# float op runs quantized (the `default` rule covers what is not listed), weights INT8 per channel,
# INT32 biases at s_x·s_w with 8-bit activations; attention's activation x activation MatMuls too.
QNN_OPS = {
    "Conv": OpRule("compute", (0,), 1, 2, output=True, always=True),
    "ConvTranspose": OpRule("compute", (0,), 1, 2, output=True, always=True),
    "MatMul": OpRule("compute", (0,), 1, None, output=True, weight_required=False, always=True),
    "Gemm": OpRule("compute", (0,), 1, 2, output=True, always=True),
    "Gather": OpRule("embedding", activations=(), weight=0),
    "Resize": OpRule("elementwise", activations=(0,), output=True, always=True),  # roi/scales are parameters
    **{op: OpRule("shared", always=True) for op in ("Reshape", "Transpose", "Squeeze", "Unsqueeze", "Slice", "Split",
                                                    "MaxPool", "Flatten", "Identity", "DepthToSpace", "SpaceToDepth")},
}
QNN_DEFAULT = OpRule("elementwise", activations=(), output=True, always=True)

# Outputs whose range the op fixes: calibration (entropy especially) would clip the rare large
# probabilities of a Softmax that matter most; these take the op's own range instead.
FIXED_RANGES = {"Softmax": (0.0, 1.0), "Sigmoid": (0.0, 1.0), "HardSigmoid": (0.0, 1.0), "Tanh": (-1.0, 1.0)}

U8_ASYM = TensorType("uint8", symmetric=False)
S8_SYM = TensorType("int8", symmetric=True)
U16_ASYM = TensorType("uint16", symmetric=False)

PROFILES: dict[str, QuantProfile] = {
    "ort-cpu": QuantProfile(
        "ort-cpu", "ONNX Runtime CPU EP: QLinearConv / QLinearMatMul / MatMulIntegerToFloat / QGemm",
        activation=U8_ASYM, weight=S8_SYM, ops=ORT_CPU_OPS, fold_relu=True, latency_check=True, gemm_bias=True,
        notes=("weights: 8 bits with VNNI/AMX, 7 bits (reduce_range) on AVX2 without VNNI",)),
    "tensorrt": QuantProfile(
        "tensorrt", "TensorRT explicit quantization: symmetric INT8, zero points 0",
        activation=S8_SYM, weight=S8_SYM, ops=TENSORRT_OPS, fold_relu=False, bias_int32=False),
    "openvino": QuantProfile(
        "openvino", "OpenVINO CPU plugin (NNCF placement): UINT8 activations, INT8 weights",
        activation=U8_ASYM, weight=S8_SYM, ops=OPENVINO_OPS, fold_relu=False, bias_int32=False,
        latency_check=True, latency_provider="openvino"),  # timed only where the OpenVINO EP is installed
    "qnn": QuantProfile(
        "qnn", "Qualcomm QNN HTP (QDQ): every float op quantized, UINT8 activations (budget fallback: UINT16)",
        activation=U8_ASYM, weight=S8_SYM, ops=QNN_OPS, fold_relu=False, default=QNN_DEFAULT, wide=U16_ASYM,
        notes=("budget fallback: a unit's activations go to uint16 (opset 21, float bias), not to float",)),
}

# What exact and fast 8-bit kernels ONNX Runtime's CPU EP has, by instruction set.
ORT_CPU_WEIGHTS = {
    "amx": S8_SYM,
    "vnni": S8_SYM,
    "avx2": TensorType("int8", symmetric=True, bits=7),  # vpmaddubsw saturates with 8-bit weights
    "other": TensorType("uint8", symmetric=True),  # SSE / non-x86: the u8×u8 kernel is exact
}


def cpu_int8_class(flags: frozenset[str]) -> str:
    """'amx', 'vnni', 'avx2' or 'other' from /proc/cpuinfo flags."""
    if {"amx_int8", "amx_tile"} <= flags:
        return "amx"
    if flags & {"avx512_vnni", "avx_vnni", "avx_vnni_int8"}:
        return "vnni"
    if "avx2" in flags:
        return "avx2"
    return "other"


def get_profile(name: str, flags: frozenset[str] | None = None) -> QuantProfile:
    """The named profile; `ort-cpu` takes its weight type from this CPU's int8 instructions."""
    if name not in PROFILES:
        raise ValueError(f"unknown profile '{name}' (known: {', '.join(PROFILES)})")
    profile = PROFILES[name]
    if name == "ort-cpu":
        cls = cpu_int8_class(cpu_flags() if flags is None else flags)
        profile = replace(profile, weight=ORT_CPU_WEIGHTS[cls], notes=(f"cpu int8 class: {cls}",))
    return profile
