"""Lossy passes never judge themselves on noise, and calibration data is split by one rule.

- A lossy pass or recipe without `--data` or `--calib` is exit 2 with one line; `--calib synthetic`
  opts in, and the summary and the report then say nothing was checked on real data.
- A single `.npz` is split into feeds of the model's batch size (static first dim, else one
  sample per feed); `--calib` alone holds out its last quarter, refuses fewer than 2 feeds, and
  never hands a calibration feed to verification.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

import models
from graphopt.run_data import SEARCH_FEEDS, run_feeds
from graphopt.cli import main
from graphopt.data_files import load_feeds
from graphopt.errors import InputError
from graphopt.io import load_model

LOSSY_RUNS = [["--passes", "quantize"], ["--passes", "prune"], ["--passes", "prune-nm"],
              ["--passes", "prune-channels"], ["--passes", "svd"], ["--passes", "tucker"],
              ["--recipe", "int8"], ["--recipe", "compress"], ["--recipe", "auto"]]
WARNING = "WARNING: calibrated and verified on synthetic inputs: nothing was checked on real data"


def _cli(argv: list[str], capsys) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def mlp_path(tmp_path: Path) -> Path:
    """[batch, 64] -> [batch, 10]: a symbolic batch, so an .npz is one sample per feed."""
    path = tmp_path / "mlp.onnx"
    onnx.save(models.dynamic_batch_mlp(), path)
    return path


@pytest.fixture
def batch1_path(tmp_path: Path) -> Path:
    """[1, 64] -> [1, 10]: a static batch of 1."""
    path = tmp_path / "mlp1.onnx"
    onnx.save(models.mlp(batch=1), path)
    return path


def _samples(path: Path, count: int, features: int = 64) -> Path:
    """Sample i is filled with the value i, so a feed says which samples it holds."""
    values = np.repeat(np.arange(count, dtype=np.float32)[:, None], features, axis=1) / count
    np.savez(path, x=values)
    return path


@pytest.mark.parametrize("run", LOSSY_RUNS, ids=[" ".join(r) for r in LOSSY_RUNS])
def test_lossy_without_data_is_exit_2_with_one_line(run, mlp_path, tmp_path, capsys):
    out = tmp_path / "out.onnx"
    code, stdout, err = _cli(["optimize", str(mlp_path), "-o", str(out), "--quiet", *run], capsys)
    assert code == 2 and not out.exists()
    lines = err.strip().splitlines()
    assert len(lines) == 1
    assert "needs calibration data: --calib DATA (or --calib synthetic" in lines[0]
    if run[0] == "--recipe" and run[1] == "int8":
        assert lines[0].startswith("graphopt: error: quantize needs calibration data")


@pytest.mark.parametrize("run", [["--passes", "prune:sparsity=0.3"], ["--recipe", "int8"]], ids=["prune", "int8"])
def test_calib_synthetic_opts_in_and_says_so(run, mlp_path, tmp_path, capsys):
    out, report = tmp_path / "out.onnx", tmp_path / "r.json"
    code, stdout, _ = _cli(["optimize", str(mlp_path), "-o", str(out), "--quiet", "--calib", "synthetic",
                            "--report", str(report), *run], capsys)
    assert code == 0 and out.exists()
    assert stdout.count(WARNING) == 1
    data = json.loads(report.read_text())["data"]
    assert data["synthetic"] is True and data["verify"] == "synthetic" and data["held_out"] == 0
    assert data["calib_feeds_read"] == 0 and data["data_feeds_read"] == 0


def test_the_keyword_wins_over_a_file_named_synthetic(mlp_path, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _samples(tmp_path / "synthetic", 8)
    (tmp_path / "synthetic.npz").rename(tmp_path / "synthetic")  # np.savez appends .npz
    code, stdout, _ = _cli(["optimize", str(mlp_path), "-o", "out.onnx", "--quiet", "--passes", "prune",
                            "--calib", "synthetic"], capsys)
    assert code == 0 and WARNING in stdout and "write ./synthetic" in stdout
    code, stdout, _ = _cli(["optimize", str(mlp_path), "-o", "out2.onnx", "--quiet", "--passes", "prune",
                            "--calib", "./synthetic"], capsys)
    assert code == 0 and "WARNING" not in stdout
    assert "8 feeds read from --calib: 6 feeds (6 samples) calibrate, 2 feeds (2 samples) held out" in stdout


def test_real_data_needs_no_opt_in(mlp_path, tmp_path, capsys):
    data = _samples(tmp_path / "d.npz", 12)
    code, stdout, _ = _cli(["optimize", str(mlp_path), "-o", str(tmp_path / "o.onnx"), "--quiet",
                            "--passes", "prune:sparsity=0.3", "--data", str(data)], capsys)
    assert code == 0 and "WARNING" not in stdout
    assert "data: 12 feeds (12 samples) read from --data verify; lossy passes calibrate and size themselves on them too" in stdout


def test_npz_is_split_by_the_models_batch(mlp_path, batch1_path, tmp_path):
    npz = _samples(tmp_path / "d.npz", 64)
    for path in (mlp_path, batch1_path):  # symbolic batch and static batch 1: one sample per feed
        feeds = load_feeds(npz, load_model(str(path)).model)
        assert len(feeds) == 64 and feeds[0]["x"].shape == (1, 64)
        assert [float(f["x"][0, 0]) for f in feeds] == pytest.approx(list(np.arange(64) / 64))
    batch4 = tmp_path / "mlp4.onnx"
    onnx.save(models.mlp(batch=4), batch4)
    feeds = load_feeds(npz, load_model(str(batch4)).model)
    assert len(feeds) == 16 and feeds[1]["x"].shape == (4, 64)
    with pytest.raises(InputError, match="holds 63 samples, not a multiple of the model's batch size 4"):
        load_feeds(_samples(tmp_path / "odd.npz", 63), load_model(str(batch4)).model)
    stacked = tmp_path / "stacked.npz"  # one more axis than the input: a stack of whole feeds
    np.savez(stacked, x=np.zeros((3, 5, 64), np.float32))
    feeds = load_feeds(stacked, load_model(str(mlp_path)).model)
    assert len(feeds) == 3 and feeds[0]["x"].shape == (5, 64)


def test_one_calibration_feed_is_refused(batch1_path, tmp_path, capsys):
    one = _samples(tmp_path / "one.npz", 1)
    out = tmp_path / "o.onnx"
    code, _, err = _cli(["optimize", str(batch1_path), "-o", str(out), "--quiet", "--passes", "quantize",
                         "--calib", str(one)], capsys)
    assert code == 2 and not out.exists()
    assert err.strip() == ("graphopt: error: --calib gives 1 feed; give at least 2 "
                           "(one is held out for verification) or --data")
    code, _, _ = _cli(["optimize", str(batch1_path), "-o", str(out), "--quiet", "--passes", "prune",
                       "--calib", str(one), "--data", str(_samples(tmp_path / "d.npz", 4))], capsys)
    assert code == 0  # with --data nothing has to be held out


@pytest.mark.parametrize("count, held", [(2, 1), (3, 1), (8, 2), (64, 16)])
def test_held_out_never_overlaps_calibration(mlp_path, tmp_path, count, held):
    loaded = load_model(str(mlp_path))
    run = run_feeds(loaded, None, str(_samples(tmp_path / "c.npz", count)), None, 0)
    verify, calib, info = run.verification, run.calibration, run.info
    assert len(verify) == held and len(calib) == count - held
    calib_values = {float(f["x"][0, 0]) for f in calib}
    verify_values = {float(f["x"][0, 0]) for f in verify}
    assert not calib_values & verify_values and len(calib_values | verify_values) == count
    calib_arrays, verify_arrays = [f["x"] for f in calib], [f["x"] for f in verify]  # alive while compared
    assert not any(np.shares_memory(a, b) for a in calib_arrays for b in verify_arrays)
    assert max(calib_values) < min(verify_values)  # the last quarter is held out
    assert info["verify"] == "held-out calibration" and info["synthetic"] is False
    assert (info["calib_feeds_read"], info["calibration_feeds"], info["verification_feeds"], info["held_out"]) \
        == (count, count - held, held, held)
    assert (info["calibration_samples"], info["verification_samples"]) == (count - held, held)
    search_values = {float(f["x"][0, 0]) for f in run.search}
    assert search_values <= calib_values and not search_values & verify_values  # the search never sees them
    assert (info["search"], info["search_feeds"]) == ("calibration", len(run.search))


def test_search_feeds_are_capped_and_spread(mlp_path, tmp_path):
    loaded = load_model(str(mlp_path))
    run = run_feeds(loaded, None, str(_samples(tmp_path / "c.npz", 400)), None, 0)
    values = [float(f["x"][0, 0]) for f in run.search]
    calib = [float(f["x"][0, 0]) for f in run.calibration]
    assert len(run.search) == SEARCH_FEEDS and len(set(values)) == SEARCH_FEEDS
    assert values[0] == calib[0] and values[-1] == calib[-1]  # evenly spaced over the calibration part
    assert "lossy passes size themselves on 64 of the calibration feeds" in run.info["summary"]


def test_without_calib_the_search_is_said_to_share_the_verification_feeds(mlp_path, tmp_path):
    run = run_feeds(load_model(str(mlp_path)), str(_samples(tmp_path / "d.npz", 6)), None, None, 0)
    assert run.search == [] and (run.info["search"], run.info["search_feeds"]) == ("verification", 6)
    assert "lossy passes calibrate and size themselves on them too" in run.info["summary"]


def test_data_counts_are_printed_and_reported(mlp_path, tmp_path, capsys):
    calib, data = _samples(tmp_path / "c.npz", 20), _samples(tmp_path / "d.npz", 6)
    report = tmp_path / "r.json"
    code, stdout, _ = _cli(["optimize", str(mlp_path), "-o", str(tmp_path / "o.onnx"), "--quiet",
                            "--passes", "prune:sparsity=0.3", "--calib", str(calib), "--report", str(report)],
                           capsys)
    assert code == 0
    assert "data: 20 feeds read from --calib: 15 feeds (15 samples) calibrate, 5 feeds (5 samples) held out" \
        in stdout
    code, stdout, _ = _cli(["optimize", str(mlp_path), "-o", str(tmp_path / "o2.onnx"), "--quiet",
                            "--passes", "prune:sparsity=0.3", "--calib", str(calib), "--data", str(data),
                            "--report", str(report)], capsys)
    assert code == 0
    assert "data: 20 feeds (20 samples) read from --calib calibrate; 6 feeds (6 samples) read from --data verify" \
        in stdout
    info = json.loads(report.read_text())["data"]
    assert (info["verify"], info["calibration"], info["held_out"], info["synthetic"]) == ("data", "calib", 0, False)
    assert (info["calib_feeds_read"], info["data_feeds_read"]) == (20, 6)


def test_lossless_runs_without_data_still_synthesize(mlp_path, tmp_path, capsys):
    code, stdout, _ = _cli(["optimize", str(mlp_path), "-o", str(tmp_path / "o.onnx"), "--quiet"], capsys)
    assert code == 0 and "WARNING" not in stdout
    assert "data: 2 feeds (2 samples) synthesized verify\n" in stdout
