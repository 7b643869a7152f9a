"""`graphopt passes` reads a snapshot of the pass classes (graphopt/catalogue.py): it must match them."""

from __future__ import annotations

import subprocess
import sys

from graphopt.catalogue import build_catalogue, load_catalogue
from graphopt.passes import PASSES


def test_the_catalogue_file_matches_the_pass_classes():
    assert load_catalogue() == build_catalogue(), \
        "graphopt/passes/catalogue.json is stale: run python tools/write_pass_catalogue.py"


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "graphopt", *args], capture_output=True, text=True)


def test_passes_lists_every_pass_without_importing_them():
    probe = ("import sys; from graphopt.cli import main; main(['passes']); "
             "heavy = [m for m in ('onnx', 'onnxruntime', 'onnx_ir', 'numpy') if m in sys.modules]; "
             "print('HEAVY', heavy)")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "HEAVY []" in done.stdout
    for name in PASSES:
        assert f"\n{name}  [" in "\n" + done.stdout
    assert "quantize  [lossy]" in done.stdout
    assert "    method: minmax|percentile|entropy|mse = percentile" in done.stdout
    assert "\nrecipes:\n  lossless: initializers-not-inputs," in done.stdout


def test_passes_name_explains_each_option_and_refuses_unknown_names():
    done = _cli("passes", "quantize")
    assert done.returncode == 0
    assert done.stdout.startswith("quantize  [lossy]  static INT8")
    assert "  speed_runs: int = 30\n      timed runs per candidate" in done.stdout
    bad = _cli("passes", "quantise")
    assert bad.returncode == 2 and "unknown pass 'quantise' (known: " in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1
