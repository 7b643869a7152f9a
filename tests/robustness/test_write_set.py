"""The write-set corpus: a run never writes what it reads, and its outputs appear together or not at all.

Every refused case goes through the CLI (`graphopt.cli.main`) and must exit 2 with one line on
stderr (matched exactly; a message ending in `...` is matched as a prefix, for the OS's words),
before any pass runs, with every file under the case's directory unchanged (bytes, and no file
added or removed, hidden staging files included). The accepted cases (a 250-character name,
nested report folders, a stale staging directory) and the signal cases (SIGINT, SIGTERM, SIGKILL
delivered to a subprocess in the middle of a save or a pass) follow the table.
"""

from __future__ import annotations

import os
import signal
import socket
import stat
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import onnx
import pytest

import models
from conftest import file_digest
from graphopt.cli import main

ROOT = os.geteuid() == 0


def _small() -> onnx.ModelProto:
    return models.mlp(in_features=32, hidden=32, out_features=4)  # weights over 1 KB: external data is written


def _plain(d: Path, name: str = "m.onnx") -> str:
    onnx.save(_small(), d / name)
    return str(d / name)


def _external(d: Path, location: str, name: str = "m.onnx") -> str:
    (d / location).parent.mkdir(parents=True, exist_ok=True)
    onnx.save(_small(), d / name, save_as_external_data=True, location=location, size_threshold=0)
    return str(d / name)


def _npz(d: Path, name: str = "calib.npz") -> str:
    with open(d / name, "wb") as f:  # a file object: np.savez would append .npz to the name
        np.savez(f, x=np.ones((4, 1, 32), np.float32))
    return str(d / name)


def _npz_dir(d: Path) -> str:
    (d / "feeds").mkdir()
    for i in range(2):
        np.savez(d / "feeds" / f"f{i}.npz", x=np.ones((1, 32), np.float32))
    return str(d / "feeds")


def _link(d: Path, name: str, to: str, hard: bool = False) -> str:
    (os.link if hard else os.symlink)(to, d / name)
    return str(d / name)


def _fifo(d: Path, name: str) -> str:
    os.mkfifo(d / name)
    return str(d / name)


def _socket(d: Path, name: str) -> str:
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(d / name))
    sock.close()  # the socket file stays
    return str(d / name)


def _dir(d: Path, name: str) -> str:
    (d / name).mkdir()
    return str(d / name)


@dataclass(frozen=True)
class Case:
    id: str
    argv: Callable[[Path], list[str]]  # after `graphopt optimize`, without --quiet
    message: str  # after "graphopt: error: "; {d} = the case's directory; "..." at the end = prefix


def _o(model: str, out: str, *rest: str) -> list[str]:
    return [model, "-o", out, *rest]


EXT_READ = "the input model's external-data file (m.onnx reads its weights from it)"
NEVER = "graphopt never overwrites its input"
OWN = "each output needs its own path"

CASES = [
    # --- -o is something the run reads
    Case("-o is the input", lambda d: _o(_plain(d), f"{d}/m.onnx"), f"-o {{d}}/m.onnx is the input model; {NEVER}"),
    Case("-o is the input, spelled with ./", lambda d: _o(_plain(d), f"{d}/./m.onnx"),
         f"-o {{d}}/m.onnx is the input model; {NEVER}"),  # pathlib drops the "."
    Case("-o is the input, spelled with ../", lambda d: (_dir(d, "sub"), _o(_plain(d), f"{d}/sub/../m.onnx"))[1],
         f"-o {{d}}/sub/../m.onnx is the input model; {NEVER}"),
    Case("-o is the external-data file (same folder)", lambda d: _o(_external(d, "w.bin"), f"{d}/w.bin"),
         f"-o {{d}}/w.bin is {EXT_READ}; {NEVER}"),
    Case("-o is the external-data file (sub-folder)", lambda d: _o(_external(d, "weights/w.bin"), f"{d}/weights/w.bin"),
         f"-o {{d}}/weights/w.bin is {EXT_READ}; {NEVER}"),
    Case("-o is the external-data file, through a symlink",
         lambda d: _o(_external(d, "w.bin"), _link(d, "alias.bin", "w.bin")),
         f"-o {{d}}/alias.bin is {EXT_READ} (through a symbolic link); {NEVER}"),
    Case("-o is a hard link to the external-data file",
         lambda d: _o(_external(d, "w.bin"), _link(d, "alias.bin", f"{d}/w.bin", hard=True)),
         f"-o {{d}}/alias.bin is {EXT_READ} (a hard link to it); {NEVER}"),
    Case("-o is a hard link to the input", lambda d: _o(_plain(d), _link(d, "h.onnx", f"{d}/m.onnx", hard=True)),
         f"-o {{d}}/h.onnx is the input model (a hard link to it); {NEVER}"),
    Case("-o is a symlink to the input", lambda d: _o(_plain(d), _link(d, "s.onnx", "m.onnx")),
         f"-o {{d}}/s.onnx is the input model (through a symbolic link); {NEVER}"),
    Case("-o is the input, through a symlinked folder", lambda d: _o(_plain(d), f"{_link(d, 'alias', str(d))}/m.onnx"),
         f"-o {{d}}/alias/m.onnx is the input model (through a symbolic link); {NEVER}"),
    Case("-o is the --calib file", lambda d: _o(_plain(d), _npz(d), "--calib", f"{d}/calib.npz"),
         f"-o {{d}}/calib.npz is the --calib data; {NEVER}"),
    Case("-o is a file in the --data folder", lambda d: _o(_plain(d), f"{d}/feeds/f1.npz", "--data", _npz_dir(d)),
         f"-o {{d}}/feeds/f1.npz is a --data data file (in {{d}}/feeds); {NEVER}"),
    # --- the output's <name>.data is something the run reads
    Case("-o's .data is the input's data file", lambda d: _o(_external(d, "b.onnx.data", "a.onnx"), f"{d}/b.onnx"),
         f"b.onnx.data (where -o {{d}}/b.onnx keeps its external data) is the input model's external-data file "
         f"(a.onnx reads its weights from it); {NEVER}"),
    Case("-o's .data is the input's data file (sub-folder)",
         lambda d: _o(_external(d, "sub/x.onnx.data", "a.onnx"), f"{d}/sub/x.onnx"),
         f"x.onnx.data (where -o {{d}}/sub/x.onnx keeps its external data) is the input model's external-data file "
         f"(a.onnx reads its weights from it); {NEVER}"),
    Case("-o's .data is the input model itself", lambda d: _o(_plain(d, "o.onnx.data"), f"{d}/o.onnx"),
         f"o.onnx.data (where -o {{d}}/o.onnx keeps its external data) is the input model; {NEVER}"),
    Case("-o's .data is the --calib file", lambda d: _o(_plain(d), f"{d}/c.onnx", "--calib", _npz(d, "c.onnx.data")),
         f"c.onnx.data (where -o {{d}}/c.onnx keeps its external data) is the --calib data; {NEVER}"),
    # --- --report is something the run reads, or another output
    Case("--report is the input", lambda d: _o(_plain(d), f"{d}/out.onnx", "--report", f"{d}/m.onnx"),
         f"--report {{d}}/m.onnx is the input model; {NEVER}"),
    Case("--report is the input's data file",
         lambda d: _o(_external(d, "w.bin"), f"{d}/out.onnx", "--report", f"{d}/w.bin"),
         f"--report {{d}}/w.bin is {EXT_READ}; {NEVER}"),
    Case("--report is the --calib file", lambda d: _o(_plain(d), f"{d}/out.onnx", "--calib", _npz(d), "--report",
                                                     f"{d}/calib.npz"),
         f"--report {{d}}/calib.npz is the --calib data; {NEVER}"),
    Case("--report is the --data file", lambda d: _o(_plain(d), f"{d}/out.onnx", "--data", _npz(d, "v.npz"), "--report",
                                                    f"{d}/v.npz"),
         f"--report {{d}}/v.npz is the --data data; {NEVER}"),
    Case("--report is a file in the --calib folder", lambda d: _o(_plain(d), f"{d}/out.onnx", "--calib", _npz_dir(d),
                                                                  "--report", f"{d}/feeds/f0.npz"),
         f"--report {{d}}/feeds/f0.npz is a --calib data file (in {{d}}/feeds); {NEVER}"),
    Case("--report is a hard link to the input", lambda d: _o(_plain(d), f"{d}/out.onnx", "--report",
                                                              _link(d, "r.json", f"{d}/m.onnx", hard=True)),
         f"--report {{d}}/r.json is the input model (a hard link to it); {NEVER}"),
    Case("--report is -o", lambda d: _o(_plain(d), f"{d}/out.onnx", "--report", f"{d}/out.onnx"),
         f"--report {{d}}/out.onnx and -o {{d}}/out.onnx are the same file; {OWN}"),
    Case("--report is -o, spelled differently",
         lambda d: (_dir(d, "sub"), _o(_plain(d), f"{d}/out.onnx", "--report", f"{d}/sub/../out.onnx"))[1],
         f"--report {{d}}/sub/../out.onnx and -o {{d}}/out.onnx are the same file; {OWN}"),
    Case("--report is -o's .data", lambda d: _o(_plain(d), f"{d}/out.onnx", "--report", f"{d}/out.onnx.data"),
         f"--report {{d}}/out.onnx.data and out.onnx.data (where -o {{d}}/out.onnx keeps its external data) are "
         f"the same file; {OWN}"),
    Case("two equal --report paths", lambda d: _o(_plain(d), f"{d}/out.onnx", "--report", f"{d}/r.json",
                                                 "--report", f"{d}/r.json"),
         f"--report {{d}}/r.json is given twice; {OWN}"),
    Case("two --report paths, one through a symlinked folder",
         lambda d: _o(_plain(d), f"{d}/out.onnx", "--report", f"{d}/r.json", "--report",
                      f"{_link(d, 'alias', str(d))}/r.json"),
         f"--report {{d}}/alias/r.json and --report {{d}}/r.json are the same file; {OWN}"),
    # --- an existing target that is not a regular file
    Case("-o is a fifo", lambda d: _o(_plain(d), _fifo(d, "pipe")),
         "-o {d}/pipe exists and is a fifo, not a regular file; graphopt writes regular files only"),
    Case("--report is a fifo", lambda d: _o(_plain(d), f"{d}/out.onnx", "--report", _fifo(d, "pipe")),
         "--report {d}/pipe exists and is a fifo, not a regular file; graphopt writes regular files only"),
    Case("-o is a unix socket", lambda d: _o(_plain(d), _socket(d, "sock")),
         "-o {d}/sock exists and is a socket, not a regular file; graphopt writes regular files only"),
    Case("-o is a directory", lambda d: _o(_plain(d), _dir(d, "outdir")),
         "output {d}/outdir is a directory; give a file path, e.g. {d}/outdir/model.onnx"),
    Case("-o is a symlink to a directory", lambda d: _o(_plain(d), _link(d, "outlink", _dir(d, "outdir"))),
         "output {d}/outlink is a directory; give a file path, e.g. {d}/outlink/model.onnx"),
    Case("--report is a directory", lambda d: _o(_plain(d), f"{d}/out.onnx", "--report", _dir(d, "rdir")),
         "--report {d}/rdir exists and is a directory, not a regular file; graphopt writes regular files only"),
    Case("-o's .data is a directory", lambda d: (_dir(d, "out.onnx.data"), _o(_plain(d), f"{d}/out.onnx"))[1],
         "out.onnx.data (where -o {d}/out.onnx keeps its external data) exists and is a directory, not a regular "
         "file; graphopt writes regular files only"),
    Case("-o is /dev/null", lambda d: _o(_plain(d), "/dev/null"),
         "-o /dev/null exists and is a character device, not a regular file; graphopt writes regular files only"),
    Case("--report is /dev/null", lambda d: _o(_plain(d), f"{d}/out.onnx", "--report", "/dev/null"),
         "--report /dev/null exists and is a character device, not a regular file; graphopt writes regular files only"),
    Case("-o is /dev/stdout (a link to pytest's capture file)", lambda d: _o(_plain(d), "/dev/stdout"),
         "-o /dev/stdout exists and is a link to a process's open file, not a regular file; graphopt writes "
         "regular files only"),
    # --- a place that cannot be written: found before any pass runs, and then nothing is written
    Case("-o's parent is a file", lambda d: _o(_plain(d), f"{d}/m.onnx/out.onnx"),
         "cannot write -o {d}/m.onnx/out.onnx: {d}/m.onnx is not a directory"),
    Case("-o's grandparent is a file", lambda d: _o(_plain(d), f"{d}/m.onnx/new/out.onnx"),
         "cannot write -o {d}/m.onnx/new/out.onnx: {d}/m.onnx is not a directory"),
    Case("--report's parent is a file", lambda d: _o(_plain(d), f"{d}/out.onnx", "--report", f"{d}/m.onnx/r.json"),
         "cannot write --report {d}/m.onnx/r.json: {d}/m.onnx is not a directory"),
    Case("-o under /proc", lambda d: _o(_plain(d), "/proc/graphopt-out.onnx"),
         "cannot write -o /proc/graphopt-out.onnx: /proc is not writable..."),
    Case("--report under /proc (no model either)",
         lambda d: _o(_plain(d), f"{d}/out.onnx", "--report", "/proc/graphopt-r.json"),
         "cannot write --report /proc/graphopt-r.json: /proc is not writable..."),
    Case("-o under /sys", lambda d: _o(_plain(d), "/sys/graphopt-out.onnx"),
         "cannot write -o /sys/graphopt-out.onnx: /sys is not writable..."),
    Case("-o into /proc/self/fd", lambda d: _o(_plain(d), "/proc/self/fd/graphopt-out.onnx"),
         "cannot write -o /proc/self/fd/graphopt-out.onnx: /proc/self/fd is not writable..."),
    Case("-o name longer than the file system allows", lambda d: _o(_plain(d), f"{d}/{'n' * 300}.onnx"),
         f"cannot write -o {{d}}/{'n' * 300}.onnx: the file name is 305 bytes, the file system allows 255"),
    Case("--report name longer than the file system allows",
         lambda d: _o(_plain(d), f"{d}/out.onnx", "--report", f"{d}/{'r' * 260}.json"),
         f"cannot write --report {{d}}/{'r' * 260}.json: the file name is 265 bytes, the file system allows 255"),
    Case("-o's .data name too long for an external-data model", lambda d: _o(_external(d, "w.bin"), f"{d}/{'e' * 251}"),
         f"cannot write {'e' * 251}.data (where -o {{d}}/{'e' * 251} keeps its external data): the file name is "
         "256 bytes, the file system allows 255"),
]


def _snapshot(root: Path) -> dict[str, object]:
    """Every entry under `root` (hidden ones too, links not followed) with its content or kind."""
    seen: dict[str, object] = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(folder) / name
            mode = path.lstat().st_mode
            if stat.S_ISLNK(mode):
                seen[str(path)] = ("link", os.readlink(path))
            elif stat.S_ISREG(mode):
                seen[str(path)] = file_digest(path)
            else:
                seen[str(path)] = stat.S_IFMT(mode)
    return seen


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_refused_write_exits_2_before_any_work_and_changes_nothing(case, tmp_path, capsys, monkeypatch):
    d = tmp_path / "case"
    d.mkdir()
    monkeypatch.chdir(tmp_path)
    argv = ["optimize", *case.argv(d), "--quiet"]
    before = _snapshot(tmp_path)
    ran = []
    monkeypatch.setattr("graphopt.manager.PassManager.run", lambda *a, **k: ran.append(1))
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.splitlines()
    assert len(lines) == 1, err
    expected = "graphopt: error: " + case.message.replace("{d}", str(d))
    if expected.endswith("..."):
        assert lines[0].startswith(expected[:-3]), lines[0]
    else:
        assert lines[0] == expected
    assert not ran  # refused before any pass ran
    assert _snapshot(tmp_path) == before
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)
    assert not [p for p in Path("/proc").glob("graphopt-*")]


@pytest.mark.skipif(ROOT, reason="root writes through chmod 0500; the /proc and parent-is-a-file cases cover it")
@pytest.mark.parametrize("flag", ["-o", "--report"])
def test_unwritable_folder_exits_2_and_writes_nothing(flag, tmp_path, capsys):
    model = _plain(tmp_path)
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        out = locked / "x" if flag == "-o" else tmp_path / "out.onnx"
        argv = ["optimize", model, "-o", str(out), "--quiet"] + (["--report", str(locked / "r.json")]
                                                                 if flag == "--report" else [])
        before = _snapshot(tmp_path)
        assert main(argv) == 2
        assert "is not writable" in capsys.readouterr().err
        assert _snapshot(tmp_path) == before
    finally:
        locked.chmod(0o700)


# --- accepted: what a legal run writes, and only that


def _hidden(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.name.startswith(".")]


@pytest.mark.parametrize("external", [False, True], ids=["embedded", "external data"])
def test_a_250_character_output_name_works(external, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    model = _external(tmp_path, "w.bin") if external else _plain(tmp_path)
    out = tmp_path / ("o" * 245 + ".onnx")
    report = tmp_path / ("r" * 245 + ".json")
    assert main(["optimize", model, "-o", str(out), "--report", str(report), "--quiet"]) == 0, capsys.readouterr().err
    expected = {"m.onnx", out.name, report.name} | ({"w.bin", out.name + ".data"} if external else set())
    assert {p.name for p in tmp_path.iterdir()} == expected
    onnx.checker.check_model(str(out), full_check=True)
    if external:
        assert (tmp_path / (out.name + ".data")).stat().st_size > 4096
    assert not _hidden(tmp_path)


def test_model_and_reports_appear_together_in_new_folders(tmp_path, capsys):
    model = _plain(tmp_path)
    out, json_report, page = tmp_path / "a" / "b" / "o.onnx", tmp_path / "r" / "r.json", tmp_path / "r" / "p" / "r.html"
    argv = ["optimize", model, "-o", str(out), "--report", str(json_report), "--report", str(page), "--quiet"]
    assert main(argv) == 0, capsys.readouterr().err
    assert out.is_file() and json_report.is_file() and page.is_file()
    assert not _hidden(tmp_path)


def test_a_report_that_fails_to_stage_leaves_no_model(tmp_path, capsys, monkeypatch):
    import errno

    from graphopt.transaction import Transaction

    model = _plain(tmp_path)
    out = tmp_path / "out.onnx"
    out.write_bytes(b"previous")

    def full_disk(self, target, text):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Transaction, "write_text", full_disk)
    assert main(["optimize", model, "-o", str(out), "--report", str(tmp_path / "r.json"), "--quiet"]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"graphopt: error: cannot write {tmp_path / 'r.json'}: No space left on device; nothing was written"]
    assert out.read_bytes() == b"previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "out.onnx"]


def test_a_rename_refused_at_commit_undoes_the_report_already_in_place(tmp_path, capsys, monkeypatch):
    import errno

    import graphopt.transaction as tx

    model = _plain(tmp_path)
    out, report = tmp_path / "out.onnx", tmp_path / "r.json"
    out.write_bytes(b"previous, immutable")
    real = os.replace

    def immutable(src, dst):
        if Path(src) == out:  # moving the old model aside is refused, as for a `chattr +i` file
            raise OSError(errno.EPERM, "Operation not permitted", str(src))
        real(src, dst)

    monkeypatch.setattr(tx.os, "replace", immutable)
    assert main(["optimize", model, "-o", str(out), "--report", str(report), "--quiet"]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"graphopt: error: cannot replace {out}: Operation not permitted; nothing was written"]
    assert out.read_bytes() == b"previous, immutable"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "out.onnx"]  # the report was undone


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_stale_staging_of_a_killed_run_is_removed(tmp_path, capsys):
    model = _plain(tmp_path)
    dead = _dead_pid()
    stale = tmp_path / f".graphopt-{dead}-x1y2z3"
    (stale / "new").mkdir(parents=True)
    (stale / "new" / "out.onnx").write_bytes(b"half a model")
    probe = tmp_path / f".graphopt-{dead}-probe"
    probe.write_bytes(b"")
    alive = tmp_path / f".graphopt-{os.getppid()}-keep"  # a live process's staging stays
    alive.mkdir()
    assert main(["optimize", model, "-o", str(tmp_path / "out.onnx")]) == 0
    err = capsys.readouterr().err
    assert not stale.exists() and not probe.exists() and alive.is_dir()
    assert f"removed stale staging {stale} (left by a killed run, pid {dead})" in err


# --- signals in the middle of a save or a pass: nothing is left behind

SLOW = textwrap.dedent("""
    import signal, sys, time
    import graphopt.io, graphopt.manager
    from graphopt.cli import main

    signal.signal(signal.SIGINT, signal.default_int_handler)  # as on a terminal, even if started ignoring it

    where = sys.argv.pop(1)
    if where == "save":
        real = graphopt.io.write_to_dir
        def slow(model, path, data_name):
            real(model, path, data_name)
            print("busy", flush=True)
            time.sleep(60)
        graphopt.io.write_to_dir = slow
    else:
        def slow_run(self, *args, **kwargs):
            print("busy", flush=True)
            time.sleep(60)
        graphopt.manager.PassManager.run = slow_run
    sys.exit(main(sys.argv[1:]))
""")


def _interrupted_run(tmp_path: Path, where: str, signum: int, external: bool = True):
    model = _external(tmp_path, "w.bin") if external else _plain(tmp_path)
    before = _snapshot(tmp_path)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    argv = [sys.executable, "-c", SLOW, where, "optimize", model, "-o", str(out_dir / "o.onnx"),
            "--report", str(tmp_path / "r.json"), "--quiet"]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    try:
        assert proc.stdout.readline().strip() == "busy", proc.stderr.read()
        proc.send_signal(signum)
        proc.wait(timeout=60)
    finally:
        proc.kill()
        proc.wait()
    return proc, before, out_dir


@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)], ids=["SIGTERM", "SIGINT"])
@pytest.mark.parametrize("where", ["save", "pass"])
def test_signal_during_the_run_leaves_nothing(where, signum, code, tmp_path):
    proc, before, out_dir = _interrupted_run(tmp_path, where, signum)
    assert proc.returncode == code, proc.stderr.read()
    assert list(out_dir.iterdir()) == []
    assert _snapshot(tmp_path) == {**before, str(out_dir): stat.S_IFDIR}


def test_sigkill_leaves_staging_that_the_next_run_removes(tmp_path, capsys):
    proc, before, out_dir = _interrupted_run(tmp_path, "save", signal.SIGKILL, external=False)
    assert proc.returncode == -signal.SIGKILL
    left = [p.name for p in out_dir.iterdir()]
    assert len(left) == 1 and left[0].startswith(f".graphopt-{proc.pid}-")
    assert main(["optimize", str(tmp_path / "m.onnx"), "-o", str(out_dir / "o.onnx")]) == 0
    assert [p.name for p in out_dir.iterdir()] == ["o.onnx"]
    assert "removed stale staging" in capsys.readouterr().err
