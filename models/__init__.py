"""Model builders for graphopt's tests, demos and benchmarks.

Small synthetic models (``onnx.ModelProto``, opset 17, IR 9, float32, seeded):
``mlp``, ``dynamic_batch_mlp``, ``cnn``, ``transformer_block``, ``if_model``,
``redundant_model``. ``large_mlp(path)`` writes a ~100M-parameter model with
external data without holding its weights in memory. ``default_model_path()`` is
the bundled ``models/default.onnx``, built by ``build_default()``.
"""

from models.builders import cnn, dynamic_batch_mlp, if_model, mlp, redundant_model
from models.default import build_default, default_model_path
from models.large import large_mlp
from models.transformer import transformer_block

__all__ = [
    "build_default",
    "cnn",
    "default_model_path",
    "dynamic_batch_mlp",
    "if_model",
    "large_mlp",
    "mlp",
    "redundant_model",
    "transformer_block",
]
