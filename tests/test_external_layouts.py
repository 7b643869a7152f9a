"""Every external-data layout the ONNX spec allows loads, optimizes and saves (issue 25).

`offset` and `length` are optional keys of a tensor's external_data; exporters differ: torch
writes one file per tensor without an offset, onnx's save_model one shared file with offsets,
some tools keep files in sub-folders, and models mix embedded and external tensors. Each layout
is built by hand here (raw bytes written where the keys say), optimized with the lossless recipe,
and checked: exit code, the output's numbers against the input's in ONNX Runtime, and the input
files unchanged.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from conftest import file_digest, run_ort
from graphopt.cli import main

WIDTH = 64
NAMES = ("w0", "w1", "w2")


def _weights() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {n: (rng.standard_normal((WIDTH, WIDTH)) / 8).astype(np.float32) for n in NAMES}


def _graph(initializers: list[TensorProto]) -> onnx.ModelProto:
    nodes, x = [], "x"
    for i, name in enumerate(NAMES):
        nodes += [helper.make_node("MatMul", [x, name], [f"m{i}"]),
                  helper.make_node("Identity", [f"m{i}"], [f"id{i}"]),  # something for cleanup
                  helper.make_node("Relu", [f"id{i}"], [f"h{i}"])]
        x = f"h{i}"
    graph = helper.make_graph(nodes, "layouts", [helper.make_tensor_value_info("x", 1, [2, WIDTH])],
                              [helper.make_tensor_value_info(x, 1, [2, WIDTH])], initializers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def _external(name: str, array: np.ndarray, location: str, offset: int | None) -> TensorProto:
    tensor = TensorProto(name=name, data_type=TensorProto.FLOAT, dims=array.shape)
    tensor.data_location = TensorProto.EXTERNAL
    keys = {"location": location, **({"offset": str(offset)} if offset is not None else {})}
    for key, value in keys.items():
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    return tensor


def _write(folder, layout: str) -> None:
    """Write model.onnx and its data files in `folder` in the given layout."""
    weights, tensors, files = _weights(), [], {}
    for i, (name, array) in enumerate(weights.items()):
        if layout == "mixed" and i == 1:
            tensors.append(numpy_helper.from_array(array, name))  # embedded
            continue
        location = {"per-tensor-no-offset": f"{name}.bin", "shared-with-offsets": "weights.bin",
                    "sub-folder": f"data/{name}.bin", "mixed": "w.bin" if i == 0 else "other/w2.bin"}[layout]
        data = files.setdefault(location, bytearray())
        offset = len(data) if layout == "shared-with-offsets" else None
        data += array.tobytes()
        tensors.append(_external(name, array, location, offset))
    for location, data in files.items():
        path = folder / location
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(bytes(data))
    (folder / "model.onnx").write_bytes(_graph(tensors).SerializeToString())


@pytest.mark.parametrize("layout", ["per-tensor-no-offset", "shared-with-offsets", "sub-folder", "mixed"])
def test_external_data_layout_loads_optimizes_and_saves(tmp_path, layout, capsys):
    src = tmp_path / "in"
    src.mkdir()
    _write(src, layout)
    before = {p.relative_to(src): file_digest(p) for p in src.rglob("*") if p.is_file()}
    out = tmp_path / "out" / "model.opt.onnx"
    assert main(["optimize", str(src / "model.onnx"), "-o", str(out), "--quiet"]) == 0, capsys.readouterr().err
    feed = {"x": np.random.default_rng(1).standard_normal((2, WIDTH)).astype(np.float32)}
    np.testing.assert_array_equal(run_ort(out, feed)[0], run_ort(src / "model.onnx", feed)[0])
    onnx.checker.check_model(str(out), full_check=True)
    assert {p.relative_to(src): file_digest(p) for p in src.rglob("*") if p.is_file()} == before
    assert not [p for p in onnx.load(str(out), load_external_data=False).graph.node if p.op_type == "Identity"]
