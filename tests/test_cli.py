"""The CLI contract: commands, exit codes, one-line errors, no output on failure, input untouched."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

import models
from conftest import ADD_RELU, file_digest, parse
from graphopt.cli import main

CUSTOM_OP = """
<ir_version: 9, opset_import: ["" : 17, "com.example" : 1]>
g (float[2] x) => (float[2] y) {
    t = Relu(x)
    y = com.example.Mystery(t)
}
"""


@pytest.fixture
def default_copy(tmp_path: Path) -> Path:
    path = tmp_path / "in.onnx"
    path.write_bytes(models.default_model_path().read_bytes())
    return path


def run_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_optimize_writes_model_and_report(default_copy, tmp_path, capsys):
    before = file_digest(default_copy)
    out, report = tmp_path / "out.onnx", tmp_path / "r.json"
    code, stdout, _ = run_cli(["optimize", str(default_copy), "-o", str(out), "--report", str(report),
                               "--bench", "--runs", "3"], capsys)
    assert code == 0
    onnx.checker.check_model(onnx.load(out), full_check=True)
    data = json.loads(report.read_text())
    assert data["model"]["after"]["nodes"] < data["model"]["before"]["nodes"]
    assert "fold-constants" in stdout and "cpu p50 ms" in stdout
    assert file_digest(default_copy) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.onnx", "out.onnx", "r.json"]


def _bad_inputs(tmp_path: Path, default_copy: Path) -> dict[str, tuple[list[str], str]]:
    not_onnx = tmp_path / "notes.onnx"
    not_onnx.write_text("hello, I am a text file")
    truncated = tmp_path / "trunc.onnx"
    truncated.write_bytes(default_copy.read_bytes()[:5000])
    custom = tmp_path / "custom.onnx"
    onnx.save(parse(CUSTOM_OP), custom)
    ext = tmp_path / "ext.onnx"
    onnx.save(models.mlp(), ext, save_as_external_data=True, location="ext.bin", size_threshold=0)
    (tmp_path / "ext.bin").unlink()
    bad_npz = tmp_path / "bad.npz"
    np.savez(bad_npz, input=np.zeros((2, 1, 3, 32, 32), np.float64))
    src = str(default_copy)
    return {
        "not onnx": ([str(not_onnx)], "not a valid ONNX model"),
        "truncated": ([str(truncated)], "not a valid ONNX model"),
        "missing external data": ([str(ext)], "external data file 'ext.bin' for tensor"),
        "unknown pass": ([src, "--passes", "cleanup,shrinkify"], "unknown pass 'shrinkify'"),
        "malformed option": ([src, "--passes", "fold-constants:generator_limit=big"],
                             "option generator_limit='big': expected an integer"),
        "bad shape name": ([src, "--shape", "images=1,3,32,32"], "the model has no input 'images'"),
        "data dtype": ([src, "--data", str(bad_npz)], "input 'input' expects float32, data has float64"),
        "custom op": ([str(custom)], "ONNX Runtime cannot load the model"),
        "bad budget": ([src, "--budget", "vibes=1"], "--budget 'vibes=1': expected METRIC=VALUE"),
        "no such recipe": ([src, "--recipe", "turbo"], "unknown recipe"),
        "bad provider": ([src, "--bench", "--providers", "tpu"], "unknown provider 'tpu'"),
        "output is input": ([src, "-o", src], "never overwrites its input"),
    }


CASES = ["not onnx", "truncated", "missing external data", "unknown pass", "malformed option",
         "bad shape name", "data dtype", "custom op", "bad budget", "no such recipe", "bad provider",
         "output is input"]


@pytest.mark.parametrize("case", CASES)
def test_bad_input_exit_2_one_line_no_output(case, tmp_path, default_copy, capsys):
    args, message = _bad_inputs(tmp_path, default_copy)[case]
    digests = {p: file_digest(p) for p in tmp_path.iterdir() if p.is_file()}
    out = tmp_path / "out.onnx"
    argv = ["optimize", *args] + ([] if "-o" in args else ["-o", str(out)])
    code, _, err = run_cli(argv, capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert lines[-1].startswith("graphopt: error:") and message in lines[-1]
    assert not any("Traceback" in line for line in lines)
    assert not out.exists()
    assert {p: file_digest(p) for p in digests} == digests
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_verification_failure_exit_1_and_no_output(default_copy, tmp_path, capsys):
    out = tmp_path / "o.onnx"
    # fuse-bn moves the outputs by ~1e-6 (re-association): within its tolerance, not within 0
    code, _, err = run_cli(["optimize", str(default_copy), "-o", str(out), "--passes",
                            "fuse-bn", "--budget", "max_abs=0"], capsys)
    assert code == 1 and "misses the accuracy budget" in err and not out.exists()


def test_debug_shows_traceback(tmp_path, capsys):
    bad = tmp_path / "x.onnx"
    bad.write_text("nope")
    code, _, err = run_cli(["--debug", "optimize", str(bad), "-o", str(tmp_path / "o.onnx")], capsys)
    assert code == 2 and "Traceback" in err


def test_usage_error_is_exit_2(capsys):
    with pytest.raises(SystemExit) as info:
        main(["optimize"])
    assert info.value.code == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_inspect_reports_ops_params_macs(capsys):
    code, out, _ = run_cli(["inspect", str(models.default_model_path()), "--json"], capsys)
    stats = json.loads(out)
    assert code == 0 and stats["op_histogram"]["Conv"] >= 4 and stats["macs"] > 0
    assert stats["inputs"][0]["shape"] == [1, 3, 32, 32]


def test_compare_and_bench(default_copy, tmp_path, capsys):
    out = tmp_path / "o.onnx"
    assert main(["optimize", str(default_copy), "-o", str(out), "--quiet"]) == 0
    capsys.readouterr()
    code, text, _ = run_cli(["compare", str(default_copy), str(out), "--json"], capsys)
    result = json.loads(text)
    assert code == 0 and result["outputs"]["logits"]["cosine"] > 0.999999
    code, text, _ = run_cli(["bench", str(out), "--runs", "3", "--json"], capsys)
    assert code == 0 and json.loads(text)["results"]["cpu"]["p50_ms"] > 0


def test_passes_lists_options(capsys):
    code, out, _ = run_cli(["passes"], capsys)
    assert code == 0 and "generator_limit: int = 4096" in out and "lossless:" in out


def test_console_script_entry_point(default_copy, tmp_path):
    out = tmp_path / "o.onnx"
    proc = subprocess.run([sys.executable, "-m", "graphopt.cli", "optimize", str(default_copy), "-o",
                           str(out), "--quiet"], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert out.exists() and "wrote" in proc.stdout


def test_python_dash_m_graphopt_and_version(default_copy, tmp_path):
    from graphopt import __version__

    proc = subprocess.run([sys.executable, "-m", "graphopt", "--version"], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.strip() == f"graphopt {__version__}"
    out = tmp_path / "o.onnx"
    proc = subprocess.run([sys.executable, "-m", "graphopt", "optimize", str(default_copy), str(out), "--quiet"],
                          capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert out.exists() and f"wrote {out}" in proc.stdout  # onnxsim's positional form


@pytest.mark.parametrize("extra, message", [
    ([], "no output path: graphopt optimize IN OUT (or -o OUT)"),
    (["a.onnx", "-o", "b.onnx"], "two output paths: 'a.onnx' and -o 'b.onnx'; give one")])
def test_output_path_exactly_once(default_copy, tmp_path, capsys, extra, message, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli(["optimize", str(default_copy), *extra], capsys)
    assert code == 2 and err.strip() == f"graphopt: error: {message}"
    assert not (tmp_path / "a.onnx").exists() and not (tmp_path / "b.onnx").exists()
    code, _, _ = run_cli(["optimize", str(default_copy), "same.onnx", "-o", "same.onnx", "--quiet"], capsys)
    assert code == 0 and (tmp_path / "same.onnx").exists()


def test_optimize_help_lists_every_recipe_and_the_defaults(capsys):
    from graphopt.limits import RECIPE_SUMMARIES
    from graphopt.recipes import RECIPES

    assert set(RECIPE_SUMMARIES) == {*RECIPES, "auto"}
    with pytest.raises(SystemExit):
        main(["optimize", "--help"])
    out = capsys.readouterr().out
    assert all(f"  {name} " in out for name in RECIPE_SUMMARIES)
    assert "timed runs per benchmark (default: 20)" in " ".join(out.split())
    assert "(default: None)" not in out


def test_cli_help_does_not_load_onnx_or_onnxruntime():
    code = ("import sys; from graphopt.cli import build_parser; build_parser(); "
            "print(sorted(m for m in ('onnx', 'onnxruntime', 'onnx_ir', 'numpy') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.strip() == "[]", proc.stdout + proc.stderr


def test_precision_is_the_matching_recipe(default_copy, tmp_path, capsys):
    out, report = tmp_path / "o.onnx", tmp_path / "r.json"
    code, _, err = run_cli(["optimize", str(default_copy), str(out), "--precision", "int8", "--calib", "synthetic",
                            "--quiet", "--report", str(report)], capsys)
    assert code == 0, err
    names = [p["name"] for p in json.loads(report.read_text())["passes"]]
    assert names[0] == "opset" and names[-1] == "quantize"
    with pytest.raises(SystemExit) as exit_info:
        main(["optimize", str(default_copy), str(out), "--precision", "int8", "--recipe", "int8"])
    assert exit_info.value.code == 2 and "not allowed with argument" in capsys.readouterr().err


def test_summary_names_every_file_written_and_says_when_nothing_was_verified(default_copy, tmp_path, capsys):
    out, report = tmp_path / "o.onnx", tmp_path / "r.json"
    code, stdout, _ = run_cli(["optimize", str(default_copy), str(out), "--quiet", "--report", str(report),
                               "--verify", "off"], capsys)
    assert code == 0 and f"wrote {out}, {report}" in stdout
    assert "WARNING: --verify off: no pass was checked against the input model" in stdout
    code, stdout, _ = run_cli(["optimize", str(default_copy), str(out), "--quiet"], capsys)
    assert code == 0 and "--verify off" not in stdout


def test_a_lossy_pass_that_changed_nothing_says_why(tmp_path, capsys):
    src = tmp_path / "m.onnx"
    onnx.save(parse(ADD_RELU), src)
    code, stdout, _ = run_cli(["optimize", str(src), str(tmp_path / "o.onnx"), "--quiet", "--passes",
                               "quantize-weights", "--calib", "synthetic"], capsys)
    assert code == 0 and "quantize-weights: not applied: " in stdout


CUSTOM_INVERSE = """
<ir_version: 9, opset_import: ["" : 17, "ai.onnx.contrib" : 1]>
g (float[3, 3] x) => (float[3, 3] y) {
    t = Identity(x)
    y = ai.onnx.contrib.Inverse(t)
}
"""


def test_custom_ops_library_lets_a_custom_domain_model_be_verified(tmp_path, capsys):
    extensions = pytest.importorskip("onnxruntime_extensions")
    src, out = tmp_path / "m.onnx", tmp_path / "o.onnx"
    onnx.save(onnx.parser.parse_model(CUSTOM_INVERSE), src)
    code, _, err = run_cli(["optimize", str(src), str(out), "--quiet"], capsys)
    assert code == 2 and "ai.onnx.contrib:Inverse(-1) is not a registered function/op" in err and not out.exists()
    code, stdout, err = run_cli(["optimize", str(src), str(out), "--quiet", "--custom-ops",
                                 extensions.get_library_path()], capsys)
    assert code == 0, err
    assert [n.op_type for n in onnx.load(out).graph.node] == ["Inverse"] and "WARNING" not in stdout


@pytest.mark.parametrize("make, message", [
    (lambda d: d / "missing.so", "--custom-ops {p}: no such file"),
    (lambda d: (d / "bad.so").write_text("not a library") and d / "bad.so", "--custom-ops {p}: ONNX Runtime cannot load it ("),
])
def test_custom_ops_library_that_cannot_load_is_one_line(default_copy, tmp_path, capsys, make, message):
    path = make(tmp_path)
    code, _, err = run_cli(["optimize", str(default_copy), str(tmp_path / "o.onnx"), "--custom-ops", str(path)],
                           capsys)
    assert code == 2 and err.startswith("graphopt: error: " + message.format(p=path)) and len(err.splitlines()) == 1
    assert not (tmp_path / "o.onnx").exists()


def test_passes_name_explains_each_option(capsys):
    code, out, _ = run_cli(["passes", "quantize"], capsys)
    assert code == 0 and out.startswith("quantize  [lossy]")
    assert "  max_fallback: int = 64\n      at most this many nodes go back to float" in out
    assert "  method: minmax|percentile|entropy|mse = percentile" in out
    code, _, err = run_cli(["passes", "nope"], capsys)
    assert code == 2 and err.startswith("graphopt: error: unknown pass 'nope' (known: ")


def test_a_closed_pipe_is_not_an_internal_error():
    proc = subprocess.run(f"'{sys.executable}' -m graphopt passes | head -1", shell=True, capture_output=True,
                          text=True)
    assert proc.stdout.count("\n") == 1 and "internal error" not in proc.stderr


def test_output_over_a_custom_ops_library_is_refused(default_copy, tmp_path, capsys):
    extensions = pytest.importorskip("onnxruntime_extensions")
    library = tmp_path / "ops.so"
    library.write_bytes(Path(extensions.get_library_path()).read_bytes())
    before = library.read_bytes()
    code, _, err = run_cli(["optimize", str(default_copy), str(library), "--custom-ops", str(library)], capsys)
    assert code == 2 and "--custom-ops library" in err and len(err.splitlines()) == 1
    assert library.read_bytes() == before
