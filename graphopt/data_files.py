"""Feeds from files: `.npz`, a directory of them, `.npy` and Polygraphy's input JSON.

The feed rule (README "CLI", DATA):
- A directory holds one `.npz` per feed, taken as it is.
- A single `.npy` is the one input of a one-input model, read as a single `.npz` would be.
- A `.json` is Polygraphy's input file (`--save-inputs`): a list of whole feeds.
- A `.py` is a data loader script in Polygraphy's `--data-loader-script` form: `loader.py` calls
  its `load_data()`, `loader.py:make_feeds` its `make_feeds()`; the function returns or yields
  whole feeds (dicts of input name -> array). The user names the script, so running it is
  theirs to decide, as in Polygraphy; an exception in it is one line.
- A single `.npz` holds arrays keyed by input name whose first axis is the sample axis. It is
  split into feeds of the model's batch size: an input whose first dim is static (`[1, 3, 60,
  160]`) gets feeds of that many samples (the count must divide evenly); an input whose first
  dim is symbolic or unknown gets one sample per feed. So `image: [64, 3, 60, 160]` is 64 feeds,
  never one feed of batch 64. One sample per feed (rather than a fixed batch such as 8) keeps the
  calibration / held-out split exact in samples (a 10-sample file holds out 3 samples, not a
  whole batch or none) and runs the model as a batch-1 deployment does; the price is one ORT
  run per sample, which for the small models here is per-call overhead, not compute.
- An array with one more axis than its input is a stack of whole feeds (`[K, *input_shape]`,
  K feeds), for data that must keep its own batches; rank-0 arrays go into every feed.
- Arrays that yield different feed counts are refused.

`.npz`, `.npy` and directories come back as `LazyFeeds` (graphopt.lazy_feeds): each feed is read
and checked once here, then read again only when a pass uses it, so memory does not grow with the
number of feeds. Polygraphy's JSON holds its arrays as base64 text and is read whole.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from pathlib import Path

import numpy as np
import onnx_ir as ir

from graphopt.array_files import ArrayFile, npy_array, npz_arrays
from graphopt.data import Feed, InputSpec, input_specs, validate_feed
from graphopt.errors import InputError
from graphopt.lazy_feeds import ScratchFolder, checked, spill, user_feeds

SCRIPT_FUNCTION = "load_data"  # what Polygraphy's --data-loader-script calls by default
Piece = tuple[int, int, bool] | None  # rows [start, stop), first axis dropped (a stacked feed); None: whole array


def feed_files(path: Path) -> list[Path]:
    """The .npz files a data path is read from: the file itself, or a directory's .npz (sorted)."""
    return sorted(path.glob("*.npz")) if path.is_dir() else [path]


def data_script(source: str | Path) -> tuple[Path, str] | None:
    """(script, function) when DATA names a loader script (`loader.py`, `loader.py:make_feeds`)."""
    text = str(source)
    script, sep, function = text.rpartition(":")
    if sep and script.endswith(".py") and function.isidentifier():
        return Path(script), function
    return (Path(text), SCRIPT_FUNCTION) if text.endswith(".py") else None


def load_feeds(path: str | Path, model: ir.Model) -> Sequence[Feed]:
    """Feeds from an .npz or .npy (first axis = samples, split into feeds of the model's batch
    size; see the module docstring), a directory of .npz (one feed each), Polygraphy's JSON or
    a data loader script."""
    script = data_script(path)
    if script is not None:
        return script_feeds(*script, model)
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such data file or directory")
    specs = input_specs(model)
    if path.suffix == ".json" and not path.is_dir():
        feeds = read_polygraphy_json(path)
        for i, feed in enumerate(feeds):
            validate_feed(feed, specs, f"{path}" + (f" (feed {i})" if len(feeds) > 1 else ""))
        return feeds
    if path.is_dir():
        files = feed_files(path)
        if not files:
            raise InputError(f"{path}: directory holds no .npz files")
        return checked([partial(read_npz, f) for f in files],
                       lambda i, feed: validate_feed(feed, specs, f"{files[i]}"))
    scratch = None if path.suffix == ".npy" else ScratchFolder("graphopt-data-")  # inflated members
    arrays = _npy_arrays(path, specs) if scratch is None else npz_arrays(path, scratch.path)
    plan = _split_samples(path, arrays, specs)
    where = (lambda i: f"{path} (feed {i})") if len(plan) > 1 else (lambda i: f"{path}")
    return checked([partial(_read_pieces, arrays, part) for part in plan],
                   lambda i, feed: validate_feed(feed, specs, where(i)), scratch)


def script_feeds(script: Path, function: str, model: ir.Model) -> Sequence[Feed]:
    """The feeds `function()` of the loader script returns or yields, checked and spilled to a
    scratch folder as they come (graphopt.lazy_feeds), never all in memory."""
    import importlib.util

    if not script.is_file():
        raise InputError(f"{script}: no such data loader script")
    where = f"{script}:{function}"
    spec = importlib.util.spec_from_file_location(f"graphopt_data_loader_{script.stem}", script)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
        loader = getattr(module, function, None)
        if not callable(loader):
            raise InputError(f"{script}: defines no function {function}() (a data loader script defines a "
                             "function that returns or yields feeds, dicts of input name -> numpy array)")
        produced = loader()
    except InputError:
        raise
    except Exception as exc:  # noqa: BLE001  (the user's script: any error is input)
        raise InputError(f"{where}: the data loader raised {type(exc).__name__}: {first_line(exc)}") from None
    specs = input_specs(model)

    def check(i: int, feed) -> None:
        if not isinstance(feed, dict) or not all(isinstance(a, np.ndarray) for a in feed.values()):
            raise InputError(f"{where}: feed {i} is not a dict of input name -> numpy array "
                             f"(got a {type(feed).__name__})")
        validate_feed(feed, specs, f"{where} (feed {i})")

    feeds = spill(user_feeds(where, produced), check)
    if not feeds:
        raise InputError(f"{where}: the data loader gave no feeds")
    return feeds


def read_npz(path: Path) -> dict[str, np.ndarray]:
    """Arrays of an .npz; a member that is not .npy data (numpy hands back its raw bytes, e.g.
    a pickle) is refused, never unpickled."""
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except Exception as exc:
        raise InputError(f"{path}: not a readable .npz file ({first_line(exc)})") from None
    for name, array in arrays.items():
        if not isinstance(array, np.ndarray):
            raise InputError(f"{path}: member '{name}' is not a .npy array (a pickle or other raw bytes); "
                             "graphopt reads plain arrays only")
    return arrays


def read_polygraphy_json(path: Path) -> list[Feed]:
    """Polygraphy's input file (`polygraphy run --save-inputs`): a JSON list of feeds, each input an
    object {"polygraphy_class": "ndarray", "array": base64 of the .npy bytes}; taken as whole feeds
    (one per iteration), never unpickled."""
    import base64
    import binascii
    import io
    import json

    try:
        document = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{path}: not a readable JSON input file ({first_line(exc)})") from None
    if not isinstance(document, list) or not document or not all(isinstance(f, dict) for f in document):
        raise InputError(f"{path}: expected Polygraphy's input format, a JSON list of {{input name: array}} feeds")
    feeds = []
    for i, entry in enumerate(document):
        feed = {}
        for name, value in entry.items():
            if not isinstance(value, dict) or value.get("polygraphy_class") != "ndarray" or "array" not in value:
                raise InputError(f"{path}: feed {i}, input '{name}' is not a Polygraphy ndarray "
                                 "({\"polygraphy_class\": \"ndarray\", \"array\": ...})")
            try:
                feed[name] = np.load(io.BytesIO(base64.b64decode(value["array"], validate=True)), allow_pickle=False)
            except (binascii.Error, ValueError, OSError) as exc:
                raise InputError(f"{path}: feed {i}, input '{name}': not base64 .npy data "
                                 f"({first_line(exc)})") from None
        feeds.append(feed)
    return feeds


def _npy_arrays(path: Path, specs: list[InputSpec]) -> dict[str, ArrayFile]:
    """A `.npy` (Olive's and ModelOpt's calibration form) is the one input of a one-input model,
    first axis = samples as in an .npz; never unpickled."""
    if len(specs) != 1:
        raise InputError(f"{path}: a .npy holds one array, the model has {len(specs)} inputs "
                         f"({', '.join(s.name for s in specs)}); give an .npz keyed by input name")
    return {specs[0].name: npy_array(path)}


def first_line(exc: Exception) -> str:
    lines = [line for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


def _read_pieces(arrays: dict[str, ArrayFile], part: dict[str, Piece]) -> Feed:
    feed = {}
    for name, piece in part.items():
        if piece is None:
            feed[name] = arrays[name].whole()
        else:
            start, stop, drop = piece
            rows = arrays[name].rows(start, stop)
            feed[name] = rows[0] if drop else rows
    return feed


def _split_samples(path: Path, arrays: dict[str, ArrayFile], specs: list[InputSpec]) -> list[dict[str, Piece]]:
    """Each feed's piece of each array (the module docstring's rule)."""
    by_name = {s.name: s for s in specs}
    if set(arrays) != set(by_name):
        return [dict.fromkeys(arrays)]  # names that do not match: reported for the file as a whole
    pieces = {k: _pieces(path, k, a.shape, by_name[k]) for k, a in arrays.items()}
    counts = {len(p) for p in pieces.values() if p is not None}
    if len(counts) > 1:
        raise InputError(f"{path}: arrays give different feed counts: " + ", ".join(
            f"{k}{list(a.shape)} -> {len(pieces[k])}" for k, a in arrays.items() if pieces[k] is not None)
            + " (first axis = samples, split by the model's batch size)")
    n = counts.pop() if counts else 1
    if n == 0:
        raise InputError(f"{path}: holds zero samples")
    return [{k: (None if pieces[k] is None else pieces[k][i]) for k in arrays} for i in range(n)]


def _pieces(path: Path, name: str, shape: tuple[int, ...], spec: InputSpec) -> list[Piece] | None:
    """This input's rows of each feed; None: the whole array goes into every feed (a rank-0
    array, or one of a rank the model does not take, which validation then reports)."""
    rank = len(spec.shape) if spec.shape is not None else len(shape)
    if len(shape) == rank + 1:
        return [(i, i + 1, True) for i in range(shape[0])]  # a stack of whole feeds
    if len(shape) == 0 or len(shape) != rank:
        return None
    first = spec.shape[0] if spec.shape is not None else None
    batch = first if isinstance(first, int) and first > 0 else 1
    count, rest = divmod(shape[0], batch)
    if rest:
        raise InputError(f"{path}: input '{name}' holds {shape[0]} samples, not a multiple of the "
                         f"model's batch size {batch} (its first dim)")
    return [(i * batch, (i + 1) * batch, False) for i in range(count)]
