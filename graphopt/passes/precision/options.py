"""The `float16` pass's options, validated when parsed."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from graphopt.exclusion import check_pattern

LowName = Literal["float16", "bfloat16"]


@dataclass(frozen=True)
class Float16Options:
    dtype: LowName = "float16"  # the low-precision type weights and compute move to
    keep_io_types: bool = True  # graph inputs and outputs stay float32 (Casts at the boundary)
    range_margin: float = 0.5  # an op whose measured |x| exceeds this fraction of the type's max stays float32
    fallback: bool = True  # ops back to float32, most error-adding first, until the budget holds
    max_fallback: int = 64  # at most this many ops go back to float32 for the budget
    budget_share: float = 1.0
    exclude_nodes: tuple[str, ...] = ()
    exclude_ops: tuple[str, ...] = ()
    exclude_regex: str = ""

    def validate(self) -> None:
        if self.dtype not in ("float16", "bfloat16"):
            raise ValueError(f"dtype must be float16 or bfloat16, got {self.dtype!r}")
        if not 0 < self.range_margin <= 1:
            raise ValueError(f"range_margin must be in (0, 1], got {self.range_margin}")
        if not 0 < self.budget_share <= 1:
            raise ValueError(f"budget_share must be in (0, 1], got {self.budget_share}")
        if self.max_fallback < 0:
            raise ValueError(f"max_fallback must be >= 0, got {self.max_fallback}")
        check_pattern(self.exclude_regex)


__all__ = ["Float16Options", "LowName"]
