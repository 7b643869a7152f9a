"""Running a batch of models (`graphopt optimize A.onnx B.onnx ... --out-dir DIR`) on an executor.

Why this shape: each model is one `BatchUnit` of plain strings (paths and the argument list of a
single-model `graphopt optimize IN -o OUT ...`), and `run_unit` runs it through the very code a
single run takes (`graphopt.cli.main`, handed in by the CLI: no import cycle), so a batch writes
exactly what N single runs would, each model's files atomically (graphopt.transaction). No
protobuf or IR object crosses a process boundary; a `UnitResult` carries back the exit code, the
one-line error and the few numbers the table shows, read from the JSON report the run wrote (not
recomputed).

Failures stay with their model: `run_unit` catches everything, so a model that cannot be read is
one row with its error while the others complete. A worker process that dies (killed by the OOM
killer, a crash in native code) breaks its whole pool (`BrokenProcessPool`), losing every unit
not finished yet; those are run once more, each in a fresh one-process pool of its own (up to the
pool's width at a time), so a model that kills its worker again cannot take the others with it.
A unit lost again is reported "worker died".
"""

from __future__ import annotations

import io
import json
import math
import sys
import time
from concurrent.futures import Executor, Future, ThreadPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from dataclasses import dataclass, replace
from typing import Any, Callable, Iterator

from graphopt.executor import ExecutorSpec, make_executor

WORKER_DIED = "worker died (its process ended abruptly, e.g. killed by the OOM killer) on both tries"
# a single run's exit code -> the status a batch row shows (graphopt.cli: 0, 1, 2, 3, 130)
Entry = Callable[[list[str]], int]  # graphopt.cli.main: an argument list -> an exit code
STATUS = {0: "ok", 1: "failed", 2: "input error", 3: "internal error", 130: "interrupted"}


@dataclass(frozen=True)
class BatchUnit:
    """One model of a batch: where it is, where its model and JSON report go, and the whole
    argument list of its single-model run (`["optimize", ..., "--", model]`)."""

    index: int
    model: str
    output: str
    report: str
    argv: tuple[str, ...]


@dataclass(frozen=True)
class UnitResult:
    """What became of one unit: a row of the summary table and of DIR/batch.json."""

    index: int
    model: str
    output: str | None  # None when nothing was written
    exit_code: int
    status: str
    error: str | None  # one line, None on success
    seconds: float
    nodes_before: int | None = None
    nodes_after: int | None = None
    mb_before: float | None = None
    mb_after: float | None = None
    worst_cosine: float | None = None  # the final model against the input (None: nothing compared)
    attempts: int = 1


def run_unit(unit: BatchUnit, entry: Entry) -> UnitResult:
    """Run one model through `entry` (the CLI's `main`, given by the CLI, so this module does not
    import it), in this process; never raises for the model's sake (a usage error, a bad file, a
    bug: all become the result's exit code and error line)."""
    began, out, err = time.perf_counter(), io.StringIO(), io.StringIO()
    try:
        with redirect_stdout(out), redirect_stderr(err):
            code = entry(list(unit.argv))
    except SystemExit as exc:  # argparse refuses an argument list with sys.exit(2)
        code = exc.code if isinstance(exc.code, int) else 2
    except Exception as exc:  # noqa: BLE001  (main catches graphopt's errors; anything else is a bug)
        code = 3
        print(f"graphopt: internal error: {type(exc).__name__}: {exc}", file=err)
    seconds = time.perf_counter() - began
    if "--debug" in unit.argv:  # the tracebacks --debug asked for, after the run
        sys.stderr.write(err.getvalue())
    if code != 0:
        return UnitResult(unit.index, unit.model, None, code, STATUS.get(code, f"exit {code}"),
                          error_line(err.getvalue(), code), seconds)
    return UnitResult(unit.index, unit.model, unit.output, 0, "ok", None, seconds, **_numbers(unit.report))


def error_line(stderr: str, code: int) -> str:
    """The run's one-line error without its `graphopt: error: ` prefix (the last line it wrote)."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    if not lines:
        return f"exit code {code}, no message"
    line = lines[-1]
    for prefix in ("graphopt: error: ", "graphopt optimize: error: ", "graphopt: "):
        if line.startswith(prefix):
            return line[len(prefix):]
    return line


def _numbers(report_path: str) -> dict[str, Any]:
    """Nodes, MB and the worst cosine as the run's JSON report has them (none if it cannot be read)."""
    from graphopt.report.table import worst_cosine

    try:
        with open(report_path, encoding="utf-8") as f:
            report = json.load(f)
        summary = report["summary"]
        (nodes_before, nodes_after), (bytes_before, bytes_after) = summary["nodes"], summary["bytes"]
    except (OSError, ValueError, KeyError, TypeError):
        return {}
    cosine = worst_cosine(report)  # pass by pass; with --verify end, the final check's
    if cosine is None:
        cosine = (((summary.get("final_verify") or {}).get("vs_input")) or {}).get("cosine")
    return {"nodes_before": nodes_before, "nodes_after": nodes_after, "mb_before": bytes_before / 1e6,
            "mb_after": bytes_after / 1e6,
            "worst_cosine": float(cosine) if isinstance(cosine, (int, float)) and math.isfinite(cosine) else None}


def run_units(units: list[BatchUnit], spec: ExecutorSpec, entry: Entry,
              say: Callable[[str], None]) -> list[UnitResult]:
    """Every unit's result, in the units' order: each unit runs `entry(unit.argv)` (a module-level
    function, so that a worker process imports it by name). `say` gets a line per finished model."""
    results: dict[int, UnitResult] = {}
    tell = _teller(len(units), results, say)
    lost = _first_round(units, spec, entry, results, tell)
    if lost:
        say(f"{len(lost)} model(s) lost with a worker process that died: each runs once more, in a fresh "
            "process of its own")
        _retry(lost, spec, entry, results, tell)
    return [results[unit.index] for unit in units]


def _first_round(units: list[BatchUnit], spec: ExecutorSpec, entry: Entry, results: dict[int, UnitResult],
                 tell: Callable[[UnitResult], None]) -> list[BatchUnit]:
    """Run every unit on one executor; returns the units a dead worker took with it."""
    lost: list[BatchUnit] = []

    def collect(future: Future, unit: BatchUnit) -> None:
        try:
            result = future.result()
        except BrokenProcessPool:
            lost.append(unit)
            return
        except Exception as exc:  # noqa: BLE001  (e.g. the unit could not be sent to a worker)
            result = UnitResult(unit.index, unit.model, None, 3, STATUS[3], f"{type(exc).__name__}: {exc}", 0.0)
        results[unit.index] = result
        tell(result)

    with _shut_on_interrupt(make_executor(spec)) as executor:
        pending: dict[Future, BatchUnit] = {}
        for unit in units:
            try:
                future = executor.submit(_worker(), unit, entry)
            except BrokenProcessPool:  # a worker died while the units were still being handed out
                lost.append(unit)
                continue
            if future.done():  # the local executor ran it already: report it now, in order
                collect(future, unit)
            else:
                pending[future] = unit
        for future in as_completed(pending):
            collect(future, pending[future])
    return sorted(lost, key=lambda unit: unit.index)


def _retry(lost: list[BatchUnit], spec: ExecutorSpec, entry: Entry, results: dict[int, UnitResult],
           tell: Callable[[UnitResult], None]) -> None:
    """Each lost unit once more, in a one-process pool of its own, up to `spec.workers` at a time."""
    alone = replace(spec, workers=1)

    def again(unit: BatchUnit) -> UnitResult:
        began = time.perf_counter()
        with make_executor(alone) as executor:
            try:
                return replace(executor.submit(_worker(), unit, entry).result(), attempts=2)
            except BrokenProcessPool:
                return UnitResult(unit.index, unit.model, None, 1, "worker died", WORKER_DIED,
                                  time.perf_counter() - began, attempts=2)

    with _shut_on_interrupt(ThreadPoolExecutor(max_workers=min(spec.workers, len(lost)))) as threads:
        for result in threads.map(again, lost):
            results[result.index] = result
            tell(result)


def _worker() -> Callable[[BatchUnit, Entry], UnitResult]:
    """The function a worker runs (this module's `run_unit`, looked up when submitting, so a test
    can put a module-level function of its own in its place)."""
    return run_unit


@contextmanager
def _shut_on_interrupt(executor: Executor) -> Iterator[Executor]:
    """`with` an executor that, on Ctrl-C (or a unit interrupted in this process), cancels the units
    not started yet instead of waiting for them."""
    try:
        yield executor
    except BaseException:
        executor.shutdown(wait=False, cancel_futures=True)
        raise
    executor.shutdown()


def _teller(total: int, results: dict[int, UnitResult], say: Callable[[str], None]) -> Callable[[UnitResult], None]:
    def tell(result: UnitResult) -> None:
        if result.exit_code == 130:  # Ctrl-C inside a unit: stop the batch, as a single run stops
            raise KeyboardInterrupt
        if result.exit_code == 143:  # SIGTERM (graphopt.transaction's exit code for it)
            raise SystemExit(143)
        if result.error is None or result.error.startswith(result.status):  # "worker died (...)"
            what = result.error or result.status
        else:
            what = f"{result.status}: {result.error}"
        say(f"[{len(results)}/{total}] {result.model}: {what} ({result.seconds:.1f} s)")

    return tell
