"""Models with external data: optimized and verified in place, weights neither copied nor lost."""

from __future__ import annotations

import os

import numpy as np
import onnx
import onnx_ir as ir

import models
from conftest import file_digest, run_ort
from graphopt import optimize
from graphopt.runtime import create_session, needs_file, run_feeds


def test_lossless_recipe_applies_and_verifies_on_external_data(tmp_path):
    src = models.large_mlp(tmp_path / "in" / "big.onnx", layers=4, width=256, redundant=True)
    digests = {p.name: file_digest(p) for p in src.parent.iterdir()}
    out = tmp_path / "out" / "big.opt.onnx"
    result = optimize(src, out)
    records = {r["name"]: r for r in result.report["passes"]}
    cleanup = result.report["passes"][2]
    assert cleanup["name"] == "cleanup" and cleanup["applied"], cleanup["error"]
    assert cleanup["stats"]["identities_removed"] == 4 and cleanup["stats"]["initializers_removed"] == 2
    assert cleanup["verify"]["max_ulps"] == 0
    assert not any(r["rolled_back"] for r in records.values())
    assert sorted(os.listdir(out.parent)) == ["big.opt.onnx", "big.opt.onnx.data"]
    assert {p.name: file_digest(p) for p in src.parent.iterdir()} == digests
    feed = {"x": np.random.default_rng(1).standard_normal((1, 256)).astype(np.float32)}
    np.testing.assert_array_equal(run_ort(out, feed)[0], run_ort(src, feed)[0])
    onnx.checker.check_model(str(out), full_check=True)


def test_candidate_sessions_read_external_weights_in_place(tmp_path):
    src = models.large_mlp(tmp_path / "m.onnx", layers=2, width=128)
    model = ir.load(src)
    assert not needs_file(model)  # graph goes as bytes, weights stay in m.data
    feed = {"x": np.ones((1, 128), np.float32)}
    got = run_feeds(create_session(model), [feed])[0]["y"]
    np.testing.assert_array_equal(got, run_ort(src, feed)[0])
    assert sorted(os.listdir(tmp_path)) == ["m.data", "m.onnx"]
