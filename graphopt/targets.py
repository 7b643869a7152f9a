"""Deployment targets: what each runtime parses, and how the lossless recipe adapts to it.

A profile is data: the op domains the runtime accepts, individual ops it accepts from other
domains, the default-domain opset range it parses, and the passes the target adds to or drops
from the lossless recipe. Sources: TensorRT 11.x's ONNX opset guide (opset 9..25, standard ops
plus TensorRT plugins); OpenVINO's ONNX frontend (standard ops, plus the com.microsoft ops it
has translators for); ONNX Runtime (standard ops plus its com.microsoft contrib ops).
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx_ir as ir

from graphopt.errors import InputError
from graphopt.pass_api import default_opset

STANDARD = frozenset({"", "ai.onnx", "ai.onnx.ml"})
OPENVINO_MS_OPS = frozenset({
    "Attention", "BiasAdd", "BiasGelu", "DequantizeLinear", "DynamicQuantizeMatMul",
    "EmbedLayerNormalization", "FastGelu", "FusedConv", "FusedGemm", "FusedMatMul", "GatherND",
    "Gelu", "GroupQueryAttention", "MatMulIntegerToFloat", "MatMulNBits", "MultiHeadAttention", "Pad",
    "QLinearAdd", "QLinearConcat", "QLinearConv", "QLinearLeakyRelu", "QLinearMul", "QLinearSigmoid",
    "QLinearSoftmax", "QLinearWhere", "QuantizeLinear", "QuickGelu", "Range", "RotaryEmbedding",
    "SimplifiedLayerNormalization", "SkipLayerNormalization", "SkipSimplifiedLayerNormalization", "Trilu",
})


@dataclass(frozen=True)
class TargetProfile:
    name: str
    domains: frozenset[str]
    extra_ops: frozenset[tuple[str, str]] = frozenset()
    min_opset: int = 1
    max_opset: int | None = None  # None: whatever the installed onnx defines
    add_passes: tuple[str, ...] = ()
    drop_passes: tuple[str, ...] = ()
    pass_options: tuple[tuple[str, str], ...] = ()  # (pass, "key=value") set on a recipe's pass unless given


TARGETS = {
    "portable": TargetProfile("portable", STANDARD),
    "ort": TargetProfile("ort", STANDARD | {"com.microsoft"}, add_passes=("ort-fusions",),
                         pass_options=(("quantize-dynamic", "form=ort"), ("quantize-weights", "form=matmulnbits"))),
    # TensorRT's int4 is weight-only for GEMM weights: signed INT4 without zero points, blocks of
    # 64 or 128 along the reduction axis (tests/passes/weights/test_decoder_int4.py states the rules)
    "tensorrt": TargetProfile("tensorrt", frozenset({"", "ai.onnx", "trt"}), min_opset=9, max_opset=25,
                              drop_passes=("matmul-to-gemm",),
                              pass_options=(("quantize-weights", "symmetric=true"), ("quantize-weights", "block_size=64"),
                                            ("quantize-weights", "embeddings=false"))),
    # OpenVINO (onnxruntime-openvino 1.24) computes a blocked DequantizeLinear feeding a Gather
    # wrongly (rows off by 0.49 for INT4, docs/decoder-int4.md): embedding tables stay float there
    "openvino": TargetProfile("openvino", STANDARD | {"org.openvinotoolkit"},
                              extra_ops=frozenset(("com.microsoft", op) for op in OPENVINO_MS_OPS),
                              pass_options=(("quantize-weights", "embeddings=false"),)),
}


def get_target(name: str) -> TargetProfile:
    if name not in TARGETS:
        raise InputError(f"--target: unknown target '{name}' (known: {', '.join(TARGETS)})")
    return TARGETS[name]


def adapt_recipe(items: tuple[str, ...], target: TargetProfile) -> tuple[str, ...]:
    """The recipe's pass specs with the target's drops removed, its pass options set and its
    additions appended."""
    kept = tuple(with_target_options(item, target) for item in items if item.split(":", 1)[0] not in target.drop_passes)
    return kept + tuple(p for p in target.add_passes if p not in kept)


def with_target_options(item: str, target: TargetProfile) -> str:
    """One pass spec with the options the target sets for that pass (given options win)."""
    name, _, options = item.partition(":")
    given = {pair.partition("=")[0].strip() for pair in options.split(";")}
    extra = [o for p, o in target.pass_options if p == name and o.partition("=")[0] not in given]
    return f"{name}:{';'.join(filter(None, [options, *extra]))}" if extra else item


def target_problems(model: ir.Model, target: TargetProfile) -> list[str]:
    """Everything in the model the target runtime cannot take, one line each."""
    import onnx

    problems = []
    opset = default_opset(model)
    max_opset = target.max_opset or onnx.defs.onnx_opset_version()
    if opset is not None and not target.min_opset <= opset <= max_opset:
        problems.append(f"default-domain opset {opset} outside {target.name}'s {target.min_opset}..{max_opset}")
    unsupported: dict[tuple[str, str], int] = {}
    for node in ir.traversal.RecursiveGraphIterator(model.graph):
        key = (node.domain, node.op_type)
        if node.domain not in target.domains and key not in target.extra_ops:
            unsupported[key] = unsupported.get(key, 0) + 1
    for (domain, op), count in sorted(unsupported.items()):
        problems.append(f"{domain}::{op} x{count} is not an op {target.name} parses"
                        + (" (needs a plugin or custom-op library)" if domain != "com.microsoft" else ""))
    return problems
