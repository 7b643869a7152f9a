"""Does the runtime turn fewer FLOPs into less time? Layer micro-benchmarks on ONNX Runtime.

A factorization halves nothing if the two thin products run no faster than the dense one (small
M, ranks near K·N/(K+N), an extra kernel launch and intermediate tensor). Before a layer is
factored, the dense op and its factored chain are built as one-layer models with the layer's
real shapes (M rows from the held-out feed, the candidate rank), run on the ORT CPU EP with
ORT_ENABLE_ALL, and timed interleaved (`graphopt.bench.interleaved_p50`). A rank is kept only if
the chain's median is below `1 - min_speedup` times the dense median. Results are cached per
shape, so a transformer's repeated layers cost one measurement each.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import onnx
import onnx_ir as ir
from onnx import TensorProto, helper, numpy_helper

from graphopt.bench import interleaved_p50
from graphopt.runtime import create_session

ONNX_DTYPES = {np.dtype(np.float32): TensorProto.FLOAT, np.dtype(np.float16): TensorProto.FLOAT16,
               np.dtype(np.float64): TensorProto.DOUBLE}
TARGET_SECONDS = 0.4  # per measured pair: fewer runs for slow layers, at least MIN_RUNS
MIN_RUNS, MAX_RUNS = 6, 30


@dataclass
class SpeedCache:
    """(dense ms, factored ms) per layer shape and rank; `measurements` counts ORT timings."""

    threads: int = 0
    results: dict[tuple, tuple[float, float]] = field(default_factory=dict)
    seconds: float = 0.0

    def matmul(self, rows: int, k: int, n: int, rank: int, dtype: np.dtype) -> tuple[float, float]:
        key = ("matmul", rows, k, n, rank, np.dtype(dtype).name)
        if key not in self.results:
            self.results[key] = self._time(matmul_models(rows, k, n, rank, np.dtype(dtype)), {"x": (rows, k)}, dtype)
        return self.results[key]

    def conv(self, x_shape: tuple[int, ...], w_shape: tuple[int, ...], attrs: dict, ranks: tuple[int, int],
             dtype: np.dtype) -> tuple[float, float]:
        key = ("conv", x_shape, w_shape, tuple(sorted((k, str(v)) for k, v in attrs.items())), ranks,
               np.dtype(dtype).name)
        if key not in self.results:
            models = conv_models(x_shape, w_shape, attrs, ranks, np.dtype(dtype))
            self.results[key] = self._time(models, {"x": x_shape}, dtype)
        return self.results[key]

    def _time(self, models: tuple[onnx.ModelProto, onnx.ModelProto], inputs: dict, dtype) -> tuple[float, float]:
        start = time.perf_counter()
        rng = np.random.default_rng(0)
        feed = {name: rng.standard_normal(shape).astype(dtype) for name, shape in inputs.items()}
        sessions = [create_session(ir.serde.deserialize_model(m), "cpu", "enable_all", self.threads) for m in models]
        single = _one_run_seconds(sessions[0], feed)
        runs = int(np.clip(TARGET_SECONDS / max(2 * single, 1e-6), MIN_RUNS, MAX_RUNS))
        dense, factored = interleaved_p50(sessions, feed, runs, block=max(1, min(5, runs // 3)), warmup=2)
        self.seconds += time.perf_counter() - start
        return dense, factored


def faster(times: tuple[float, float], min_speedup: float) -> bool:
    dense, factored = times
    return factored < (1.0 - min_speedup) * dense


def _one_run_seconds(session, feed) -> float:
    session.run(None, feed)
    start = time.perf_counter()
    session.run(None, feed)
    return time.perf_counter() - start


def _model(nodes, x_shape, y_shape, inits, dtype) -> onnx.ModelProto:
    elem = ONNX_DTYPES[dtype]
    graph = helper.make_graph(nodes, "layer", [helper.make_tensor_value_info("x", elem, list(x_shape))],
                              [helper.make_tensor_value_info("y", elem, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)


def _init(name: str, shape, dtype, rng) -> onnx.TensorProto:
    return numpy_helper.from_array((rng.standard_normal(shape) / np.sqrt(shape[0])).astype(dtype), name)


def matmul_models(rows: int, k: int, n: int, rank: int, dtype: np.dtype) -> tuple[onnx.ModelProto, onnx.ModelProto]:
    """x[rows, k] @ W[k, n] and (x @ A[k, r]) @ B[r, n]."""
    rng = np.random.default_rng(0)
    dense = _model([helper.make_node("MatMul", ["x", "w"], ["y"])], (rows, k), (rows, n),
                   [_init("w", (k, n), dtype, rng)], dtype)
    chain = [helper.make_node("MatMul", ["x", "a"], ["t"]), helper.make_node("MatMul", ["t", "b"], ["y"])]
    factored = _model(chain, (rows, k), (rows, n), [_init("a", (k, rank), dtype, rng),
                                                    _init("b", (rank, n), dtype, rng)], dtype)
    return dense, factored


def conv_models(x_shape, w_shape, attrs: dict, ranks: tuple[int, int], dtype: np.dtype
                ) -> tuple[onnx.ModelProto, onnx.ModelProto]:
    """The dense Conv and its factored chain: for a 1x1 kernel two convs through rank r
    (`ranks` = (r, r)); otherwise Tucker-2, 1x1 (r_in) → core → 1x1 (r_out), where a mode kept
    at full rank has no 1x1 conv (its factor is folded into the core)."""
    rng = np.random.default_rng(0)
    cout, cin, kh, kw = w_shape
    r_out, r_in = ranks
    dense = _model([helper.make_node("Conv", ["x", "w"], ["y"], **attrs)], x_shape, None,
                   [_init("w", w_shape, dtype, rng)], dtype)
    if (kh, kw) == (1, 1):
        chain = [helper.make_node("Conv", ["x", "a"], ["t"], **attrs), helper.make_node("Conv", ["t", "b"], ["y"])]
        inits = [_init("a", (r_in, cin, 1, 1), dtype, rng), _init("b", (cout, r_in, 1, 1), dtype, rng)]
        return dense, _model(chain, x_shape, None, inits, dtype)
    chain, inits, current = [], [], "x"
    if r_in < cin:
        chain.append(helper.make_node("Conv", ["x", "a"], ["t"]))
        inits.append(_init("a", (r_in, cin, 1, 1), dtype, rng))
        current = "t"
    core_out = "u" if r_out < cout else "y"
    chain.append(helper.make_node("Conv", [current, "g"], [core_out], **attrs))
    inits.append(_init("g", (r_out, r_in, kh, kw), dtype, rng))
    if r_out < cout:
        chain.append(helper.make_node("Conv", ["u", "b"], ["y"]))
        inits.append(_init("b", (cout, r_out, 1, 1), dtype, rng))
    return dense, _model(chain, x_shape, None, inits, dtype)
