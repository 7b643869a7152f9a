"""Input feeds: load `.npz` data, or synthesize valid inputs from the model's input specs.

The feed rule (README "CLI", DATA):
- A directory holds one `.npz` per feed, taken as it is.
- A single `.npy` is the one input of a one-input model, read as a single `.npz` would be.
- A `.json` is Polygraphy's input file (`--save-inputs`): a list of whole feeds.
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
`split_holdout` takes the last quarter of the calibration feeds for verification when `--calib`
comes without `--data`; with fewer than two feeds there is no held-out part and it refuses
(calibration data is never reused while being called held-out).

Synthesized data uses a fixed seed; symbolic dims take `--shape NAME=DIMS` values or 1.
Integer inputs get values that are valid for the model: indices into a Gather get [0, rows),
masks get ones, token-type ids get zeros.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
import numpy as np
import onnx_ir as ir

from graphopt.errors import InputError

Feed = dict[str, np.ndarray]
MAX_DIM = (1 << 31) - 1  # what ONNX Runtime and numpy index with
MAX_FEED_BYTES = 4 << 30  # a synthesized input larger than this is a typo, not a test feed


@dataclass(frozen=True)
class InputSpec:
    name: str
    dtype: np.dtype
    shape: tuple  # ints, or str for symbolic dims, or None for unknown


def input_specs(model: ir.Model) -> list[InputSpec]:
    """The inputs a user feeds: graph inputs that are not initializers (IR < 4 lists both)."""
    specs = []
    for value in model.graph.inputs:
        if value.name in model.graph.initializers:
            continue
        if value.type is not None and not isinstance(value.type, ir.TensorType):
            raise InputError(f"input '{value.name}' has type {value.type}; graphopt handles tensor inputs only")
        if value.dtype is None:
            raise InputError(f"input '{value.name}' has no tensor type; graphopt handles tensor inputs only")
        dims = tuple(_spec_dim(d) for d in value.shape.dims) if value.shape is not None else None
        specs.append(InputSpec(value.name, value.dtype.numpy(), dims))
    return specs


def _spec_dim(dim) -> int | str | None:
    """A static size, a symbolic name, or None (unknown). Some exporters (Paddle) write -1 for
    a dynamic dimension; that is unknown, not a size."""
    if isinstance(dim, int):
        return dim if dim >= 0 else None
    return dim.value if dim is not None and dim.value is not None else None


def split_shape_item(item: str) -> tuple[str, str] | None:
    """(name, dims) of `NAME=1,3,224,224`, `NAME=1x3x224x224`, or Polygraphy's `NAME:[1,3,224,224]`
    and `NAME:1,3,224,224`; None when it is none of them. `=` wins (an input name may hold ':')."""
    name, sep, dims = item.rpartition("=")
    if sep and name:
        return name, dims
    name, sep, dims = item.rpartition(":")
    if sep and name and re.fullmatch(r"\[?[\dx, ]*\]?", dims.strip()):
        return name, dims.strip().strip("[]")
    return None


def parse_shapes(items: list[str], specs: list[InputSpec]) -> dict[str, tuple[int, ...]]:
    """Parse `--shape NAME=1,3,224,224` (also 1x3x224x224, NAME:[1,3,224,224]) and check NAME is
    a model input."""
    by_name = {s.name: s for s in specs}
    shapes = {}
    for item in items:
        parts = split_shape_item(item)
        if parts is None:
            raise InputError(f"--shape '{item}': expected NAME=DIMS, e.g. input=1,3,224,224 "
                             "(or Polygraphy's input:[1,3,224,224])")
        name, dims = parts
        if name not in by_name:
            raise InputError(f"--shape '{item}': the model has no input '{name}' "
                             f"(inputs: {', '.join(by_name)})")
        try:
            shape = tuple(int(d) for d in dims.replace("x", ",").replace(" ", "").split(",") if d)
        except ValueError:
            raise InputError(f"--shape '{item}': dims must be integers") from None
        problem = shape_problem(shape, by_name[name])
        if problem:
            raise InputError(f"--shape '{item}': {problem}")
        shapes[name] = shape
    return shapes


def shape_problem(shape: tuple, spec: InputSpec) -> str | None:
    """Why `shape` cannot be a feed for `spec` (rank, static dims, size), or None."""
    bad = [d for d in shape if not isinstance(d, (int, np.integer)) or isinstance(d, bool) or not 1 <= d <= MAX_DIM]
    if bad:
        return f"dims must be integers from 1 to {MAX_DIM}, got {bad[0]!r}"
    if spec.shape is not None and len(spec.shape) != len(shape):
        return f"input '{spec.name}' has rank {len(spec.shape)}, got {len(shape)} dims"
    for axis, (dim, size) in enumerate(zip(spec.shape or (), shape)):
        if isinstance(dim, int) and dim != size:
            return f"input '{spec.name}' has static dim {dim} at axis {axis}, got {size}"
    return None


def concrete_shape(spec: InputSpec, override: tuple[int, ...] | None) -> tuple[int, ...]:
    """The shape to synthesize for `spec`: the override, else static dims with 1 for symbolic
    ones; refused when it is not a valid shape or would take more than MAX_FEED_BYTES."""
    if override is not None:
        problem = shape_problem(tuple(override), spec)
        if problem:
            raise InputError(f"shape {list(override)} for input '{spec.name}': {problem}")
        shape = tuple(int(d) for d in override)
    elif spec.shape is None:
        raise InputError(f"input '{spec.name}' has unknown rank; give --shape {spec.name}=DIMS")
    else:
        shape = tuple(d if isinstance(d, int) else 1 for d in spec.shape)
    nbytes = math.prod(shape) * spec.dtype.itemsize
    if nbytes > MAX_FEED_BYTES:
        where = "--shape gives" if override is not None else "the model declares"
        raise InputError(f"input '{spec.name}': {where} shape {list(shape)} ({spec.dtype}), {nbytes / (1 << 30):.1f} GiB "
                         f"to synthesize, over the {MAX_FEED_BYTES >> 30} GiB graphopt synthesizes per input")
    return shape


def synthesize_feeds(model: ir.Model, count: int = 1, shapes: dict | None = None, seed: int = 0) -> list[Feed]:
    """`count` deterministic feeds valid for the model."""
    rng = np.random.default_rng(seed)
    specs = input_specs(model)
    bounds = _index_bounds(model)
    feeds = []
    for _ in range(count):
        feed = {}
        for spec in specs:
            shape = concrete_shape(spec, (shapes or {}).get(spec.name))
            feed[spec.name] = _synth_array(spec, shape, bounds.get(spec.name), rng)
        feeds.append(feed)
    return feeds


def _synth_array(spec: InputSpec, shape: tuple, bound: int | None, rng: np.random.Generator) -> np.ndarray:
    kind, lname = spec.dtype.kind, spec.name.lower()
    if kind == "f":
        return rng.standard_normal(shape).astype(spec.dtype)
    if kind == "b":
        return rng.random(shape) < 0.5
    if kind in "iu":
        if "mask" in lname:
            return np.ones(shape, spec.dtype)
        if "type" in lname or "segment" in lname:
            return np.zeros(shape, spec.dtype)
        high = bound if bound is not None else 2
        return rng.integers(0, max(high, 1), size=shape).astype(spec.dtype)
    raise InputError(f"input '{spec.name}' has dtype {spec.dtype}; cannot synthesize data for it (give --data)")


def _index_bounds(model: ir.Model) -> dict[str, int]:
    """For inputs used as Gather indices into a constant table: the table's row count."""
    bounds: dict[str, int] = {}
    for value in model.graph.inputs:
        for node, index in value.uses():
            if node.op_type == "Gather" and index == 1 and node.inputs[0] is not None:
                shape = _static_shape(node.inputs[0])
                axis = node.attributes.get_int("axis", 0)
                if shape is not None and isinstance(shape[axis], int):
                    rows = shape[axis]
                    bounds[value.name] = min(bounds.get(value.name, rows), rows)
    return bounds


def _static_shape(value: ir.Value):
    """Shape of a value, also when it is an initializer or a Constant node's output."""
    if value.shape is not None:
        return value.shape
    if value.const_value is not None:
        return value.const_value.shape
    producer = value.producer()
    if producer is not None and producer.op_type == "Constant" and "value" in producer.attributes:
        return producer.attributes["value"].as_tensor().shape
    return None


def feed_files(path: Path) -> list[Path]:
    """The .npz files a data path is read from: the file itself, or a directory's .npz (sorted)."""
    return sorted(path.glob("*.npz")) if path.is_dir() else [path]


def load_feeds(path: str | Path, model: ir.Model) -> list[Feed]:
    """Load feeds from an .npz (first axis = samples, split into feeds of the model's batch
    size; see the module docstring) or a directory of .npz (one feed each)."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such data file or directory")
    specs = input_specs(model)
    if path.is_dir():
        files = feed_files(path)
        if not files:
            raise InputError(f"{path}: directory holds no .npz files")
        feeds = [dict(_read_npz(f)) for f in files]
    elif path.suffix == ".json":
        feeds = read_polygraphy_json(path)
    else:
        arrays = _read_npy(path, specs) if path.suffix == ".npy" else _read_npz(path)
        feeds = _split_samples(path, arrays, specs)
    for i, feed in enumerate(feeds):
        validate_feed(feed, specs, f"{path}" + (f" (feed {i})" if len(feeds) > 1 else ""))
    return feeds


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    """Arrays of an .npz; a member that is not .npy data (numpy hands back its raw bytes, e.g.
    a pickle) is refused, never unpickled."""
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except Exception as exc:
        raise InputError(f"{path}: not a readable .npz file ({_first_line(exc)})") from None
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
        raise InputError(f"{path}: not a readable JSON input file ({_first_line(exc)})") from None
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
                raise InputError(f"{path}: feed {i}, input '{name}': not base64 .npy data ({_first_line(exc)})") from None
        feeds.append(feed)
    return feeds


def _read_npy(path: Path, specs: list[InputSpec]) -> dict[str, np.ndarray]:
    """A `.npy` (Olive's and ModelOpt's calibration form) is the one input of a one-input model,
    first axis = samples as in an .npz; never unpickled."""
    if len(specs) != 1:
        raise InputError(f"{path}: a .npy holds one array, the model has {len(specs)} inputs "
                         f"({', '.join(s.name for s in specs)}); give an .npz keyed by input name")
    try:
        array = np.load(path, allow_pickle=False)
    except Exception as exc:
        raise InputError(f"{path}: not a readable .npy file ({_first_line(exc)})") from None
    return {specs[0].name: array}


def _first_line(exc: Exception) -> str:
    lines = [line for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


def _split_samples(path: Path, arrays: dict[str, np.ndarray], specs: list[InputSpec]) -> list[Feed]:
    """Cut each array into its part of every feed (the module docstring's rule)."""
    by_name = {s.name: s for s in specs}
    if set(arrays) != set(by_name):
        return [arrays]  # names that do not match: reported for the file as a whole
    pieces = {k: _pieces(path, k, a, by_name[k]) for k, a in arrays.items()}
    counts = {len(p) for p in pieces.values() if p is not None}
    if len(counts) > 1:
        raise InputError(f"{path}: arrays give different feed counts: " + ", ".join(
            f"{k}{list(a.shape)} -> {len(pieces[k])}" for k, a in arrays.items() if pieces[k] is not None)
            + " (first axis = samples, split by the model's batch size)")
    n = counts.pop() if counts else 1
    if n == 0:
        raise InputError(f"{path}: holds zero samples")
    return [{k: (a if pieces[k] is None else pieces[k][i]) for k, a in arrays.items()} for i in range(n)]


def _pieces(path: Path, name: str, array: np.ndarray, spec: InputSpec) -> list[np.ndarray] | None:
    """This input's part of each feed; None: the whole array goes into every feed (a rank-0
    array, or one of a rank the model does not take, which validation then reports)."""
    rank = len(spec.shape) if spec.shape is not None else array.ndim
    if array.ndim == rank + 1:
        return list(array)  # a stack of whole feeds
    if array.ndim == 0 or array.ndim != rank:
        return None
    first = spec.shape[0] if spec.shape is not None else None
    batch = first if isinstance(first, int) and first > 0 else 1
    count, rest = divmod(array.shape[0], batch)
    if rest:
        raise InputError(f"{path}: input '{name}' holds {array.shape[0]} samples, not a multiple of the "
                         f"model's batch size {batch} (its first dim)")
    return [array[i * batch:(i + 1) * batch] for i in range(count)]


def validate_feed(feed: Feed, specs: list[InputSpec], where: str) -> None:
    """Names, dtypes, ranks and static dims must match the model's inputs."""
    expected = {s.name: s for s in specs}
    missing = [n for n in expected if n not in feed]
    unknown = [n for n in feed if n not in expected]
    if missing or unknown:
        parts = ([f"missing input(s) {', '.join(missing)}"] if missing else []) + (
            [f"unknown name(s) {', '.join(unknown)}"] if unknown else [])
        raise InputError(f"{where}: data does not match the model inputs: {'; '.join(parts)} "
                         f"(model inputs: {', '.join(expected)})")
    for name, spec in expected.items():
        array = feed[name]
        if array.dtype != spec.dtype:
            raise InputError(f"{where}: input '{name}' expects {spec.dtype}, data has {array.dtype}")
        if spec.shape is None:
            continue
        if array.ndim != len(spec.shape):
            raise InputError(f"{where}: input '{name}' expects rank {len(spec.shape)} {_fmt(spec.shape)}, "
                             f"data has shape {list(array.shape)}")
        for dim, size in zip(spec.shape, array.shape):
            if isinstance(dim, int) and dim != size:
                raise InputError(f"{where}: input '{name}' expects shape {_fmt(spec.shape)}, "
                                 f"data has shape {list(array.shape)}")
        _reject_nan(array, name, where)


def _reject_nan(array: np.ndarray, name: str, where: str) -> None:
    """NaN inputs make every comparison and calibration statistic NaN: refuse them."""
    if array.dtype.kind in "fc":
        count = int(np.isnan(array).sum())
        if count:
            raise InputError(f"{where}: input '{name}' holds {count} NaN value(s) of {array.size}")


def reject_infinite(feeds: list[Feed], where: str) -> None:
    """Calibration data must be finite: an infinite value makes a range (and a scale) infinite."""
    for i, feed in enumerate(feeds):
        for name, array in feed.items():
            if array.dtype.kind in "fc" and not np.isfinite(array).all():
                count = int((~np.isfinite(array)).sum())
                raise InputError(f"{where} (feed {i}): input '{name}' holds {count} infinite value(s) "
                                 f"of {array.size}; calibration needs finite values")


def _fmt(shape: tuple) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"


def split_holdout(feeds: list[Feed], fraction: float = 0.25) -> tuple[list[Feed], list[Feed]]:
    """Calibration part and held-out part: the last `fraction` of the feeds (at least one) is held
    out. Fewer than two feeds leave nothing to hold out: refused, never reused as held-out."""
    if len(feeds) < 2:
        raise InputError(f"--calib gives {len(feeds)} feed{'' if len(feeds) == 1 else 's'}; give at least 2 "
                         "(one is held out for verification) or --data")
    n_hold = min(len(feeds) - 1, max(1, int(round(len(feeds) * fraction))))
    return feeds[:-n_hold], feeds[-n_hold:]
