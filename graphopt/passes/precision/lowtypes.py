"""The two low-precision float types and their limits.

float16: 1 sign, 5 exponent, 10 mantissa bits: max 65504, smallest normal 2^-14 ≈ 6.1e-5,
smallest subnormal 2^-24 ≈ 6.0e-8; a float32 x rounds to the nearest of them (|x| > 65504
becomes ±inf, |x| < 2^-25 becomes 0). bfloat16: float32's 8 exponent bits with 7 mantissa bits:
float32's range (max ≈ 3.39e38, smallest normal ≈ 1.2e-38), a coarser step (relative 2^-8).
"""

from __future__ import annotations

from dataclasses import dataclass

import ml_dtypes
import numpy as np
import onnx_ir as ir


@dataclass(frozen=True)
class LowType:
    name: str  # "float16" | "bfloat16"
    dtype: ir.DataType
    numpy: type
    max: float  # largest finite value
    tiny: float  # smallest normal value
    smallest: float  # smallest subnormal value

    def convert(self, array: np.ndarray) -> np.ndarray:
        """`array` rounded to this type (round to nearest even)."""
        return np.asarray(array).astype(np.float32).astype(self.numpy)

    def flushed(self, array: np.ndarray) -> np.ndarray:
        """Mask of the finite nonzero elements that round to 0 in this type."""
        a = np.asarray(array, np.float32)
        return (a != 0) & np.isfinite(a) & (self.convert(a).astype(np.float32) == 0)


def _make(name: str, dtype: ir.DataType, numpy_type: type) -> LowType:
    info = ml_dtypes.finfo(numpy_type)
    return LowType(name, dtype, numpy_type, float(info.max), float(info.tiny), float(info.smallest_subnormal))


LOW_TYPES = {
    "float16": _make("float16", ir.DataType.FLOAT16, np.float16),
    "bfloat16": _make("bfloat16", ir.DataType.BFLOAT16, ml_dtypes.bfloat16),
}
LOW_DTYPES = frozenset(t.dtype for t in LOW_TYPES.values())


def low_type(name: str) -> LowType:
    return LOW_TYPES[name]


__all__ = ["LOW_DTYPES", "LOW_TYPES", "LowType", "low_type"]
