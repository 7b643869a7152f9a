"""Dynamic INT8: weights int8 per channel, activations quantized at run time (quantize-dynamic)."""

from graphopt.passes.dynamic.quantize_dynamic import QuantizeDynamic

__all__ = ["QuantizeDynamic"]
