"""Static INT8 quantization by Q/DQ insertion: profiles, plan, qdq, calibration/, budget search."""

from graphopt.passes.quantize.quantize import Quantize

__all__ = ["Quantize"]
