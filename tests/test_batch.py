"""The batch mode: `graphopt optimize A.onnx B.onnx ... --out-dir DIR [--executor ...]`.

Three tiny models (Conv/Relu, MatMul/Add, Mul/Add/Sigmoid), each behind a redundant Identity the
lossless recipe removes, run through `main` like a user's command: outputs equal their inputs in
ONNX Runtime, one row per model in the table and in DIR/batch.json, failures stay with their model,
and a worker process that dies is retried once in a fresh process (the workers run a module-level
function of this file in place of graphopt.batch.run_unit, which kills its own process)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import graphopt.batch
from conftest import run_ort
from graphopt.batch import UnitResult, run_unit
from graphopt.batch_command import batch_exit_code
from graphopt.batch_plan import output_names
from graphopt.cli import main
from graphopt.executor import ExecutorSpec

FAST = ["--quiet", "--verify", "end"]


def _model(nodes: list[tuple], x_shape: list[int], y_shape: list[int], weights: dict[str, tuple]) -> onnx.ModelProto:
    """A float graph x -> y from (op, inputs, output, attributes) tuples, random weights of the given shapes."""
    rng = np.random.default_rng(len(nodes))
    graph = helper.make_graph(
        [helper.make_node(op, inputs, [output], **attrs) for op, inputs, output, attrs in nodes], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, y_shape)],
        [numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name)
         for name, shape in weights.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    onnx.checker.check_model(model, full_check=True)
    return model


def _models() -> dict[str, onnx.ModelProto]:
    """Three small models, each with one redundant Identity (lossless removes it: one node fewer)."""
    conv = _model([("Identity", ["x"], "i", {}), ("Conv", ["i", "W", "B"], "c", {"pads": [1] * 4}),
                   ("Relu", ["c"], "y", {})], [1, 3, 8, 8], [1, 4, 8, 8], {"W": (4, 3, 3, 3), "B": (4,)})
    mlp = _model([("MatMul", ["x", "W1"], "m1", {}), ("Add", ["m1", "B1"], "a1", {}), ("Identity", ["a1"], "i", {}),
                  ("MatMul", ["i", "W2"], "m2", {}), ("Add", ["m2", "B2"], "y", {})], [2, 4], [2, 2],
                 {"W1": (4, 6), "B1": (6,), "W2": (6, 2), "B2": (2,)})
    gate = _model([("Identity", ["x"], "i", {}), ("Mul", ["i", "C"], "m", {}), ("Add", ["m", "D"], "a", {}),
                   ("Sigmoid", ["a"], "y", {})], [3, 5], [3, 5], {"C": (5,), "D": (5,)})
    return {"conv": conv, "mlp": mlp, "gate": gate}


@pytest.fixture
def three(tmp_path: Path) -> list[Path]:
    paths = []
    for name, model in _models().items():
        paths.append(tmp_path / f"{name}.onnx")
        onnx.save(model, paths[-1])
    return paths


def _feed(path: Path) -> dict[str, np.ndarray]:
    (x,) = onnx.load(path).graph.input
    shape = [d.dim_value for d in x.type.tensor_type.shape.dim]
    return {x.name: np.random.default_rng(1).standard_normal(shape).astype(np.float32)}


def _batch(argv: list[str], capsys) -> tuple[int, str, str, dict]:
    code = main(["optimize", *argv])
    out, err = capsys.readouterr()
    out_dir = Path(argv[argv.index("--out-dir") + 1])
    document = json.loads((out_dir / "batch.json").read_text()) if (out_dir / "batch.json").exists() else {}
    return code, out, err, document


def _nodes(path: Path) -> list[str]:
    return [node.op_type for node in onnx.load(path).graph.node]


def test_local_batch_writes_every_model(three, tmp_path, capsys):
    out_dir = tmp_path / "new" / "out"  # created, parents too
    code, out, _, document = _batch([*map(str, three), "--out-dir", str(out_dir), "--quiet"], capsys)
    assert code == 0 and document["exit_code"] == 0 and document["executor"] == "local"
    assert sorted(p.name for p in out_dir.iterdir()) == sorted(
        ["batch.json"] + [f"{p.stem}{suffix}" for p in three for suffix in (".onnx", ".report.json")])
    for source, row in zip(three, document["models"]):
        output = out_dir / f"{source.stem}.onnx"
        assert row["model"] == str(source) and row["output"] == str(output) and row["status"] == "ok"
        assert row["error"] is None and row["attempts"] == 1 and row["seconds"] > 0
        assert row["nodes_after"] == row["nodes_before"] - 1 == len(_nodes(output)) and "Identity" not in _nodes(output)
        assert row["worst_cosine"] > 0.999999 and row["mb_before"] == row["mb_after"] > 0
        feed = _feed(source)
        np.testing.assert_allclose(run_ort(output, feed)[0], run_ort(source, feed)[0], rtol=1e-6, atol=1e-6)
        assert json.loads((out_dir / f"{source.stem}.report.json").read_text())["model"]["output"] == str(output)
    table = out.splitlines()
    assert table[0].split()[:3] == ["model", "status", "nodes"] and "3 of 3 model(s) optimized" in out
    assert [line.split()[:2] for line in table[2:5]] == [[str(p), "ok"] for p in three]


def test_process_pool_writes_what_local_writes(three, tmp_path, capsys):
    local, pooled = tmp_path / "local", tmp_path / "pooled"
    assert _batch([*map(str, three), "--out-dir", str(local), *FAST], capsys)[0] == 0
    code, _, _, document = _batch([*map(str, three), "--out-dir", str(pooled), "--executor", "process:2", *FAST],
                                  capsys)
    assert code == 0 and document["executor"] == "process:2"
    assert [row["status"] for row in document["models"]] == ["ok"] * 3
    for source in three:
        a, b = local / f"{source.stem}.onnx", pooled / f"{source.stem}.onnx"
        assert _nodes(a) == _nodes(b)
        np.testing.assert_array_equal(run_ort(a, _feed(source))[0], run_ort(b, _feed(source))[0])


def test_bad_models_are_rows_and_the_others_complete(three, tmp_path, capsys):
    text = tmp_path / "notes.onnx"
    text.write_text("hello, I am a text file")
    missing = tmp_path / "missing.onnx"
    out_dir = tmp_path / "out"
    code, out, _, document = _batch([str(three[0]), str(missing), str(text), str(three[1]), "--out-dir", str(out_dir),
                                     *FAST], capsys)
    assert code == 2 and document["exit_code"] == 2
    rows = {Path(row["model"]).name: row for row in document["models"]}
    statuses = [rows[p.name]["status"] for p in (three[0], missing, text, three[1])]
    assert statuses == ["ok", "input error", "input error", "ok"]
    assert rows["missing.onnx"]["error"] == f"{missing}: no such file"
    assert rows["notes.onnx"]["error"].startswith(f"{text}: not a valid ONNX model")
    for row in (rows["missing.onnx"], rows["notes.onnx"]):
        assert row["exit_code"] == 2 and row["output"] is None and row["nodes_after"] is None
        assert "\n" not in row["error"] and row["error"] in out
    assert (out_dir / "conv.onnx").exists() and (out_dir / "mlp.onnx").exists()
    assert not (out_dir / "missing.onnx").exists() and not (out_dir / "notes.onnx").exists()
    assert "2 of 4 model(s) optimized" in out


def test_a_manifest_lists_models_relative_to_its_folder(three, tmp_path, capsys):
    lists = tmp_path / "lists"
    lists.mkdir()
    manifest = lists / "models.txt"
    manifest.write_text(f"# the models\n../{three[0].name}\n\n  ../{three[1].name}  \n# {three[2].name}\n")
    out_dir = tmp_path / "out"
    code, _, _, document = _batch([str(manifest), str(three[2]), "--out-dir", str(out_dir), *FAST], capsys)
    assert code == 0
    assert [Path(row["model"]).resolve() for row in document["models"]] == [p.resolve() for p in three]
    assert all((out_dir / f"{p.stem}.onnx").exists() for p in three)


def test_an_unreadable_or_empty_manifest_is_exit_2(tmp_path, capsys):
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing\n\n")
    for manifest, message in ((tmp_path / "none.txt", "cannot read it"), (empty, "lists no model paths")):
        assert main(["optimize", str(manifest), "--out-dir", str(tmp_path / "out")]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0]
    assert not (tmp_path / "out").exists()


def test_same_stems_get_distinct_outputs(three, tmp_path, capsys):
    other = tmp_path / "other"
    other.mkdir()
    twin = other / three[1].name
    twin.write_bytes(three[1].read_bytes())
    out_dir = tmp_path / "out"
    code, _, _, document = _batch([str(three[1]), str(twin), str(three[1]), "--out-dir", str(out_dir), *FAST], capsys)
    assert code == 0
    outputs = [row["output"] for row in document["models"]]
    assert outputs == [str(out_dir / name) for name in ("mlp.onnx", "mlp-2.onnx", "mlp-3.onnx")]
    assert all(Path(row["output"]).exists() for row in document["models"])


def test_an_output_over_another_input_is_exit_2(three, tmp_path, capsys):
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    inside = out_dir / "mlp.onnx"  # the first mlp's output would be written over it
    inside.write_bytes(three[1].read_bytes())
    assert main(["optimize", str(three[1]), str(inside), "--out-dir", str(out_dir)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "another input model of this batch" in err[0]
    assert sorted(p.name for p in out_dir.iterdir()) == ["mlp.onnx"]


def test_output_names_keep_free_stems_and_number_the_rest():
    assert output_names(["a/m.onnx", "b/m.onnx", "m-2.onnx", "c/M.onnx", "x.opt.onnx"]) == [
        "m", "m-3", "m-2", "M-4", "x.opt"]


def test_out_dir_with_o_is_exit_2(three, tmp_path, capsys):
    code = main(["optimize", str(three[0]), "--out-dir", str(tmp_path / "out"), "-o", str(tmp_path / "o.onnx")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "drop -o" in err[0]
    assert not (tmp_path / "out").exists() and not (tmp_path / "o.onnx").exists()


@pytest.mark.parametrize("text, message", [("process:0", "from 1 to"), ("process:x", "process:N needs a number"),
                                           ("process", "process:N needs a number"), ("thread:2", "unknown executor"),
                                           ("ray:", "needs an address")])
def test_bad_executor_is_exit_2_one_line(three, tmp_path, capsys, text, message):
    with pytest.raises(SystemExit) as exited:
        main(["optimize", str(three[0]), "--out-dir", str(tmp_path / "out"), "--executor", text])
    err = capsys.readouterr().err.strip().splitlines()
    assert exited.value.code == 2 and len(err) == 1 and "--executor" in err[0] and message in err[0]
    with pytest.raises(ValueError, match=message):
        ExecutorSpec.parse(text)


def test_ray_is_refused_honestly_and_executor_needs_out_dir(three, tmp_path, capsys):
    assert main(["optimize", str(three[0]), "--out-dir", str(tmp_path / "out"), "--executor", "ray:auto"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "graphopt: error: --executor ray:auto: the Ray executor is not built yet; use local or process:N"
    assert not (tmp_path / "out").exists()
    assert main(["optimize", str(three[0]), str(tmp_path / "o.onnx"), "--executor", "process:2"]) == 2
    assert "--out-dir" in capsys.readouterr().err


def test_executor_spec_parses_and_prints_back():
    for text in ("local", "process:3", "ray", "ray:ray://head:10001"):
        assert str(ExecutorSpec.parse(text)) == text
    assert ExecutorSpec.parse("ray:ray://head:10001").address == "ray://head:10001"
    assert ExecutorSpec.parse("process:3").workers == 3


def test_options_pass_on_to_every_model(three, tmp_path, capsys):
    """A batch's options reach each model's run: --passes here (fuse-bn alone keeps the Identity)."""
    out_dir = tmp_path / "out"
    code, _, _, document = _batch([str(three[1]), "--out-dir", str(out_dir), "--passes", "fuse-bn",
                                   "--seed=7", "--report", "page.html", *FAST], capsys)
    assert code == 0 and "Identity" in _nodes(out_dir / "mlp.onnx")
    assert (out_dir / "mlp.report.html").exists() and not Path("page.html").exists()
    assert document["models"][0]["nodes_after"] == 5


def test_batch_exit_code_sums_up_the_single_runs_codes():
    def rows(*codes):
        return [UnitResult(i, f"m{i}.onnx", None, c, "", None, 0.0) for i, c in enumerate(codes)]

    assert batch_exit_code(rows(0, 0)) == 0
    assert batch_exit_code(rows(0, 1, 2, 3)) == 2
    assert batch_exit_code(rows(0, 1, 3)) == 1


def _dying_unit(unit, entry):
    """Runs in the worker processes in place of graphopt.batch.run_unit: `dies_once.onnx` kills its
    process the first time (a marker file beside it remembers), `dies_always.onnx` every time."""
    model = Path(unit.model)
    marker = model.with_suffix(".died")
    if model.name == "dies_always.onnx" or (model.name == "dies_once.onnx" and not marker.exists()):
        marker.touch()
        os._exit(9)  # as the OOM killer's SIGKILL would: no exception, no cleanup
    return run_unit(unit, entry)


@pytest.mark.parametrize("victim", ["dies_once", "dies_always"])
def test_a_dead_worker_loses_no_other_model(three, tmp_path, capsys, monkeypatch, victim):
    monkeypatch.setattr(graphopt.batch, "run_unit", _dying_unit)
    doomed = tmp_path / f"{victim}.onnx"
    doomed.write_bytes(three[1].read_bytes())
    out_dir = tmp_path / "out"
    models = [str(three[0]), str(doomed), str(three[2])]
    argv = [*models, "--out-dir", str(out_dir), "--executor", "process:2", "--verify", "end"]  # not --quiet:
    code, out, err, document = _batch(argv, capsys)  # the retry is said on stderr
    rows = {Path(row["model"]).stem: row for row in document["models"]}
    assert [rows[p.stem]["status"] for p in (three[0], three[2])] == ["ok", "ok"]
    assert (out_dir / "conv.onnx").exists() and (out_dir / "gate.onnx").exists()
    assert "lost with a worker process that died" in err
    if victim == "dies_once":
        assert code == 0 and rows[victim]["status"] == "ok" and rows[victim]["attempts"] == 2
        assert (out_dir / "dies_once.onnx").exists() and "ok (retried)" in out
    else:
        assert code == 1 and rows[victim]["status"] == "worker died" and rows[victim]["attempts"] == 2
        assert "worker died" in rows[victim]["error"] and rows[victim]["error"] in out
        assert not (out_dir / "dies_always.onnx").exists()
