"""graphopt: verified ONNX graph rewriting.

Public API: `optimize`, the pass API (`Pass`, `PassContext`, `PassResult`, `register`),
the manager (`PassManager`, `RunConfig`), model I/O (`load_model`, `save_model`).
"""

from importlib import import_module

from graphopt.errors import GraphoptError, InputError, VerificationError

__version__ = "0.1.0"
# imported on first use, so `graphopt --help` does not load onnx and onnxruntime
_LAZY = {"OptimizeResult": "graphopt.api", "optimize": "graphopt.api", "load_model": "graphopt.io",
         "save_model": "graphopt.io", "PassManager": "graphopt.manager", "RunConfig": "graphopt.manager",
         "Pass": "graphopt.pass_api", "PassContext": "graphopt.pass_api", "PassResult": "graphopt.pass_api",
         "register": "graphopt.registry", "registered_passes": "graphopt.registry", "Budget": "graphopt.tolerance",
         "Exact": "graphopt.tolerance", "Lossy": "graphopt.tolerance", "Reassoc": "graphopt.tolerance"}


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'graphopt' has no attribute '{name}'")
__all__ = [
    "Budget", "Exact", "GraphoptError", "InputError", "Lossy", "OptimizeResult", "Pass", "PassContext",
    "PassManager", "PassResult", "Reassoc", "RunConfig", "VerificationError", "load_model", "optimize",
    "register", "registered_passes", "save_model",
]
