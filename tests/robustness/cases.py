"""The sweep's models: every model the onnx wheel ships with inputs and expected outputs
(onnx/backend/test/data: light, pytorch-converted, pytorch-operator, simple) and every
builder in `models/`.

A case knows how to put its model at a path, its feeds (None: graphopt synthesizes them) and
its expected outputs with the tolerance the onnx backend runner uses (rtol 1e-3, atol 1e-7
unless the case's data.json says otherwise). Nothing here runs graphopt.
"""

from __future__ import annotations

import inspect
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import onnx
from onnx import numpy_helper

import models
from models.zoo import LIGHT_DIR, load_case

BACKEND_DIR = Path(onnx.__file__).parent / "backend" / "test" / "data"
BACKEND_KINDS = ("pytorch-converted", "pytorch-operator", "simple")
RTOL, ATOL = 1e-3, 1e-7
Feed = dict[str, np.ndarray]


@dataclass(frozen=True)
class SweepCase:
    id: str
    write: Callable[[Path], Path]  # puts the model into a directory, returns the .onnx path
    feeds: Callable[[], list[Feed] | None] = lambda: None
    expected: Callable[[], list[np.ndarray] | None] = lambda: None
    rtol: float = RTOL
    atol: float = ATOL
    tags: tuple[str, ...] = field(default=())


def _copy_to(source: Path) -> Callable[[Path], Path]:
    def write(directory: Path) -> Path:
        target = directory / "model.onnx"
        shutil.copyfile(source, target)
        return target

    return write


def _read_tensor(path: Path) -> np.ndarray | None:
    """A TensorProto file as an array; None when it holds something else (a sequence)."""
    proto = onnx.TensorProto()
    try:
        proto.ParseFromString(path.read_bytes())
        if not proto.dims and not proto.raw_data and proto.data_type == 0:
            return None
        return numpy_helper.to_array(proto)
    except Exception:  # noqa: BLE001  (a SequenceProto or OptionalProto, not a tensor)
        return None


def _numbered(directory: Path, prefix: str) -> list[Path]:
    return sorted(directory.glob(f"{prefix}_*.pb"), key=lambda p: int(p.stem.rsplit("_", 1)[1]))


def _backend_feeds(model_path: Path) -> list[Feed] | None:
    model = onnx.load(model_path, load_external_data=False)
    initializers = {i.name for i in model.graph.initializer}
    names = [v.name for v in model.graph.input if v.name not in initializers]
    arrays = [_read_tensor(p) for p in _numbered(model_path.parent / "test_data_set_0", "input")]
    if len(arrays) != len(names) or any(a is None for a in arrays):
        return None
    return [dict(zip(names, arrays))]


def _backend_expected(model_path: Path) -> list[np.ndarray] | None:
    arrays = [_read_tensor(p) for p in _numbered(model_path.parent / "test_data_set_0", "output")]
    return None if any(a is None for a in arrays) else arrays


def _tolerances(case_dir: Path) -> tuple[float, float]:
    data = case_dir / "data.json"
    if data.exists():
        spec = json.loads(data.read_text())
        return spec.get("rtol", RTOL), spec.get("atol", ATOL)
    return RTOL, ATOL


def backend_cases() -> list[SweepCase]:
    cases = []
    for kind in BACKEND_KINDS:
        for case_dir in sorted((BACKEND_DIR / kind).iterdir()):
            path = case_dir / "model.onnx"
            if not path.exists():
                continue
            rtol, atol = _tolerances(case_dir)
            cases.append(SweepCase(f"{kind}/{case_dir.name}", _copy_to(path), lambda p=path: _backend_feeds(p),
                                   lambda p=path: _backend_expected(p), rtol, atol, (kind,)))
    return cases


def light_cases() -> list[SweepCase]:
    cases = []
    for path in sorted(LIGHT_DIR.glob("light_*.onnx")):
        cases.append(SweepCase(f"light/{path.stem[len('light_'):]}", _copy_to(path),
                               lambda p=path: [load_case(p).feed], lambda p=path: load_case(p).expected,
                               tags=("light",)))
    return cases


def _proto_writer(build: Callable[[], onnx.ModelProto]) -> Callable[[Path], Path]:
    def write(directory: Path) -> Path:
        target = directory / "model.onnx"
        onnx.save(build(), target)
        return target

    return write


def _large_writer(directory: Path) -> Path:
    """The large-model builder in a small configuration: external data, symbolic batch."""
    return models.large_mlp(directory / "model.onnx", layers=3, width=64, batch="batch", redundant=True)


def builder_cases() -> list[SweepCase]:
    """Every public builder of `models` (new ones are picked up automatically): those that take
    no required argument build a ModelProto; `large_mlp` writes itself with external data."""
    cases = []
    for name in sorted(models.__all__):
        fn = getattr(models, name)
        params = inspect.signature(fn).parameters.values()
        required = [p for p in params if p.default is inspect.Parameter.empty]
        if name == "large_mlp":
            cases.append(SweepCase("builder/large_mlp", _large_writer, tags=("builder", "external")))
        elif not required and inspect.signature(fn).return_annotation in ("onnx.ModelProto", onnx.ModelProto):
            cases.append(SweepCase(f"builder/{name}", _proto_writer(fn), tags=("builder",)))
    return cases


def all_cases() -> list[SweepCase]:
    return light_cases() + backend_cases() + builder_cases()
