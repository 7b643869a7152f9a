"""Staging and committing files as one transaction, with cleanup on SIGINT/SIGTERM.

Why: a run's outputs (the model, its `<name>.data`, every report) must appear together or not
at all, even when a write fails or the run is interrupted, and a killed run must not leave
hidden files behind for good.

`Transaction` stages every file in a hidden directory `.graphopt-<pid>-<random>` next to its
target (one per target directory, so renames stay on one file system; the name never derives
from the target's, so it fits NAME_MAX however long the target's name is), then `commit`
renames them into place, the first staged (the model) last. A failure, or SIGINT/SIGTERM while
the transaction is open, undoes the renames done so far (an overwritten file comes back),
removes the staging directories and re-raises (KeyboardInterrupt, or SystemExit(143) for
SIGTERM). Staging directories whose pid is no longer alive (a killed run) are removed before
staging into the same directory.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import signal
import stat
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from graphopt.errors import InputError

STAGING_PREFIX = ".graphopt-"
# what mkdtemp / mkstemp make from STAGING_PREFIX + "<pid>-" (random [a-z0-9_]; no dots)
_STAGING = re.compile(r"\.graphopt-(\d+)-[a-z0-9_]+")
_STAGING_PARTS = frozenset({"new", "old"})
_DEFAULT_NAME_MAX = 255
_SIGNALS = (signal.SIGINT, signal.SIGTERM)
_KINDS = ((stat.S_ISDIR, "directory"), (stat.S_ISFIFO, "fifo"), (stat.S_ISCHR, "character device"),
          (stat.S_ISBLK, "block device"), (stat.S_ISSOCK, "socket"))
_log = logging.getLogger(__name__)


def file_kind(path: Path) -> str | None:
    """What an existing `path` (or what a symlink there points to) is, when not a regular file;
    None for a regular file or nothing (a dangling link, which a rename replaces). A link into
    /proc (/dev/stdout) is a process's open file, whatever it points at: never replaced."""
    try:
        if os.path.islink(path) and os.readlink(path).startswith("/proc/"):
            return "link to a process's open file"
        mode = os.stat(path).st_mode
    except (OSError, ValueError):
        return None
    if stat.S_ISREG(mode):
        return None
    return next((name for test, name in _KINDS if test(mode)), "special file")


def existing_ancestor(folder: Path) -> Path:
    """`folder` or its nearest ancestor that exists (the one a run would create folders in)."""
    folder = Path(os.path.abspath(folder))
    while not os.path.lexists(folder) and folder.parent != folder:
        folder = folder.parent
    return folder


def name_max(folder: Path) -> int:
    """The longest file name (in bytes) the file system of `folder` allows."""
    try:
        return int(os.pathconf(existing_ancestor(folder), "PC_NAME_MAX"))
    except (OSError, ValueError):
        return _DEFAULT_NAME_MAX


def remove_stale_staging(folder: Path, say: Callable[[str], None] | None = None) -> list[Path]:
    """Remove staging directories (and probe files) in `folder` left by runs that were killed."""
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        match = _STAGING.fullmatch(entry.name)
        if not match or not _staging_shaped(entry) or _alive(int(match.group(1))):
            continue
        path = Path(entry.path)
        if entry.is_dir(follow_symlinks=False):
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed.append(path)
        (say or _log.warning)(f"removed stale staging {path} (left by a killed run, pid {match.group(1)})")
    return removed


def _staging_shaped(entry: os.DirEntry) -> bool:
    """Only what a run makes: a folder holding nothing but new/ and old/, or an empty probe file;
    a user's file or folder that happens to share the name pattern is never touched."""
    try:
        if entry.is_dir(follow_symlinks=False):
            return set(os.listdir(entry.path)) <= _STAGING_PARTS
        return entry.is_file(follow_symlinks=False) and entry.stat(follow_symlinks=False).st_size == 0
    except OSError:
        return False


def _alive(pid: int) -> bool:
    if pid <= 0:
        return True  # not a pid we can judge: keep it
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # it exists but belongs to someone else
        return True
    return True


@dataclass(eq=False)
class Transaction:
    """Stage files next to their targets, then rename them into place together (a context manager).

        with Transaction() as txn:
            txn.stage(target).write_bytes(...)   # or txn.write_text(target, text)
            txn.commit()

    Leaving the block with an exception, or without `commit`, removes everything staged. While the
    block runs in the main thread, SIGINT and SIGTERM do the same, restore the previous handlers
    and raise KeyboardInterrupt / SystemExit(143); during the renames they wait until the
    renames are done, then undo them.
    """

    say: Callable[[str], None] | None = None
    committed: bool = False
    _folders: dict[str, Path] = field(default_factory=dict)  # target folder (resolved) -> staging dir
    _staged: list[tuple[Path, Path]] = field(default_factory=list)  # (staged file, target)
    _swapped: list[tuple[Path, Path | None]] = field(default_factory=list)  # (target, backup of the old file)
    _made: list[Path] = field(default_factory=list)  # folders created for targets, outermost first
    _previous: dict[int, Any] = field(default_factory=dict)
    _deferring: bool = False
    _pending: int | None = None

    def __enter__(self) -> Transaction:
        if threading.current_thread() is threading.main_thread():
            for signum in _SIGNALS:
                previous = signal.getsignal(signum)
                if previous not in (signal.SIG_IGN, None):
                    self._previous[signum] = previous
                    signal.signal(signum, self._on_signal)
        return self

    def __exit__(self, kind, exc, tb) -> None:
        self._deferring = True
        try:
            if exc is None and self.committed and self._pending is None:
                self._swapped.clear()  # committed: the old files in the staging dirs go too
                self._remove_staging()
            else:
                self.abort()
        finally:
            self._restore_handlers()
            self._deferring = False
        if self._pending is not None and not isinstance(exc, (KeyboardInterrupt, SystemExit)):
            self._interrupted(self._pending)  # a signal that waited for the renames wins

    def stage(self, target: str | os.PathLike) -> Path:
        """The path to write `target`'s new contents to; `commit` renames it to `target`."""
        target = Path(target)
        kind = file_kind(target)
        if kind is not None:
            raise InputError(f"{target} exists and is a {kind}, not a regular file; graphopt writes regular files only")
        folder = self._staging_dir(target.parent)
        staged = folder / "new" / target.name
        if any(s == staged for s, _ in self._staged):
            raise ValueError(f"{target} is staged twice")
        self._staged.append((staged, target))
        return staged

    def write_text(self, target: str | os.PathLike, text: str) -> None:
        self.stage(target).write_text(text, encoding="utf-8")

    def commit(self) -> None:
        """Rename every staged file into place, the first staged (the model) last."""
        with self.critical():
            try:
                for staged, target in reversed(self._staged):
                    backup = None
                    if os.path.lexists(target):
                        backup = staged.parent.parent / "old" / target.name
                        os.replace(target, backup)
                    self._swapped.append((target, backup))
                    os.replace(staged, target)
                self.committed = True
            except BaseException:
                self._undo()
                raise

    def abort(self) -> None:
        """Undo the renames done so far and remove every staging directory (idempotent)."""
        self._undo()
        self._remove_staging()
        for folder in reversed(self._made):
            try:
                folder.rmdir()
            except OSError:
                break
        self._made.clear()

    @contextlib.contextmanager
    def critical(self) -> Iterator[None]:
        """A signal inside waits until the block is done (nothing half-recorded), then acts."""
        outer, self._deferring = self._deferring, True
        try:
            yield
        finally:
            self._deferring = outer
        if not outer and self._pending is not None:
            self._interrupted(self._pending)

    def _staging_dir(self, parent: Path) -> Path:
        key = os.path.realpath(parent)
        if key not in self._folders:
            with self.critical():
                self._make_parents(parent)
                remove_stale_staging(parent, self.say)
                folder = Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{os.getpid()}-", dir=parent))
                self._folders[key] = folder
                (folder / "new").mkdir()
                (folder / "old").mkdir()
        return self._folders[key]

    def _make_parents(self, parent: Path) -> None:
        missing = []
        while not os.path.lexists(parent) and parent.parent != parent:
            missing.append(parent)
            parent = parent.parent
        for folder in reversed(missing):
            folder.mkdir()
            self._made.append(folder)

    def _undo(self) -> None:
        while self._swapped:
            target, backup = self._swapped.pop()
            try:
                if backup is not None and os.path.lexists(backup):
                    os.replace(backup, target)
                elif backup is None:
                    target.unlink(missing_ok=True)
            except OSError as exc:
                _log.warning("could not restore %s: %s", target, exc)

    def _remove_staging(self) -> None:
        while self._folders:
            shutil.rmtree(self._folders.popitem()[1], ignore_errors=True)

    def _restore_handlers(self) -> None:
        while self._previous:
            signum, previous = self._previous.popitem()
            signal.signal(signum, previous)

    def _on_signal(self, signum: int, frame) -> None:
        if self._deferring:
            self._pending = signum
            return
        self._interrupted(signum)

    def _interrupted(self, signum: int) -> None:
        self._deferring = True  # a second signal while cleaning up waits
        self.abort()
        self._restore_handlers()
        if signum == signal.SIGINT:
            raise KeyboardInterrupt
        raise SystemExit(128 + signum)
