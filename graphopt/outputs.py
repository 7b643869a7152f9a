"""What a run writes, checked before any pass runs: the write set against what the run reads.

Why: a run must never write what it reads (the input model, its external-data files, the
calibration or verification data) nor write two outputs to one file, and an output that cannot
be written must stop the run before any work, not after every pass ran.

`plan_writes` builds a `WritePlan` (the output model, its `<name>.data`, always reserved since
external data is decided at save time, and every report; against the input file, its
external-data files and the data paths) and refuses with one line (InputError, exit 2): a write
that is also a read or another write (by resolved path and by device and inode, so symbolic and
hard links count); an existing target that is not a regular file (directory, fifo, device,
socket); a target directory that is not a directory, cannot be created or is not writable
(probed by creating and removing a small staging-named file); a name longer than the file
system allows. `write_outputs` then stages the model and the reports in one
`graphopt.transaction.Transaction` and commits them together.
"""

from __future__ import annotations

import errno
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import onnx_ir as ir

from graphopt.data_files import data_script, feed_files
from graphopt.errors import InputError
from graphopt.io import stage_model
from graphopt.report.document import render_report
from graphopt.transaction import STAGING_PREFIX, Transaction, existing_ancestor, file_kind, name_max
from graphopt.phases import timed

__all__ = ["Access", "Transaction", "WritePlan", "plan_writes", "write_outputs"]


@dataclass(frozen=True)
class Access:
    """One path a run writes or reads, and how to name it in a message."""

    path: Path
    label: str


@dataclass(frozen=True)
class WritePlan:
    """Every path a run will write and every path it reads; `check` refuses any overlap."""

    writes: tuple[Access, ...]
    reads: tuple[Access, ...]
    data_file: Access | None = None  # the output's `<name>.data`: reserved, written if external

    def check(self, external_likely: bool) -> None:
        _check_overlaps(self.writes, self.reads)
        for access in self.writes:
            _check_kind(access)
        sized = [w for w in self.writes if w is not self.data_file or external_likely]
        _check_directories(sized)


def plan_writes(output: str | os.PathLike | None, reports: Iterable[str | os.PathLike] = (), *,
                input_path: Path | None = None, weight_files: Iterable[Path] = (),
                data: dict[str, Any] | None = None, external_likely: bool = False,
                libraries: Iterable[str | os.PathLike] = (),
                extra: Iterable[tuple[str, Path]] = ()) -> WritePlan:
    """The checked write set of a run. `data` maps a flag (`--data`, `--calib`) to its path
    (a file or a directory of .npz files); non-path values are ignored. `libraries`: the
    `--custom-ops` libraries every session loads (read, so never written over). `extra`:
    (flag, path) of further files the run writes (`--save-inputs`, graphopt.replay_files)."""
    writes: list[Access] = []
    data_file = None
    if output is not None:
        out = Path(output)
        writes.append(Access(out, f"-o {out}"))
        data_file = Access(out.with_name(out.name + ".data"), f"{out.name}.data (where -o {out} keeps its "
                           "external data)")
        writes.append(data_file)
    writes += [Access(Path(r), f"--report {r}") for r in reports]
    writes += [Access(path, f"{flag} {path}") for flag, path in extra]
    reads: list[Access] = []
    if input_path is not None:
        reads.append(Access(Path(input_path), "the input model"))
    owner = Path(input_path).name if input_path is not None else "the model"
    reads += [Access(Path(f), f"the input model's external-data file ({owner} reads its weights from it)")
              for f in weight_files]
    for flag, source in (data or {}).items():
        if isinstance(source, (str, os.PathLike)):
            reads += _data_reads(flag, Path(source))
    reads += [Access(Path(lib), f"the --custom-ops library {lib}") for lib in libraries]
    plan = WritePlan(tuple(writes), tuple(reads), data_file)
    plan.check(external_likely)
    return plan


def _data_reads(flag: str, path: Path) -> list[Access]:
    script = data_script(path)
    if script is not None:
        return [Access(script[0], f"the {flag} data loader script")]
    reads = [Access(path, f"the {flag} data")]
    if path.is_dir():
        reads += [Access(f, f"a {flag} data file (in {path})") for f in feed_files(path)]
    return reads


def _identity(path: Path) -> tuple[str, tuple[int, int] | None]:
    try:
        info = os.stat(path)
        inode = (info.st_dev, info.st_ino)
    except (OSError, ValueError):
        inode = None
    return os.path.realpath(path), inode


def _same(a: tuple[str, Any], b: tuple[str, Any]) -> str | None:
    """How two identities are the same file: '' (same path), a link note, or None."""
    if a[0] == b[0]:
        return ""
    if a[1] is not None and a[1] == b[1]:
        return " (a hard link to it)"
    return None


def _check_overlaps(writes: tuple[Access, ...], reads: tuple[Access, ...]) -> None:
    ids = {id(a): _identity(a.path) for a in (*writes, *reads)}
    for i, w in enumerate(writes):
        for r in reads:
            how = _same(ids[id(w)], ids[id(r)])
            if how == "" and os.path.abspath(w.path) != os.path.abspath(r.path):
                how = " (through a symbolic link)"
            if how is not None:
                raise InputError(f"{w.label} is {r.label}{how}; graphopt never overwrites its input")
        for other in writes[:i]:
            if _same(ids[id(w)], ids[id(other)]) is not None:
                if w.label == other.label:
                    raise InputError(f"{w.label} is given twice; each output needs its own path")
                raise InputError(f"{w.label} and {other.label} are the same file; each output needs its own path")


def _check_kind(access: Access) -> None:
    kind = file_kind(access.path)
    if kind == "directory" and access.label.startswith("-o "):
        raise InputError(f"output {access.path} is a directory; give a file path, e.g. {access.path / 'model.onnx'}")
    if kind is not None:
        raise InputError(f"{access.label} exists and is a {kind}, not a regular file; "
                         "graphopt writes regular files only")


def _check_directories(writes: list[Access]) -> None:
    probed: set[str] = set()
    for access in writes:
        folder = existing_ancestor(access.path.parent)
        if not folder.is_dir():
            raise InputError(f"cannot write {access.label}: {folder} is not a directory")
        limit = name_max(folder)
        if len(os.fsencode(access.path.name)) > limit:
            raise InputError(f"cannot write {access.label}: the file name is {len(os.fsencode(access.path.name))} "
                             f"bytes, the file system allows {limit}")
        if str(folder) not in probed:
            _probe(folder, access.label)
            probed.add(str(folder))


def _probe(folder: Path, label: str) -> None:
    if not os.access(folder, os.W_OK | os.X_OK):
        raise InputError(f"cannot write {label}: {folder} is not writable")
    try:
        with Transaction() as txn, txn.critical():  # SIGINT/SIGTERM wait until the probe is gone
            fd, probe = tempfile.mkstemp(prefix=f"{STAGING_PREFIX}{os.getpid()}-", dir=folder)
            os.close(fd)
            os.unlink(probe)
    except OSError as exc:
        raise InputError(f"cannot write {label}: {folder} is not writable ({exc.strerror})") from None


@timed("save")
def write_outputs(txn: Transaction, model: ir.Model, output: str | os.PathLike | None, reports: list,
                  report: dict[str, Any], progress: Callable[[str], None] | None = None,
                  texts: dict[Path, str] | None = None) -> None:
    """Stage the model (and its .data), every report and the `texts` ({path: contents}), then
    rename them into place together. A full disk or a refused write is the user's environment
    (exit 2), and nothing appears."""
    staged = ([(True, output)] if output is not None else []) + [(False, r) for r in reports]
    for is_model, path in staged + [(None, p) for p in (texts or {})]:
        try:
            if is_model:
                if progress:
                    progress(f"saving {output}")
                stage_model(txn, model, Path(output))
            elif is_model is None:
                txn.write_text(path, texts[path])
            else:
                txn.write_text(path, render_report(report, path))
        except OSError as exc:
            if exc.errno not in _WRITE_ERRORS:
                raise
            raise InputError(f"cannot write {path}: {exc.strerror}; nothing was written") from None
    try:
        txn.commit()
    except OSError as exc:
        if exc.errno not in _WRITE_ERRORS:
            raise
        target = next((f for f in (exc.filename, exc.filename2) if f and STAGING_PREFIX not in str(f)), "an output")
        raise InputError(f"cannot replace {target}: {exc.strerror}; nothing was written") from None


_WRITE_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS, errno.ENAMETOOLONG,
                 errno.EFBIG}
