"""Feeds read when they are used, so a run's memory does not grow with the number of feeds.

A `LazyFeeds` is a sequence of feeds that holds how to read each one, not its arrays: indexing
reads that feed from disk, slicing and `subset` give sequences of the same readers. Every feed is
read and checked once when the sequence is made (names, dtypes, shapes, NaN), one at a time, and
the sample count of each is kept; after that only the feed being used is in memory. Passes
stream feeds (calibration statistics, budget measurements, verification) and keep results, not
inputs, so with 16 or 128 calibration feeds the run holds the same arrays at its peak.

Sources (graphopt.data_files builds them):
- a directory of `.npz`, one feed per file;
- a single `.npz` or `.npy` whose first axis is the samples (graphopt.array_files reads a feed's
  rows with one positioned read);
- a one-shot iterable from the API (a generator, ONNX Runtime's `CalibrationDataReader`): each
  feed is written to a scratch folder as it arrives (`spill`) and read back from there.
A list of feeds given to the API is the caller's memory already and is used as it is.
Scratch folders are removed when the last sequence reading from them is gone.
"""

from __future__ import annotations

import shutil
import tempfile
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from functools import partial
from pathlib import Path

import numpy as np

from graphopt.data import Feed
from graphopt.errors import InputError

Reader = Callable[[], Feed]
MAX_USER_FEEDS = 1_000_000  # a reader that never ends is a bug


class ScratchFolder:
    """A temporary folder, removed with its last user (or at interpreter exit)."""

    def __init__(self, prefix: str):
        self.path = Path(tempfile.mkdtemp(prefix=prefix))
        weakref.finalize(self, shutil.rmtree, str(self.path), True)


class LazyFeeds(Sequence):
    """Feeds read from disk when indexed (see the module docstring)."""

    def __init__(self, readers: Sequence[Reader], samples: Sequence[int], scratch: ScratchFolder | None = None):
        if len(readers) != len(samples):
            raise ValueError("one sample count per reader")
        self._readers = tuple(readers)
        self._samples = tuple(samples)
        self._scratch = scratch  # kept alive while any sequence reads from it

    def __len__(self) -> int:
        return len(self._readers)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return LazyFeeds(self._readers[index], self._samples[index], self._scratch)
        return self._readers[index]()

    def subset(self, indices: Iterable[int]) -> LazyFeeds:
        chosen = [int(i) for i in indices]
        return LazyFeeds([self._readers[i] for i in chosen], [self._samples[i] for i in chosen], self._scratch)

    @property
    def samples(self) -> int:
        return sum(self._samples)

    def __repr__(self) -> str:
        return f"LazyFeeds({len(self)} feeds, {self.samples} samples)"


def feed_samples(feed: Feed) -> int:
    """A feed's samples: the first axis of its first array that has one (1 for scalar feeds)."""
    return next((int(a.shape[0]) for a in feed.values() if np.ndim(a)), 1)


def count_samples(feeds: Sequence[Feed]) -> int:
    """Samples over all feeds, without reading lazy ones."""
    if isinstance(feeds, LazyFeeds):
        return feeds.samples
    return sum(feed_samples(feed) for feed in feeds)


def subset(feeds: Sequence[Feed], indices: Iterable[int]) -> Sequence[Feed]:
    """The feeds at `indices`, still lazy when `feeds` is."""
    if isinstance(feeds, LazyFeeds):
        return feeds.subset(indices)
    return [feeds[int(i)] for i in indices]


def checked(readers: Sequence[Reader], check: Callable[[int, Feed], None],
            scratch: ScratchFolder | None = None) -> LazyFeeds:
    """A LazyFeeds over `readers` after reading each feed once and passing it to `check`."""
    samples = []
    for i, read in enumerate(readers):
        feed = read()
        check(i, feed)
        samples.append(feed_samples(feed))
    return LazyFeeds(readers, samples, scratch)


def spill(feeds: Iterable[Feed], check: Callable[[int, Feed], None]) -> LazyFeeds:
    """Write each feed of a one-shot iterable to a scratch folder as it comes (after `check`),
    and read them back lazily; one `.npy` per array, the names kept in memory."""
    scratch = ScratchFolder("graphopt-feeds-")
    readers, samples = [], []
    for i, feed in enumerate(feeds):
        check(i, feed)
        names = tuple(feed)
        for j, name in enumerate(names):
            np.save(scratch.path / f"{i}-{j}.npy", np.asarray(feed[name]), allow_pickle=False)
        readers.append(partial(_read_spilled, scratch.path, i, names))
        samples.append(feed_samples(feed))
    return LazyFeeds(readers, samples, scratch)


def _read_spilled(folder: Path, index: int, names: tuple[str, ...]) -> Feed:
    return {name: np.load(folder / f"{index}-{j}.npy", allow_pickle=False) for j, name in enumerate(names)}


def user_feeds(name: str, source, is_reader: bool = False) -> Iterator:
    """The feeds of the user's iterable, or of an ONNX Runtime `CalibrationDataReader`
    (`get_next()` until None, so code written for `quantize_static` hands its reader over as is);
    an exception in the user's code is one line naming `name`."""
    kind = "data reader" if is_reader else "data iterable"
    try:
        iterator = iter(source.get_next, None) if is_reader else iter(source)
    except TypeError:
        raise InputError(f"{name}: expected an iterable of feeds, got a {type(source).__name__}") from None
    count = 0
    while True:
        try:
            feed = next(iterator)
        except StopIteration:
            return
        except Exception as exc:  # noqa: BLE001  (the user's code: any error is input)
            raise InputError(f"{name}: the {kind} raised {type(exc).__name__}: {exc}") from None
        count += 1
        if count > MAX_USER_FEEDS:
            raise InputError(f"{name}: the {kind} gave more than {MAX_USER_FEEDS} feeds without ending; a reader must end")
        yield feed
