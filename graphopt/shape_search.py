"""Shapes for synthesized inputs: sizes the input model runs on, found before any pass runs.

Without `--data`, inputs are synthesized, and a symbolic dim needs a size. 1 is not one real
models take: a CRNN whose convolutions need height >= 3 after pooling, a reflect Pad that needs
2 samples, a detector whose Resize + Concat need sides divisible by 32 all fail at 1, and a
detector that does run on a 1x1 image verifies nothing. The rule:
- Static dims stay. `--shape NAME=DIMS` fixes that input's whole shape and is never searched
  over; when it fixes every symbolic input, the model is run once on it and a shape it refuses
  is exit 2 naming the `--shape`. A model whose inputs are all static opens no session here.
- Dims that share a dim_param take one size, across inputs (an input fixed by `--shape` sets it);
  a dim_param without a letter or digit (Paddle writes "?" for every dim) names nothing.
- Each other symbolic (named, unnamed, -1) dim gets a kind, from the words of its dim_param,
  else from where it stands (rank, axis, dtype, the static dims beside it):
    batch      batch, N, B, bs; axis 0; axis 1 of a [layers, batch, hidden] state: 1
    spatial    height, width, h, w; axes 2-3 of NCHW, 1-2 of NHWC: 32, 64, 128, 224, 256, 320,
               640 (multiples of the model's `stride` metadata); when the other side is static,
               that side times 1, 2, 4, 8 (a text line 64 high: 64, 128, 256, 512 wide)
    sequence   seq, sequence, length, time, frames, tokens; an integer [N, T]: 16, 32, 64, 128
    samples    samples, audio, wav; a float [L], [N, L] or [N, 1, L] (a signal): 512, 1024, 4096, 16000
    other      1, 2, 3, 4, 8, ... 1024
- A dim whose size follows from others (a KV-cache decoder's mask length `total` = past + seq,
  or a dim_param written as an expression such as "past_sequence_length + 1") is set from them
  in every candidate, never sized on its own (graphopt.derived_dims).
- Candidate k gives every dim its kind's k-th size (its last, when it has fewer), so candidates
  grow in cost; a size the model states in its metadata (`imgsz`, `input_size`, ...) goes first.
  Candidates over MAX_ELEMENTS input elements (fewer on models over LARGE_MODEL_BYTES of weights)
  are left out, and at most MAX_TRIES are run. When every dim has one size (a symbolic batch
  alone) there is nothing to choose and nothing is run: the reference run reports a failure.
- The model is run as the reference run runs it (ONNX Runtime, CPU, graph optimizations off),
  with ORT's own log silenced unless graphopt logs at DEBUG; the first candidate it runs on is
  kept. None: exit 2 naming the sizes tried and asking for `--shape NAME=DIMS` or `--data`.
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx_ir as ir
import onnxruntime as ort

from graphopt.data import InputSpec, input_specs, synthesize_feeds
from graphopt.derived_dims import derivations, dim_words
from graphopt.errors import InputError
from graphopt.io import weight_bytes
from graphopt.runtime import create_session, quiet_run_options, return_freed_memory

log = logging.getLogger("graphopt.shape_search")

BATCH, SPATIAL, SEQUENCE, SAMPLES, OTHER = "batch", "spatial", "sequence", "samples", "other"
SIZES = {
    BATCH: (1,),
    SPATIAL: (32, 64, 128, 224, 256, 320, 640),
    SEQUENCE: (16, 32, 64, 128),
    SAMPLES: (512, 1024, 4096, 16000),
    OTHER: (1, 2, 3, 4, 8, 16, 32, 64, 128, 256, 512, 1024),
}
ASPECTS = (1, 2, 4, 8)  # a side whose other side is static: that side times these
KIND_WORDS = (  # first match wins: "batch_size" is a batch, "audio_length" samples
    (BATCH, frozenset({"batch", "n", "b", "bs", "bsz"})),
    (SPATIAL, frozenset({"height", "width", "h", "w", "rows", "cols"})),
    (SAMPLES, frozenset({"samples", "sample", "audio", "wav", "waveform", "signal"})),
    (SEQUENCE, frozenset({"seq", "seqlen", "sequence", "length", "len", "time", "frames", "tokens", "t",
                          "steps"})),
)
SIZE_KEYS = ("imgsz", "img_size", "image_size", "input_size", "input_shape", "resolution")  # metadata
MAX_TRIES = 12
MAX_ELEMENTS = 1 << 21  # input elements of one candidate (3x640x640 is 1.2M; 16000 samples)
LARGE_MODEL_BYTES = 256 << 20  # past this much weight, MAX_ELEMENTS shrinks in proportion


@dataclass(frozen=True)
class ShapeChoice:
    """The shape synthesized for each input (static ones included) and how it was chosen."""

    shapes: dict[str, tuple[int, ...]]
    resolved: tuple[str, ...]  # inputs with symbolic dims that the search (not --shape) sized
    searched: bool  # symbolic dims were given sizes by running the model on candidates
    tried: int  # candidates run (0: none, nothing to choose)
    chosen: str  # "height=64, width=256": the sizes given to symbolic dims ("" when none)

    def report(self) -> dict[str, Any]:
        """The report's "shape_search" entry."""
        return {"tried": self.tried, "chosen": self.chosen}

    def described(self) -> str:
        """`x [1, 3, 64, 256]` for each input whose symbolic dims the search sized."""
        return ", ".join(f"{name} {list(self.shapes[name])}" for name in self.resolved)


@dataclass(frozen=True)
class DimSlot:
    """A symbolic dim, or the dims sharing one dim_param: one size for all of them."""

    label: str  # the dim_param, or "x[2]" for an unnamed dim
    kind: str
    sizes: tuple[int, ...]  # candidate sizes, cheapest first


def choose_shapes(source: ir.Model | Path, model: ir.Model, given: dict[str, tuple[int, ...]],
                  seed: int) -> ShapeChoice:
    """The shapes to synthesize: static ones, `given` (--shape) as is, and symbolic dims sized
    by the module's rule. `source` is what ONNX Runtime runs (the input file, or `model`)."""
    specs = [s for s in input_specs(model) if s.shape is not None]  # unknown rank: synthesize_feeds says so
    static = {s.name: s.shape for s in specs if s.name not in given and _is_static(s)}
    open_specs = [s for s in specs if s.name not in given and s.name not in static]
    check_given = any(not _is_static(s) for s in specs if s.name in given)
    if not open_specs:
        if check_given:
            _check_given(source, model, given, seed)
        return ShapeChoice({**static, **given}, (), False, 0, "")
    patterns, slots = dim_slots(open_specs, _given_dims(specs, given), model)
    candidates = candidate_sizes(patterns, slots, model)
    fixed = {**static, **given}
    if len(candidates) == 1 and not check_given:  # nothing to choose; the reference run reports a failure
        return ShapeChoice({**fixed, **_shapes(patterns, candidates[0])}, tuple(patterns), False, 0, "")
    chosen, tried, error = _first_that_runs(source, model, fixed, patterns, candidates, seed)
    if chosen is None:
        raise InputError(_none_ran_message(slots, candidates, given, error))
    sizes = ", ".join(f"{label}={size}" for label, size in chosen.items())
    return ShapeChoice({**fixed, **_shapes(patterns, chosen)}, tuple(patterns), len(candidates) > 1, tried, sizes)


def _is_static(spec: InputSpec) -> bool:
    return all(isinstance(d, int) for d in spec.shape)


def dim_slots(specs: list[InputSpec], given_dims: dict[str, int],
              model: ir.Model) -> tuple[dict[str, tuple], dict[str, DimSlot]]:
    """Each input's shape as a pattern (static sizes and slot labels), and the slots."""
    stride = stated_stride(model)
    patterns: dict[str, tuple] = {}
    slots: dict[str, DimSlot] = {}
    for spec in specs:
        pattern = []
        for axis, dim in enumerate(spec.shape):
            if isinstance(dim, int):
                pattern.append(dim)
                continue
            label = dim if dim and re.search(r"\w", dim) else f"{spec.name}[{axis}]"  # Paddle names all "?"
            if label not in slots:
                kind = dim_kind(dim, axis, spec)
                sizes = (given_dims[label],) if label in given_dims else _sizes(kind, axis, spec, stride)
                slots[label] = DimSlot(label, kind, sizes)
            pattern.append(label)
        patterns[spec.name] = tuple(pattern)
    return patterns, slots


def dim_kind(dim: str | None, axis: int, spec: InputSpec) -> str:
    """The kind of a symbolic dim: by the words of its dim_param, else by where it stands."""
    words = set(dim_words(dim)) if dim else set()
    kind = next((kind for kind, vocabulary in KIND_WORDS if words & vocabulary), None)
    kind = kind or _kind_by_position(axis, spec)
    return SAMPLES if kind == SEQUENCE and _is_signal(axis, spec) else kind


def _is_signal(axis: int, spec: InputSpec) -> bool:
    """The length of a float [L], [N, L] or mono [N, 1, L]: raw samples, not steps of features."""
    shape = spec.shape
    mono = len(shape) == 3 and shape[1] == 1
    return spec.dtype.kind == "f" and axis == len(shape) - 1 and (len(shape) <= 2 or mono)


def _kind_by_position(axis: int, spec: InputSpec) -> str:
    shape, rank = spec.shape, len(spec.shape)
    if axis in spatial_axes(shape):
        return SPATIAL
    if axis == 0 and rank >= 2:
        return BATCH
    if rank == 3 and axis == 1 and _size(shape[0]) > 1 and _size(shape[2]) > 0:
        return BATCH  # a recurrent state [layers, batch, hidden]
    if rank <= 3 and axis == rank - 1:
        return SAMPLES if _is_signal(axis, spec) else SEQUENCE
    return SEQUENCE if rank == 3 else OTHER


def _size(dim) -> int:
    return dim if isinstance(dim, int) else 0


def spatial_axes(shape: tuple) -> tuple[int, ...]:
    """The image axes of a rank-4 shape: (2, 3) of NCHW, (1, 2) of NHWC (static 1-4 channels last)."""
    if len(shape) != 4:
        return ()
    channels = (1, 2, 3, 4)
    return (1, 2) if shape[3] in channels and shape[1] not in channels else (2, 3)


def _sizes(kind: str, axis: int, spec: InputSpec, stride: int) -> tuple[int, ...]:
    """A slot's candidate sizes; a spatial side whose other side is static follows it (an aspect)."""
    if kind != SPATIAL:
        return SIZES[kind]
    axes = spatial_axes(spec.shape)
    other = next((spec.shape[a] for a in axes if a != axis), None) if axis in axes else None
    base = tuple(other * a for a in ASPECTS) if isinstance(other, int) and other > 0 else SIZES[SPATIAL]
    return tuple(sorted({-(-size // stride) * stride for size in base}))


def _given_dims(specs: list[InputSpec], given: dict[str, tuple[int, ...]]) -> dict[str, int]:
    """dim_param -> size, read off the inputs --shape fixes (other inputs sharing it follow)."""
    dims = {}
    for spec in specs:
        if spec.name in given:
            dims.update({d: size for d, size in zip(spec.shape, given[spec.name]) if isinstance(d, str)})
    return dims


def stated_stride(model: ir.Model) -> int:
    """The `stride` an exporter wrote into the metadata (Ultralytics: 32), else 1."""
    value = re.fullmatch(r"\s*(\d+)\s*", model.metadata_props.get("stride", ""))
    return max(1, int(value.group(1))) if value else 1


def stated_sides(model: ir.Model) -> tuple[int, int] | None:
    """(height, width) the metadata states (`imgsz: [640, 640]`, `input_size: 224`, ...), else None."""
    for key, value in model.metadata_props.items():
        if key.lower() in SIZE_KEYS:
            sides = [int(n) for n in re.findall(r"\d+", value) if int(n) > 0]
            if len(sides) == 1:
                return sides[0], sides[0]
            if len(sides) >= 2:
                return sides[-2], sides[-1]
    return None


def candidate_sizes(patterns: dict[str, tuple], slots: dict[str, DimSlot],
                    model: ir.Model) -> list[dict[str, int]]:
    """Size per slot for each candidate to run, in order: the stated size, then candidate k gives
    each slot its k-th size; over the element cap left out (never the cheapest), at most MAX_TRIES."""
    derived = derivations(slots, {label for label, slot in slots.items() if slot.kind == SEQUENCE})
    depth = max((len(slot.sizes) for label, slot in slots.items() if label not in derived), default=1)
    levels = [{label: slot.sizes[min(k, len(slot.sizes) - 1)] for label, slot in slots.items()}
              for k in range(depth)]
    stated = _stated_candidate(patterns, slots, levels[0], stated_sides(model))
    cap = element_cap(model)
    cheapest = _with_derived(levels[0], derived)
    candidates: list[dict[str, int]] = []
    for candidate in ([stated] if stated else []) + levels:
        candidate = _with_derived(candidate, derived)
        if candidate is None or candidate in candidates or (
                candidate != cheapest and _elements(patterns, candidate) > cap):
            continue
        candidates.append(candidate)
    return candidates[:MAX_TRIES]


def _with_derived(candidate: dict[str, int], derived: dict) -> dict[str, int] | None:
    """The candidate with each derived dim (graphopt.derived_dims) set from the others; None when
    one comes out below 1."""
    sizes = dict(candidate)
    for label, size_of in derived.items():
        sizes[label] = size_of(sizes)
        if sizes[label] < 1:
            return None
    return sizes


def _stated_candidate(patterns: dict[str, tuple], slots: dict[str, DimSlot], first: dict[str, int],
                      sides: tuple[int, int] | None) -> dict[str, int] | None:
    """The first candidate with the metadata's (height, width) on every symbolic image side."""
    if sides is None:
        return None
    candidate = dict(first)
    for pattern in patterns.values():
        for axis, side in zip(spatial_axes(pattern), sides):
            label = pattern[axis]
            if isinstance(label, str) and slots[label].kind == SPATIAL and len(slots[label].sizes) > 1:
                candidate[label] = side
    return candidate if candidate != first else None


def element_cap(model: ir.Model) -> int:
    """MAX_ELEMENTS, shrunk in proportion on models over LARGE_MODEL_BYTES of weights."""
    weights = weight_bytes(model)
    return MAX_ELEMENTS if weights <= LARGE_MODEL_BYTES else MAX_ELEMENTS * LARGE_MODEL_BYTES // weights


def _elements(patterns: dict[str, tuple], candidate: dict[str, int]) -> int:
    return sum(math.prod(shape) for shape in _shapes(patterns, candidate).values())


def _shapes(patterns: dict[str, tuple], candidate: dict[str, int]) -> dict[str, tuple[int, ...]]:
    return {name: tuple(candidate[d] if isinstance(d, str) else d for d in pattern)
            for name, pattern in patterns.items()}


def _first_that_runs(source: ir.Model | Path, model: ir.Model, fixed: dict[str, tuple[int, ...]],
                     patterns: dict[str, tuple], candidates: list[dict[str, int]],
                     seed: int) -> tuple[dict[str, int] | None, int, str]:
    """(the first candidate the model runs on or None, candidates run, the last ORT error)."""
    session = create_session(source)
    error = ""
    try:
        for tried, candidate in enumerate(candidates, 1):
            error = run_error(session, model, {**fixed, **_shapes(patterns, candidate)}, seed)
            log.debug("shape search: %s: %s", candidate, error or "runs")
            if not error:
                return candidate, tried, ""
    finally:
        del session
        return_freed_memory()
    return None, len(candidates), error


def run_error(session: ort.InferenceSession, model: ir.Model, shapes: dict[str, tuple[int, ...]],
              seed: int) -> str:
    """Why ONNX Runtime fails on a feed of these shapes (its first line), or "" when it runs."""
    feed = synthesize_feeds(model, 1, shapes, seed)[0]
    try:
        session.run(None, feed, quiet_run_options())  # a candidate that fails is expected: no ORT error line
    except Exception as exc:  # noqa: BLE001  (ORT raises private types)
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        return lines[0] if lines else type(exc).__name__
    return ""


def _check_given(source: ir.Model | Path, model: ir.Model, given: dict[str, tuple[int, ...]], seed: int) -> None:
    """Run the model once on the --shape values; refuse them (exit 2) when it fails."""
    shapes = {s.name: s.shape for s in input_specs(model) if s.shape is not None and s.name not in given}
    session = create_session(source)
    try:
        error = run_error(session, model, {**shapes, **given}, seed)
    finally:
        del session
        return_freed_memory()
    if error:
        raise InputError(f"{_given_text(given)}: the input model does not run on this shape (ONNX Runtime: "
                         f"{error}); give other dims or --data DATA")


def _none_ran_message(slots: dict[str, DimSlot], candidates: list[dict[str, int]],
                      given: dict[str, tuple[int, ...]], error: str) -> str:
    tried = "; ".join(f"{label}=" + ",".join(str(size) for size in dict.fromkeys(c[label] for c in candidates))
                      for label in slots)
    held = f", with {_given_text(given)} as given" if given else ""
    return (f"the input model runs on none of the {len(candidates)} input shapes tried ({tried}{held}; "
            f"last ONNX Runtime error: {error}); give --shape NAME=DIMS or --data DATA")


def _given_text(given: dict[str, tuple[int, ...]]) -> str:
    return " ".join(f"--shape {name}=" + ",".join(str(d) for d in dims) for name, dims in given.items())
