"""Deployment targets: recipes adapt to them, and inspect flags what a runtime cannot parse."""

from __future__ import annotations

import json

import onnx
import onnx_ir as ir
import pytest

import models
from conftest import parse
from graphopt import optimize
from graphopt.cli import main
from graphopt.errors import InputError
from graphopt.recipes import passes_from_recipe
from graphopt.targets import get_target, target_problems

CONTRIB = """
<ir_version: 9, opset_import: ["" : 17, "com.microsoft" : 1]>
g (float[2, 8] x) => (float[2, 8] y) {
    y = com.microsoft.FastGelu(x)
}
"""


def test_recipe_adapts_to_target():
    portable = [p.name for p in passes_from_recipe("lossless", "portable")]
    ort = [p.name for p in passes_from_recipe("lossless", "ort")]
    assert "ort-fusions" not in portable and ort[-1] == "ort-fusions"
    assert "matmul-to-gemm" not in [p.name for p in passes_from_recipe("lossless", "tensorrt")]


def test_unknown_target_is_input_error():
    with pytest.raises(InputError, match="unknown target 'tpu'"):
        get_target("tpu")


@pytest.mark.parametrize("target, flagged", [("portable", True), ("tensorrt", True), ("openvino", False),
                                             ("ort", False)])
def test_contrib_ops_flagged_per_target(target, flagged):
    model = ir.serde.deserialize_model(parse(CONTRIB))
    problems = target_problems(model, get_target(target))
    assert bool(problems) == flagged
    if flagged:
        assert "com.microsoft::FastGelu x1" in problems[0]


def test_opset_range_checked():
    model = ir.serde.deserialize_model(models.mlp())
    model.opset_imports[""] = 26
    assert any("opset 26 outside tensorrt's 9..25" in p for p in target_problems(model, get_target("tensorrt")))


def test_inspect_target_exit_code(tmp_path, capsys):
    path = tmp_path / "contrib.onnx"
    onnx.save(parse(CONTRIB), path)
    assert main(["inspect", str(path), "--target", "tensorrt", "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["target"]["problems"]
    assert main(["inspect", str(path), "--target", "ort"]) == 0


def test_ort_target_emits_contrib_fusions_and_report_flags_nothing():
    result = optimize(models.transformer_block(), target="ort")
    records = {r["name"]: r for r in result.report["passes"]}
    assert records["ort-fusions"]["applied"], records["ort-fusions"]["error"]
    domains = {n.domain for n in result.model.graph.node}
    assert "com.microsoft" in domains
    assert result.report["target"] == {"name": "ort", "problems": []}
    portable = optimize(models.transformer_block())
    assert {n.domain for n in portable.model.graph.node} <= {"", "ai.onnx"}
