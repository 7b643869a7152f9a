"""Input specs, `--shape` parsing, synthesized feeds and the checks every feed passes.

Feeds from files are read by graphopt.data_files (its docstring states the feed rule: how an
`.npz`'s first axis becomes feeds). `split_holdout` takes the last quarter of the calibration
feeds for verification when `--calib` comes without `--data`; with fewer than two feeds there is
no held-out part and it refuses (calibration data is never reused while being called held-out).

Synthesized data uses a fixed seed; symbolic dims take `--shape NAME=DIMS` values or 1.
Integer inputs get values that are valid for the model: indices into a Gather get [0, rows),
masks get ones, token-type ids get zeros.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

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
        raise InputError(f"input '{spec.name}': {where} shape {list(shape)} ({spec.dtype}), "
                         f"{nbytes / (1 << 30):.1f} GiB "
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


def reject_infinite(feeds: Sequence[Feed], where: str) -> None:
    """Calibration data must be finite: an infinite value makes a range (and a scale) infinite."""
    for i, feed in enumerate(feeds):
        for name, array in feed.items():
            if array.dtype.kind in "fc" and not np.isfinite(array).all():
                count = int((~np.isfinite(array)).sum())
                raise InputError(f"{where} (feed {i}): input '{name}' holds {count} infinite value(s) "
                                 f"of {array.size}; calibration needs finite values")


def _fmt(shape: tuple) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"


def split_holdout(feeds: Sequence[Feed], fraction: float = 0.25) -> tuple[Sequence[Feed], Sequence[Feed]]:
    """Calibration part and held-out part: the last `fraction` of the feeds (at least one) is held
    out. Fewer than two feeds leave nothing to hold out: refused, never reused as held-out."""
    if len(feeds) < 2:
        raise InputError(f"--calib gives {len(feeds)} feed{'' if len(feeds) == 1 else 's'}; give at least 2 "
                         "(one is held out for verification) or --data")
    n_hold = min(len(feeds) - 1, max(1, int(round(len(feeds) * fraction))))
    return feeds[:-n_hold], feeds[-n_hold:]
