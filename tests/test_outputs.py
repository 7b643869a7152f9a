"""graphopt.outputs and graphopt.transaction: the write plan, staging, commit, rollback, signals, stale staging.

The CLI-level corpus (every refused write set, signals delivered to a real subprocess) is
tests/robustness/test_write_set.py; these tests pin the pieces one by one.
"""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import onnx
import pytest

import graphopt.transaction as tx
import models
from conftest import ADD_RELU, file_digest, parse
from graphopt import io as gio
from graphopt import optimize
from graphopt.errors import InputError
from graphopt.outputs import plan_writes
from graphopt.report import write_report
from graphopt.transaction import Transaction, remove_stale_staging


def _external(d: Path, location: str = "w.bin") -> Path:
    onnx.save(models.mlp(in_features=32, hidden=32, out_features=4), d / "m.onnx", save_as_external_data=True,
              location=location, size_threshold=0)
    return d / "m.onnx"


def test_plan_lists_every_write_and_read(tmp_path):
    model = _external(tmp_path)
    (tmp_path / "feeds").mkdir()
    for name in ("a.npz", "b.npz"):
        np.savez(tmp_path / "feeds" / name, x=np.ones((1, 32), np.float32))
    plan = plan_writes(tmp_path / "o.onnx", [tmp_path / "r.json"], input_path=model,
                       weight_files=gio.external_data_files(gio.load_path(model)),
                       data={"--calib": str(tmp_path / "feeds"), "--data": [{"x": np.ones(1)}]})
    assert [w.path.name for w in plan.writes] == ["o.onnx", "o.onnx.data", "r.json"]
    assert [r.path.name for r in plan.reads] == ["m.onnx", "w.bin", "feeds", "a.npz", "b.npz"]
    assert plan.data_file is plan.writes[1]


def test_plan_refuses_the_data_file_name_only_when_external_data_is_likely(tmp_path):
    out = tmp_path / ("x" * 251)
    plan_writes(out, external_likely=False)  # the model embeds its weights: no .data written
    with pytest.raises(InputError, match=r"the file name is 256 bytes, the file system allows 255"):
        plan_writes(out, external_likely=True)


def test_plan_probes_nothing_into_place(tmp_path):
    plan_writes(tmp_path / "new" / "deeper" / "o.onnx", [tmp_path / "r.json"])
    assert list(tmp_path.iterdir()) == []  # no folder created, the probe file removed


def test_commit_renames_everything_and_replaces_old_files(tmp_path):
    old = tmp_path / "a.txt"
    old.write_text("old")
    with Transaction() as txn:
        txn.write_text(old, "new a")
        txn.write_text(tmp_path / "sub" / "b.txt", "new b")
        assert not (tmp_path / "sub" / "b.txt").exists() and old.read_text() == "old"
        txn.commit()
    assert old.read_text() == "new a" and (tmp_path / "sub" / "b.txt").read_text() == "new b"
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a.txt", "b.txt", "sub"]


def test_an_error_before_commit_leaves_nothing_and_removes_created_folders(tmp_path):
    keep = tmp_path / "keep.txt"
    keep.write_text("previous")
    with pytest.raises(RuntimeError, match="render failed"):
        with Transaction() as txn:
            txn.write_text(keep, "new")
            txn.write_text(tmp_path / "x" / "y" / "r.json", "{}")
            raise RuntimeError("render failed")
    assert keep.read_text() == "previous"
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]


def test_leaving_without_commit_writes_nothing(tmp_path):
    with Transaction() as txn:
        txn.write_text(tmp_path / "a.txt", "a")
    assert list(tmp_path.iterdir()) == []


def test_a_failed_rename_undoes_the_renames_before_it(tmp_path, monkeypatch):
    first, second = tmp_path / "first.txt", tmp_path / "second.txt"
    first.write_text("old first")
    real, calls = os.replace, []

    def flaky(src, dst):
        calls.append(dst)
        if len(calls) == 3:  # first: old first -> backup, second: new first in place, third: second fails
            raise OSError(errno.EIO, "I/O error")
        real(src, dst)

    monkeypatch.setattr(tx.os, "replace", flaky)
    with pytest.raises(OSError, match="I/O error"):
        with Transaction() as txn:
            txn.write_text(second, "new second")  # staged first: renamed last
            txn.write_text(first, "new first")
            txn.commit()
    monkeypatch.undo()
    assert first.read_text() == "old first" and not second.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["first.txt"]


def test_sigint_during_the_renames_waits_for_them_then_undoes_them(tmp_path, monkeypatch):
    target = tmp_path / "model.onnx"
    target.write_text("old")
    real, handler = os.replace, signal.getsignal(signal.SIGINT)

    def replace_and_interrupt(src, dst):
        real(src, dst)
        os.kill(os.getpid(), signal.SIGINT)  # handled between two renames: must wait

    monkeypatch.setattr(tx.os, "replace", replace_and_interrupt)
    with pytest.raises(KeyboardInterrupt):
        with Transaction() as txn:
            txn.write_text(tmp_path / "r.json", "{}")
            txn.write_text(target, "new")
            txn.commit()
    monkeypatch.undo()
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"]
    assert signal.getsignal(signal.SIGINT) is handler


def test_sigint_while_open_removes_staging_and_restores_handlers(tmp_path):
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    with pytest.raises(KeyboardInterrupt):
        with Transaction() as txn:
            assert signal.getsignal(signal.SIGTERM) == txn._on_signal
            txn.write_text(tmp_path / "r.json", "{}")
            os.kill(os.getpid(), signal.SIGINT)
            for _ in range(1000):  # the handler runs between bytecodes
                pass
    assert list(tmp_path.iterdir()) == []
    assert {s: signal.getsignal(s) for s in before} == before


def test_ignored_signals_stay_ignored_and_threads_install_nothing(tmp_path):
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with Transaction():
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)
    seen = []

    def in_thread():
        with Transaction() as txn:
            seen.append(signal.getsignal(signal.SIGTERM))
            txn.write_text(tmp_path / "t.txt", "t")
            txn.commit()

    thread = threading.Thread(target=in_thread)
    thread.start()
    thread.join()
    assert seen == [signal.getsignal(signal.SIGTERM)] and (tmp_path / "t.txt").read_text() == "t"


def test_stage_refuses_a_directory_target(tmp_path):
    (tmp_path / "d").mkdir()
    with pytest.raises(InputError, match="exists and is a directory, not a regular file"):
        with Transaction() as txn:
            txn.stage(tmp_path / "d")
    assert [p.name for p in tmp_path.iterdir()] == ["d"]


def test_stale_staging_of_dead_pids_only_is_removed(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    dead, alive = proc.pid, os.getppid()
    (tmp_path / f".graphopt-{dead}-abc" / "new").mkdir(parents=True)
    (tmp_path / f".graphopt-{dead}-probe").write_text("")
    (tmp_path / f".graphopt-{alive}-abc").mkdir()
    (tmp_path / ".graphopt-notes").write_text("not ours")
    said = []
    removed = remove_stale_staging(tmp_path, said.append)
    assert sorted(p.name for p in removed) == [f".graphopt-{dead}-abc", f".graphopt-{dead}-probe"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [f".graphopt-{alive}-abc", ".graphopt-notes"]
    assert len(said) == 2 and all(f"pid {dead}" in line for line in said)


@pytest.mark.parametrize("external", [False, True])
def test_save_model_with_a_long_name_round_trips(tmp_path, external):
    model = gio.load_path(_external(tmp_path)) if external else gio.load_model(parse(ADD_RELU)).model
    out = gio.save_model(model, tmp_path / "out" / ("m" * 245 + ".onnx"), external_data=external)
    names = sorted(p.name for p in out.parent.iterdir())
    assert names == [out.name] + ([out.name + ".data"] if external else [])
    again = onnx.load(str(out), load_external_data=False)
    onnx.checker.check_model(str(out), full_check=True)
    if external:
        locations = {e.value for t in again.graph.initializer for e in t.external_data if e.key == "location"}
        assert locations == {out.name + ".data"} and (out.parent / (out.name + ".data")).stat().st_size > 4096


def test_api_writes_reports_with_the_model(tmp_path):
    src = tmp_path / "m.onnx"
    onnx.save(parse(ADD_RELU), src)
    result = optimize(src, tmp_path / "o.onnx", reports=[tmp_path / "r.json", str(tmp_path / "r.html")])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "o.onnx", "r.html", "r.json"]
    assert result.output == tmp_path / "o.onnx"
    optimize(src, None, reports=[tmp_path / "only" / "r.json"])  # reports without a model file
    assert (tmp_path / "only" / "r.json").is_file()


def test_api_render_failure_writes_no_model(tmp_path, monkeypatch):
    src = tmp_path / "m.onnx"
    onnx.save(parse(ADD_RELU), src)
    out = tmp_path / "o.onnx"
    out.write_bytes(b"previous")
    before = file_digest(src)

    def broken(report, path):
        raise ValueError("cannot render")

    monkeypatch.setattr("graphopt.outputs.render_report", broken)
    with pytest.raises(ValueError, match="cannot render"):
        optimize(src, out, reports=[tmp_path / "r.html"])
    assert out.read_bytes() == b"previous" and file_digest(src) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "o.onnx"]


def test_api_refuses_before_running_when_a_report_is_the_input(tmp_path):
    src = tmp_path / "m.onnx"
    onnx.save(parse(ADD_RELU), src)
    with pytest.raises(InputError, match=r"--report .*m.onnx is the input model; graphopt never overwrites"):
        optimize(src, tmp_path / "o.onnx", reports=[src])
    in_memory = gio.load_path(_external(tmp_path, "r.json"))  # an in-memory model still reads r.json
    with pytest.raises(InputError, match=r"--report .*r.json is the input model's external-data file"):
        optimize(in_memory, None, reports=[tmp_path / "r.json"])


def test_write_report_keeps_short_staging_names(tmp_path):
    page = tmp_path / ("p" * 250 + ".json")
    write_report({"model": {}}, page)
    assert [p.name for p in tmp_path.iterdir()] == [page.name]
    assert oct(page.stat().st_mode & 0o777) != "0o600"


def test_stale_staging_cleanup_never_touches_user_files_that_share_the_name_pattern(tmp_path):
    dead = 999_999_999  # beyond pid_max: never a live process
    user_folder = tmp_path / f".graphopt-{dead}-mydata"
    user_folder.mkdir()
    (user_folder / "calib.npz").write_bytes(b"data")
    user_model = tmp_path / f".graphopt-{dead}-model.onnx"
    user_model.write_bytes(b"a model")
    user_file = tmp_path / f".graphopt-{dead}-notes"
    user_file.write_text("not empty")
    staged = tmp_path / f".graphopt-{dead}-k3x9q2_a"
    (staged / "new").mkdir(parents=True)
    removed = remove_stale_staging(tmp_path, lambda message: None)
    assert removed == [staged]
    assert user_folder.is_dir() and (user_folder / "calib.npz").exists() and user_model.exists() and user_file.exists()
