"""The calibration cache: a digest of the model for the cache key, and JSON files of ranges.

The model digest covers what decides activation values: opsets, graph inputs/outputs (names,
dtypes, shapes), every node (domain, op, overload, input/output names, attributes; subgraph nodes
too) and every weight's bytes (initializers and tensor attributes, read tensor by tensor, so a
mapped external weight is hashed without a second in-memory copy). Files are `<key>.json` written
atomically (temp file + rename); one that cannot be read, has another version or lacks a name is
ignored (the caller recomputes and rewrites it), and a cache folder that cannot be written only
costs the caching.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import tempfile
from pathlib import Path

import numpy as np
import onnx_ir as ir

CACHE_VERSION = "graphopt-calibration-1"
log = logging.getLogger("graphopt.calibration")


def hash_model(model: ir.Model, h) -> None:
    h.update(repr(sorted(model.opset_imports.items())).encode())
    for value in (*model.graph.inputs, *model.graph.outputs):
        h.update(f"io|{value.name}|{value.dtype}|{value.shape}".encode())
    for node in ir.traversal.RecursiveGraphIterator(model.graph):
        inputs = [v.name if v is not None else "" for v in node.inputs]
        h.update(repr((node.domain, node.op_type, node.overload, inputs, [v.name for v in node.outputs])).encode())
        for name, attr in sorted(node.attributes.items()):
            if attr.type == ir.AttributeType.TENSOR:
                _hash_tensor(h, name, attr.value)
            elif attr.type not in (ir.AttributeType.GRAPH, ir.AttributeType.GRAPHS):
                h.update(repr((name, attr.type, attr.value)).encode())
    for name in sorted(model.graph.initializers):
        _hash_tensor(h, name, model.graph.initializers[name].const_value)


def _hash_tensor(h, name: str, tensor) -> None:
    if tensor is None:
        h.update(f"init|{name}|none".encode())
        return
    h.update(f"init|{name}|{tensor.dtype}|{tensor.shape}".encode())
    h.update(tensor.tobytes())


def cache_folder(cache_dir) -> Path | None:
    """The folder to cache in, or None for no cache ("off"/"none" or $GRAPHOPT_CACHE_DIR=off)."""
    if cache_dir is not None:
        return None if str(cache_dir).lower() in ("off", "none") else Path(cache_dir)
    env = os.environ.get("GRAPHOPT_CACHE_DIR")
    if env is not None:
        return None if env.lower() in ("", "off", "none", "0") else Path(env)
    return Path.home() / ".cache" / "graphopt" / "calibration"


def load_ranges(folder: Path, key: str, names: list[str], range_cls: type) -> dict | None:
    path = folder / f"{key}.json"
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
        if data.get("version") != CACHE_VERSION:
            return None
        ranges = {n: range_cls(**data["ranges"][n]) for n in names}
        if all(np.isfinite([r.lo, r.hi]).all() and r.lo <= 0 <= r.hi for r in ranges.values()):
            return ranges
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
        log.debug("calibration cache %s ignored: %s", path, exc)
    return None


def store_ranges(folder: Path, key: str, ranges: dict) -> None:
    data = {"version": CACHE_VERSION, "ranges": {n: dataclasses.asdict(r) for n, r in ranges.items()}}
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=folder, suffix=".tmp", delete=False) as f:
            json.dump(data, f)
        os.replace(f.name, folder / f"{key}.json")
    except OSError as exc:  # a read-only or full cache must not fail the calibration
        log.debug("calibration cache not written to %s: %s", folder, exc)
