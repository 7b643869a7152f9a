"""The bad-input corpus: every case goes through the CLI and gets an exact exit code and message.

One table: each case writes its files into a fresh directory and returns the arguments after
`graphopt`; `message` is a regular expression the last stderr line must match in full
(`{d}` stands for the case's directory). Invariants for every non-zero exit: one line on
stderr, no traceback, no output file, the input files untouched, no stray files. Library
text inside a message (protobuf, ONNX Runtime) is matched loosely (`.*`), graphopt's own words
exactly. Two cases also run as a real subprocess (the console entry point).

Already covered elsewhere and not repeated here: a text file, a 5000-byte truncation, a
missing external data file next to the model, a custom-domain op, an unknown pass, a
non-integer option, a bad --shape name, a float64 --data file, a bad --budget, an unknown
recipe or provider, output == input (tests/test_cli.py, tests/test_io.py, tests/test_data.py).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from conftest import file_digest
from graphopt.cli import main

OUT = "out.onnx"
BIG_ELEMENTS = 600_000_000  # 2.4 GB of float32: past protobuf's 2 GB limit


def _model(nodes=None, inputs=None, outputs=None, initializers=(), ir_version=9, opset=17,
           domains=()) -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    graph = helper.make_graph(nodes or [helper.make_node("Relu", ["x"], ["y"])], "g",
                              [x] if inputs is None else inputs, [y] if outputs is None else outputs,
                              list(initializers))
    opsets = [helper.make_opsetid("", opset)] + [helper.make_opsetid(d, 1) for d in domains]
    return helper.make_model(graph, opset_imports=opsets, ir_version=ir_version)


def _save(d: Path, model: onnx.ModelProto, name: str = "m.onnx") -> str:
    (d / name).write_bytes(model.SerializeToString())  # no checker: these models are broken on purpose
    return str(d / name)


def _external(d: Path, elements: int, location: str, data_bytes: int | None) -> str:
    """y = x + Cast(Shape(w)): one external tensor `w`; `data_bytes` None = no data file,
    else a sparse data file of that size (nothing is written to disk)."""
    w = onnx.TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[elements], data_location=TensorProto.EXTERNAL)
    for key, value in (("location", location), ("offset", "0"), ("length", str(4 * elements))):
        entry = w.external_data.add()
        entry.key, entry.value = key, value
    nodes = [helper.make_node("Shape", ["w"], ["s"]), helper.make_node("Cast", ["s"], ["c"], to=TensorProto.FLOAT),
             helper.make_node("Add", ["x", "c"], ["y"])]
    if data_bytes is not None:
        data = (d / location).resolve()
        data.parent.mkdir(parents=True, exist_ok=True)
        with open(data, "wb") as f:
            f.truncate(data_bytes)
    return _save(d, _model(nodes, initializers=[w]))


def _mkdir(path: Path) -> str:
    path.mkdir()
    return str(path)


def _raw(d: Path, data: bytes) -> str:
    (d / "m.onnx").write_bytes(data)
    return str(d / "m.onnx")


def _npz(d: Path, name: str = "calib.npz", **arrays) -> str:
    np.savez(d / name, **arrays)
    return str(d / name)


def _optimize(*args: str) -> list[str]:
    return ["optimize", *args, "-o", "{d}/" + OUT, "--quiet"]


def _calib(d: Path, **arrays) -> list[str]:
    return _optimize(_save(d, _model()), "--calib", _npz(d, **arrays))


def _recipe(d: Path, text: str) -> list[str]:
    (d / "r.toml").write_text(text)
    return _optimize(_save(d, _model()), "--recipe", str(d / "r.toml"))


def _truncated_mid_weight(d: Path) -> list[str]:
    """A model whose file is cut in the middle of a 16 KB initializer's raw data."""
    w = numpy_helper.from_array(np.ones(4096, np.float32), "w")
    nodes = [helper.make_node("Shape", ["w"], ["s"]), helper.make_node("Cast", ["s"], ["c"], to=TensorProto.FLOAT),
             helper.make_node("Add", ["x", "c"], ["y"])]
    data = _model(nodes, initializers=[w]).SerializeToString()
    (d / "m.onnx").write_bytes(data[: len(data) // 2])
    return _optimize(str(d / "m.onnx"))


def _sequence_input(d: Path) -> list[str]:
    seq = helper.make_tensor_sequence_value_info("x", TensorProto.FLOAT, None)
    index = helper.make_tensor_value_info("i", TensorProto.INT64, [])
    return _optimize(_save(d, _model([helper.make_node("SequenceAt", ["x", "i"], ["y"])], inputs=[seq, index])))


@dataclass(frozen=True)
class Case:
    id: str
    argv: Callable[[Path], list[str]]  # writes the case's files into the directory
    code: int
    message: str  # regex for the whole last stderr line; "{d}" = the directory
    subprocess: bool = False


X, Y = "x", "y"
CASES = [
    # --- the file itself
    Case("empty file", lambda d: _optimize(_save(d, onnx.ModelProto())), 2,
         r"graphopt: error: {d}/m.onnx: file is empty, not an ONNX model"),
    Case("not protobuf (PNG bytes)", lambda d: _optimize(_raw(d, b"\x89PNG\r\n\x1a\n" + bytes(range(200)))), 2, r"graphopt: error: {d}/m.onnx: not a valid ONNX model \(cannot parse protobuf: .*\)"),
    Case("truncated inside a weight", _truncated_mid_weight, 2,
         r"graphopt: error: {d}/m.onnx: not a valid ONNX model \(cannot parse protobuf: .*\)", subprocess=True),
    Case("no IR version", lambda d: _optimize(_save(d, _model(ir_version=0))), 2,
         r"graphopt: error: {d}/m.onnx: not a valid ONNX model \(no IR version set\)"),
    Case("IR version from the future", lambda d: _optimize(_save(d, _model(ir_version=99))), 2,
         rf"graphopt: error: {{d}}/m.onnx: IR version 99 is newer than the installed onnx {re.escape(onnx.__version__)} "
         rf"supports \(up to {onnx.IR_VERSION}\)"),
    Case("opset from the future", lambda d: _optimize(_save(d, _model(opset=99))), 2,
         rf"graphopt: error: {{d}}/m.onnx: opset 99 is newer than the installed onnx {re.escape(onnx.__version__)} "
         rf"knows \(up to {onnx.defs.onnx_opset_version()}\)"),
    Case("no graph outputs", lambda d: _optimize(_save(d, _model(outputs=[]))), 2,
         r"graphopt: error: {d}/m.onnx: the graph has no outputs \(nothing to compute\)"),
    # --- external data
    Case("external data file missing (subdirectory)", lambda d: _optimize(_external(d, 1024, "weights/w.bin", None)), 2,
         r"graphopt: error: {d}/m.onnx: external data file 'weights/w.bin' for tensor 'w' not found next to the model"),
    Case("external data file short", lambda d: _optimize(_external(d, 1024, "w.bin", 100)), 2,
         r"graphopt: error: {d}/m.onnx: external data file 'w.bin' is too short for tensor 'w' "
         r"\(needs 4096 bytes, has 100\)"),
    Case("external data outside the model directory", lambda d: _optimize(_external(d, 4, "../outside.bin", 16)), 2,
         r"graphopt: error: {d}/m.onnx: external data location '../outside.bin' for tensor 'w' points outside "
         r"the model's directory"),
    Case(">2 GB model, data file short", lambda d: _optimize(_external(d, BIG_ELEMENTS, "big.bin", 1 << 30)), 2,
         r"graphopt: error: {d}/m.onnx: external data file 'big.bin' is too short for tensor 'w' "
         r"\(needs 2400000000 bytes, has 1073741824\)"),
    # --- the graph
    Case("op unknown to the default domain", lambda d: _optimize(_save(d, _model([helper.make_node("FooBar", [X], [Y])]))),
         2, r"graphopt: error: ONNX Runtime cannot load the model: .*No Op registered for FooBar with domain_version of 17"),
    Case("unknown domain op inside an If branch", lambda d: _optimize(_save(d, _if_with_custom_op())), 2,
         r"graphopt: error: ONNX Runtime cannot load the model: .*com\.acme:Mystery\(-1\) is not a registered "
         r"function/op"),
    Case("cyclic graph", lambda d: _optimize(_save(d, _model([
        helper.make_node("Add", [X, "b"], ["a"]), helper.make_node("Relu", ["a"], ["b"]),
        helper.make_node("Relu", ["a"], [Y])]))), 2,
         r"graphopt: error: ONNX Runtime cannot load the model: .*the graph is not acyclic\."),
    Case("value produced twice", lambda d: _optimize(_save(d, _model([
        helper.make_node("Relu", [X], [Y]), helper.make_node("Sigmoid", [X], [Y])]))), 2,
         r"graphopt: error: {d}/m.onnx: not a valid ONNX model \(invalid graph: Output 'y' is redeclared in the "
         r"current graph scope\..*\)"),
    Case("duplicate graph input", lambda d: _optimize(_save(d, _model(
        inputs=[helper.make_tensor_value_info(X, TensorProto.FLOAT, [1, 4])] * 2))), 2,
         r"graphopt: error: ONNX Runtime cannot load the model: .*Duplicate definition-site for \(x\)\."),
    Case("dangling node input", lambda d: _optimize(_save(d, _model([helper.make_node("Add", [X, "ghost"], [Y])]))), 2,
         r"graphopt: error: ONNX Runtime cannot load the model: .*Node input 'ghost' is not a graph input, "
         r"initializer, or output of a previous node\."),
    Case("sequence-typed graph input", _sequence_input, 2,
         r"graphopt: error: input 'x' has type Sequence\(Tensor\(FLOAT\)\); graphopt handles tensor inputs only"),
    Case("input of unknown rank, no --shape", lambda d: _optimize(_save(d, _model(
        inputs=[helper.make_tensor_value_info(X, TensorProto.FLOAT, None)],
        outputs=[helper.make_tensor_value_info(Y, TensorProto.FLOAT, None)]))), 2,
         r"graphopt: error: input 'x' has unknown rank; give --shape x=DIMS"),
    # --- pass options and recipes
    Case("unknown option", lambda d: _optimize(_save(d, _model()), "--passes", "fold-constants:limit=3"), 2,
         r"graphopt: error: pass 'fold-constants': unknown option 'limit' \(options: generator_limit, "
         r"input_size_limit, max_iterations, output_size_limit\)"),
    Case("option out of range", lambda d: _optimize(_save(d, _model()), "--passes", "fold-constants:max_iterations=0"),
         2, r"graphopt: error: pass 'fold-constants': max_iterations must be >= 1"),
    Case("negative byte option", lambda d: _optimize(_save(d, _model()), "--passes", "dedup-initializers:max_bytes=-1"),
         2, r"graphopt: error: pass 'dedup-initializers': max_bytes must be >= 0"),
    Case("option without a value", lambda d: _optimize(_save(d, _model()), "--passes", "cleanup:verbose"), 2,
         r"graphopt: error: pass 'cleanup': malformed option 'verbose' \(expected key=value\)"),
    Case("empty pass name", lambda d: _optimize(_save(d, _model()), "--passes", "cleanup,,topo-sort"), 2,
         r"graphopt: error: --passes 'cleanup,,topo-sort': empty pass name \(expected name\[:key=value;\.\.\.\],\.\.\.\)"),
    Case("recipe file not TOML", lambda d: _recipe(d, "passes = [cleanup"), 2,
         r"graphopt: error: --recipe '{d}/r.toml': not valid TOML \(.*\)"),
    Case("recipe file with an unknown pass", lambda d: _recipe(d, 'passes = ["cleanup", "shrink"]'), 2,
         r"graphopt: error: unknown pass 'shrink' \(known: .*\)"),
    Case("both --passes and --recipe", lambda d: _optimize(_save(d, _model()), "--passes", "cleanup", "--recipe", "lossless"),
         2, r"graphopt optimize: error: argument --recipe: not allowed with argument --passes", subprocess=True),
    Case("output path is a directory", lambda d: ["optimize", _save(d, _model()), "-o", _mkdir(d / "dir")], 2, r"graphopt: error: output {d}/dir is a directory; give a file path, e.g. {d}/dir/model.onnx"),
    # --- calibration data
    Case("calibration: wrong input name", lambda d: _calib(d, input=np.zeros((3, 1, 4), np.float32)), 2,
         r"graphopt: error: {d}/calib.npz: data does not match the model inputs: missing input\(s\) x; "
         r"unknown name\(s\) input \(model inputs: x\)"),
    Case("calibration: wrong dtype", lambda d: _calib(d, x=np.zeros((3, 1, 4), np.int32)), 2,
         r"graphopt: error: {d}/calib.npz \(feed 0\): input 'x' expects float32, data has int32"),
    Case("calibration: wrong shape", lambda d: _calib(d, x=np.zeros((3, 1, 5), np.float32)), 2,
         r"graphopt: error: {d}/calib.npz \(feed 0\): input 'x' expects shape \[1, 4\], data has shape \[1, 5\]"),
    Case("calibration: NaN", lambda d: _calib(d, x=np.where(np.arange(12).reshape(3, 1, 4) == 5, np.nan, 1.0)
                                               .astype(np.float32)), 2,
         r"graphopt: error: {d}/calib.npz \(feed 1\): input 'x' holds 1 NaN value\(s\) of 4"),
    Case("calibration: infinity", lambda d: _calib(d, x=np.full((3, 1, 4), np.inf, np.float32)), 2,
         r"graphopt: error: --calib {d}/calib.npz \(feed 0\): input 'x' holds 4 infinite value\(s\) of 4; "
         r"calibration needs finite values"),
    Case("calibration: zero samples", lambda d: _calib(d, x=np.zeros((0, 1, 4), np.float32)), 2,
         r"graphopt: error: {d}/calib.npz: holds zero samples"),
    Case("calibration: pickled objects", lambda d: _calib(d, x=np.array([{"a": 1}], dtype=object)), 2,
         r"graphopt: error: {d}/calib.npz: not a readable \.npz file \(.*allow_pickle=False.*\)"),
]


def _if_with_custom_op() -> onnx.ModelProto:
    def branch(name: str, op: str, domain: str = "") -> onnx.GraphProto:
        out = helper.make_tensor_value_info(f"{name}_y", TensorProto.FLOAT, [1, 4])
        return helper.make_graph([helper.make_node(op, [X], [f"{name}_y"], domain=domain)], name, [], [out])

    nodes = [helper.make_node("ReduceSum", [X], ["s"], keepdims=0),
             helper.make_node("Greater", ["s", "zero"], ["c"]),
             helper.make_node("If", ["c"], [Y], then_branch=branch("then", "Relu"),
                              else_branch=branch("else", "Mystery", "com.acme"))]
    zero = numpy_helper.from_array(np.array(0.0, np.float32), "zero")
    return _model(nodes, initializers=[zero], domains=("com.acme",))


def _snapshot(root: Path) -> dict:
    """Every file under `root` with its digest (size and mtime for the big sparse data files)."""
    return {p: (file_digest(p) if p.stat().st_size < 1 << 26 else (p.stat().st_size, p.stat().st_mtime_ns))
            for p in root.rglob("*") if p.is_file()}


def _run(argv: list[str], via_subprocess: bool, capsys, cwd: Path) -> tuple[int, str]:
    if via_subprocess:
        proc = subprocess.run([sys.executable, "-m", "graphopt.cli", *argv], capture_output=True, text=True, cwd=cwd)
        return proc.returncode, proc.stderr
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse usage errors
        code = exc.code
    return code, capsys.readouterr().err


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_gets_exact_exit_code_and_message(case, tmp_path, capsys, monkeypatch):
    d = tmp_path / "case"
    d.mkdir()
    monkeypatch.chdir(tmp_path)
    argv = [a.replace("{d}", str(d)) for a in case.argv(d)]
    before = _snapshot(tmp_path)
    code, err = _run(argv, case.subprocess, capsys, tmp_path)
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith("\x1b")]
    assert code == case.code, err
    assert re.fullmatch(case.message.replace("{d}", re.escape(str(d))), lines[-1]), lines[-1]
    assert len(lines) == 1 and "Traceback" not in err
    assert not (d / OUT).exists()
    assert _snapshot(tmp_path) == before  # nothing new, nothing changed


def test_corpus_size():
    assert len(CASES) >= 20


def test_big_model_with_sparse_external_data_is_inspected_without_reading(tmp_path, capsys):
    """A >2 GB model (sparse data file: nothing written to disk) loads lazily; inspect reports it."""
    path = _external(tmp_path, BIG_ELEMENTS, "big.bin", 4 * BIG_ELEMENTS)
    assert main(["inspect", path, "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["param_count"] == BIG_ELEMENTS and stats["weight_bytes"] == 4 * BIG_ELEMENTS


@pytest.mark.slow
def test_big_model_optimizes_end_to_end(tmp_path):
    """Slow (ORT reads and graphopt writes 2.4 GB): a >2 GB model with external data goes through
    verified passes and comes out valid, with its weights in external data."""
    (tmp_path / "in").mkdir()
    path = _external(tmp_path / "in", BIG_ELEMENTS, "big.bin", 4 * BIG_ELEMENTS)
    out = tmp_path / "out" / "big.onnx"
    assert main(["optimize", path, "-o", str(out), "--passes", "topo-sort,cse", "--quiet"]) == 0
    onnx.checker.check_model(str(out), full_check=True)
    assert (out.parent / "big.onnx.data").stat().st_size >= 4 * BIG_ELEMENTS
