"""Hypothesis strategies for random valid ONNX graphs.

`models()` draws a float32 model at opset 13, 17, 18 or 20: an input of rank 2-4 (first dim
optionally symbolic "N"), then 3-8 steps forming a chain/DAG, each drawn from `STEPS`: unary
ops; binary ops against another value or a broadcastable constant; MatMul/Gemm (+ bias, + BN);
Conv blocks with BatchNormalization, a per-channel affine or a zero Pad in front; transposes,
reshapes, squeeze/unsqueeze and cast round trips; decomposed LayerNorm and GELU; constant
expressions that broadcast constants into each other; Relu/Clip/Min/Max/HardSwish chains; the
same op twice on one input (CSE) behind Identity chains; Dropout, pooling, Concat; and If nodes
whose branches read outer-scope values (nested up to two levels, a branch may return an
Identity of an outer value). Constants are initializers or Constant nodes, weights are
sometimes shared by name or duplicated by value; initializers are sometimes also listed as
graph inputs (IR-3 style); a few intermediate values and sometimes a constant become graph
outputs. Shapes are tracked exactly, so every drawn model passes `onnx.checker` with full
shape inference (asserted); `feed_for` draws an input with N = 2.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import onnx
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

SYMBOLIC = "N"
OPSETS = (13, 17, 18, 20)
Shape = tuple  # ints and SYMBOLIC


@dataclass
class Builder:
    """One graph (or If branch) under construction; `draw` is hypothesis' draw function."""

    draw: object
    opset: int
    values: list[tuple[str, Shape]] = field(default_factory=list)
    nodes: list = field(default_factory=list)
    initializers: list = field(default_factory=list)
    weights: dict = field(default_factory=dict)  # shape -> names, for shared weights
    values_of: dict = field(default_factory=dict)  # name -> array of every constant
    not_in_branches: set = field(default_factory=set)  # values If branches must not read (ORT bug)
    counter: list = field(default_factory=lambda: [0])  # shared with branches: unique names
    depth: int = 0

    def name(self, base: str) -> str:
        self.counter[0] += 1
        return f"{base}_{self.counter[0]}"

    def pick(self) -> tuple[str, Shape]:
        return self.draw(st.sampled_from(self.values[-4:]))  # recent values: chains, some fan-out

    def node(self, op: str, inputs: list[str], shape: Shape | None, **attrs) -> str:
        out = self.name(op.lower())
        self.nodes.append(helper.make_node(op, inputs, [out], name=self.name(op), **attrs))
        if shape is not None:
            self.values.append((out, tuple(shape)))
        return out

    def const(self, array: np.ndarray, share: bool = False) -> str:
        """A constant: a new initializer or Constant node, or (share=True, for weights whose values
        do not matter) sometimes an existing weight of the same shape and dtype."""
        array = np.asarray(array, np.float32) if array.dtype.kind == "f" else array
        key = (array.shape, array.dtype.str)
        if share and self.weights.get(key):
            how = self.draw(st.sampled_from(["new", "shared", "same values"]))
            if how == "shared":
                return self.draw(st.sampled_from(self.weights[key]))
            if how == "same values":  # a duplicate by value (dedup-initializers)
                array = self.values_of[self.draw(st.sampled_from(self.weights[key]))]
        name = self.name("w")
        self.values_of[name] = array
        if self.depth == 0 and self.draw(st.booleans()):
            self.initializers.append(numpy_helper.from_array(array, name))
        else:
            self.nodes.append(helper.make_node("Constant", [], [name], value=numpy_helper.from_array(array, name)))
        self.weights.setdefault(key, []).append(name)
        return name

    def random(self, shape: tuple, scale: float = 1.0) -> np.ndarray:
        seed = self.draw(st.integers(0, 2**16))
        return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(np.float32)


def broadcast(a: Shape, b: Shape) -> Shape | None:
    """Numpy broadcasting with a symbolic dim that only meets itself or 1."""
    out = []
    for x, y in zip(((1,) * (len(b) - len(a)) + tuple(a)), ((1,) * (len(a) - len(b)) + tuple(b))):
        if x == y or y == 1:
            out.append(x)
        elif x == 1:
            out.append(y)
        else:
            return None
    return tuple(out)


def const_shape(b: Builder, shape: Shape) -> tuple:
    """A shape that broadcasts against `shape`: a suffix with some dims set to 1."""
    k = b.draw(st.integers(0, len(shape)))
    suffix = shape[len(shape) - k:]
    return tuple(1 if d == SYMBOLIC or b.draw(st.booleans()) else d for d in suffix)


# --- steps: each appends nodes and one new value -----------------------------------------

def unary(b: Builder) -> None:
    x, shape = b.pick()
    op = b.draw(st.sampled_from(["Relu", "Sigmoid", "Tanh", "Abs", "Neg", "Identity", "LeakyRelu",
                                 "Softmax", "HardSigmoid", "Erf", "Clip"]))
    if op == "Clip":
        lo, hi = sorted(b.draw(st.lists(st.sampled_from([-1.0, 0.0, 0.5, 6.0]), min_size=2, max_size=2)))
        b.node("Clip", [x, b.const(np.array(lo, np.float32)), b.const(np.array(hi, np.float32))], shape)
    else:
        b.node(op, [x], shape, **({"axis": -1} if op == "Softmax" else {}))


def binary(b: Builder) -> None:
    x, shape = b.pick()
    op = b.draw(st.sampled_from(["Add", "Sub", "Mul", "Max", "Min", "Div"]))
    partners = [(n, s) for n, s in b.values if n != x and broadcast(shape, s) == shape]
    if op != "Div" and partners and b.draw(st.booleans()):
        other, _ = b.draw(st.sampled_from(partners))
    else:
        c = b.random(const_shape(b, shape))
        c = np.where(np.abs(c) < 0.5, 1.0, c).astype(np.float32) if op == "Div" else c
        other = b.const(c, share=op != "Div")
    b.node(op, [x, other], shape)


def matmul(b: Builder) -> None:
    x, shape = b.pick()
    k, m = shape[-1], b.draw(st.sampled_from([1, 3, 6, 32]))
    if k == SYMBOLIC:
        return unary(b)
    w = b.const(b.random((k, m), 1 / math.sqrt(k)), share=True)
    y = b.node("MatMul", [x, w], None)
    if b.draw(st.booleans()):
        y = b.node("Add", [y, b.const(b.random((m,), 0.1))], None)
    if len(shape) == 2 and b.draw(st.booleans()):
        y = _batch_norm(b, y, m)
    b.values.append((y, (*shape[:-1], m)))


def gemm(b: Builder) -> None:
    x, shape = b.pick()
    if len(shape) != 2 or shape[1] == SYMBOLIC:
        return matmul(b)
    m, trans = b.draw(st.integers(1, 6)), b.draw(st.booleans())
    w = b.random((m, shape[1]) if trans else (shape[1], m), 1 / math.sqrt(shape[1]))
    b.node("Gemm", [x, b.const(w, share=True), b.const(b.random((m,), 0.1), share=True)], (shape[0], m),
           transB=int(trans))


def _batch_norm(b: Builder, x: str, channels: int) -> str:
    scale, bias = b.random((channels,), 0.2) + 1.0, b.random((channels,), 0.1)
    mean, var = b.random((channels,), 0.1), np.abs(b.random((channels,), 0.2)) + 0.5
    inputs = [x] + [b.const(a.astype(np.float32)) for a in (scale, bias, mean, var)]
    return b.node("BatchNormalization", inputs, None, epsilon=1e-5)


def conv(b: Builder) -> None:
    x, shape = b.pick()
    if len(shape) != 4 or shape[1] == SYMBOLIC:
        return binary(b)
    cin, cout, k = shape[1], b.draw(st.integers(1, 4)), b.draw(st.sampled_from([1, 3]))
    if b.draw(st.booleans()) and k == 3:
        pads = b.const(np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64))
        x = b.node("Pad", [x, pads], None, mode="constant")
        conv_pads = [0, 0, 0, 0]
    else:
        conv_pads = [k // 2] * 4
    inputs = [x, b.const(b.random((cout, cin, k, k), 1 / math.sqrt(cin * k * k)), share=True)]
    if b.draw(st.booleans()):
        inputs.append(b.const(b.random((cout,), 0.1)))
    y = b.node("Conv", inputs, None, kernel_shape=[k, k], pads=conv_pads)
    tail = b.draw(st.sampled_from(["none", "bn", "affine"]))
    if tail == "bn":
        y = _batch_norm(b, y, cout)
    elif tail == "affine":
        y = b.node("Mul", [y, b.const(b.random((cout, 1, 1), 0.3) + 1.0)], None)
        y = b.node("Add", [y, b.const(b.random((cout, 1, 1), 0.1))], None)
    b.values.append((y, (shape[0], cout, shape[2], shape[3])))


def layout(b: Builder) -> None:
    """Transpose (twice, sometimes), no-op Reshape, Unsqueeze/Squeeze and Cast round trips."""
    x, shape = b.pick()
    kind = b.draw(st.sampled_from(["transpose", "reshape", "unsqueeze", "cast", "flatten"]))
    if kind == "transpose":
        perm = b.draw(st.permutations(range(len(shape))))
        y = b.node("Transpose", [x], None, perm=list(perm))
        shape = tuple(shape[p] for p in perm)
        if b.draw(st.booleans()):
            back = [perm.index(i) for i in range(len(perm))]
            y, shape = b.node("Transpose", [y], None, perm=back), tuple(shape[p] for p in back)
        b.values.append((y, shape))
    elif kind == "reshape":
        b.node("Reshape", [x, b.node("Shape", [x], None)], shape)
    elif kind == "unsqueeze":
        y = b.node("Unsqueeze", [x, b.const(np.array([0], np.int64))], None)
        b.node("Squeeze", [y, b.const(np.array([0], np.int64))], shape)
    elif kind == "cast":
        y = b.node("Cast", [b.node("Cast", [x], None, to=TensorProto.DOUBLE)], shape, to=TensorProto.FLOAT)
        # ORT 1.32 fails ("Trying to get a TensorSeq, but got: (null)") when If branches return
        # Identity of a double->float Cast output read from the outer scope
        b.not_in_branches.add(y)
    elif SYMBOLIC not in shape[1:]:
        b.node("Reshape", [x, b.const(np.array([0, -1], np.int64))], (shape[0], math.prod(shape[1:])))


def _reduce_mean(b: Builder, x: str) -> str:
    if b.opset >= 18:
        return b.node("ReduceMean", [x, b.const(np.array([-1], np.int64))], None, keepdims=1)
    return b.node("ReduceMean", [x], None, axes=[-1], keepdims=1)


def layer_norm(b: Builder) -> None:
    x, shape = b.pick()
    if shape[-1] == SYMBOLIC:
        return unary(b)
    d = b.node("Sub", [x, _reduce_mean(b, x)], None)
    sq = b.node("Pow", [d, b.const(np.array(2.0, np.float32))], None) if b.draw(st.booleans()) \
        else b.node("Mul", [d, d], None)
    std = b.node("Sqrt", [b.node("Add", [_reduce_mean(b, sq), b.const(np.array(1e-5, np.float32))], None)], None)
    y = b.node("Div", [d, std], None)
    y = b.node("Mul", [y, b.const(b.random((shape[-1],), 0.2) + 1.0)], None)
    b.node("Add", [y, b.const(b.random((shape[-1],), 0.1))], shape)


def gelu(b: Builder) -> None:
    x, shape = b.pick()
    erf = b.node("Erf", [b.node("Div", [x, b.const(np.array(1.4142135, np.float32))], None)], None)
    one_plus = b.node("Add", [erf, b.const(np.array(1.0, np.float32))], None)
    half_x = b.node("Mul", [x, b.const(np.array(0.5, np.float32))], None)
    b.node("Mul", [half_x, one_plus], shape)


def folded(b: Builder) -> None:
    """A constant expression of two broadcastable constants (it may broadcast to a larger one)."""
    x, shape = b.pick()
    s1, s2 = const_shape(b, shape), const_shape(b, shape)
    c = b.node(b.draw(st.sampled_from(["Add", "Mul"])), [b.const(b.random(s1)), b.const(b.random(s2))], None)
    b.node("Add", [x, c], shape)


def misc(b: Builder) -> None:
    x, shape = b.pick()
    kind = b.draw(st.sampled_from(["dropout", "pool", "concat"]))
    if kind == "pool" and len(shape) == 4:
        op = b.draw(st.sampled_from(["MaxPool", "AveragePool", "GlobalAveragePool"]))
        attrs = {} if op == "GlobalAveragePool" else {"kernel_shape": [1, 1]}
        b.node(op, [x], (*shape[:2], 1, 1) if op == "GlobalAveragePool" else shape, **attrs)
    elif kind == "concat" and shape[-1] != SYMBOLIC:
        b.node("Concat", [x, x], (*shape[:-1], shape[-1] * 2), axis=-1)
    else:
        b.node("Dropout", [x, b.const(np.array(0.25, np.float32))], shape)


def if_node(b: Builder) -> None:
    """If(sum(x) > 0): each branch applies a few steps to outer-scope values; may nest."""
    x, shape = b.pick()
    if b.depth >= 2 or x in b.not_in_branches:
        return unary(b)
    total = b.node("ReduceSum", [x], None, keepdims=0)
    cond = b.node("Greater", [total, b.const(np.array(0.0, np.float32))], None)
    branches = [_branch(b, x, shape, label) for label in ("then", "else")]
    b.node("If", [cond], shape, then_branch=branches[0], else_branch=branches[1])


def _branch(b: Builder, x: str, shape: Shape, label: str) -> onnx.GraphProto:
    sub = Builder(b.draw, b.opset, [(x, shape)], counter=b.counter, depth=b.depth + 1,
                  not_in_branches=b.not_in_branches)
    sub.weights = {}
    for _ in range(b.draw(st.integers(0, 2))):
        b.draw(st.sampled_from([unary, binary, if_node]))(sub)
    out, out_shape = sub.values[-1]
    if out == x or out_shape != shape:  # a branch must produce its own value of the If's shape
        out = sub.node("Identity", [x], shape)
    vi = helper.make_tensor_value_info(out, TensorProto.FLOAT, list(shape))
    return helper.make_graph(sub.nodes, b.name(label), [], [vi], sub.initializers)


def activations(b: Builder) -> None:
    """Chains fuse-activations merges: Relu/Clip pairs, Min/Max with scalars, HardSigmoid·x."""
    x, shape = b.pick()
    kind = b.draw(st.sampled_from(["relu relu", "relu clip", "clip relu", "clip clip", "min max", "hardswish"]))
    y = x
    for op in kind.split():
        if op == "relu":
            y = b.node("Relu", [y], None)
        elif op == "clip":
            lo, hi = b.draw(st.sampled_from([(-1.0, 1.0), (0.0, 6.0), (-0.5, 0.5)]))
            y = b.node("Clip", [y, b.const(np.array(lo, np.float32)), b.const(np.array(hi, np.float32))], None)
        elif op in ("min", "max"):
            bound = np.array(0.5 if op == "min" else -0.5, np.float32)
            y = b.node(op.title(), [y, b.const(bound)], None)
        else:
            y = b.node("Mul", [y, b.node("HardSigmoid", [y], None, alpha=1 / 6)], None)
    b.values.append((y, shape))


def twins(b: Builder) -> None:
    """The same op twice on the same input (CSE), through Identity chains, then combined."""
    x, shape = b.pick()
    op = b.draw(st.sampled_from(["Relu", "Sigmoid", "Tanh"]))
    first, second = b.node(op, [x], None), b.node(op, [x], None)
    if b.draw(st.booleans()):
        second = b.node("Identity", [b.node("Identity", [second], None)], None)
    b.values.append((first, shape))  # the first twin may also become a graph output
    b.node(b.draw(st.sampled_from(["Add", "Mul"])), [first, second], shape)


STEPS = (unary, binary, matmul, gemm, conv, layout, layer_norm, gelu, folded, misc, if_node, twins, activations)


@st.composite
def models(draw, min_steps: int = 3, max_steps: int = 8) -> onnx.ModelProto:
    opset = draw(st.sampled_from(OPSETS))
    rank = draw(st.integers(2, 4))
    dims = [draw(st.integers(1, 4)) for _ in range(rank)]
    if draw(st.booleans()):
        dims[0] = SYMBOLIC
    b = Builder(draw, opset, [("x", tuple(dims))])
    for _ in range(draw(st.integers(min_steps, max_steps))):
        draw(st.sampled_from(STEPS))(b)
    final = b.values[-1]
    middle = draw(st.lists(st.sampled_from(b.values[1:-1]), max_size=2, unique=True)) if len(b.values) > 2 else []
    outputs = [v for v in [*middle, final] if v[0] != "x"] or [(b.node("Identity", ["x"], dims), tuple(dims))]
    if draw(st.integers(0, 4)) == 0:  # a graph output that is a constant
        outputs.append((b.node("Identity", [b.const(b.random((2,)))], (2,)), (2,)))
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, dims)]
    if draw(st.booleans()):  # initializers listed as graph inputs too (IR-3 style, overridable)
        inputs += [helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in b.initializers]
    graph = helper.make_graph(
        b.nodes, "generated", inputs,
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, list(s)) for n, s in outputs], b.initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)
    onnx.checker.check_model(model, full_check=True)
    return model


def feed_for(model: onnx.ModelProto, seed: int = 0) -> dict[str, np.ndarray]:
    """A standard-normal input with the symbolic dim set to 2."""
    dims = [d.dim_value if d.HasField("dim_value") else 2 for d in model.graph.input[0].type.tensor_type.shape.dim]
    return {"x": np.random.default_rng(seed).standard_normal(dims).astype(np.float32)}
