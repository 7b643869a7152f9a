"""--save-inputs / --save-outputs: the verification feeds and the reference in Polygraphy's JSON,
read back by Polygraphy itself and by graphopt."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import onnx
import pytest

from graphopt import optimize
from graphopt.data_files import read_polygraphy_json
from graphopt.replay_files import REFERENCE_RUNNER
from models.builders import cnn

polygraphy = pytest.importorskip("polygraphy")  # a dev dependency: the reader these files are for


def _model(tmp_path):
    path = tmp_path / "m.onnx"
    onnx.save(cnn(), path)
    return path


def test_saved_files_are_what_polygraphy_loads(tmp_path):
    from polygraphy.comparator import RunResults
    from polygraphy.json import load_json

    model = _model(tmp_path)
    feeds_path, ref_path = tmp_path / "feeds.json", tmp_path / "ref.json"
    result = optimize(str(model), str(tmp_path / "o.onnx"), save_inputs=feeds_path, save_outputs=ref_path)
    feeds = load_json(str(feeds_path))
    assert len(feeds) == result.report["data"]["verification_feeds"] == 2
    results = RunResults.load(str(ref_path))
    assert list(results.keys()) == [REFERENCE_RUNNER] and len(results[REFERENCE_RUNNER]) == len(feeds)
    import onnxruntime as ort

    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    for feed, iteration in zip(feeds, results[REFERENCE_RUNNER]):
        expected = dict(zip(names, session.run(None, feed)))  # the input model's outputs
        for name in names:
            np.testing.assert_allclose(iteration[name], expected[name], rtol=1e-5, atol=1e-5)
    mine = read_polygraphy_json(feeds_path)  # graphopt reads its own file back (--data feeds.json)
    for a, b in zip(mine, feeds):
        assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_polygraphy_run_replays_the_check_on_the_optimized_model(tmp_path):
    model, out = _model(tmp_path), tmp_path / "o.onnx"
    done = subprocess.run([sys.executable, "-m", "graphopt", "optimize", str(model), str(out), "--quiet",
                           "--save-inputs", str(tmp_path / "in.json"), "--save-outputs", str(tmp_path / "ref.json")],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert f"{tmp_path / 'in.json'}, {tmp_path / 'ref.json'}" in done.stdout  # named among what was written
    replay = subprocess.run([sys.executable, "-c", "from polygraphy.tools import main; main()", "run", str(out),
                             "--onnxrt", "--load-inputs", str(tmp_path / "in.json"),
                             "--load-outputs", str(tmp_path / "ref.json"), "--atol", "1e-4", "--rtol", "1e-4"],
                            capture_output=True, text=True)
    assert replay.returncode == 0, replay.stdout[-2000:] + replay.stderr[-2000:]
    assert "PASSED" in replay.stdout + replay.stderr


def test_a_save_path_that_is_a_read_or_another_write_is_refused_before_any_work(tmp_path):
    model = _model(tmp_path)
    for argv, said in ((["--save-inputs", str(model)], "--save-inputs"),
                       (["--save-inputs", str(tmp_path / "x.json"), "--save-outputs", str(tmp_path / "x.json")],
                        "are the same file")):
        done = subprocess.run([sys.executable, "-m", "graphopt", "optimize", str(model), str(tmp_path / "o.onnx"),
                               *argv], capture_output=True, text=True)
        assert done.returncode == 2 and said in done.stderr and len(done.stderr.strip().splitlines()) == 1
        assert not (tmp_path / "o.onnx").exists()


def test_auto_saves_the_feeds_and_reference_it_judged_candidates_on(monkeypatch, tmp_path):
    from polygraphy.comparator import RunResults

    from graphopt import auto

    monkeypatch.setattr(auto, "CANDIDATES", (("lossless", (), ()),))
    feeds_path, ref_path = tmp_path / "in.json", tmp_path / "ref.json"
    result = optimize("models/default.onnx", tmp_path / "o.onnx", recipe="auto", bench_runs=5,
                      save_inputs=feeds_path, save_outputs=ref_path)
    feeds = read_polygraphy_json(feeds_path)
    assert len(feeds) == result.report["data"]["verification_feeds"]
    assert len(RunResults.load(str(ref_path))[REFERENCE_RUNNER]) == len(feeds)
