"""The models the benchmark tools run on, each with one realistic feed.

Synthetic builders and the onnx wheel's zoo graphs always; the real models (MiniLM,
PP-OCR det/rec/cls) when the `models` extra is installed.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import models  # noqa: E402
from graphopt.data import synthesize_feeds  # noqa: E402
from graphopt.io import load_path  # noqa: E402
from models.zoo import LIGHT_DIR, load_case  # noqa: E402


@dataclass(frozen=True)
class ModelCase:
    name: str
    path: Path
    feed: dict[str, np.ndarray]
    description: str


def _synthetic(tmp: Path, name: str, proto: onnx.ModelProto, description: str) -> ModelCase:
    path = tmp / f"{name}.onnx"
    onnx.save(proto, path)
    return ModelCase(name, path, synthesize_feeds(load_path(path), 1, seed=0)[0], description)


def _zoo(name: str) -> ModelCase:
    case = load_case(LIGHT_DIR / f"light_{name}.onnx")
    return ModelCase(name, case.path, case.feed, "onnx wheel zoo graph")


def _real(tmp: Path) -> list[ModelCase]:
    try:
        from models import real
    except ImportError:
        return []
    cases = []
    try:
        feed = real.minilm_tokenize(real.MINILM_SENTENCES[48:49])
        for exporter in ("dynamo", "classic"):
            path = real.minilm_onnx(tmp / f"minilm-{exporter}.onnx", exporter=exporter)
            name = "minilm" if exporter == "dynamo" else "minilm-classic"
            cases.append(ModelCase(name, path, feed, f"all-MiniLM-L6-v2, torch 2.13 {exporter} export, 1 sentence"))
    except Exception as exc:  # noqa: BLE001
        print(f"note: MiniLM unavailable: {exc}")
    try:
        for kind, path in real.ppocr_models().items():
            cases.append(ModelCase(f"ppocr-{kind}", path, real.ppocr_inputs(kind, 1),
                                   f"PP-OCR {kind} from rapidocr-onnxruntime"))
    except Exception as exc:  # noqa: BLE001
        print(f"note: PP-OCR unavailable: {exc}")
    return cases


def all_cases(tmp: Path, names: list[str] | None = None) -> list[ModelCase]:
    cases = [
        ModelCase("default", models.default_model_path(),
                  synthesize_feeds(load_path(models.default_model_path()), 1)[0], "bundled demo CNN"),
        _synthetic(tmp, "cnn", models.cnn(), "synthetic CNN with BN"),
        _synthetic(tmp, "transformer", models.transformer_block(), "synthetic encoder block"),
        *[_zoo(n) for n in ("resnet50", "inception_v2", "densenet121", "squeezenet")],
        *_real(tmp),
    ]
    return [c for c in cases if names is None or c.name in names]
