"""SmoothQuant-style scale migration for MatMul/Gemm inputs with outlier channels.

For Y = X·W with X's channel j (the reduction axis) much larger than the others, one per-tensor
activation scale must cover the outlier and leaves few levels for every other channel. With a
per-channel factor s_j, exactly
    Y = (X·diag(1/s)) · (diag(s)·W),
so X/s is quantized instead of X (its channels are evened out) and s moves into the weight rows,
which have per-channel scales of their own. s_j = max|X_j|^α / max|W_j|^(1-α); units that share
X (attention's Q/K/V projections) share s, taken over all their weight rows. The division is a
Mul node inserted once per X (the producer is usually nonlinear or also feeds a float
residual, so it cannot absorb it). Only inputs whose channel maxima are imbalanced
(max/median >= `min_ratio`) are candidates.

Shared weights. s·W is a new tensor; a weight also read outside the input's group (an unrolled
RNN's W read by every time step, each with its own X_t, or by a node left float) keeps its
original for those readers, so smoothing would add one copy of W per X: the input is refused
(kept as "not_smoothed" with the reason). Units of one group read the same X/s and take the same
s, so a weight they share (read on the same axis) gets one smoothed copy that serves them all.

α is chosen per input, not fixed: a small α moves weight imbalance into X, a large one moves X's
outliers into the weight rows and costs weight resolution (7-bit on AVX2). For each candidate
α in `ALPHAS` (and "no smoothing") the relative output error of the layer,
    e(α) = Σ_units ||X·W - Q(X/s)·Q(s·W)||² / ||X·W||²,
is computed on rows sampled from the calibration data (X/s over its min/max, weights per output
channel with the profile's bits) and the α with the smallest error wins if it cuts e(none) at least
4x (each smoothed input costs a Mul node at run time); otherwise the input is left alone.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from graphopt.activations import stream_activations
from graphopt.passes.quantize.apply import drop_if_dead
from graphopt.passes.quantize.plan import Plan, constant_array
from graphopt.passes.quantize.qdq import QdqWriter

MIN_RATIO = 8.0
ALPHAS = (0.5, 0.65, 0.8)
MIN_GAIN = 0.25  # smooth only where it cuts the layer's output error at least 4x
SAMPLE_ROWS = 1024


def _row_axis(node: ir.Node) -> int | None:
    """Weight axis that indexes X's channels (the reduction axis), or None if unsupported."""
    if node.op_type == "MatMul":
        return 0
    if node.op_type == "Gemm" and not node.attributes.get_int("transA", 0):
        return 1 if node.attributes.get_int("transB", 0) else 0
    return None


def smoothing_groups(plan: Plan) -> dict[str, list]:
    """{activation name: [units]} of MatMul/Gemm units with a constant 2-D weight."""
    groups: dict[str, list] = {}
    for unit in plan.units.values():
        if unit.weight is None or unit.node.op_type not in ("MatMul", "Gemm") or _row_axis(unit.node) is None:
            continue
        weight = constant_array(unit.node.inputs[unit.weight])
        if weight is None or weight.ndim != 2:
            continue
        groups.setdefault(unit.names[0], []).append(unit)
    return groups


def shared_weight_refusal(units: list) -> str | None:
    """Why the group's weights cannot all be replaced by s·W without a second copy, or None:
    a weight read by a node outside the group (another input's unit, a float node), held as a
    graph input or output, or read by the group's units on different axes."""
    nodes = {u.node for u in units}
    axes: dict[ir.Value, set] = {}
    for unit in units:
        weight = unit.node.inputs[unit.weight]
        axes.setdefault(weight, set()).add(_row_axis(unit.node))
    for weight, rows in axes.items():
        readers = {use.node for use in weight.uses()}
        if not readers <= nodes:
            return (f"weight {weight.name!r} is shared by {len(readers)} nodes, not all reading this input; "
                    "smoothing would copy it per use")
        if weight.is_graph_input() or weight.is_graph_output():
            return f"weight {weight.name!r} is also a graph input or output; smoothing would keep both copies"
        if len(rows) > 1:
            return f"weight {weight.name!r} is read on different axes; each would need its own smoothed copy"
    return None


def channel_statistics(model: ir.Model, names: list[str], feeds, max_bytes: int,
                       rows: int = SAMPLE_ROWS) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(max |x| per last-axis channel over all feeds, up to `rows` sampled rows) per tensor."""
    maxima: dict[str, np.ndarray] = {}
    samples: dict[str, list[np.ndarray]] = {}
    rng = np.random.default_rng(0)

    def consume(_, arrays):
        for name, array in arrays.items():
            flat = np.nan_to_num(array.reshape(-1, array.shape[-1]), nan=0.0, posinf=0.0, neginf=0.0)
            if not flat.size:
                continue
            maxima[name] = np.maximum(maxima.get(name, 0.0), np.abs(flat).max(axis=0))
            kept = sum(len(s) for s in samples.get(name, []))
            if kept < rows:
                take = rng.choice(len(flat), size=min(len(flat), rows - kept, rows // 4 or 1), replace=False)
                samples.setdefault(name, []).append(flat[take].astype(np.float32))

    stream_activations(model, names, feeds, consume, max_bytes)
    return maxima, {n: np.concatenate(s) for n, s in samples.items()}


def _fake_quant_rows(x: np.ndarray) -> np.ndarray:
    """Asymmetric 8-bit fake quantization of a sample over its own min/max."""
    lo, hi = min(float(x.min()), 0.0), max(float(x.max()), 0.0)
    scale = (hi - lo) / 255 or 1.0
    zero = np.round(-lo / scale)
    return (np.clip(np.round(x / scale) + zero, 0, 255) - zero) * scale


def _fake_quant_weight(w: np.ndarray, axis: int, bits: int) -> np.ndarray:
    """Symmetric per-output-channel fake quantization (`axis` = the reduction axis of w)."""
    qmax = 2 ** (bits - 1) - 1
    amax = np.abs(w).max(axis=axis, keepdims=True)
    scale = np.where(amax > 0, amax / qmax, 1.0)
    return np.clip(np.round(w / scale), -qmax, qmax) * scale


def layer_error(x: np.ndarray, weights, s: np.ndarray | None, bits: int) -> float:
    """Relative output error of the group's units with X/s and s·W quantized (s None: no smoothing)."""
    xs = x if s is None else x / s
    xq = _fake_quant_rows(xs)
    total = signal = 0.0
    for _, w, axis in weights:
        w_kn = w if axis == 0 else w.T  # [K, N]
        ws = w_kn if s is None else w_kn * s[:, None]
        ref = x @ w_kn
        got = xq @ _fake_quant_weight(ws, 0, bits)
        total += float(np.sum((ref - got) ** 2))
        signal += float(np.sum(ref**2))
    return total / signal if signal > 0 else 0.0


def smooth(model: ir.Model, plan: Plan, feeds, fresh, max_bytes: int, weight_bits: int,
           min_ratio: float = MIN_RATIO) -> dict[str, dict]:
    """Insert X/s and scale weight rows by s in place, α chosen per input by `layer_error`;
    returns {activation: {"ratio": max/median, "alpha": chosen, "error": {α: e}}}, or for a
    refused candidate {"ratio", "alpha": "none", "not_smoothed": why} (`shared_weight_refusal`)."""
    groups = smoothing_groups(plan)
    if not groups:
        return {}
    maxima, samples = channel_statistics(model, sorted(groups), feeds, max_bytes)
    report = {}
    for name, units in groups.items():
        if name not in maxima:
            continue
        ax = maxima[name].astype(np.float64)
        ratio = float(ax.max() / max(np.median(ax), 1e-12))
        if ratio < min_ratio:
            continue
        refusal = shared_weight_refusal(units)
        if refusal is not None:
            report[name] = {"ratio": round(ratio, 1), "alpha": "none", "not_smoothed": refusal}
            continue
        weights = [(u, constant_array(u.node.inputs[u.weight]).astype(np.float32), _row_axis(u.node)) for u in units]
        aw = np.max([np.abs(w).max(axis=1 - axis) for _, w, axis in weights], axis=0).astype(np.float64)
        options = {"none": None}
        options.update({a: np.clip(np.maximum(ax, 1e-5) ** a / np.maximum(aw, 1e-5) ** (1 - a), 1e-4, 1e4)
                        .astype(np.float32) for a in ALPHAS})
        errors = {a: layer_error(samples[name], weights, s, weight_bits) for a, s in options.items()}
        best = min(errors, key=lambda a: (errors[a], a != "none"))
        if errors[best] > MIN_GAIN * errors["none"]:  # not worth a Mul node on the hot path
            best = "none"
        report[name] = {"ratio": round(ratio, 1), "alpha": best,
                        "error": {str(a): float(f"{e:.3g}") for a, e in errors.items()}}
        if best != "none":
            _rewrite(model.graph, units[0].node.inputs[units[0].activations[0]], weights, options[best], fresh)
    return report


def _rewrite(graph: ir.Graph, x: ir.Value, weights, s: np.ndarray, fresh) -> None:
    writer = QdqWriter(graph, fresh)
    inverse = writer.constant(f"{x.name}_smooth_inverse", (1.0 / s).astype(np.float32))
    mul = ir.node("Mul", [x, inverse], name=fresh(f"{x.name}_smooth"), num_outputs=1)
    smoothed = mul.outputs[0]
    smoothed.name, smoothed.dtype, smoothed.shape = fresh(f"{x.name}_smoothed"), x.dtype, x.shape
    graph.append(mul)
    scaled: dict[ir.Value, ir.Value] = {}  # one s·W per weight, however many units of X read it
    for unit, w, axis in weights:
        old = unit.node.inputs[unit.weight]
        if old not in scaled:
            shape = (-1, 1) if axis == 0 else (1, -1)
            scaled[old] = writer.constant(f"{old.name}_smoothed", (w * s.reshape(shape)).astype(w.dtype))
        unit.node.replace_input_with(unit.weight, scaled[old])
        unit.node.replace_input_with(unit.activations[0], smoothed)
    for old in scaled:
        drop_if_dead(old, graph)
    graph.sort()
