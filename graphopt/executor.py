"""Where a batch's units of work run: the executor seam of `graphopt optimize --out-dir`.

Why a seam: a batch of models fans out over whatever runs `concurrent.futures` work: this
process, a pool of local processes, later a Ray cluster. The batch (graphopt.batch) only
submits plain, picklable units to a `concurrent.futures.Executor` and reads their results, so a
new backend is one more branch in `make_executor`, not a change to the batch.

`--executor` takes `local` (the default: units run one after another in this process),
`process:N` (N spawned worker processes; spawn, not fork, so no worker inherits ONNX Runtime's
threads or locks from this process) or `ray[:ADDRESS]` (not built yet: refused with one line).
`ExecutorSpec.parse` raises ValueError with a readable message for anything else; the CLI turns
it into exit 2. This module imports only the standard library, so parsing the flag stays cheap.
"""

from __future__ import annotations

import multiprocessing
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable

from graphopt.errors import InputError

KINDS = ("local", "process", "ray")
MAX_WORKERS = 1024
USAGE = "expected local, process:N (N worker processes) or ray[:ADDRESS]"


@dataclass(frozen=True)
class ExecutorSpec:
    """A parsed `--executor`: `kind` is one of KINDS; `workers` is N for `process:N` (1 otherwise);
    `address` is the Ray cluster address of `ray:ADDRESS` (None: Ray's own default)."""

    kind: str = "local"
    workers: int = 1
    address: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown executor '{self.kind}': {USAGE}")
        if not 1 <= self.workers <= MAX_WORKERS:
            raise ValueError(f"{self.kind}: workers must be from 1 to {MAX_WORKERS}, got {self.workers}")

    @classmethod
    def parse(cls, text: str) -> ExecutorSpec:
        """`local`, `process:N` or `ray[:ADDRESS]` -> a spec; ValueError (one line) otherwise."""
        kind, sep, rest = text.strip().partition(":")
        if kind == "local" and not sep:
            return cls("local")
        if kind == "process":
            try:
                workers = int(rest)
            except ValueError:
                raise ValueError(f"'{text}': process:N needs a number of worker processes, e.g. process:4") from None
            if not 1 <= workers <= MAX_WORKERS:
                raise ValueError(f"'{text}': the number of worker processes must be from 1 to {MAX_WORKERS}")
            return cls("process", workers)
        if kind == "ray":
            if sep and not rest:
                raise ValueError(f"'{text}': ray:ADDRESS needs an address (or plain ray for Ray's default)")
            return cls("ray", address=rest or None)
        raise ValueError(f"unknown executor '{text}': {USAGE}")

    def __str__(self) -> str:
        if self.kind == "process":
            return f"process:{self.workers}"
        return f"ray:{self.address}" if self.address else self.kind


class SerialExecutor(Executor):
    """Runs each submitted call at once, in this process and thread: `--executor local`. The
    returned future is already done (its result, or the exception the call raised)."""

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future:
        future: Future = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except Exception as exc:  # noqa: BLE001  (the future carries it, as a pool's would; Ctrl-C is not caught)
            future.set_exception(exc)
        return future


def check_available(spec: ExecutorSpec) -> None:
    """Refuse (InputError, one line) an executor that is not built, before any work."""
    if spec.kind == "ray":
        raise InputError(f"--executor {spec}: the Ray executor is not built yet; use local or process:N")


def make_executor(spec: ExecutorSpec) -> Executor:
    """A fresh executor for `spec` (the caller shuts it down: `with make_executor(spec) as ex:`)."""
    check_available(spec)
    if spec.kind == "process":
        return ProcessPoolExecutor(max_workers=spec.workers, mp_context=multiprocessing.get_context("spawn"))
    return SerialExecutor()
