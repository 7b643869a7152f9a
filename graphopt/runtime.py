"""ONNX Runtime sessions: provider discovery, session building, running feeds.

Works with whichever distribution provides the `onnxruntime` module (onnxruntime,
onnxruntime-gpu, onnxruntime-openvino). A model goes to ORT as bytes of its graph plus the
weights held in memory; weights still in external data are read by ORT from their original
folder, so verifying a >2 GB model neither copies its weights nor builds a >2 GB protobuf.
Only past 1 GB of in-memory weights is the model written to a temporary file first.
"""

from __future__ import annotations

import contextlib
import contextvars
import ctypes
import functools
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import onnx_ir as ir
import onnxruntime as ort

from graphopt.errors import InputError
from graphopt.io import (EXTERNAL_DATA_THRESHOLD_BYTES, external_base_dirs, in_memory_bytes, release_mappings,
                         write_to_dir)
from graphopt.phases import timed
from graphopt.session_weights import serialize_sharing_weights

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


def session_options(opt_level: str = "disable_all", threads: int = 0,
                    low_memory: bool = False, many_sessions: bool = False) -> ort.SessionOptions:
    """ORT session options. `low_memory` (calibration's in-graph passes): nodes run in the graph's
    own order (ORT's priority-based order, equal priorities) instead of ORT's default topological
    order, and without a memory pattern (which pre-plans one block for every value of a run), so
    a value is freed after its last consumer; that lowered both the peak and the time of
    calibration against a memory pattern. `many_sessions` (graphopt.passes.quantize.calibration.segments:
    sessions that run in turns): threads that do not spin once their work is done (idle spinning
    pools took the cores from the running session and slowed it down), one ORT
    arena shared by all such sessions (`register_shared_arena`) instead of one each, and by
    default all cores but one (at most 4: each session has its own pool), the last one being the
    statistics thread's (faster, and no more memory, than giving ORT every core).
    Measured: docs/design-measurements.md."""
    so = ort.SessionOptions()
    if low_memory:
        so.execution_order = ort.ExecutionOrder.PRIORITY_BASED
        so.enable_mem_pattern = False
    if many_sessions:
        threads = threads or min(4, max(1, (os.cpu_count() or 2) - 1))
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if register_shared_arena():
            so.add_session_config_entry("session.use_env_allocators", "1")
    so.graph_optimization_level = OPT_LEVELS[opt_level]
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    for library in _CUSTOM_OPS.get():
        so.register_custom_ops_library(library)
    return so


_CUSTOM_OPS: contextvars.ContextVar[tuple[str, ...]] = contextvars.ContextVar("custom_ops", default=())


def active_custom_op_libraries() -> tuple[str, ...]:
    """The libraries `custom_op_libraries` registers for the sessions built now."""
    return _CUSTOM_OPS.get()


@contextlib.contextmanager
def custom_op_libraries(paths: list[str] | tuple[str, ...]) -> Iterator[None]:
    """Every session built inside registers these custom-op libraries (`--custom-ops LIB.so`, ORT's
    `register_custom_ops_library`), so models with custom domains are verified like any other.
    Each path is checked first: a missing file or one ORT cannot load is one line, exit 2."""
    for path in paths:
        if not Path(path).is_file():
            raise InputError(f"--custom-ops {path}: no such file")
        try:
            ort.SessionOptions().register_custom_ops_library(str(path))
        except Exception as exc:  # noqa: BLE001  (ORT raises its own private types)
            first = next((line for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
            raise InputError(f"--custom-ops {path}: ONNX Runtime cannot load it ({first})") from None
    token = _CUSTOM_OPS.set(tuple(str(p) for p in paths))
    try:
        yield
    finally:
        _CUSTOM_OPS.reset(token)


@functools.lru_cache(maxsize=1)
def register_shared_arena() -> bool:
    """Register, once per process, a CPU arena in ORT's environment (grown by what is asked, not
    by powers of two). Sessions of graphopt.passes.quantize.calibration.segments share it: with an arena each, K sessions
    kept K peaks; without arenas, glibc kept the freed blocks; a shared one keeps far less
    (measured: docs/design-measurements.md). It stays for the life of the process, at its peak: the
    largest working set of one segment run. False if ORT refuses (the sessions then have their own)."""
    info = ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT)
    try:
        ort.create_and_register_allocator(info, ort.OrtArenaCfg({"arena_extend_strategy": 1}))
    except Exception:  # noqa: BLE001  (ORT raises private types)
        return False
    return True


# For a model given as bytes: the folder its external data locations are relative to.
EXTERNAL_FOLDER_KEY = "session.model_external_initializers_file_folder_path"


def needs_file(model: ir.Model) -> bool:
    """True when ORT cannot take this model as bytes (too much in-memory weight, or external
    data spread over several folders)."""
    return in_memory_bytes(model) > EXTERNAL_DATA_THRESHOLD_BYTES or len(external_base_dirs(model)) > 1


@contextlib.contextmanager
def model_file(model: ir.Model) -> Iterator[Path]:
    """The model as a temporary .onnx file with all weights in fresh external data."""
    with tempfile.TemporaryDirectory(prefix="graphopt-") as tmp:
        path = Path(tmp) / "model.onnx"
        write_to_dir(model, path, "model.onnx.data")
        release_mappings(model)
        yield path


@timed("session build")
def create_session(source: ir.Model | Path, provider: str = "cpu", opt_level: str = "disable_all",
                   threads: int = 0, low_memory: bool = False, many_sessions: bool = False) -> ort.InferenceSession:
    """Build an InferenceSession; raises InputError with ORT's reason if it refuses the model."""
    full = PROVIDERS[provider]
    providers = [(full, _PROVIDER_OPTIONS.get(full, {}))]
    if full != "CPUExecutionProvider":
        providers.append(("CPUExecutionProvider", {}))
    so = session_options(opt_level, threads, low_memory, many_sessions)
    try:
        if isinstance(source, Path):
            return ort.InferenceSession(str(source), so, providers=providers)
        if needs_file(source):
            with model_file(source) as path:
                return ort.InferenceSession(str(path), so, providers=providers)
        # Unchanged external weights are read in place from their original folder: no copy.
        for folder in external_base_dirs(source):
            so.add_session_config_entry(EXTERNAL_FOLDER_KEY, folder)
        data, names, values = serialize_sharing_weights(source)  # large weights passed, not serialized
        if names:
            try:
                shared = session_options(opt_level, threads, low_memory, many_sessions)
                for folder in external_base_dirs(source):
                    shared.add_session_config_entry(EXTERNAL_FOLDER_KEY, folder)
                shared.add_external_initializers(names, values)
                return ort.InferenceSession(data, shared, providers=providers)
            except Exception:  # noqa: BLE001  (whatever ORT refuses here, it says again below)
                pass
        return ort.InferenceSession(ir.serde.serialize_model(source).SerializeToString(), so, providers=providers)
    except Exception as exc:  # ORT raises several private exception types
        raise InputError(f"ONNX Runtime cannot load the model: {_first_line(exc)}") from None


def run_model(source: ir.Model | Path, feeds: list[dict[str, np.ndarray]], provider: str = "cpu",
              opt_level: str = "disable_all") -> list[dict[str, np.ndarray]]:
    """Build a session, run every feed, drop the session and hand its memory back to the OS."""
    session = create_session(source, provider, opt_level)
    try:
        return run_feeds(session, feeds)
    finally:
        del session
        return_freed_memory()


@functools.lru_cache(maxsize=1)
def _malloc_trim():
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc: nothing to do
        return None


def return_freed_memory() -> None:
    """Ask glibc to return freed heap pages to the OS.

    ORT allocates each weight separately; after a session is destroyed glibc keeps those
    pages in its heap (its mmap threshold grows dynamically), so without this the next
    session would stack on top of the last one's high-water mark; with the trim most of that
    memory goes back (measured: docs/design-measurements.md).
    """
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


@timed("inference")
def quiet_run_options() -> ort.RunOptions:
    """Run options that keep ORT's own log line of a failing run off the terminal (graphopt says
    why in one line); with graphopt logging at DEBUG (`--debug`) ORT logs as it likes."""
    options = ort.RunOptions()
    if not logging.getLogger("graphopt").isEnabledFor(logging.DEBUG):
        options.log_severity_level = 4
    return options


def run_feeds(session: ort.InferenceSession, feeds: list[dict[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
    """Run every feed; outputs keyed by name. Non-tensor outputs are rejected clearly."""
    names = [o.name for o in session.get_outputs()]
    options = quiet_run_options()  # a failure is raised as one line below
    results = []
    for feed in feeds:
        try:
            values = session.run(names, feed, options)
        except Exception as exc:
            raise InputError(f"ONNX Runtime failed to run the model: {_first_line(exc)}") from None
        results.append({n: np.asarray(v) for n, v in zip(names, values)})
    return results


def _first_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def cpu_flags(path: str = "/proc/cpuinfo") -> frozenset[str]:
    """The CPU's feature flags (empty where /proc/cpuinfo is unavailable): which int8 kernels
    ONNX Runtime's CPU EP picks (VNNI, AMX) depends on them."""
    try:
        text = Path(path).read_text()
    except OSError:
        return frozenset()
    line = next((line for line in text.splitlines() if line.startswith("flags")), "")
    return frozenset(line.partition(":")[2].split())
