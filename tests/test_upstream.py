"""Private onnx_ir / onnxscript / onnxruntime names are imported only by graphopt/upstream.py.

A private (underscore) module or name of those libraries can move in any minor release; going
through the one adapter module keeps such a break to one file. The scan below enforces it for
graphopt/ and tools/, and the adapter's own names are checked to import, so an upgrade that
moves one fails here by name rather than somewhere deep in a pass.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCANNED = ("graphopt", "tools")
ADAPTER = Path("graphopt", "upstream.py")
LIBRARIES = frozenset({"onnx_ir", "onnxscript", "onnxruntime"})


def _private(name: str) -> bool:
    """Underscore names, except dunders such as `__version__`, which are public by convention."""
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _private_path(module: str) -> bool:
    parts = module.split(".")
    return parts[0] in LIBRARIES and any(_private(part) for part in parts)


def _violations(node: ast.AST) -> list[str]:
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names if _private_path(alias.name)]
    if not isinstance(node, ast.ImportFrom) or node.level or node.module.split(".")[0] not in LIBRARIES:
        return []
    if _private_path(node.module):
        return [node.module]
    return [f"{node.module}.{alias.name}" for alias in node.names if _private(alias.name)]


def private_imports(source: str, filename: str = "<string>") -> list[str]:
    """'file:line: name' for every import of a private library module or name in `source`."""
    return [f"{filename}:{node.lineno}: {name}"
            for node in ast.walk(ast.parse(source, filename)) for name in _violations(node)]


def _scanned_files() -> list[Path]:
    files = [path for top in SCANNED for path in sorted((ROOT / top).rglob("*.py"))]
    return [path for path in files if path.relative_to(ROOT) != ADAPTER]


def test_only_the_adapter_imports_private_library_names():
    found = [hit for path in _scanned_files()
             for hit in private_imports(path.read_text(encoding="utf-8"), str(path.relative_to(ROOT)))]
    assert not found, ("private onnx_ir/onnxscript/onnxruntime imports outside graphopt/upstream.py "
                       "(import them there and from graphopt.upstream here):\n" + "\n".join(found))


def test_scan_covers_the_packages():
    scanned = {str(path.relative_to(ROOT)) for path in _scanned_files()}
    assert "graphopt/analyses.py" in scanned and "graphopt/passes/folding.py" in scanned
    assert str(ADAPTER) not in scanned


@pytest.mark.parametrize("source, name", [
    ("from onnxscript.rewriter._basics import MatchResult", "onnxscript.rewriter._basics"),
    ("import onnx_ir.passes.common._c_api_utils as c", "onnx_ir.passes.common._c_api_utils"),
    ("from onnxscript.version_converter import _version_converter", "onnxscript.version_converter._version_converter"),
    ("import onnxruntime.capi._pybind_state", "onnxruntime.capi._pybind_state"),
    ("def f():\n    from onnxscript.optimizer._constant_folding import FoldConstantsPass",
     "onnxscript.optimizer._constant_folding"),
])
def test_scanner_flags_private_imports(source, name):
    hits = private_imports(source, "m.py")
    assert len(hits) == 1 and hits[0].endswith(f": {name}"), hits
    assert hits[0].startswith(f"m.py:{source.count(chr(10)) + 1}:")


@pytest.mark.parametrize("source", [
    "from onnxscript.rewriter import MatchResult, pattern",
    "import onnx_ir as ir\nfrom onnx_ir.passes.common import RemoveUnusedNodesPass",
    "from onnxruntime import __version__",
    "from graphopt.model_stats import _node_macs",
    "from ._private import thing",
    "import numpy._core",
])
def test_scanner_passes_public_imports(source):
    assert private_imports(source) == []


def test_adapter_names_import():
    try:
        upstream = importlib.import_module("graphopt.upstream")
    except ImportError as exc:
        pytest.fail(f"graphopt/upstream.py no longer imports (an onnx_ir/onnxscript upgrade moved a "
                    f"private name; fix its import there): {exc}")
    missing = [name for name in upstream.__all__ if getattr(upstream, name, None) is None]
    assert not missing, f"graphopt.upstream lacks {missing}"
