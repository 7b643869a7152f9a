"""The default recipe on the real zoo graphs shipped with onnx: outputs match the expected files."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from conftest import run_ort
from graphopt import optimize
from models.zoo import ATOL, RTOL, light_model_paths, load_case

PATHS = light_model_paths()


def test_zoo_is_present():
    assert len(PATHS) >= 9


@pytest.mark.parametrize("path", PATHS, ids=[p.stem for p in PATHS])
def test_lossless_recipe_matches_expected_outputs(path, tmp_path):
    case = load_case(path)
    out = tmp_path / "opt.onnx"
    result = optimize(path, out, data=[case.feed])
    summary = result.report["summary"]
    assert summary["passes_rolled_back"] == []
    assert summary["nodes"][1] < summary["nodes"][0]
    onnx.checker.check_model(str(out), full_check=True)
    for got, expected in zip(run_ort(out, case.feed), case.expected):
        np.testing.assert_allclose(got, expected, rtol=RTOL, atol=ATOL)
