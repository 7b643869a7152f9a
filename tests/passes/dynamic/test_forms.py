"""`quantize-dynamic`'s two forms in ONNX Runtime against a numpy reference of the dynamic math.

The reference is written from the spec, not from the pass: DynamicQuantizeLinear (uint8 over
[min(x, 0), max(x, 0)]), symmetric per-channel (or per-tensor) int8 weights, the integer product,
the rescale by s_x·s_w, alpha and beta·C. The integer part is exact, so outputs must agree to
float rounding, far tighter than the quantization error itself (checked too, so the comparison
means something).
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from graphopt.pass_api import PassContext
from graphopt.passes.dynamic.smooth import factors
from graphopt.passes.dynamic.weights import weight_bits
from graphopt.registry import get_pass
from graphopt.tolerance import Budget

RNG = np.random.default_rng(7)
BITS = [7] + ([8] if weight_bits() == 8 else [])  # 8-bit weights are exact only with VNNI/AMX


def dql(x: np.ndarray) -> tuple[np.ndarray, np.float32, np.float32]:
    lo, hi = np.float32(min(x.min(), 0)), np.float32(max(x.max(), 0))
    scale = np.float32((hi - lo) / np.float32(255))
    zero = np.float32(np.clip(np.round(-lo / scale), 0, 255))
    return np.clip(np.round(x / scale) + zero, 0, 255), scale, zero


def weight(w: np.ndarray, per_channel: bool, bits: int) -> tuple[np.ndarray, np.ndarray]:
    """(Wq, s_w) of a [K, N] weight."""
    qmax = 2 ** (bits - 1) - 1
    amax = np.abs(w).max(axis=0) if per_channel else np.abs(w).max()
    scale = (amax / qmax).astype(np.float32)
    return np.clip(np.round(w / scale), -qmax, qmax), scale


def reference(x, w, per_channel, bits, alpha=1.0, bias=None):
    q, s_x, z_x = dql(x)
    wq, s_w = weight(w, per_channel, bits)
    y = alpha * ((q - z_x).astype(np.float64) @ wq) * (s_x * s_w)
    bound = 1e-5 * np.abs(y).max() + 1e-6  # float rounding of the rescale only
    return (y if bias is None else y + bias).astype(np.float32), bound


def model(nodes, inputs, output, initializers, opset=17) -> onnx.ModelProto:
    """A model whose output's type comes from ONNX shape inference."""
    graph = helper.make_graph(nodes, "g", inputs, [], [numpy_helper.from_array(a, n) for n, a in initializers.items()])
    proto = onnx.shape_inference.infer_shapes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)]))
    known = next(v for v in proto.graph.value_info if v.name == output)
    proto.graph.output.append(known)
    proto.graph.value_info.remove(known)
    onnx.checker.check_model(proto, full_check=True)
    return proto


def quantize(proto: onnx.ModelProto, holdout=(), budget: float = 0.99, **options) -> tuple[onnx.ModelProto, object]:
    """The pass on `proto`; with `holdout` feeds, smoothing as the cosine `budget` needs it."""
    options.setdefault("speed_check", False)
    options.setdefault("fallback", False)
    ctx = PassContext(holdout=list(holdout), budget=Budget({"cosine": budget}))
    result = get_pass("quantize-dynamic")(**options).run(ir.serde.deserialize_model(proto), ctx)
    out = ir.serde.serialize_model(result.model)
    onnx.checker.check_model(out, full_check=True)
    return out, result


def run(proto: onnx.ModelProto, feed: dict, level: str) -> np.ndarray:
    so = ort.SessionOptions()
    so.graph_optimization_level = {"disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
                                   "enable": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}[level]
    return ort.InferenceSession(proto.SerializeToString(), so, providers=["CPUExecutionProvider"]).run(None, feed)[0]


def check(proto, feed, expected, bound, exact, form, per_channel, bits, ops_expected):
    out, result = quantize(proto, form=form, per_channel=per_channel, weight_bits=bits)
    assert result.modified and result.stats["form"] == form
    ops = [n.op_type for n in out.graph.node]
    assert set(ops_expected[form]) <= set(ops) and "MatMul" not in ops and "Gemm" not in ops
    assert np.abs(expected - exact).max() > 100 * bound  # the quantization error is visible at this bound
    for level in ("disable", "enable"):  # enable: ORT's fusions into its int8 kernels
        got = run(out, feed, level)
        assert got.shape == expected.shape
        assert np.abs(got - expected).max() <= bound, (level, np.abs(got - expected).max(), bound)


FORMS = {"standard": ("DynamicQuantizeLinear", "MatMulInteger", "Cast", "Mul"), "ort": ("DynamicQuantizeMatMul",)}


@pytest.mark.parametrize("form", ["standard", "ort"])
@pytest.mark.parametrize("per_channel", [True, False])
@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("shape", [(5, 16), (2, 5, 16)])
def test_matmul_2d_and_3d(form, per_channel, bits, shape):
    w = RNG.standard_normal((16, 8)).astype(np.float32) * np.linspace(0.1, 2, 8, dtype=np.float32)
    proto = model([helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")],
                  [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(shape))], "y", {"w": w})
    x = (RNG.standard_normal(shape) + 0.3).astype(np.float32)
    expected, bound = reference(x, w, per_channel, bits)
    check(proto, {"x": x}, expected, bound, x @ w, form, per_channel, bits, FORMS)


@pytest.mark.parametrize("form", ["standard", "ort"])
@pytest.mark.parametrize("per_channel", [True, False])
def test_matmul_absorbs_its_bias_add(form, per_channel):
    w = RNG.standard_normal((16, 8)).astype(np.float32)
    b = RNG.standard_normal(8).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["t"], name="mm"), helper.make_node("Add", ["b", "t"], ["y"])]
    proto = model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 16])], "y", {"w": w, "b": b})
    x = RNG.standard_normal((2, 3, 16)).astype(np.float32)
    expected, bound = reference(x, w, per_channel, 7, bias=b)
    check(proto, {"x": x}, expected, bound, x @ w + b, form, per_channel, 7, FORMS)
    out, result = quantize(proto, form=form, per_channel=per_channel, weight_bits=7)
    assert result.stats["quantized"] == {"mm": "MatMul of x + bias Add"}
    adds = [n for n in out.graph.node if n.op_type == "Add"]
    assert len(adds) == (1 if form == "standard" else 0)  # the bias rides in the ort kernel
    if adds:
        assert adds[0].input[1] == "b"  # second input: what ORT's MatMulIntegerToFloat fusion takes


@pytest.mark.parametrize("form", ["standard", "ort"])
@pytest.mark.parametrize("per_channel", [True, False])
@pytest.mark.parametrize("trans_b", [0, 1])
def test_gemm_with_bias_alpha_beta_and_trans_b(form, per_channel, trans_b):
    w = RNG.standard_normal((16, 8)).astype(np.float32)
    c = RNG.standard_normal(8).astype(np.float32)
    stored = np.ascontiguousarray(w.T) if trans_b else w
    node = helper.make_node("Gemm", ["x", "w", "c"], ["y"], name="gemm", transB=trans_b, alpha=0.5, beta=2.0)
    proto = model([node], [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 16])], "y", {"w": stored, "c": c})
    x = RNG.standard_normal((4, 16)).astype(np.float32)
    expected, bound = reference(x, w, per_channel, 7, alpha=0.5, bias=2.0 * c)
    check(proto, {"x": x}, expected, bound, 0.5 * x @ w + 2 * c, form, per_channel, 7, FORMS)


@pytest.mark.parametrize("form", ["standard", "ort"])
def test_gemm_with_a_computed_c_keeps_a_separate_add(form):
    w = RNG.standard_normal((16, 8)).astype(np.float32)
    nodes = [helper.make_node("Relu", ["c0"], ["c"]), helper.make_node("Gemm", ["x", "w", "c"], ["y"], name="gemm")]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 16]),
              helper.make_tensor_value_info("c0", TensorProto.FLOAT, [4, 8])]
    proto = model(nodes, inputs, "y", {"w": w})
    x, c0 = RNG.standard_normal((4, 16)).astype(np.float32), RNG.standard_normal((4, 8)).astype(np.float32)
    expected, bound = reference(x, w, True, 7, bias=np.maximum(c0, 0))
    out, _ = quantize(proto, form=form, weight_bits=7)
    assert "Add" in [n.op_type for n in out.graph.node]
    assert np.abs(run(out, {"x": x, "c0": c0}, "disable") - expected).max() <= bound


@pytest.mark.parametrize("form", ["standard", "ort"])
@pytest.mark.parametrize("per_channel", [True, False])
def test_conv_becomes_conv_integer_in_both_forms(form, per_channel):
    w = RNG.standard_normal((4, 3, 3, 3)).astype(np.float32)
    b = RNG.standard_normal(4).astype(np.float32)
    node = helper.make_node("Conv", ["x", "w", "b"], ["y"], name="conv", pads=[1, 1, 1, 1], strides=[2, 2])
    proto = model([node], [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 7, 7])], "y", {"w": w, "b": b})
    x = (RNG.standard_normal((1, 3, 7, 7)) + 0.5).astype(np.float32)
    out, result = quantize(proto, form=form, per_channel=per_channel, weight_bits=7, ops=("Conv",))
    assert "ConvInteger" in [n.op_type for n in out.graph.node] and result.stats["quantized_by_op"] == {"Conv": 1}
    q, s_x, z_x = dql(x)
    flat, s_w = weight(w.reshape(4, -1).T, per_channel, 7)
    wq = flat.T.reshape(w.shape).astype(np.float32)
    conv = helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1], strides=[2, 2])
    plain = model([conv], [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 7, 7])], "y", {"w": wq})
    integer = run(plain, {"x": (q - z_x).astype(np.float32)}, "disable")  # zero padding = z_x padding
    expected = integer * (s_x * np.asarray(s_w).reshape(-1, 1, 1)) + b.reshape(-1, 1, 1)
    bound = 1e-5 * np.abs(expected).max()
    assert np.abs(run(out, {"x": x}, "disable") - expected).max() <= bound


@pytest.mark.parametrize("form", ["standard", "ort"])
def test_a_smoothed_matmul_quantizes_x_over_s_against_diag_s_times_w(form):
    w = RNG.standard_normal((16, 8)).astype(np.float32)
    boost = np.ones(16, np.float32)
    boost[3] = 40.0  # an outlier channel
    nodes = [helper.make_node("Mul", ["x", "boost"], ["xb"]), helper.make_node("MatMul", ["xb", "w"], ["y"], name="mm")]
    proto = model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 6, 16])], "y",
                  {"w": w, "boost": boost})
    held = [{"x": RNG.standard_normal((2, 6, 16)).astype(np.float32)} for _ in range(3)]
    out, result = quantize(proto, held, 0.99999, form=form, weight_bits=7)
    alpha = result.stats["smoothed"]["mm"]["alpha"]
    amax = np.max([np.abs(f["x"] * boost).reshape(-1, 16).max(axis=0) for f in held], axis=0)
    s = factors(amax, np.abs(w).max(axis=1), alpha)
    x = held[0]["x"]
    expected, bound = reference((x * boost) * (1 / s).astype(np.float32), w * s[:, None], True, 7)  # as the graph
    for level in ("disable", "enable"):
        assert np.abs(run(out, {"x": x}, level) - expected).max() <= 4 * bound
    plain, _ = reference(x * boost, w, True, 7)
    assert np.abs(plain - (x * boost) @ w).max() > 2 * np.abs(expected - (x * boost) @ w).max()


@pytest.mark.parametrize("form", ["standard", "ort"])
@pytest.mark.parametrize("smooth", [False, True])
def test_units_reading_one_activation_share_its_quantization(form, smooth):
    ws = {f"w{i}": RNG.standard_normal((16, 8)).astype(np.float32) for i in range(3)}
    bs = {f"b{i}": RNG.standard_normal(8).astype(np.float32) for i in range(3)}
    boost = np.ones(16, np.float32)
    boost[5] = 30.0
    nodes = [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Mul", ["r", "boost"], ["h"])]
    for i in range(3):
        nodes += [helper.make_node("MatMul", ["h", f"w{i}"], [f"t{i}"], name=f"mm{i}"),
                  helper.make_node("Add", [f"t{i}", f"b{i}"], [f"y{i}"])]
    nodes.append(helper.make_node("Concat", ["y0", "y1", "y2"], ["y"], axis=-1))
    proto = model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4, 16])], "y",
                  {**ws, **bs, "boost": boost})
    held = [{"x": RNG.standard_normal((2, 4, 16)).astype(np.float32)} for _ in range(3)]
    out, result = quantize(proto, held if smooth else (), 0.99999, form=form, weight_bits=7, smooth=smooth)
    ops = [n.op_type for n in out.graph.node]
    own = 1 + (1 if smooth else 0)  # the model's Mul, the shared x/s
    assert ops.count("DynamicQuantizeLinear") == 1 and ops.count("Mul") == own + (6 if form == "standard" else 0)
    if form == "ort":
        assert ops.count("MatMulIntegerToFloat") == 3 and "DynamicQuantizeMatMul" not in ops
    x = held[0]["x"]
    h = np.maximum(x, 0) * boost
    if smooth:
        alphas = {v["alpha"] for v in result.stats["smoothed"].values()}
        assert set(result.stats["smoothed"]) == {"mm0", "mm1", "mm2"} and len(alphas) == 1  # one s for all three
        amax = np.max([(np.maximum(f["x"], 0) * boost).reshape(-1, 16).max(axis=0) for f in held], axis=0)
        rows = np.max([np.abs(w).max(axis=1) for w in ws.values()], axis=0)
        s = factors(amax, rows, alphas.pop())
        h, ws = h * (1 / s).astype(np.float32), {k: w * s[:, None] for k, w in ws.items()}
    parts = [reference(h, ws[f"w{i}"], True, 7, bias=bs[f"b{i}"]) for i in range(3)]
    expected, bound = np.concatenate([p[0] for p in parts], axis=-1), max(p[1] for p in parts)
    for level in ("disable", "enable"):
        assert np.abs(run(out, {"x": x}, level) - expected).max() <= 4 * bound
