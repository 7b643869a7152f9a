"""Candidates of one `float16` run: a clone of the typed input with every candidate op except the
`kept` ones converted (casts.py). Converted constants are computed once and shared by every
candidate (never written after); the input model is never modified."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx_ir as ir

from graphopt.pass_api import NameAuthority
from graphopt.passes.precision.casts import Rewritten, convert
from graphopt.passes.precision.lowtypes import LowType
from graphopt.passes.precision.slots import Slots


@dataclass
class Builder:
    work: ir.Model  # the typed clone of the input (never modified)
    candidates: dict[str, Slots]  # ops that may convert (the range and underflow rules applied)
    low: LowType
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    last: Rewritten | None = None  # what the last build wrote

    def chosen(self, kept: frozenset[str]) -> dict[str, Slots]:
        return {key: slots for key, slots in self.candidates.items() if key not in kept}

    def __call__(self, kept: frozenset[str] = frozenset(), keep_io_types: bool = True) -> ir.Model:
        """A candidate with the ops in `kept` left float32. The budget search measures candidates
        with float32 inputs and outputs (the run's feeds are float32); only the result may differ."""
        candidate = self.work.clone()
        self.last = convert(candidate, self.low, self.chosen(kept), keep_io_types, self.arrays,
                            NameAuthority(candidate).fresh)
        return candidate


__all__ = ["Builder"]
