"""The `cluster` pass's options."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from graphopt.exclusion import check_pattern

Granularity = Literal["tensor", "channel"]
Method = Literal["dp", "kmeans"]
MIN_BITS, MAX_BITS = 2, 8


@dataclass(frozen=True)
class ClusterOptions:
    bits: int = 4  # palette of 2^bits entries when nothing is measured (no held-out feeds, or search=false)
    search: bool = True  # with held-out feeds: the fewest bits per layer in [min_bits, max_bits] that fit the budget
    min_bits: int = 2  # the search's lowest palette (2^min_bits entries)
    max_bits: int = 8  # the search's highest palette; a layer that needs more stays float
    per_layer: bool = True  # search: after the smallest global bits, lower single layers further
    granularity: Granularity = "tensor"  # one palette per weight, or one per output channel
    method: Method = "dp"  # dp: exact 1-D optimum (grouped when large) + Lloyd; kmeans: linear init + Lloyd
    keep_zero: bool = False  # exact zeros keep an exact 0.0 entry (for pruned weights)
    iterations: int = 50  # Lloyd iterations at most
    embeddings: bool = True  # also Gather tables (data of a Gather on a constant table)
    min_elements: int = 4096  # smaller weights stay float (their palette would cost more than it saves)
    budget_share: float = 1.0
    check_folding: bool = True  # stats: does ONNX Runtime (ORT_ENABLE_BASIC) fold every expansion away?
    deflate: bool = True  # stats: zlib-deflated initializer bytes before and after
    exclude_nodes: tuple[str, ...] = ()
    exclude_ops: tuple[str, ...] = ()
    exclude_regex: str = ""

    def validate(self) -> None:
        if self.granularity not in ("tensor", "channel"):
            raise ValueError(f"granularity must be tensor or channel, got {self.granularity!r}")
        if self.method not in ("dp", "kmeans"):
            raise ValueError(f"method must be dp or kmeans, got {self.method!r}")
        for name in ("bits", "min_bits", "max_bits"):
            value = getattr(self, name)
            if not MIN_BITS <= value <= MAX_BITS:
                raise ValueError(f"{name} must be in [{MIN_BITS}, {MAX_BITS}], got {value}")
        if self.min_bits > self.max_bits:
            raise ValueError(f"min_bits ({self.min_bits}) must not exceed max_bits ({self.max_bits})")
        if not 0 < self.budget_share <= 1:
            raise ValueError(f"budget_share must be in (0, 1], got {self.budget_share}")
        if self.min_elements < 0:
            raise ValueError(f"min_elements must be >= 0, got {self.min_elements}")
        if not 1 <= self.iterations <= 10_000:
            raise ValueError(f"iterations must be in [1, 10000], got {self.iterations}")
        check_pattern(self.exclude_regex)


__all__ = ["ClusterOptions", "Granularity", "Method"]
