"""Float formats: weights and compute in float16 or bfloat16 (float16)."""

from graphopt.passes.precision.float16 import Float16

__all__ = ["Float16"]
