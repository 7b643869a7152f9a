"""Model I/O: every model kind round-trips, saves are atomic, bad files get clear errors."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import onnx_ir as ir
import pytest

from conftest import ADD_RELU, file_digest, parse
from graphopt import io as gio
from graphopt.errors import InputError


def _external_model(tmp_path: Path) -> Path:
    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 64])
    y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 64])
    w = onnx.numpy_helper.from_array(np.arange(64 * 64, dtype=np.float32).reshape(64, 64) / 4096, "w")
    graph = onnx.helper.make_graph([onnx.helper.make_node("MatMul", ["x", "w"], ["y"])], "g", [x], [y], [w])
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)], ir_version=9)
    path = tmp_path / "ext.onnx"
    onnx.save(model, path, save_as_external_data=True, location="ext.data", size_threshold=0)
    return path


@pytest.mark.parametrize("kind", ["proto", "ir", "gs", "path"])
def test_load_returns_same_kind(kind, tmp_path):
    proto = parse(ADD_RELU)
    path = tmp_path / "m.onnx"
    onnx.save(proto, path)
    source = {"proto": proto, "ir": ir.serde.deserialize_model(proto), "gs": gs.import_onnx(proto),
              "path": path}[kind]
    loaded = gio.load_model(source)
    assert isinstance(loaded.model, ir.Model)
    assert [n.op_type for n in loaded.model.graph] == ["Add", "Relu"]
    back = gio.to_kind(loaded.model, loaded)
    expected_type = {"proto": onnx.ModelProto, "ir": ir.Model, "gs": gs.Graph, "path": ir.Model}[kind]
    assert isinstance(back, expected_type)


def test_external_data_is_memory_mapped_not_read(tmp_path):
    model = gio.load_path(_external_model(tmp_path))
    assert isinstance(model.graph.initializers["w"].const_value, ir.ExternalTensor)


def test_embedded_weights_and_constant_tensors_are_numpy_backed_after_load(tmp_path):
    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 64])
    y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 64])
    w = onnx.numpy_helper.from_array(np.arange(64 * 64, dtype=np.float32).reshape(64, 64) / 4096, "w")
    c = onnx.numpy_helper.from_array(np.full(64, 0.5, np.float32), "c")
    names = onnx.numpy_helper.from_array(np.array([b"a", b"b"], dtype=object), "names")
    nodes = [onnx.helper.make_node("Constant", [], ["k"], value=c),
             onnx.helper.make_node("Constant", [], ["s"], value=names),
             onnx.helper.make_node("MatMul", ["x", "w"], ["m"]), onnx.helper.make_node("Add", ["m", "k"], ["y"])]
    graph = onnx.helper.make_graph(nodes, "g", [x], [y], [w])
    path = tmp_path / "m.onnx"
    onnx.save(onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)], ir_version=9), path)
    model = gio.load_path(path)
    weight = model.graph.initializers["w"].const_value
    constant = next(n for n in model.graph if n.outputs[0].name == "k").attributes["value"].value
    assert type(weight) is ir.Tensor and type(constant) is ir.Tensor
    assert weight.numpy() is weight.numpy()  # no fresh decode per read
    np.testing.assert_array_equal(weight.numpy(), onnx.numpy_helper.to_array(w))
    np.testing.assert_array_equal(constant.numpy(), np.full(64, 0.5, np.float32))
    strings = next(n for n in model.graph if n.outputs[0].name == "s").attributes["value"].value
    assert strings.dtype == ir.DataType.STRING  # left proto-backed
    assert onnx.checker.check_model(ir.serde.serialize_model(model)) is None


def test_save_roundtrip_with_external_data(tmp_path):
    model = gio.load_path(_external_model(tmp_path))
    out = gio.save_model(model, tmp_path / "out" / "saved.onnx")
    assert (tmp_path / "out" / "saved.onnx.data").stat().st_size >= 64 * 64 * 4
    again = gio.load_path(out)
    np.testing.assert_array_equal(again.graph.initializers["w"].const_value.numpy(),
                                  model.graph.initializers["w"].const_value.numpy())
    assert sorted(os.listdir(tmp_path / "out")) == ["saved.onnx", "saved.onnx.data"]


def test_failed_save_leaves_existing_file_and_no_temp(tmp_path, monkeypatch):
    target = tmp_path / "keep.onnx"
    target.write_bytes(b"previous contents")
    model = gio.load_model(parse(ADD_RELU)).model

    def explode(*args, **kwargs):
        Path(args[1]).write_bytes(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(gio, "write_to_dir", explode)
    with pytest.raises(OSError, match="disk full"):
        gio.save_model(model, target)
    assert target.read_bytes() == b"previous contents"
    assert os.listdir(tmp_path) == ["keep.onnx"]


@pytest.mark.parametrize("content, message", [
    (b"", "file is empty"),
    (b"this is not a protobuf at all \xff\xfe", "not a valid ONNX model"),
])
def test_bad_files_give_one_line(tmp_path, content, message):
    path = tmp_path / "bad.onnx"
    path.write_bytes(content)
    with pytest.raises(InputError, match=message) as info:
        gio.load_path(path)
    assert "\n" not in str(info.value)


def test_truncated_model_is_rejected(tmp_path):
    path = _external_model(tmp_path)
    full = tmp_path / "full.onnx"
    onnx.save(onnx.load(path), full)  # embeds the weights
    data = full.read_bytes()
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="not a valid ONNX model"):
        gio.load_path(truncated)


def test_missing_and_short_external_data(tmp_path):
    path = _external_model(tmp_path)
    data = tmp_path / "ext.data"
    data.write_bytes(data.read_bytes()[:100])
    with pytest.raises(InputError, match="too short for tensor 'w'"):
        gio.load_path(path)
    data.unlink()
    with pytest.raises(InputError, match="external data file 'ext.data' for tensor 'w' not found"):
        gio.load_path(path)


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        gio.load_path(tmp_path / "nope.onnx")
    with pytest.raises(InputError, match="is a directory"):
        gio.load_path(tmp_path)


def test_save_does_not_modify_source_file(tmp_path):
    path = _external_model(tmp_path)
    before = (file_digest(path), file_digest(tmp_path / "ext.data"))
    model = gio.load_path(path)
    gio.save_model(model, tmp_path / "copy.onnx")
    assert (file_digest(path), file_digest(tmp_path / "ext.data")) == before


def _add_w(w: onnx.TensorProto, sparse=()) -> onnx.ModelProto:
    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 4])
    y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 4])
    graph = onnx.helper.make_graph([onnx.helper.make_node("Add", ["x", w.name], ["y"])], "g", [x], [y],
                                   [w] if w.dims else [], sparse_initializer=list(sparse))
    return onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)], ir_version=9)


def test_every_model_kind_gets_its_tensors_checked():
    """A proto or IR model handed to the API is checked like a file: one InputError naming the tensor."""
    w = onnx.numpy_helper.from_array(np.ones((1, 4), np.float32), "w")
    w.raw_data = b"\0" * 12
    with pytest.raises(InputError, match=r"^model: initializer 'w': raw data holds 12 bytes, its shape \[1, 4\]"):
        gio.load_model(_add_w(w))
    model = ir.serde.deserialize_model(_add_w(onnx.numpy_helper.from_array(np.ones((1, 4), np.float32), "w")))
    model.graph.initializers["w"].const_value = ir.ExternalTensor("", offset=0, length=16, dtype=ir.DataType.FLOAT,
                                                                  shape=ir.Shape([1, 4]), name="w", base_dir="")
    with pytest.raises(InputError, match=r"^model: initializer 'w': external data without a location"):
        gio.load_model(model)


def test_sparse_model_loads_with_external_data_resolved_next_to_it(tmp_path, monkeypatch):
    """A sparse initializer is densified without reading external data, which still resolves against
    the model's directory (not the working directory)."""
    values = onnx.numpy_helper.from_array(np.array([5.0], np.float32), "s")
    indices = onnx.numpy_helper.from_array(np.array([2], np.int64), "s_idx")
    sparse = onnx.helper.make_sparse_tensor(values, indices, [1, 4])
    proto = _add_w(onnx.numpy_helper.from_array(np.full((1, 4), 3.0, np.float32), "w"), [sparse])
    proto.graph.node.append(onnx.helper.make_node("Add", ["y0", "s"], ["y"]))
    proto.graph.node[0].output[0] = "y0"
    (tmp_path / "m").mkdir()
    onnx.save(proto, tmp_path / "m" / "m.onnx", save_as_external_data=True, location="m.data", size_threshold=0)
    monkeypatch.chdir(tmp_path)
    model = gio.load_path(tmp_path / "m" / "m.onnx")
    assert model.graph.initializers["s"].const_value.numpy().tolist() == [[0, 0, 5, 0]]
    assert model.graph.initializers["w"].const_value.numpy().tolist() == [[3.0] * 4]
