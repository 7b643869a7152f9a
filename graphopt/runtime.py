"""ONNX Runtime sessions: provider discovery, session building, running feeds.

Works with whichever distribution provides the `onnxruntime` module (onnxruntime,
onnxruntime-gpu, onnxruntime-openvino). Sessions are built from a saved file whenever the
model has external data (ORT resolves it relative to the file), so a >2 GB model is never
serialized into one protobuf in memory; small models go to ORT as bytes.
"""

from __future__ import annotations

import contextlib
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import onnx_ir as ir
import onnxruntime as ort

from graphopt.errors import InputError
from graphopt.io import EXTERNAL_DATA_THRESHOLD_BYTES, weight_bytes, write_to_dir

PROVIDERS = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
    "openvino": "OpenVINOExecutionProvider",
    "dml": "DmlExecutionProvider",
}
OPT_LEVELS = {
    "disable_all": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "enable_all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}
_PROVIDER_OPTIONS = {"OpenVINOExecutionProvider": {"device_type": "CPU"}}


@dataclass(frozen=True)
class ProviderChoice:
    usable: list[str]  # short names
    skipped: dict[str, str]  # short name -> why


def resolve_providers(requested: list[str] | None) -> ProviderChoice:
    """Split requested short names (default: every known one) into usable and skipped."""
    available = set(ort.get_available_providers())
    names = requested or list(PROVIDERS)
    usable, skipped = [], {}
    for name in names:
        if name not in PROVIDERS:
            raise InputError(f"--providers: unknown provider '{name}' (known: {', '.join(PROVIDERS)})")
        if PROVIDERS[name] in available:
            usable.append(name)
        else:
            skipped[name] = f"{PROVIDERS[name]} not in this onnxruntime build ({ort.__version__})"
    if requested and not usable:
        raise InputError(f"--providers: none of {', '.join(names)} is available here "
                         f"(available: {', '.join(sorted(available))})")
    return ProviderChoice(usable, skipped)


def session_options(opt_level: str = "disable_all", threads: int = 0) -> ort.SessionOptions:
    so = ort.SessionOptions()
    so.graph_optimization_level = OPT_LEVELS[opt_level]
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    return so


def needs_file(model: ir.Model) -> bool:
    """True when ORT must get this model as a file (external data, or too big for bytes)."""
    if weight_bytes(model) > EXTERNAL_DATA_THRESHOLD_BYTES:
        return True
    return any(isinstance(v.const_value, ir.ExternalTensor) for v in model.graph.initializers.values())


@contextlib.contextmanager
def model_file(model: ir.Model) -> Iterator[Path]:
    """The model as a temporary .onnx file with external data, removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="graphopt-") as tmp:
        path = Path(tmp) / "model.onnx"
        write_to_dir(model, path, "model.onnx.data")
        yield path


def create_session(source: ir.Model | Path, provider: str = "cpu", opt_level: str = "disable_all",
                   threads: int = 0) -> ort.InferenceSession:
    """Build an InferenceSession; raises InputError with ORT's reason if it refuses the model."""
    full = PROVIDERS[provider]
    providers = [(full, _PROVIDER_OPTIONS.get(full, {}))]
    if full != "CPUExecutionProvider":
        providers.append(("CPUExecutionProvider", {}))
    so = session_options(opt_level, threads)
    try:
        if isinstance(source, Path):
            return ort.InferenceSession(str(source), so, providers=providers)
        if needs_file(source):
            with model_file(source) as path:
                return ort.InferenceSession(str(path), so, providers=providers)
        proto = ir.serde.serialize_model(source)
        return ort.InferenceSession(proto.SerializeToString(), so, providers=providers)
    except Exception as exc:  # ORT raises several private exception types
        raise InputError(f"ONNX Runtime cannot load the model: {_first_line(exc)}") from None


def run_feeds(session: ort.InferenceSession, feeds: list[dict[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
    """Run every feed; outputs keyed by name. Non-tensor outputs are rejected clearly."""
    names = [o.name for o in session.get_outputs()]
    results = []
    for feed in feeds:
        try:
            values = session.run(names, feed)
        except Exception as exc:
            raise InputError(f"ONNX Runtime failed to run the model: {_first_line(exc)}") from None
        results.append({n: np.asarray(v) for n, v in zip(names, values)})
    return results


def _first_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
