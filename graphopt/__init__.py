"""graphopt: verified ONNX graph rewriting.

Public API: `optimize`, the pass API (`Pass`, `PassContext`, `PassResult`, `register`),
the manager (`PassManager`, `RunConfig`), model I/O (`load_model`, `save_model`).
"""

from graphopt.api import OptimizeResult, optimize
from graphopt.errors import GraphoptError, InputError, VerificationError
from graphopt.io import load_model, save_model
from graphopt.manager import PassManager, RunConfig
from graphopt.pass_api import Pass, PassContext, PassResult
from graphopt.registry import register, registered_passes
from graphopt.tolerance import Budget, Exact, Lossy, Reassoc

__version__ = "0.1.0"
__all__ = [
    "Budget", "Exact", "GraphoptError", "InputError", "Lossy", "OptimizeResult", "Pass", "PassContext",
    "PassManager", "PassResult", "Reassoc", "RunConfig", "VerificationError", "load_model", "optimize",
    "register", "registered_passes", "save_model",
]
