"""Every report graphopt writes validates against the documented schema (docs/report.schema.json)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest

import models
from graphopt import optimize

jsonschema = pytest.importorskip("jsonschema")
SCHEMA = json.loads((Path(__file__).resolve().parents[2] / "docs" / "report.schema.json").read_text())


def _validate(report: dict) -> None:
    jsonschema.Draft202012Validator(SCHEMA).validate(json.loads(json.dumps(report)))


def test_the_schema_is_a_valid_json_schema():
    jsonschema.Draft202012Validator.check_schema(SCHEMA)


@pytest.mark.parametrize("kwargs", [
    {},
    {"bench": True, "bench_runs": 3},
    {"verify": "end"},
    {"verify": "off"},
    {"passes": "cleanup,prune:sparsity=0.99", "calib": "synthetic"},  # rolled back by the budget
    {"recipe": "int8", "calib": "synthetic"},
    {"recipe": "auto", "calib": "synthetic", "goal": "size", "bench_runs": 3},
], ids=["lossless", "bench", "verify-end", "verify-off", "rolled-back", "int8", "auto"])
def test_reports_validate(kwargs):
    report = optimize(str(models.default_model_path()), **kwargs).report
    assert report["schema_version"] == 1
    _validate(report)


def test_reports_with_real_calibration_data_validate(tmp_path):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "c.npz", x=rng.standard_normal((8, 64)).astype(np.float32))
    report = optimize(models.mlp(), passes="prune:mode=budget", calib=str(tmp_path / "c.npz")).report
    assert report["data"]["search"] == "calibration"
    _validate(report)


def test_the_schema_rejects_what_it_documents_as_wrong():
    report = optimize(str(models.default_model_path())).report
    for path, value in [(("schema_version",), 2), (("passes", 0, "applied"), "yes"),
                        (("summary", "nodes"), [1]), (("data", "verify"), "maybe")]:
        bad = copy.deepcopy(report)
        node = bad
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value
        with pytest.raises(jsonschema.ValidationError):
            _validate(bad)
