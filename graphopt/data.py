"""Input feeds: load `.npz` data, or synthesize valid inputs from the model's input specs.

A single `.npz` holds arrays keyed by input name whose first axis is the sample axis; a
directory holds one `.npz` per feed. Synthesized data uses a fixed seed; symbolic dims take
`--shape NAME=DIMS` values or 1. Integer inputs get values that are valid for the model:
indices into a Gather get [0, rows), masks get ones, token-type ids get zeros.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
import numpy as np
import onnx_ir as ir

from graphopt.errors import InputError

Feed = dict[str, np.ndarray]


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


def parse_shapes(items: list[str], specs: list[InputSpec]) -> dict[str, tuple[int, ...]]:
    """Parse `--shape NAME=1,3,224,224` (or 1x3x224x224) and check NAME is a model input."""
    by_name = {s.name: s for s in specs}
    shapes = {}
    for item in items:
        name, sep, dims = item.rpartition("=")
        if not sep or not name:
            raise InputError(f"--shape '{item}': expected NAME=DIMS, e.g. input=1,3,224,224")
        if name not in by_name:
            raise InputError(f"--shape '{item}': the model has no input '{name}' "
                             f"(inputs: {', '.join(by_name)})")
        try:
            shape = tuple(int(d) for d in dims.replace("x", ",").split(",") if d)
        except ValueError:
            raise InputError(f"--shape '{item}': dims must be integers") from None
        expected = by_name[name].shape
        if expected is not None and len(expected) != len(shape):
            raise InputError(f"--shape '{item}': input '{name}' has rank {len(expected)}, got {len(shape)} dims")
        shapes[name] = shape
    return shapes


def concrete_shape(spec: InputSpec, override: tuple[int, ...] | None) -> tuple[int, ...]:
    if override is not None:
        return override
    if spec.shape is None:
        raise InputError(f"input '{spec.name}' has unknown rank; give --shape {spec.name}=DIMS")
    return tuple(d if isinstance(d, int) else 1 for d in spec.shape)


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


def load_feeds(path: str | Path, model: ir.Model) -> list[Feed]:
    """Load feeds from an .npz (first axis = samples) or a directory of .npz (one feed each)."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such data file or directory")
    specs = input_specs(model)
    if path.is_dir():
        files = sorted(path.glob("*.npz"))
        if not files:
            raise InputError(f"{path}: directory holds no .npz files")
        feeds = [dict(_read_npz(f)) for f in files]
    else:
        arrays = _read_npz(path)
        feeds = _split_samples(path, arrays, specs)
    for i, feed in enumerate(feeds):
        validate_feed(feed, specs, f"{path}" + (f" (feed {i})" if len(feeds) > 1 else ""))
    return feeds


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    except Exception as exc:
        raise InputError(f"{path}: not a readable .npz file ({exc})") from None


def _split_samples(path: Path, arrays: dict[str, np.ndarray], specs: list[InputSpec]) -> list[Feed]:
    ranks = {s.name: len(s.shape) for s in specs if s.shape is not None}
    stacked = {k: a.ndim == ranks.get(k, a.ndim) + 1 for k, a in arrays.items()}
    if not any(stacked.values()):
        return [arrays]
    counts = {a.shape[0] for k, a in arrays.items() if stacked[k]}
    if len(counts) != 1 or not all(stacked.values()):
        raise InputError(f"{path}: arrays disagree on the sample count (first axis): "
                         + ", ".join(f"{k}{list(a.shape)}" for k, a in arrays.items()))
    (n,) = counts
    if n == 0:
        raise InputError(f"{path}: holds zero samples")
    return [{k: a[i] for k, a in arrays.items()} for i in range(n)]


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
    """Calibration part and held-out part (held-out gets at least one feed if there are two)."""
    if len(feeds) < 2:
        return feeds, feeds
    n_hold = max(1, int(round(len(feeds) * fraction)))
    return feeds[:-n_hold], feeds[-n_hold:]
