"""Histogram calibration in one pass over the data, the model run segment by segment.

graphopt.passes.quantize.calibration.segments cuts the model so that one segment's wanted tensors total about `cap` bytes;
each feed runs the segments in order and every tensor that comes out is folded into its
TensorStats with `update` (exact extremes, NaN/Inf and sentinel counts, and the streaming
histogram whose range growth re-bins exactly, graphopt.passes.quantize.calibration.histogram) and dropped before the next
segment runs. So percentile/entropy/mse need one forward pass, no in-graph pass 1 for the final
range, and bin in numpy (floor(x·2^-e) + B, bincount), which takes less time per element than
ORT's ScatterElements, which an earlier in-graph histogram pass used (measured:
docs/design-measurements.md).

The first feed is cut by estimated sizes (graphopt.value_bytes: the model's own shapes with
symbolic dims from the feed, else ONNX shape inference at the feed's concrete input shapes, which
also gives the dtypes segment inputs need when the export left values untyped). If one segment
then gave more than twice `cap` and the sizes that feed really had cut differently, the segments
are rebuilt once. An overestimate only means more, smaller segments, each one more ORT session to
build and one more run per feed, which cost less than rebuilding them (measured:
docs/design-measurements.md). Any ORT refusal (building or running a segment,
or folding its tensors) raises ingraph.Refused and the caller falls back to exposure.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from graphopt.passes.quantize.calibration import segments
from graphopt.activations import exposed_session
from graphopt.passes.quantize.calibration.ingraph import Refused
from graphopt.passes.quantize.calibration.plan import checked_feeds
from graphopt.errors import InputError
from graphopt.runtime import return_freed_memory
from graphopt.value_bytes import inferred, value_sizes


def collect(model, names, source, stats, inputs, say, method: str, cap: int) -> None:
    """One pass: every tensor in `names` (node outputs) and graph input in `inputs` into `stats`.
    A worker thread folds one segment's tensors while ORT runs the next (numpy and ORT both
    release the GIL), so at most two segments' tensors are alive."""
    runner, count = None, 0
    folder = _Folder(stats)
    try:
        for i, feed in enumerate(checked_feeds(source, model)):
            for name in inputs:
                stats[name].update(feed[name])
            if runner is None:
                sizes, dtypes = _first_sizes(model, names, feed)
                runner = _runner(model, names, sizes, cap, dtypes)
                say(f"calibration ({method}): {len(names) + len(inputs)} tensors, 1 pass over the data "
                    f"in {len(runner.segments)} model segments")
            measured, largest = _run(runner, feed, folder, i)
            if i == 0 and largest > 2 * cap and segments.cut(model, names, measured, cap) != \
                    segments.cut(model, names, sizes, cap):  # sizes were underestimated: cut again
                folder.wait()
                runner = None  # the old sessions go before the new ones come
                runner = _runner(model, names, measured, cap, dtypes)
            count += 1
            say(f"calibration pass 1/1: batch {count}")
        folder.wait()
    finally:
        folder.close()
        del runner
        return_freed_memory()


class _Folder:
    """Folds {name: array} parts into the stats on one worker thread, one part in flight."""

    def __init__(self, stats):
        self.stats, self.pool, self.pending = stats, ThreadPoolExecutor(max_workers=1), None

    def submit(self, part: dict) -> None:
        self.wait()
        self.pending = self.pool.submit(self._fold, part)

    def wait(self) -> None:
        if self.pending is not None:
            pending, self.pending = self.pending, None
            pending.result()

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)

    def _fold(self, part: dict) -> None:
        for name, array in part.items():
            self.stats[name].update(array)


def _first_sizes(model, names, feed) -> tuple[dict[str, int], dict]:
    """Estimated bytes of each name for the first cut (graphopt.value_bytes), and, when the model
    leaves some of them unshaped or untyped (Paddle exports), every value's dtype from shape
    inference at this feed's shapes (segment inputs need one)."""
    by_name = {v.name: v for node in model.graph for v in node.outputs}
    if all(by_name[n].shape is not None and by_name[n].dtype is not None for n in names):
        return value_sizes(model, names, feed), {}
    found = inferred(model, feed)
    dtypes = {n: dtype for n, (dtype, _) in found.items() if dtype is not None}
    return value_sizes(model, names, feed, found), dtypes


def _runner(model, names, sizes, cap, dtypes=None) -> segments.SegmentedRun:
    try:
        built = segments.build(model, names, sizes, cap, dtypes)
        return segments.SegmentedRun(built, _session)
    except InputError as exc:
        raise Refused(str(exc)) from None


def _session(model):
    """A segment's session: low-memory options, ORT's shared arena, no spinning (graphopt.runtime)."""
    return exposed_session(model, "disable_all", low_memory=True, many_sessions=True, owned=True)


def _run(runner, feed, folder, index) -> tuple[dict[str, int], int]:
    """Run one feed; ({name: bytes}, the most bytes one segment gave)."""
    measured, largest = {}, 0
    try:
        for part in runner.run(feed):
            measured.update((name, array.nbytes) for name, array in part.items())
            largest = max(largest, sum(array.nbytes for array in part.values()))
            folder.submit(part)
    except InputError:
        raise
    except Exception as exc:  # noqa: BLE001  (ORT's private types; exposure reports it)
        raise Refused(f"feed {index}: {str(exc).strip()[:200]}") from None
    return measured, largest
