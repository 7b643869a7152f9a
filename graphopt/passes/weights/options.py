"""The `quantize-weights` pass's options.

`form` is the output form, which depends on the runtime the model is for; a pass does not see
the run's `--target`, so the `int4` recipe sets it per target (graphopt/recipes.py): `matmulnbits`
for `ort` (com.microsoft MatMulNBits / GatherBlockQuantized), `dq` elsewhere (standard
DequantizeLinear with `block_size`, opset 21).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from graphopt.exclusion import check_pattern

Algorithm = Literal["auto", "rtn", "awq", "gptq"]
Form = Literal["matmulnbits", "dq"]
ACCURACY_LEVELS = (-1, 0, 1, 2, 3, 4)


@dataclass(frozen=True)
class QuantizeWeightsOptions:
    bits: int = 4  # 4 or 8
    block_size: int = 32  # along the reduction axis (K of MatMul/Gemm, the row of an embedding table)
    symmetric: bool = False  # False: per-block zero points
    algorithm: Algorithm = "auto"  # auto: gptq with calibration data (--calib), else rtn; awq / gptq need it
    form: Form = "dq"
    scale_search: bool = True  # per block, the clipping ratio with the smallest squared error
    embeddings: bool = True  # also Gather tables (GatherBlockQuantized / DequantizeLinear + Gather)
    min_elements: int = 4096  # smaller weights stay float (their scales would cost more than they save)
    accuracy_level: int = -1  # MatMulNBits compute type; -1: 0 or 4, whichever is faster here and fits
    raise_opset: bool = True  # dq form: raise the opset to 21 if lower (else the pass does not apply)
    budget_share: float = 1.0
    fallback: bool = True  # sensitive layers to int8, then float, until the budget holds
    rank: Literal["measured", "proxy"] = "measured"  # fallback order: one measurement per layer, or free proxy
    rank_measurements: int = 48  # rank=measured with more layers: contiguous parts, one measurement each
    gptq_damping: float = 0.01  # fraction of mean(diag H) added to H's diagonal
    stats_memory: float = 0.25  # input statistics held at once, x the model's weight bytes (>= 256 MiB)
    speed_runs: int = 20  # accuracy_level=-1: runs per candidate
    speed_margin: float = 0.03  # accuracy level 4 must be this much faster than 0 to be kept
    exclude_nodes: tuple[str, ...] = ()
    exclude_ops: tuple[str, ...] = ()
    exclude_regex: str = ""

    def validate(self) -> None:
        if self.bits not in (4, 8):
            raise ValueError(f"bits must be 4 or 8, got {self.bits}")
        size = self.block_size
        if not 16 <= size <= 256 or size & (size - 1):
            raise ValueError(f"block_size must be a power of two in [16, 256], got {size}")
        if self.accuracy_level not in ACCURACY_LEVELS:
            raise ValueError(f"accuracy_level must be one of {ACCURACY_LEVELS}, got {self.accuracy_level}")
        if not 0 < self.budget_share <= 1:
            raise ValueError(f"budget_share must be in (0, 1], got {self.budget_share}")
        if self.min_elements < 0 or self.speed_runs < 1 or not 0 <= self.speed_margin < 1:
            raise ValueError("min_elements must be >= 0, speed_runs >= 1 and speed_margin in [0, 1)")
        if self.rank_measurements < 1:
            raise ValueError(f"rank_measurements must be >= 1, got {self.rank_measurements}")
        if not 0 < self.stats_memory <= 16:
            raise ValueError(f"stats_memory must be in (0, 16], got {self.stats_memory}")
        if not 0 < self.gptq_damping < 1:
            raise ValueError(f"gptq_damping must be in (0, 1), got {self.gptq_damping}")
        check_pattern(self.exclude_regex)

    @property
    def data_aware(self) -> bool:
        return self.algorithm in ("awq", "gptq")


__all__ = ["Algorithm", "Form", "QuantizeWeightsOptions"]
