"""The invariants every graphopt output must satisfy, checked independently of graphopt's own
verifier (numpy and ONNX Runtime directly, on the saved file):

1. `onnx.checker` full check passes and ONNX Runtime loads and runs the file.
2. Graph inputs keep their names, dtypes and dims; outputs keep their names, order and dtypes;
   a symbolic dim stays symbolic (an exporter's "batch" never becomes 1).
3. Numerics: with only exact/reassoc passes applied, every output is within the loosest
   applied tolerance of the input model's output (exact: 1 ulp; reassoc: atol + rtol·max|ref|),
   and within the case's rtol/atol of the expected outputs where the input model meets them.
   With a lossy pass applied, every output has cosine >= the run's budget (default 0.99).
4. A pass that was rolled back says why (a non-empty reason).
5. Size: the output files (without value_info shape annotations) are not larger than the input
   files, except for the constant data passes declare in their stats (`bytes_added`, e.g.
   fold-constants' capped generators, BN folded into a shared weight) plus a structural slack
   (names and attributes of rewritten nodes).
6. Files: nothing appears outside the output path (the working directory and the temp
   directory the run used stay as they were; the output directory holds only the output).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

Feed = dict[str, np.ndarray]
# Bytes an output file may grow beyond what passes declare: renamed/added nodes and attributes.
STRUCTURE_SLACK_BYTES = 4096
STRUCTURE_SLACK_FRACTION = 0.05


@dataclass
class Signature:
    """Names, element types and dims (int, str for symbolic, None unknown) of a graph's I/O."""

    inputs: list[tuple[str, int, tuple | None]]
    outputs: list[tuple[str, int, tuple | None]]


def _dims(value: onnx.ValueInfoProto) -> tuple | None:
    tensor = value.type.tensor_type
    if not tensor.HasField("shape"):
        return None
    return tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tensor.shape.dim)


def signature(model: onnx.ModelProto) -> Signature:
    initializers = {i.name for i in model.graph.initializer}
    inputs = [(v.name, v.type.tensor_type.elem_type, _dims(v)) for v in model.graph.input
              if v.name not in initializers]
    outputs = [(v.name, v.type.tensor_type.elem_type, _dims(v)) for v in model.graph.output]
    return Signature(inputs, outputs)


def signature_problems(before: Signature, after: Signature) -> list[str]:
    problems = []
    if [(n, t, d) for n, t, d in before.inputs] != [(n, t, d) for n, t, d in after.inputs]:
        problems.append(f"graph inputs changed: {before.inputs} -> {after.inputs}")
    if [(n, t) for n, t, _ in before.outputs] != [(n, t) for n, t, _ in after.outputs]:
        problems.append(f"graph outputs changed: {before.outputs} -> {after.outputs}")
        return problems
    for (name, _, old), (_, _, new) in zip(before.outputs, after.outputs):
        if old is None or new is None:
            continue
        if len(old) != len(new):
            problems.append(f"output '{name}' rank changed: {old} -> {new}")
            continue
        for i, (a, b) in enumerate(zip(old, new)):
            if isinstance(a, str) and isinstance(b, int):
                problems.append(f"output '{name}' dim {i}: symbolic '{a}' became {b}")
            elif isinstance(a, int) and isinstance(b, int) and a != b:
                problems.append(f"output '{name}' dim {i}: {a} became {b}")
    return problems


def files_bytes(model_path: Path) -> int:
    """Bytes of a model file plus the external data files it references."""
    total = model_path.stat().st_size
    model = onnx.load(model_path, load_external_data=False)
    locations = set()
    for graph_tensor in _all_tensors(model.graph):
        for entry in graph_tensor.external_data:
            if entry.key == "location":
                locations.add(entry.value)
    return total + sum((model_path.parent / loc).stat().st_size for loc in locations)


def _all_tensors(graph: onnx.GraphProto):
    yield from graph.initializer
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.TENSOR:
                yield attr.t
            for sub in ([attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)):
                yield from _all_tensors(sub)


def session(path: Path) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def run(path: Path, feeds: list[Feed]) -> list[list[np.ndarray]]:
    sess = session(path)
    return [sess.run(None, feed) for feed in feeds]


def max_ulps(ref: np.ndarray, got: np.ndarray) -> float:
    if ref.dtype.kind not in "fc":
        return 0.0 if np.array_equal(ref, got) else math.inf
    both_nan = np.isnan(ref) & np.isnan(got)
    diff = np.where(both_nan, 0.0, np.abs(ref.astype(np.float64) - got.astype(np.float64)))
    spacing = np.spacing(np.maximum(np.abs(ref), np.abs(got))).astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        ulps = np.where(diff == 0, 0.0, diff / spacing)
    return float(np.nan_to_num(np.max(ulps, initial=0.0), nan=math.inf))


def max_abs(ref: np.ndarray, got: np.ndarray) -> float:
    if ref.dtype.kind not in "fc":
        return 0.0 if np.array_equal(ref, got) else math.inf
    both_nan = np.isnan(ref) & np.isnan(got)
    diff = np.where(both_nan, 0.0, np.abs(ref.astype(np.float64) - got.astype(np.float64)))
    return float(np.nan_to_num(np.max(diff, initial=0.0), nan=math.inf))


def cosine(ref: np.ndarray, got: np.ndarray) -> float:
    r, g = ref.astype(np.float64).ravel(), got.astype(np.float64).ravel()
    nr, ng = np.linalg.norm(r), np.linalg.norm(g)
    if nr == 0 and ng == 0:
        return 1.0
    return float(np.dot(r, g) / (nr * ng)) if nr and ng else 0.0


@dataclass(frozen=True)
class Allowed:
    """How far outputs may move: kind exact | reassoc | lossy, with its parameters."""

    kind: str
    rtol: float = 0.0
    atol: float = 0.0
    min_cosine: float = 0.99


def numeric_problems(refs: list[list[np.ndarray]], gots: list[list[np.ndarray]], names: list[str],
                     allowed: Allowed) -> list[str]:
    """Per output, over all feeds together (graphopt's budget and tolerances are defined on the
    whole held-out set: one cosine, one max|ref|)."""
    problems = []
    for i, name in enumerate(names):
        pairs = [(np.asarray(r[i]), np.asarray(g[i])) for r, g in zip(refs, gots)]
        changed = [(r, g) for r, g in pairs if r.shape != g.shape or r.dtype != g.dtype]
        if changed:
            r, g = changed[0]
            problems.append(f"output '{name}': {r.dtype}{list(r.shape)} became {g.dtype}{list(g.shape)}")
            continue
        ref = np.concatenate([r.ravel() for r, _ in pairs])
        got = np.concatenate([g.ravel() for _, g in pairs])
        problems += _value_problems(name, ref, got, allowed)
    return problems


def _value_problems(name: str, ref: np.ndarray, got: np.ndarray, allowed: Allowed) -> list[str]:
    if allowed.kind == "exact" and max_ulps(ref, got) > 1:
        return [f"output '{name}': {max_ulps(ref, got):.3g} ulp apart (exact allows 1)"]
    if allowed.kind == "reassoc":
        scale = float(np.max(np.abs(ref[np.isfinite(ref)]), initial=0.0)) if ref.dtype.kind in "fc" else 0.0
        bound = allowed.atol + allowed.rtol * scale
        if max_abs(ref, got) > bound:
            return [f"output '{name}': max abs error {max_abs(ref, got):.3g} > {bound:.3g}"]
    if allowed.kind == "lossy" and ref.dtype.kind in "fc" and cosine(ref, got) < allowed.min_cosine:
        return [f"output '{name}': cosine {cosine(ref, got):.6f} < {allowed.min_cosine}"]
    return []


def expected_problems(gots: list[np.ndarray], expected: list[np.ndarray], rtol: float, atol: float) -> list[str]:
    """Outputs against expected files (np.isclose with the backend runner's tolerances)."""
    problems = []
    for i, (got, exp) in enumerate(zip(gots, expected)):
        got = np.asarray(got)
        if got.shape != exp.shape:
            problems.append(f"output {i}: shape {list(got.shape)}, expected {list(exp.shape)}")
        elif exp.dtype.kind not in "fciu":
            if not np.array_equal(got, exp):
                problems.append(f"output {i}: differs from the expected values")
        elif not np.all(np.isclose(got, exp, rtol=rtol, atol=atol, equal_nan=True)):
            worst = max_abs(exp.astype(np.float64), got.astype(np.float64))
            problems.append(f"output {i}: max abs error {worst:.3g} vs expected (rtol {rtol}, atol {atol})")
    return problems


def value_info_bytes(model_path: Path) -> int:
    """Bytes of intermediate shape annotations (value_info) in every graph of a model file."""
    model = onnx.load(model_path, load_external_data=False)
    total, graphs = 0, [model.graph]
    while graphs:
        graph = graphs.pop()
        total += sum(v.ByteSize() for v in graph.value_info)
        for node in graph.node:
            for attr in node.attribute:
                graphs += [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)
    return total


def counted_bytes(model_path: Path) -> int:
    """File bytes (external data included) without value_info: shape annotations a pass's
    shape inference adds are metadata (tens of bytes per value), not data."""
    return files_bytes(model_path) - value_info_bytes(model_path)


def size_problems(in_path: Path, out_path: Path, report: dict) -> list[str]:
    """The output file grows by no more than the constant data the applied passes declare
    (`bytes_added` in their stats) plus a structural slack."""
    declared = sum(max(0, int(r["stats"].get("bytes_added", 0))) for r in report["passes"] if r["applied"])
    in_bytes, out_bytes = counted_bytes(in_path), counted_bytes(out_path)
    slack = max(STRUCTURE_SLACK_BYTES, int(STRUCTURE_SLACK_FRACTION * in_bytes))
    if out_bytes > in_bytes + declared + slack:
        sizes = [(r["name"], r["size"]["bytes"]) for r in report["passes"] if r["applied"]]
        return [f"output is {out_bytes} bytes (without value_info), input {in_bytes}: grew by "
                f"{out_bytes - in_bytes}, passes declared {declared} (bytes_added), slack {slack}; "
                f"weight bytes after each applied pass: {sizes}"]
    return []


def rollback_problems(report: dict, lossy_names: set[str]) -> list[str]:
    """A rollback must carry a reason; a lossless pass must not need one (it is a pass bug)."""
    problems = []
    for record in report["passes"]:
        if record["stats"].get("unreported_change"):
            problems.append(f"pass '{record['name']}' reported no change but changed the graph")
        if record["rolled_back"] and not (record.get("error") or "").strip():
            problems.append(f"pass '{record['name']}' rolled back without a reason")
        elif record["rolled_back"] and record["name"] not in lossy_names:
            problems.append(f"lossless pass '{record['name']}' rolled back: {record['error']}")
    return problems


@dataclass
class DirSnapshot:
    """Names (recursively) under a few directories, to prove a run left nothing behind."""

    roots: list[Path]
    entries: dict[str, set[str]] = field(default_factory=dict)

    def take(self) -> DirSnapshot:
        self.entries = {str(r): _listing(r) for r in self.roots}
        return self

    def new_entries(self) -> list[str]:
        found = []
        for root in self.roots:
            found += sorted(f"{root}/{name}" for name in _listing(root) - self.entries[str(root)])
        return found


def _listing(root: Path) -> set[str]:
    if not root.exists():
        return set()
    return {os.path.relpath(os.path.join(d, n), root) for d, dirs, files in os.walk(root) for n in dirs + files}
