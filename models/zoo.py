"""The real zoo graphs that the onnx wheel ships (onnx/backend/test/data/light).

Each comes with the expected output for a fixed input: arange(n)/n reshaped to the input
shape (how onnx's backend test runner feeds them), compared with rtol 1e-3, atol 1e-7
(the runner's defaults). Their weights are ConstantOfShape generators, so the files are tiny.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

LIGHT_DIR = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"
RTOL, ATOL = 1e-3, 1e-7


@dataclass(frozen=True)
class ZooCase:
    name: str
    path: Path
    feed: dict[str, np.ndarray]
    expected: list[np.ndarray]


def light_model_paths() -> list[Path]:
    return sorted(LIGHT_DIR.glob("light_*.onnx"))


def load_case(path: Path) -> ZooCase:
    model = onnx.load(path)
    initializers = {i.name for i in model.graph.initializer}
    feed = {}
    for value in model.graph.input:
        if value.name in initializers:
            continue
        shape = tuple(d.dim_value or 1 for d in value.type.tensor_type.shape.dim)
        n = int(np.prod(shape))
        feed[value.name] = (np.arange(n).reshape(shape) / n).astype(np.float32)
    expected = []
    for i in range(len(model.graph.output)):
        expected.append(numpy_helper.to_array(onnx.load_tensor(str(path).replace(".onnx", f"_output_{i}.pb"))))
    return ZooCase(path.stem, path, feed, expected)
