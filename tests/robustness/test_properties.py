"""Property-based tests: random valid graphs (robustness.graphs) through every registered pass and
every recipe, with the sweep's invariants (valid file, ORT runs it, same I/O signature with
symbolic dims kept, numerics within the pass's tolerance class or the budget, no undeclared
growth, no stray files).

Examples per pass: GRAPHOPT_EXAMPLES (default 10, derandomized); see conftest.py.
"""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path

import numpy as np
import onnx
import pytest
from hypothesis import given

from graphopt.errors import InputError
from graphopt.options import build_options
from graphopt.registry import registered_passes
from robustness.cases import SweepCase
from robustness.graphs import SYMBOLIC, feed_for, models
from robustness.sweep import prepare, sweep_one, sweep_runs
from robustness.test_sweep import _known

# Options that keep a pass off small layers (size thresholds, timing gates, first/last layer
# guards): set so that the passes act on generated graphs, whose layers are small.
SMALL_GRAPH_OVERRIDES = {"speed_check": False, "skip_first_last": False}


def small_graph_spec(name: str) -> str:
    """`name` with every int `min_*` option at its smallest valid value (0 or 1) and the
    overrides above where the pass has them; lossy passes then consider tiny layers too."""
    cls = registered_passes()[name]
    values = {f.name: SMALL_GRAPH_OVERRIDES[f.name] for f in dataclasses.fields(cls.Options)
              if f.name in SMALL_GRAPH_OVERRIDES}
    for f in dataclasses.fields(cls.Options):
        if f.name.startswith("min_") and type(f.default) is int:
            for candidate in (0, 1):
                try:
                    build_options(name, cls.Options, {**values, f.name: candidate})
                except InputError:
                    continue
                values[f.name] = candidate
                break
    return name + (":" + ";".join(f"{k}={str(v).lower()}" for k, v in values.items()) if values else "")


RUNS = [(kind, small_graph_spec(name) if kind == "pass" else name) for kind, name in sweep_runs()]


def _case(model: onnx.ModelProto) -> SweepCase:
    def write(directory: Path) -> Path:
        path = directory / "model.onnx"
        onnx.save(model, path)
        return path

    return SweepCase("generated", write, lambda: [feed_for(model, 0), feed_for(model, 1)])


def check_generated(model: onnx.ModelProto, kind: str, name: str) -> list[str]:
    with tempfile.TemporaryDirectory(prefix="graphopt-prop-") as root:
        prepared = prepare(_case(model), Path(root) / "in")
        assert not isinstance(prepared, str), f"generated model not runnable: {prepared}"
        problems, _ = sweep_one(prepared, kind, name, Path(root) / "run")
    return problems


@pytest.mark.parametrize("run", RUNS, ids=[f"{kind}:{name.split(':')[0]}" for kind, name in RUNS])
@given(model=models())
def test_generated_graphs_keep_invariants(run, model):
    kind, name = run
    problems = check_generated(model, kind, name)
    known = _known("generated", name.split(":")[0])
    if problems and known:
        pytest.xfail(f"{known}: {problems[0]}")
    assert not problems, f"{kind} {name}:\n" + "\n".join(problems) + "\n" + onnx.printer.to_text(model.graph)


@given(model=models())
def test_generator_draws_valid_runnable_models(model):
    """The generator's own contract: checker-valid, ORT-runnable, symbolic batch kept."""
    with tempfile.TemporaryDirectory(prefix="graphopt-gen-") as root:
        prepared = prepare(_case(model), Path(root))
    assert not isinstance(prepared, str), prepared
    assert all(np.isfinite(a).all() for feed in prepared.reference for a in feed if a.dtype.kind == "f")
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param in ("", SYMBOLIC)
