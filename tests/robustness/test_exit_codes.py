"""Exit codes mean what the README says, and valid in gives valid out (issue 19, classes 3 and 4).

Class 3: every input-caused problem is exit 2 with exactly one line on stderr, in every
subcommand: malformed tensor data (initializers, Constant tensors, subgraph weights, external
and sparse tensors), feed shapes that cannot be built, numeric arguments out of range, an .npz
member that is a raw pickle. The Python API raises InputError for bad arguments, never an
AttributeError, TypeError or ValueError from deep inside. Class 4: a model whose declared
shapes contradict ONNX shape inference comes out checker-clean (exit 0, what was dropped is
reported), or is refused with exit 2 naming the checker's problem.

Every model here is built with onnx.helper / numpy_helper and then corrupted; nothing is
downloaded. The messages are matched in full for graphopt's own words (`{d}` = the case's
directory), loosely (`.*`) for library text.
"""

from __future__ import annotations

import json
import pickle
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import graphopt
from graphopt.cli import main
from graphopt.errors import InputError
from graphopt.passes import PASSES

OUT = "out.onnx"
X, Y, W = "x", "y", "w"


# --- models ---------------------------------------------------------------------------------------

def _model(nodes=None, inits=(), *, x_shape=(1, 4), y_shape=(1, 4), value_info=(), sparse=(),
           y_type=TensorProto.FLOAT) -> onnx.ModelProto:
    """y = x + w by default (w: a [1, 4] float initializer)."""
    x = helper.make_tensor_value_info(X, TensorProto.FLOAT, list(x_shape))
    y = helper.make_tensor_value_info(Y, y_type, list(y_shape))
    graph = helper.make_graph(nodes or [helper.make_node("Add", [X, W], [Y])], "g", [x], [y], list(inits),
                              value_info=list(value_info), sparse_initializer=list(sparse))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)


def _w(**fields) -> onnx.TensorProto:
    """The [1, 4] float weight `w`, with fields overwritten (`dims=`, `raw_data=`, ...)."""
    tensor = numpy_helper.from_array(np.ones((1, 4), np.float32), W)
    for key, value in fields.items():
        if key == "dims":
            del tensor.dims[:]
            tensor.dims.extend(value)
        else:
            setattr(tensor, key, value)
    return tensor


def _typed(data_type: int, dims: list[int], field: str, values: list) -> onnx.TensorProto:
    tensor = onnx.TensorProto(name=W, data_type=data_type, dims=dims)
    getattr(tensor, field).extend(values)
    return tensor


def _external(**entries) -> onnx.TensorProto:
    tensor = _w()
    tensor.ClearField("raw_data")
    tensor.data_location = TensorProto.EXTERNAL
    for key, value in entries.items():
        entry = tensor.external_data.add()
        entry.key, entry.value = key, str(value)
    return tensor


def _constant(tensor: onnx.TensorProto) -> onnx.ModelProto:
    return _model([helper.make_node("Constant", [], [W], value=tensor, name="const_w"),
                   helper.make_node("Add", [X, W], [Y])])


def _in_if_branch(tensor: onnx.TensorProto) -> onnx.ModelProto:
    """y = If(cond) then x + w (w an initializer of the then-branch) else x."""
    out = helper.make_tensor_value_info("t_y", TensorProto.FLOAT, [1, 4])
    then = helper.make_graph([helper.make_node("Add", [X, W], ["t_y"])], "then", [], [out], [tensor])
    other = helper.make_graph([helper.make_node("Identity", [X], ["e_y"])], "else", [],
                              [helper.make_tensor_value_info("e_y", TensorProto.FLOAT, [1, 4])])
    cond = numpy_helper.from_array(np.array(True), "cond")
    return _model([helper.make_node("If", ["cond"], [Y], then_branch=then, else_branch=other)], [cond])


def _sparse(values, indices, dims) -> onnx.ModelProto:
    sparse = helper.make_sparse_tensor(numpy_helper.from_array(np.asarray(values, np.float32), W),
                                       numpy_helper.from_array(np.asarray(indices, np.int64), "w_idx"), dims)
    return _model(sparse=[sparse])


def _dynamic(x_dims=("N", 4)) -> onnx.ModelProto:
    return _model([helper.make_node("Relu", [X], [Y])], x_shape=x_dims, y_shape=x_dims)


def _save(d: Path, model: onnx.ModelProto, name: str = "m.onnx") -> str:
    (d / name).write_bytes(model.SerializeToString())  # no checker: broken on purpose
    return str(d / name)


def _good(d: Path) -> str:
    return _save(d, _model(inits=[_w()]), "good.onnx")


# --- the malformed-tensor corpus: (id, model, message after "{path}: ") ------------------------------

TENSOR_DEFECTS = [
    ("dims disagree with raw data", lambda: _model(inits=[_w(dims=[1, 8])]),
     r"initializer 'w': raw data holds 16 bytes, its shape \[1, 8\] of FLOAT needs 32"),
    ("negative dim", lambda: _model(inits=[_w(dims=[-1, 4])]), r"initializer 'w': negative dim -1 in shape \[-1, 4\]"),
    ("2^40-element dim", lambda: _model(inits=[_w(dims=[1 << 40])]),
     r"initializer 'w': shape \[1099511627776\] holds 1099511627776 elements, more than graphopt accepts \(\d+\)"),
    ("raw data of the wrong size", lambda: _model(inits=[_w(raw_data=b"\0" * 10)]),
     r"initializer 'w': raw data holds 10 bytes, its shape \[1, 4\] of FLOAT needs 16"),
    ("float_data too short", lambda: _model(inits=[_typed(TensorProto.FLOAT, [1, 4], "float_data", [1.0, 2.0])]),
     r"initializer 'w': float_data holds 2 entries, its shape \[1, 4\] of FLOAT needs 4"),
    ("int64_data too long", lambda: _model([helper.make_node("Cast", [W], ["c"], to=TensorProto.FLOAT),
                                            helper.make_node("Add", [X, "c"], [Y])],
                                           [_typed(TensorProto.INT64, [1, 4], "int64_data", list(range(9)))]),
     r"initializer 'w': int64_data holds 9 entries, its shape \[1, 4\] of INT64 needs 4"),
    ("no data at all", lambda: _model(inits=[onnx.TensorProto(name=W, data_type=TensorProto.FLOAT, dims=[1, 4])]),
     r"initializer 'w': float_data holds 0 entries, its shape \[1, 4\] of FLOAT needs 4"),
    ("unknown data type", lambda: _model(inits=[_w(data_type=99)]), r"not a valid ONNX model \(invalid graph: 99 is not a valid DataType\)"),
    ("undefined data type", lambda: _model(inits=[_w(data_type=0)]), r"initializer 'w': has no data type \(UNDEFINED\)"),
    ("string count", lambda: _model([helper.make_node("Identity", [X], [Y])],
                                    [_typed(TensorProto.STRING, [3], "string_data", [b"a"])]),
     r"initializer 'w': holds 1 strings, its shape \[3\] needs 3"),
    ("Constant tensor raw data short", lambda: _constant(_w(raw_data=b"\0" * 6)),
     r"Constant node 'const_w' tensor 'w': raw data holds 6 bytes, its shape \[1, 4\] of FLOAT needs 16"),
    ("Constant tensor negative dim", lambda: _constant(_w(dims=[4, -1])),
     r"Constant node 'const_w' tensor 'w': negative dim -1 in shape \[4, -1\]"),
    ("subgraph initializer raw data short", lambda: _in_if_branch(_w(raw_data=b"\0" * 12)),
     r"initializer 'w': raw data holds 12 bytes, its shape \[1, 4\] of FLOAT needs 16"),
    ("subgraph initializer 2^40 dim", lambda: _in_if_branch(_w(dims=[1 << 20, 1 << 20])),
     r"initializer 'w': shape \[1048576, 1048576\] holds 1099511627776 elements, more than graphopt accepts \(\d+\)"),
    ("external tensor without a location", lambda: _model(inits=[_external(offset=0, length=16)]),
     r"initializer 'w': external data without a location \(the file its data lives in\)"),
    ("external tensor negative offset", lambda: _model(inits=[_external(location="w.bin", offset=-8)]),
     r"not a valid ONNX model \(invalid graph: .*\)"),  # onnx_ir itself refuses to build it
    ("external tensor length mismatch", lambda: _model(inits=[_external(location="w.bin", offset=0, length=8)]),
     r"initializer 'w': external data length 8 does not match the 16 bytes its shape \[1, 4\] of FLOAT needs"),
    ("sparse index out of range", lambda: _sparse([1, 2], [1, 99], [1, 4]),
     r"sparse initializer 'w': index 99 is out of range for its dense shape \[1, 4\] \(4 elements\)"),
    ("sparse negative index", lambda: _sparse([1, 2], [-1, 2], [1, 4]),
     r"sparse initializer 'w': index -1 is out of range for its dense shape \[1, 4\] \(4 elements\)"),
    ("sparse coordinate out of range", lambda: _sparse([1, 2], [[0, 1], [0, 7]], [1, 4]),
     r"sparse initializer 'w': coordinate \[0, 7\] is out of range for its dense shape \[1, 4\]"),
    ("sparse indices and values disagree", lambda: _sparse([1, 2, 3], [0, 1], [1, 4]),
     r"sparse initializer 'w': indices of shape \[2\] do not fit 3 values of a rank-2 tensor"),
    ("sparse negative dim", lambda: _sparse([1.0], [0], [1, -4]), r"sparse initializer 'w': negative dim -4 in shape \[1, -4\]"),
]


@dataclass(frozen=True)
class Case:
    id: str
    argv: Callable[[Path], list[str]]  # writes the case's files into the directory
    message: str  # regex for the whole stderr line; "{d}" = the directory


def _optimize(*args: str) -> list[str]:
    return ["optimize", *args, "-o", "{d}/" + OUT, "--quiet"]


def _tensor_cases() -> list[Case]:
    cases = []
    for i, (name, build, message) in enumerate(TENSOR_DEFECTS):
        prefix = r"graphopt: error: {d}/m.onnx: "

        def write(d: Path, build=build) -> str:
            return _save(d, build())

        cases.append(Case(f"optimize: {name}", lambda d, w=write: _optimize(w(d)), prefix + message))
        cases.append(Case(f"inspect: {name}", lambda d, w=write: ["inspect", w(d)], prefix + message))
        if i % 3 == 0:
            cases.append(Case(f"compare: {name}", lambda d, w=write: ["compare", _good(d), w(d)], prefix + message))
        if i % 3 == 1:
            cases.append(Case(f"bench: {name}", lambda d, w=write: ["bench", w(d), "--runs", "1"], prefix + message))
    return cases


# --- feeds, numeric arguments, data files --------------------------------------------------------

def _raw_pickle_npz(d: Path, name: str = "data.npz") -> str:
    """An .npz whose member x.npy is a pickle, not .npy data (numpy would hand back its bytes)."""
    with zipfile.ZipFile(d / name, "w") as archive:
        archive.writestr("x.npy", pickle.dumps(np.ones((1, 4), np.float32)))
    return str(d / name)


def _text_member_npz(d: Path) -> str:
    with zipfile.ZipFile(d / "data.npz", "w") as archive:
        archive.writestr("x.npy", "just text")
    return str(d / "data.npz")


def _usage(command: str, option: str, value: str, low: int, high: int) -> str:
    shown = value if re.fullmatch(r"-?\d+", value) is None else str(int(value))
    words = (f"expected an integer, got '{re.escape(value)}'" if not re.fullmatch(r"-?\d+", value)
             else f"must be an integer from {low} to {high}, got {shown}")
    return rf"graphopt {command}: error: argument {option}: {words}"


GIB = r"over the 4 GiB graphopt synthesizes per input"
STATIC = r"--shape 'x=2,4': input 'x' has static dim 1 at axis 0, got 2"
HUGE_INPUT = rf"input 'x': the model declares shape \[1099511627776, 4\] \(float32\), 16384\.0 GiB to synthesize, {GIB}"
OTHER_CASES = [
    Case("optimize: --shape 100000x100000", lambda d: _optimize(_save(d, _dynamic(("N", "M"))), "--shape", "x=100000,100000"),
         rf"graphopt: error: input 'x': --shape gives shape \[100000, 100000\] \(float32\), 37\.3 GiB to synthesize, {GIB}"),
    Case("optimize: --shape negative dim", lambda d: _optimize(_save(d, _dynamic()), "--shape", "x=-3,4"),
         r"graphopt: error: --shape 'x=-3,4': dims must be integers from 1 to 2147483647, got -3"),
    Case("optimize: --shape zero dim", lambda d: _optimize(_save(d, _dynamic()), "--shape", "x=0,4"),
         r"graphopt: error: --shape 'x=0,4': dims must be integers from 1 to 2147483647, got 0"),
    Case("optimize: --shape 20-digit dim", lambda d: _optimize(_save(d, _dynamic()), "--shape", "x=12345678901234567890,4"),
         r"graphopt: error: --shape 'x=12345678901234567890,4': dims must be integers from 1 to 2147483647, "
         r"got 12345678901234567890"),
    Case("optimize: --shape against a static dim", lambda d: _optimize(_save(d, _dynamic((1, 4))), "--shape", "x=2,4"),
         rf"graphopt: error: {STATIC}"),
    Case("optimize: declared 2^40 input dim", lambda d: _optimize(_save(d, _dynamic((1 << 40, 4)))),
         rf"graphopt: error: {HUGE_INPUT}"),
    Case("compare: declared 2^40 input dim", lambda d: ["compare", _save(d, _dynamic((1 << 40, 4))),
                                                       _save(d, _dynamic((1 << 40, 4)), "b.onnx")],
         rf"graphopt: error: {HUGE_INPUT}"),
    Case("compare: --shape against a static dim", lambda d: ["compare", _save(d, _dynamic((1, 4))),
                                                             _save(d, _dynamic((1, 4)), "b.onnx"), "--shape", "x=2,4"],
         rf"graphopt: error: {STATIC}"),
    Case("compare: --shape too big", lambda d: ["compare", _save(d, _dynamic()), _save(d, _dynamic(), "b.onnx"),
                                                "--shape", "x=2000000000,4"],
         rf"graphopt: error: input 'x': --shape gives shape \[2000000000, 4\] \(float32\), 29\.8 GiB to synthesize, {GIB}"),
    Case("bench: --shape against a static dim", lambda d: ["bench", _save(d, _dynamic((1, 4))), "--shape", "x=2,4"],
         rf"graphopt: error: {STATIC}"),
    Case("bench: --shape negative dim", lambda d: ["bench", _save(d, _dynamic()), "--shape", "x=4,-1"],
         r"graphopt: error: --shape 'x=4,-1': dims must be integers from 1 to 2147483647, got -1"),
    Case("bench: declared 2^40 input dim", lambda d: ["bench", _save(d, _dynamic((1 << 40, 4)))],
         rf"graphopt: error: {HUGE_INPUT}"),
    Case("bench: a model no provider can run", lambda d: ["bench", _save(d, _model([helper.make_node("FooBar", [X], [Y])])),
                                                          "--providers", "cpu", "--runs", "1"],
         r"graphopt: error: {d}/m.onnx: no provider could run the model \(cpu: .*FooBar.*\)"),
    Case("optimize: raw-pickle .npz member in --calib", lambda d: _optimize(_good(d), "--calib", _raw_pickle_npz(d)),
         r"graphopt: error: {d}/data.npz: member 'x' is not a \.npy array \(a pickle or other raw bytes\); "
         r"graphopt reads plain arrays only"),
    Case("optimize: raw-pickle .npz member in --data", lambda d: _optimize(_good(d), "--data", _raw_pickle_npz(d)),
         r"graphopt: error: {d}/data.npz: member 'x' is not a \.npy array \(a pickle or other raw bytes\); "
         r"graphopt reads plain arrays only"),
    Case("compare: raw-pickle .npz member", lambda d: ["compare", _good(d), _good(d), "--data", _raw_pickle_npz(d)],
         r"graphopt: error: {d}/data.npz: member 'x' is not a \.npy array .*"),
    Case("bench: text .npz member", lambda d: ["bench", _good(d), "--data", _text_member_npz(d)],
         r"graphopt: error: {d}/data.npz: member 'x' is not a \.npy array .*"),
]
for command, option, value, low, high in [
        ("optimize", "--runs", "0", 1, 100000), ("optimize", "--runs", str(10 ** 20), 1, 100000),
        ("optimize", "--runs", "many", 1, 100000), ("optimize", "--threads", "-3", 0, 1024),
        ("optimize", "--threads", "1000000", 0, 1024), ("optimize", "--seed", "-1", 0, (1 << 32) - 1),
        ("bench", "--runs", "0", 1, 100000), ("bench", "--runs", str(10 ** 20), 1, 100000),
        ("bench", "--runs", "-5", 1, 100000), ("bench", "--threads", "-3", 0, 1024),
        ("bench", "--threads", "2.5", 0, 1024)]:
    def argv(d: Path, command=command, option=option, value=value) -> list[str]:
        if command == "optimize":
            return _optimize(_good(d), f"{option}={value}")
        return ["bench", _good(d), f"{option}={value}"]

    OTHER_CASES.append(Case(f"{command}: {option} {value}", argv, _usage(command, option, value, low, high)))

CASES = _tensor_cases() + OTHER_CASES


def _run(argv: list[str], capsys) -> tuple[int, str, str]:
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse usage errors
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_input_error_is_exit_2_with_one_line(case, tmp_path, capsys, monkeypatch):
    d = tmp_path / "case"
    d.mkdir()
    monkeypatch.chdir(tmp_path)
    argv = [a.replace("{d}", str(d)) for a in case.argv(d)]
    code, _, err = _run(argv, capsys)
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith("\x1b")]
    assert code == 2, err
    assert len(lines) == 1 and "Traceback" not in err, err
    assert re.fullmatch(case.message.replace("{d}", re.escape(str(d))), lines[0]), lines[0]
    assert not (d / OUT).exists()


def test_corpus_size():
    assert len(CASES) >= 60
    assert {c.id.split(":")[0] for c in CASES} == {"optimize", "inspect", "compare", "bench"}


def test_internal_error_says_it_is_a_bug(tmp_path, capsys, monkeypatch):
    """Exit 3 is kept for graphopt's own bugs only, and says so in one line."""
    def explode(*args, **kwargs):
        raise ZeroDivisionError("boom\nsecond line")

    monkeypatch.setattr("graphopt.model_stats.model_stats", explode)
    code, _, err = _run(["inspect", _good(tmp_path)], capsys)
    assert code == 3
    assert err.splitlines() == ["graphopt: internal error (a bug in graphopt: rerun with --debug and report it): "
                                "ZeroDivisionError: boom second line"]


# --- valid edge cases the checks must let through ------------------------------------------------

def _offset_omitted(d: Path) -> str:
    (d / "w.bin").write_bytes(np.ones(4, np.float32).tobytes())
    return _save(d, _model(inits=[_external(location="w.bin")]))


VALID = [
    ("external tensor with no offset (0)", _offset_omitted),
    ("sparse initializer in range", lambda d: _save(d, _sparse([5, 6], [1, 3], [1, 4]))),
    ("sparse coordinates in range", lambda d: _save(d, _sparse([5, 6], [[0, 1], [0, 3]], [1, 4]))),
    ("float16 in int32_data", lambda d: _save(d, _model(
        [helper.make_node("Cast", [W], ["c"], to=TensorProto.FLOAT), helper.make_node("Add", [X, "c"], [Y])],
        [helper.make_tensor(W, TensorProto.FLOAT16, [1, 4], np.ones(4, np.float16))]))),
    ("int4 packed raw data", lambda d: _save(d, _model(
        [helper.make_node("Cast", [W], ["c"], to=TensorProto.FLOAT), helper.make_node("Add", [X, "c"], [Y])],
        [helper.make_tensor(W, TensorProto.INT4, [1, 4], [1, 2, 3, 4])]))),
    ("empty tensor", lambda d: _save(d, _model(
        [helper.make_node("Concat", [X, W], [Y], axis=0)], [_w(dims=[0, 4], raw_data=b"")]))),
]


@pytest.mark.parametrize("write", [v[1] for v in VALID], ids=[v[0] for v in VALID])
def test_valid_tensors_load(write, tmp_path, capsys):
    code, _, err = _run(["inspect", write(tmp_path), "--json"], capsys)
    assert code == 0, err


def test_valid_sparse_model_optimizes(tmp_path, capsys):
    out = tmp_path / OUT
    code, _, err = _run(["optimize", _save(tmp_path, _sparse([5, 6], [1, 3], [1, 4])), "-o", str(out), "--quiet"], capsys)
    assert code == 0, err
    onnx.checker.check_model(str(out), full_check=True)


# --- the Python API -------------------------------------------------------------------------------

FEED = {X: np.ones((1, 4), np.float32)}
API_MISUSE = [
    ("passes=[1, 2]", {"passes": [1, 2]}, r"passes\[0\]: expected a graphopt\.Pass instance, got 1"),
    ("passes=a class", {"passes": [next(iter(PASSES.values()))]}, r"passes\[0\]: got the class \w+, expected an instance: \w+\(\)"),
    ("passes=5", {"passes": 5}, r"passes: expected a spec string .*, got 5"),
    ("shapes garbage", {"shapes": {X: "garbage"}}, r"shapes\['x'\]: expected a tuple of integers from 1 to 2147483647, got 'garbage'"),
    ("shapes negative", {"shapes": {X: (-1, 4)}}, r"shapes\['x'\]: expected a tuple of integers .*, got \(-1, 4\)"),
    ("shapes float", {"shapes": {X: (1.5, 4)}}, r"shapes\['x'\]: expected a tuple of integers .*, got \(1\.5, 4\)"),
    ("shapes int", {"shapes": 5}, r"shapes: expected \{input name: dims\} or a list of 'NAME=DIMS' strings, got 5"),
    ("shapes string list bad", {"shapes": ["x=-1,4"]}, r"--shape 'x=-1,4': dims must be integers from 1 to 2147483647, got -1"),
    ("data list of arrays", {"data": [np.ones((1, 4), np.float32)]}, r"data: expected a path .*; feed 0 is a numpy array of shape \[1, 4\]"),
    ("data one array", {"data": np.ones((1, 4), np.float32)}, r"data: expected a path .*, got a numpy array of shape \[1, 4\]"),
    ("data one dict", {"data": FEED}, r"data: expected a path .*; wrap a single feed in a list"),
    ("data dict of lists", {"data": [{X: [[1.0, 2.0, 3.0, 4.0]]}]}, r"data: expected a path .*; feed 0 maps 'x' to \[\[1\.0, 2\.0, 3\.0, 4\.0\]\]"),
    ("data int", {"data": 3}, r"data: expected a path .*, got 3"),
    ("calib list of lists", {"calib": [[1, 2]]}, r"calib: expected a path .*; feed 0 is \[1, 2\]"),
    ("bench_runs=0", {"bench_runs": 0}, r"bench_runs: must be from 1 to 100000, got 0"),
    ("bench_runs huge", {"bench_runs": 10 ** 20}, r"bench_runs: must be from 1 to 100000, got 100000000000000000000"),
    ("bench_runs float", {"bench_runs": 2.5}, r"bench_runs: expected an integer from 1 to 100000, got 2\.5"),
    ("threads=-1", {"threads": -1}, r"threads: must be from 0 to 1024, got -1"),
    ("seed=-1", {"seed": -1}, r"seed: must be from 0 to 4294967295, got -1"),
    ("verify unknown", {"verify": "sometimes"}, r"verify: expected one of each, end, off, got 'sometimes'"),
    ("on_fail unknown", {"on_fail": "explode"}, r"on_fail: expected one of rollback, fail, warn, got 'explode'"),
    ("target unknown", {"target": "tpu"}, r"--target: unknown target 'tpu' \(known: .*\)"),
    ("target not a string", {"target": ["ort"]}, r"target: expected a target name, got \['ort'\]"),
    ("goal unknown", {"goal": "speed"}, r"goal: expected one of latency, size, got 'speed'"),
    ("budget int", {"budget": 5}, r"budget: expected a graphopt\.Budget, .*, got 5"),
    ("budget dict of strings", {"budget": {"cosine": "high"}}, r"budget: expected \{metric: number\}, got 'cosine': 'high'"),
    ("providers string", {"providers": "cpu"}, r"providers: expected a list of names such as \['cpu'\], got 'cpu'"),
    ("reports string", {"reports": "r.json"}, r"reports: expected a list of paths, got 'r\.json'"),
    ("progress not callable", {"progress": 5}, r"progress: expected a callable taking one message string, got 5"),
    ("recipe int", {"recipe": 5}, r"recipe: expected a string or path, got 5"),
    ("bench not a bool", {"bench": "yes"}, r"bench: expected True or False, got 'yes'"),
]


@pytest.mark.parametrize("kwargs,message", [c[1:] for c in API_MISUSE], ids=[c[0] for c in API_MISUSE])
def test_api_misuse_raises_input_error(kwargs, message, tmp_path):
    with pytest.raises(InputError) as info:
        graphopt.optimize(_model(inits=[_w()]), **kwargs)
    text = str(info.value)
    assert "\n" not in text and re.fullmatch(message, text), text


@pytest.mark.parametrize("name", ["dims disagree with raw data", "sparse index out of range", "unknown data type"])
def test_api_refuses_malformed_tensors_in_a_proto(name):
    build, message = next((b, m) for n, b, m in TENSOR_DEFECTS if n == name)
    with pytest.raises(InputError) as info:
        graphopt.optimize(build(), passes="cleanup")
    assert re.fullmatch("model: " + message, str(info.value)), str(info.value)


class _Reader:
    """ONNX Runtime's CalibrationDataReader protocol: get_next() until None (not iterable)."""

    def __init__(self, count: int, fail_at: int | None = None):
        self.feeds = iter([{X: np.full((1, 4), i, np.float32)} for i in range(count)])
        self.fail_at, self.calls = fail_at, 0

    def get_next(self):
        self.calls += 1
        if self.calls == self.fail_at:
            raise OSError("disk gone")
        return next(self.feeds, None)


def test_api_takes_an_onnxruntime_calibration_data_reader():
    result = graphopt.optimize(_model(inits=[_w()]), passes="cleanup", data=_Reader(3))
    assert result.report["data"]["count"] == 3
    with pytest.raises(InputError, match=r"^calib: the data reader raised OSError: disk gone$"):
        graphopt.optimize(_model(inits=[_w()]), passes="cleanup", calib=_Reader(3, fail_at=2))


def test_api_feeds_from_a_generator_are_used(tmp_path):
    feeds = ({X: np.full((1, 4), i, np.float32)} for i in range(2))
    result = graphopt.optimize(_model(inits=[_w()]), passes="cleanup", data=feeds)
    assert result.report["data"]["count"] == 2


# --- class 4: declared shapes that contradict inference -----------------------------------------

def _chain(**kwargs) -> onnx.ModelProto:
    """x -> Relu -> t -> Sigmoid -> y, with declarations given as kwargs."""
    return _model([helper.make_node("Relu", [X], ["t"]), helper.make_node("Sigmoid", ["t"], [Y])], **kwargs)


def _vi(name: str, shape, elem=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, elem, list(shape))


def _contradiction_in_if_branch() -> onnx.ModelProto:
    then = helper.make_graph([helper.make_node("Relu", [X], ["t_r"]), helper.make_node("Neg", ["t_r"], ["t_y"])],
                             "then", [], [_vi("t_y", [1, 4])], value_info=[_vi("t_r", [7, 7, 7])])
    other = helper.make_graph([helper.make_node("Identity", [X], ["e_y"])], "else", [], [_vi("e_y", [1, 4])])
    cond = numpy_helper.from_array(np.array(True), "cond")
    return _model([helper.make_node("If", ["cond"], [Y], then_branch=then, else_branch=other)], [cond])


REPAIRED = [
    ("intermediate value_info", lambda: _chain(value_info=[_vi("t", [1, 5])]), "value 't'", [1, 4]),
    ("intermediate value_info rank", lambda: _chain(value_info=[_vi("t", [4])]), "value 't'", [1, 4]),
    ("graph output shape", lambda: _chain(y_shape=(2, 4)), "output 'y'", [1, 4]),
    ("graph output rank", lambda: _chain(y_shape=(4,)), "output 'y'", [1, 4]),
    ("graph output, symbolic dim kept", lambda: _chain(x_shape=("N", 4), y_shape=("N", 5)), "output 'y'", ["N", 4]),
    ("value_info inside an If branch", _contradiction_in_if_branch, "value 't_r'", [1, 4]),
]


@pytest.mark.parametrize("build,what,out_shape", [c[1:] for c in REPAIRED], ids=[c[0] for c in REPAIRED])
def test_contradicted_declarations_are_repaired(build, what, out_shape, tmp_path, capsys):
    source = build()
    with pytest.raises(Exception, match="Inferred shape and existing shape differ"):
        onnx.checker.check_model(source, full_check=True)  # the input really is invalid
    path, out, report = _save(tmp_path, source), tmp_path / OUT, tmp_path / "r.json"
    code, stdout, err = _run(["optimize", path, "-o", str(out), "--quiet", "--report", str(report)], capsys)
    assert code == 0, err
    onnx.checker.check_model(str(out), full_check=True)
    saved = onnx.load(str(out)).graph.output[0].type.tensor_type.shape.dim
    assert [d.dim_param or d.dim_value for d in saved] == out_shape
    repaired = json.loads(report.read_text())["repaired"]
    assert repaired and repaired[0].startswith(what) and "contradicts the inferred" in repaired[0]
    assert f"repaired input (not the file): {what}" in stdout
    assert Path(path).read_bytes() == source.SerializeToString()  # the input file is never repaired


def test_contradicted_intermediate_type_is_dropped_when_ort_never_reads_the_file(tmp_path, capsys):
    """ORT refuses such a file when it computes reference outputs (exit 2, below); with --verify off
    graphopt drops the contradicted declaration and writes a valid model."""
    path, out = _save(tmp_path, _chain(value_info=[_vi("t", [1, 4], TensorProto.INT64)])), tmp_path / OUT
    code, _, err = _run(["optimize", path, "-o", str(out), "--quiet", "--verify", "off"], capsys)
    assert code == 0, err
    onnx.checker.check_model(str(out), full_check=True)


REFUSED = [
    ("output element type contradicted", lambda: _chain(y_type=TensorProto.INT64), [],
     r"graphopt: error: ONNX Runtime cannot load the model: .*Type \(tensor\(int64\)\) of output arg \(y\).*"),
    ("output element type contradicted, --verify off", lambda: _chain(y_type=TensorProto.INT64), ["--verify", "off"],
     r"graphopt: error: {d}/m.onnx: invalid ONNX model, onnx.checker: .*Inferred elem type differs from "
     r"existing elem type: \(1\) vs \(7\)"),
    ("intermediate type contradicted", lambda: _chain(value_info=[_vi("t", [1, 4], TensorProto.INT64)]), [],
     r"graphopt: error: ONNX Runtime cannot load the model: .*Type \(tensor\(int64\)\) of output arg \(t\).*"),
    ("dangling input, --verify off", lambda: _model([helper.make_node("Add", [X, "ghost"], [Y])]), ["--verify", "off"],
     r"graphopt: error: {d}/m.onnx: invalid ONNX model, onnx.checker: .*ghost.*"),
]


@pytest.mark.parametrize("build,extra,message", [c[1:] for c in REFUSED], ids=[c[0] for c in REFUSED])
def test_invalid_models_that_cannot_be_repaired_are_refused(build, extra, message, tmp_path, capsys):
    out = tmp_path / OUT
    code, _, err = _run(["optimize", _save(tmp_path, build()), "-o", str(out), "--quiet", *extra], capsys)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1, err
    assert re.fullmatch(message.replace("{d}", re.escape(str(tmp_path))), lines[0]), lines[0]
    assert not out.exists()


def test_unsorted_graph_is_sorted_not_refused(tmp_path, capsys):
    model = _chain()
    model.graph.node.reverse()
    out = tmp_path / OUT
    code, _, err = _run(["optimize", _save(tmp_path, model), "-o", str(out), "--quiet", "--passes", "cleanup"], capsys)
    assert code == 0, err
    onnx.checker.check_model(str(out), full_check=True)


def test_valid_model_reports_nothing_repaired(tmp_path):
    result = graphopt.optimize(_chain(), passes="cleanup")
    assert result.report["repaired"] == []


def test_api_repairs_a_proto_and_returns_a_valid_one():
    result = graphopt.optimize(_chain(y_shape=(2, 4), value_info=[_vi("t", [3])]), passes="cleanup")
    assert [line.split(":")[0] for line in result.report["repaired"]] == ["value 't'", "output 'y'"]
    onnx.checker.check_model(result.model, full_check=True)


def test_out_of_memory_is_exit_2_not_a_bug(tmp_path, capsys, monkeypatch):
    def exhaust(*args, **kwargs):
        raise MemoryError("Unable to allocate 74.5 GiB")

    monkeypatch.setattr("graphopt.model_stats.model_stats", exhaust)
    code, _, err = _run(["inspect", _good(tmp_path)], capsys)
    assert code == 2
    assert err.splitlines() == ["graphopt: error: out of memory (Unable to allocate 74.5 GiB): the model or its "
                                "feeds are too large for this machine"]
