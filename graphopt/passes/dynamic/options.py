"""The `quantize-dynamic` pass's options."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from graphopt.exclusion import check_pattern

OPS = frozenset({"MatMul", "Gemm", "Conv"})


@dataclass(frozen=True)
class QuantizeDynamicOptions:
    per_channel: bool = True  # one weight scale per output channel (else one per tensor)
    form: Literal["auto", "standard", "ort"] = "auto"  # auto: ort when the model already imports com.microsoft
    ops: tuple[str, ...] = ("MatMul", "Gemm")  # op types to quantize; "Conv" adds ConvInteger
    weight_bits: int = 0  # 0: 7 on AVX2 without VNNI (its u8xs8 kernel saturates at 8), else 8
    exclude_nodes: tuple[str, ...] = ()
    exclude_ops: tuple[str, ...] = ()
    exclude_regex: str = ""
    smooth: bool = True  # SmoothQuant-like channel scaling on the units whose estimated SQNR it raises
    budget_share: float = 1.0
    fallback: bool = True  # put the most sensitive nodes back to float until the budget holds
    max_fallback: int = 64  # at most this many nodes go back to float
    speed_check: bool = True  # keep the model float when int8 is not faster here
    speed_runs: int = 10
    speed_margin: float = 0.03  # int8 must be at least this much faster than float to be kept
    threads: int = 0  # ORT intra-op threads for the speed check (0: ORT's default)

    def validate(self) -> None:
        unknown = set(self.ops) - OPS
        if unknown or not self.ops:
            raise ValueError(f"ops must name some of {sorted(OPS)}, got {list(self.ops)}")
        if self.form not in ("auto", "standard", "ort"):
            raise ValueError(f"form must be auto, standard or ort, got {self.form!r}")
        if self.weight_bits not in (0, 7, 8):
            raise ValueError(f"weight_bits must be 0 (this CPU's), 7 or 8, got {self.weight_bits}")
        if not 0 < self.budget_share <= 1:
            raise ValueError(f"budget_share must be in (0, 1], got {self.budget_share}")
        if self.max_fallback < 0 or self.threads < 0:
            raise ValueError("max_fallback and threads must be >= 0")
        if self.speed_runs < 1 or not 0 <= self.speed_margin < 1:
            raise ValueError("speed_runs must be >= 1 and speed_margin in [0, 1)")
        check_pattern(self.exclude_regex)


__all__ = ["OPS", "QuantizeDynamicOptions"]
