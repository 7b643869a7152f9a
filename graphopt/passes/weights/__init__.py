"""Weight-only block-wise quantization (INT4/INT8): options, blocks, awq, gptq, stats, layers,
rewrite, build, budget, speed, and the pass (quantize_weights)."""

from graphopt.passes.weights.options import QuantizeWeightsOptions
from graphopt.passes.weights.quantize_weights import QuantizeWeights

__all__ = ["QuantizeWeights", "QuantizeWeightsOptions"]
