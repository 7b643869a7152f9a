"""`--save-inputs` / `--save-outputs`: the run's verification data in Polygraphy's JSON, so the
check graphopt made can be replayed with Polygraphy on another machine or runtime:

    graphopt optimize in.onnx out.onnx --recipe int8 --calib data/ \
        --save-inputs feeds.json --save-outputs reference.json
    polygraphy run out.onnx --trt --load-inputs feeds.json --load-outputs reference.json \
        --atol 1e-2 --rtol 1e-2

- inputs: the feeds every pass was verified on (the held-out part of --calib, or --data, or the
  synthesized ones), a JSON list of feeds, each array {"array": base64 of its .npy bytes,
  "polygraphy_class": "ndarray"}; graphopt reads the same file back (`--data feeds.json`);
- outputs: the *input* model's outputs on those feeds (ONNX Runtime CPU), the reference every
  verification compared against, as a Polygraphy `RunResults` with one runner, REFERENCE_RUNNER,
  one iteration per feed. Replaying compares a runtime's outputs of the optimized model with the
  original's, which is what graphopt's budget judged (Polygraphy's tolerances are elementwise; a
  lossy model needs --atol/--rtol or --check-error-stat set to what the budget allowed).
"""

from __future__ import annotations

import base64
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

Feed = dict[str, np.ndarray]
REFERENCE_RUNNER = "graphopt-reference"  # the input model on ONNX Runtime's CPU EP


def _array(value: np.ndarray) -> dict:
    buffer = io.BytesIO()
    np.save(buffer, np.asarray(value), allow_pickle=False)
    return {"array": base64.b64encode(buffer.getvalue()).decode(), "polygraphy_class": "ndarray"}


def inputs_json(feeds: list[Feed]) -> str:
    """Polygraphy's input file (`polygraphy run --load-inputs`): a list of feeds."""
    return json.dumps([{name: _array(value) for name, value in feed.items()} for feed in feeds], indent=1)


def outputs_json(outputs: list[Feed], runner: str = REFERENCE_RUNNER) -> str:
    """Polygraphy's RunResults (`polygraphy run --load-outputs`): one runner, an iteration per feed."""
    iterations = [{"outputs": {name: _array(value) for name, value in out.items()}, "runtime": None,
                   "runner_name": runner, "polygraphy_class": "IterationResult"} for out in outputs]
    return json.dumps({"lst": [[runner, iterations]], "polygraphy_class": "RunResults"}, indent=1)


@dataclass(frozen=True)
class ReplayPaths:
    """Where `--save-inputs` and `--save-outputs` write (None: not asked)."""

    inputs: str | os.PathLike | None = None
    outputs: str | os.PathLike | None = None

    def writes(self) -> list[tuple[str, Path]]:
        """(flag, path) of each file asked for, for graphopt.outputs' write plan."""
        return [(flag, Path(p)) for flag, p in (("--save-inputs", self.inputs), ("--save-outputs", self.outputs))
                if p is not None]

    def texts(self, feeds: list[Feed], reference: list[Feed] | None) -> dict[Path, str]:
        """{path: contents} for the files asked for; `reference`: the input model's outputs on `feeds`."""
        texts = {}
        if self.inputs is not None:
            texts[Path(self.inputs)] = inputs_json(feeds)
        if self.outputs is not None:
            texts[Path(self.outputs)] = outputs_json(reference or [])
        return texts
