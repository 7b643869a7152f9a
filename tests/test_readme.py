"""The README's examples run as written (paths moved into a temporary folder): the set-up
command's `graphopt optimize`, the Python API block and the profile-file block. CI runs this in
the fresh virtual environment `.ci/run` creates."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _blocks(language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", README, flags=re.S | re.M)


def test_the_first_command_runs_as_written(tmp_path):
    (line,) = [b for b in _blocks("bash") if "graphopt optimize models/default.onnx" in b]
    command = line.strip().split(" && ", 1)[1].replace("/tmp/", f"{tmp_path}/")  # pip install: CI's part
    argv = shlex.split(command)
    assert argv[0] == "graphopt"
    done = subprocess.run([sys.executable, "-m", "graphopt", *argv[1:]], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    for name in ("default.opt.onnx", "report.html", "report.json"):
        assert (tmp_path / name).stat().st_size > 0


def test_the_python_api_block_runs_as_written(tmp_path):
    (block,) = [b for b in _blocks("python") if "graphopt.optimize(" in b]
    shutil.copy(ROOT / "models" / "default.onnx", tmp_path / "model.onnx")  # the block's "model.onnx"
    probe = (block + "\nassert result.output.exists() and result.report['passes']"
             "\nprint(type(optimized_graph).__name__)\n")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "model.opt.onnx").exists() and done.stdout.strip().endswith("Graph")


def test_the_profile_file_block_is_a_valid_profile(tmp_path):
    from graphopt.passes.quantize.profile_files import load_profile
    from graphopt.recipes import parse_pass_spec

    (block,) = _blocks("toml")
    path = tmp_path / "npu.toml"
    path.write_text(block)
    profile = load_profile(str(path))
    assert "Add" not in profile.ops and profile.ops["Sigmoid"].role == "elementwise"
    assert parse_pass_spec(f"quantize:profile={path}").options.profile == str(path)


@pytest.mark.parametrize("row", [r for r in README.splitlines() if r.startswith("| ") and "`graphopt " in r])
def test_the_flag_table_names_only_real_commands_and_flags(row):
    """Each graphopt command the mapping table quotes parses (`--help` of that subcommand lists
    every flag it uses)."""
    for quoted in re.findall(r"`(graphopt [^`]+)`", row):
        argv = shlex.split(quoted)
        helped = subprocess.run([sys.executable, "-m", "graphopt", argv[1], "--help"], capture_output=True, text=True)
        assert helped.returncode == 0, quoted
        for flag in [a.split("=")[0] for a in argv[2:] if a.startswith("--")]:
            assert flag in helped.stdout, f"{quoted}: {flag} is not a flag of graphopt {argv[1]}"
