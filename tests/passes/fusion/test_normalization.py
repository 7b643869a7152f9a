"""fuse-layernorm, fuse-rmsnorm, fuse-gelu: op counts after the pass, numerics against ORT,
and the cases left alone, each with its reason in the debug log."""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import helper, numpy_helper

import models
from conftest import run_ort
from graphopt.pass_api import PassContext
from graphopt.registry import get_pass
from graphopt.verify import structural_problems

F32 = onnx.TensorProto.FLOAT


class Net:
    """A tiny onnx.helper graph writer; constants become initializers or Constant nodes."""

    def __init__(self, constants: str = "initializer"):
        self.constants, self.nodes, self.inits, self.count = constants, [], [], 0

    def name(self, base: str) -> str:
        self.count += 1
        return f"{base}_{self.count}"

    def c(self, value, dtype=np.float32) -> str:
        tensor = numpy_helper.from_array(np.asarray(value, dtype), self.name("c"))
        if self.constants == "initializer":
            self.inits.append(tensor)
        else:
            self.nodes.append(helper.make_node("Constant", [], [tensor.name], value=tensor))
        return tensor.name

    def op(self, op_type: str, *inputs: str, out: str | None = None, **attrs) -> str:
        out = out or self.name(op_type.lower())
        self.nodes.append(helper.make_node(op_type, list(inputs), [out], **attrs))
        return out

    def graph(self, inputs, outputs, name="g") -> onnx.GraphProto:
        return helper.make_graph(self.nodes, name, inputs, outputs, initializer=self.inits)

    def model(self, inputs, outputs, opset: int) -> onnx.ModelProto:
        ir_version = max(9, helper.find_min_ir_version_for([helper.make_opsetid("", opset)]))
        model = helper.make_model(self.graph(inputs, outputs), opset_imports=[helper.make_opsetid("", opset)],
                                  ir_version=ir_version)
        onnx.checker.check_model(model, full_check=True)
        return model


def tensor(name, dims):
    return helper.make_tensor_value_info(name, F32, list(dims))


def ops(model: ir.Model) -> Counter:
    """Op counts over the graph and its subgraphs, Constant nodes left out."""
    return Counter(n.op_type for n in ir.traversal.RecursiveGraphIterator(model.graph) if n.op_type != "Constant")


def apply(pass_name: str, proto: onnx.ModelProto, **options):
    model = ir.serde.deserialize_model(proto)
    result = get_pass(pass_name)(**options).run(model, PassContext())
    assert structural_problems(result.model) == []
    return result.model, result.modified, result.stats


def feed_for(proto: onnx.ModelProto, seed: int = 0, **dims) -> dict[str, np.ndarray]:
    rng, feed = np.random.default_rng(seed), {}
    for value in proto.graph.input:
        shape = [d.dim_value or dims.get(d.dim_param, 3) for d in value.type.tensor_type.shape.dim]
        elem = value.type.tensor_type.elem_type
        feed[value.name] = (np.array(rng.random() > 0.5) if elem == onnx.TensorProto.BOOL
                            else rng.standard_normal(shape).astype(np.float32) * 2)
    return feed


def assert_close_in_ort(pass_name: str, before: onnx.ModelProto, after: ir.Model, feed=None) -> float:
    """Outputs within the pass's own tolerance; returns the max abs error."""
    tolerance = get_pass(pass_name).tolerance
    feed = feed or feed_for(before)
    worst = 0.0
    for ref, got in zip(run_ort(before, feed), run_ort(ir.serde.serialize_model(after), feed)):
        assert ref.shape == got.shape
        err = float(np.abs(ref - got).max())
        assert err <= tolerance.atol + tolerance.rtol * float(np.abs(ref).max()), err
        worst = max(worst, err)
    return worst


# --- LayerNorm ----------------------------------------------------------------------------

def reduce_mean(n: Net, x: str, axes, opset: int) -> str:
    if opset >= 18:
        return n.op("ReduceMean", x, n.c(np.array(axes, np.int64), np.int64), keepdims=1)
    return n.op("ReduceMean", x, axes=list(axes), keepdims=1)


def layer_norm(n: Net, x: str, d: int, *, beta=True, square="pow", divide="div", opset=17, axes=(-1,),
               gamma: str | None = None, eps=1e-5, out=None) -> str:
    """ReduceMean, Sub, Pow 2 | Mul, ReduceMean, Add eps, Sqrt, Div | Reciprocal+Mul, Mul γ, Add β."""
    rng = np.random.default_rng(d)
    centered = n.op("Sub", x, reduce_mean(n, x, axes, opset))
    sq = n.op("Pow", centered, n.c(2.0)) if square == "pow" else n.op("Mul", centered, centered)
    std = n.op("Sqrt", n.op("Add", reduce_mean(n, sq, axes, opset), n.c(eps)))
    normed = (n.op("Div", centered, std) if divide == "div"
              else n.op("Mul", centered, n.op("Reciprocal", std)))
    gamma = gamma or n.c(rng.uniform(0.5, 1.5, d))
    y = n.op("Mul", normed, gamma, out=None if beta else out)
    return n.op("Add", y, n.c(rng.normal(0, 0.2, d)), out=out) if beta else y


def layer_norm_model(constants="initializer", opset=17, dims=(2, 5, 16), out_dims="same",
                     **kwargs) -> onnx.ModelProto:
    n = Net(constants)
    layer_norm(n, "x", dims[-1], opset=opset, out="y", **kwargs)
    return n.model([tensor("x", dims)], [tensor("y", dims if out_dims == "same" else out_dims)], opset)


LN_VARIANTS = [{"beta": b, "square": s, "divide": d} for b in (True, False) for s in ("pow", "mul")
               for d in ("div", "reciprocal")]


@pytest.mark.parametrize("constants", ["initializer", "constant"])
@pytest.mark.parametrize("opset", [17, 18])
@pytest.mark.parametrize("variant", LN_VARIANTS, ids=lambda v: "-".join(f"{k}={v[k]}" for k in v))
def test_layernorm_variants_fuse(variant, opset, constants):
    proto = layer_norm_model(constants, opset, **variant)
    model, modified, stats = apply("fuse-layernorm", proto)
    assert modified and ops(model) == Counter({"LayerNormalization": 1})
    node = next(n for n in model.graph if n.op_type == "LayerNormalization")
    assert len(node.inputs) == (3 if variant["beta"] else 2)
    assert node.attributes.get_int("axis") == -1
    assert node.attributes.get_float("epsilon") == pytest.approx(1e-5)
    assert stats["rewrites"]["layer_norm"] == 1
    assert_close_in_ort("fuse-layernorm", proto, model)


def test_layernorm_positive_last_axis_and_other_eps():
    proto = layer_norm_model(axes=(2,), eps=1e-12)
    model, modified, _ = apply("fuse-layernorm", proto)
    assert modified and ops(model) == Counter({"LayerNormalization": 1})
    node = next(n for n in model.graph if n.op_type == "LayerNormalization")
    assert node.attributes.get_float("epsilon") == pytest.approx(1e-12)
    assert_close_in_ort("fuse-layernorm", proto, model)


def test_layernorm_gamma_first_operand_order():
    """Mul(γ, normalized), Add(β, ·): constants first, as some exporters write them."""
    proto = layer_norm_model()
    for node in proto.graph.node:
        if node.op_type in ("Mul", "Add") and node.input[1].startswith("c_") and node.input[0] != "x":
            node.input[0], node.input[1] = node.input[1], node.input[0]
    model, modified, _ = apply("fuse-layernorm", proto)
    assert modified and ops(model) == Counter({"LayerNormalization": 1})
    assert_close_in_ort("fuse-layernorm", proto, model)


def test_layernorm_keeps_symbolic_dims():
    dims = ("batch", "seq", 16)
    proto = layer_norm_model(dims=dims, opset=18)
    model, modified, _ = apply("fuse-layernorm", proto)
    assert modified and ops(model) == Counter({"LayerNormalization": 1})
    out_shape = model.graph.outputs[0].shape
    assert [str(d) for d in out_shape] == ["batch", "seq", "16"]
    for batch, seq in ((1, 7), (4, 2)):
        assert_close_in_ort("fuse-layernorm", proto, model, feed_for(proto, batch=batch, seq=seq))


def test_bert_export_form_after_opset_pass():
    """The torch exporter's LayerNorm below opset 17: Constant nodes for 2.0 and eps, axes attribute."""
    n = Net("constant")
    emb = n.op("Add", "x", n.c(np.random.default_rng(0).normal(size=(1, 8, 32))))
    layer_norm(n, emb, 32, opset=14, eps=1e-12, out="y")
    proto = n.model([tensor("x", ("batch", 8, 32))], [tensor("y", ("batch", 8, 32))], 14)
    _, modified, _ = apply("fuse-layernorm", proto)
    assert not modified
    raised, _, _ = apply("opset", proto, target=17)
    model = ir.serde.deserialize_model(ir.serde.serialize_model(raised))
    result = get_pass("fuse-layernorm")().run(model, PassContext())
    assert result.modified and ops(model) == Counter({"LayerNormalization": 1, "Add": 1})
    assert_close_in_ort("fuse-layernorm", proto, model, feed_for(proto, batch=2))


def test_transformer_block_layernorms_fuse_at_opset_17():
    proto = models.transformer_block()
    model, modified, stats = apply("fuse-layernorm", proto)
    assert modified and stats["rewrites"] == {"layer_norm": 2, "layer_norm_bias": 2}
    assert ops(model)["LayerNormalization"] == 2 and ops(model)["ReduceMean"] == 0
    assert ops(model)["Erf"] == 1  # GELU stays: Gelu needs opset 20
    assert_close_in_ort("fuse-layernorm", proto, model)


def test_transformer_block_after_opset_20_fuses_layernorm_and_gelu():
    proto = models.transformer_block()
    model = ir.serde.deserialize_model(proto)
    ctx = PassContext()
    assert get_pass("opset")(target=20).run(model, ctx).modified
    ln = get_pass("fuse-layernorm")().run(model, ctx)
    gelu = get_pass("fuse-gelu")().run(model, ctx)
    assert ln.stats["rewrites"] == {"layer_norm": 2, "layer_norm_bias": 2}
    assert sum(gelu.stats["rewrites"].values()) == 1
    counts = ops(model)
    assert counts["LayerNormalization"] == 2 and counts["Gelu"] == 1
    assert counts["Erf"] == counts["ReduceMean"] == counts["Sqrt"] == 0
    assert_close_in_ort("fuse-gelu", proto, model)


def _debug_run(caplog, pass_name, proto, **options):
    with caplog.at_level("DEBUG", logger="graphopt"):
        model, modified, _ = apply(pass_name, proto, **options)
    return model, modified


def test_layernorm_with_gamma_input_is_left_alone(caplog):
    n = Net()
    layer_norm(n, "x", 16, gamma="gamma", out="y")
    proto = n.model([tensor("x", (2, 16)), tensor("gamma", (16,))], [tensor("y", (2, 16))], 17)
    model, modified = _debug_run(caplog, "fuse-layernorm", proto)
    assert not modified and ops(model)["LayerNormalization"] == 0
    assert "gamma (gamma) is not a constant" in caplog.text


def test_layernorm_gamma_of_wrong_shape_is_left_alone(caplog):
    n = Net()
    layer_norm(n, "x", 16, gamma=n.c(np.ones((5, 16))), out="y")
    proto = n.model([tensor("x", (2, 5, 16))], [tensor("y", (2, 5, 16))], 17)
    _, modified = _debug_run(caplog, "fuse-layernorm", proto)
    assert not modified and "gamma has shape [5, 16]" in caplog.text


@pytest.mark.parametrize("opset", [17, 18])
def test_layernorm_over_another_axis_is_left_alone(caplog, opset):
    proto = layer_norm_model(dims=(2, 16, 16), axes=(1,), opset=opset)
    model, modified = _debug_run(caplog, "fuse-layernorm", proto)
    assert not modified and ops(model)["ReduceMean"] == 2
    assert "ReduceMean axes [-2] are not the last axis" in caplog.text


@pytest.mark.parametrize("shared", ["graph_output", "other_use"])
def test_layernorm_with_intermediate_used_elsewhere_is_left_alone(caplog, shared):
    n = Net()
    layer_norm(n, "x", 16, out="y")
    centered = next(node.output[0] for node in n.nodes if node.op_type == "Sub")
    outputs = [tensor("y", (2, 16))]
    if shared == "graph_output":
        outputs.append(tensor(centered, (2, 16)))
    else:
        n.op("Relu", centered, out="r")
        outputs.append(tensor("r", (2, 16)))
    proto = n.model([tensor("x", (2, 16))], outputs, 17)
    model, modified = _debug_run(caplog, "fuse-layernorm", proto)
    assert not modified and ops(model)["LayerNormalization"] == 0
    assert "other uses" in caplog.text
    assert_close_in_ort("fuse-layernorm", proto, model)


def test_layernorm_residual_add_does_not_become_bias(caplog):
    """LN(x)·γ + h with a full-shape activation h: the Add stays (ONNX's B is [D] only)."""
    n = Net()
    y = layer_norm(n, "x", 16, beta=False)
    n.op("Add", y, "h", out="y")
    proto = n.model([tensor("x", (2, 16)), tensor("h", (2, 16))], [tensor("y", (2, 16))], 17)
    model, modified = _debug_run(caplog, "fuse-layernorm", proto)
    assert modified and ops(model) == Counter({"LayerNormalization": 1, "Add": 1})
    assert "beta (h) is not a constant" in caplog.text
    assert_close_in_ort("fuse-layernorm", proto, model)


def test_layernorm_eps_of_higher_rank_is_left_alone(caplog):
    """eps of shape [1, 1, 1, 1] on a rank-3 input broadcasts the output to rank 4."""
    proto = layer_norm_model(eps=np.full((1, 1, 1, 1), 1e-5), out_dims=(1, 2, 5, 16))
    _, modified = _debug_run(caplog, "fuse-layernorm", proto)
    assert not modified and "has rank 4, more than the input's (3)" in caplog.text


def test_layernorm_below_opset_17_names_the_opset_pass(caplog):
    proto = layer_norm_model(opset=16)
    _, modified = _debug_run(caplog, "fuse-layernorm", proto)
    assert not modified and "`opset` pass" in caplog.text


def if_model_with(body) -> onnx.ModelProto:
    """y = If(sum(x) > 0, then: body(x) in a subgraph with its own constants, else: x)."""
    then = Net("constant")
    body(then, "x", "then_y")
    then_graph = then.graph([], [tensor("then_y", (2, 5, 16))], "then")
    else_graph = helper.make_graph([helper.make_node("Identity", ["x"], ["else_y"])], "else", [],
                                   [tensor("else_y", (2, 5, 16))])
    n = Net()
    cond = n.op("Greater", n.op("ReduceSum", "x", keepdims=0), n.c(0.0))
    n.op("If", cond, out="y", then_branch=then_graph, else_branch=else_graph)
    return n.model([tensor("x", (2, 5, 16))], [tensor("y", (2, 5, 16))], 20)


@pytest.mark.parametrize("which", ["layernorm", "gelu"])
def test_rules_fire_inside_if_branches(which):
    if which == "layernorm":
        proto = if_model_with(lambda n, x, out: layer_norm(n, x, 16, opset=20, out=out))
    else:
        proto = if_model_with(lambda n, x, out: n.op("Mul", n.op("Mul", x, erf_plus_one(n, x, "div")),
                                                   n.c(0.5), out=out))
    model, modified, _ = apply(f"fuse-{which}", proto)
    fused = "LayerNormalization" if which == "layernorm" else "Gelu"
    assert modified and ops(model)[fused] == 1
    for sign in (1, -1):  # both branches
        feed = {"x": sign * np.abs(feed_for(proto)["x"])}
        assert_close_in_ort(f"fuse-{which}", proto, model, feed)


# --- GELU ---------------------------------------------------------------------------------

def erf_plus_one(n: Net, x: str, scaling: str, constant_first=False) -> str:
    if scaling == "div":
        arg = n.op("Div", x, n.c(1.4142135))
    else:
        arg = n.op("Mul", *((n.c(0.70710677), x) if constant_first else (x, n.c(0.70710677))))
    return n.op("Add", n.op("Erf", arg), n.c(1.0))


def tanh_plus_one(n: Net, x: str, cube: str, constant_first=False) -> str:
    if cube == "pow":
        x3 = n.op("Pow", x, n.c(3.0))
    else:
        x3 = n.op("Mul", n.op("Mul", x, x), x)
    inner = n.op("Mul", *((n.c(0.044715), x3) if constant_first else (x3, n.c(0.044715))))
    scaled = n.op("Mul", n.op("Add", x, inner), n.c(0.7978846))
    return n.op("Add", *((n.c(1.0), n.op("Tanh", scaled)) if constant_first else (n.op("Tanh", scaled), n.c(1.0))))


# How the three factors are multiplied; h is ½, e is 1 + erf(...) or 1 + tanh(...).
GELU_PRODUCTS = {
    "(x*e)*h": lambda n, x, e, h: n.op("Mul", n.op("Mul", x, e), h),  # torch's export
    "(e*x)*h": lambda n, x, e, h: n.op("Mul", n.op("Mul", e, x), h),
    "(x*h)*e": lambda n, x, e, h: n.op("Mul", n.op("Mul", x, h), e),  # x * 0.5 * (1 + erf)
    "(h*x)*e": lambda n, x, e, h: n.op("Mul", n.op("Mul", h, x), e),  # 0.5 * x * (1 + erf)
    "e*(x*h)": lambda n, x, e, h: n.op("Mul", e, n.op("Mul", x, h)),
    "h*(x*e)": lambda n, x, e, h: n.op("Mul", h, n.op("Mul", x, e)),  # 0.5 * (x * (1 + erf))
    "x*(h*e)": lambda n, x, e, h: n.op("Mul", x, n.op("Mul", h, e)),  # x * (0.5 * (1 + erf))
    "(e*h)*x": lambda n, x, e, h: n.op("Mul", n.op("Mul", e, h), x),
}


def gelu_model(product: str, core, constants="initializer", half=0.5, opset=20) -> onnx.ModelProto:
    n = Net(constants)
    x = n.op("Identity", "x")
    out = GELU_PRODUCTS[product](n, x, core(n, x), n.c(half))
    n.op("Identity", out, out="y")
    dims = (2, 5, 16) if np.ndim(half) <= 3 else (1, 2, 5, 16)
    return n.model([tensor("x", (2, 5, 16))], [tensor("y", dims)], opset)


def _fused_gelu(proto, approximate: str):
    model, modified, _ = apply("fuse-gelu", proto)
    assert modified and ops(model) == Counter({"Gelu": 1, "Identity": 2}), ops(model)
    gelu = next(n for n in model.graph if n.op_type == "Gelu")
    assert gelu.attributes.get_string("approximate", "none") == approximate
    return model


@pytest.mark.parametrize("constants", ["initializer", "constant"])
@pytest.mark.parametrize("scaling", ["div", "mul", "mul-constant-first"])
@pytest.mark.parametrize("product", list(GELU_PRODUCTS))
def test_erf_gelu_variants_fuse(product, scaling, constants):
    core = lambda n, x: erf_plus_one(n, x, scaling[:3], scaling.endswith("first"))
    proto = gelu_model(product, core, constants)
    assert_close_in_ort("fuse-gelu", proto, _fused_gelu(proto, "none"))


@pytest.mark.parametrize("constants", ["initializer", "constant"])
@pytest.mark.parametrize("cube", ["pow", "mul", "pow-constant-first"])
@pytest.mark.parametrize("product", ["(x*e)*h", "(h*x)*e", "x*(h*e)", "e*(x*h)"])
def test_tanh_gelu_variants_fuse(product, cube, constants):
    core = lambda n, x: tanh_plus_one(n, x, cube[:3], cube.endswith("first"))
    proto = gelu_model(product, core, constants)
    assert_close_in_ort("fuse-gelu", proto, _fused_gelu(proto, "tanh"))


def test_gelu_with_wrong_constant_is_left_alone_unchanged(caplog):
    proto = gelu_model("(h*x)*e", lambda n, x: erf_plus_one(n, x, "div"), half=0.6)
    model, modified = _debug_run(caplog, "fuse-gelu", proto)
    assert not modified and ops(model)["Erf"] == 1
    assert "the factor ½: constant 0.6 is not 0.5" in caplog.text
    # the constant-second canonicalization is undone: the nodes are the input's
    assert list(ir.serde.serialize_model(model).graph.node) == list(proto.graph.node)


@pytest.mark.parametrize("divisor, fused", [(1.4142, True), (1.41415, True), (1.414, False), (1.4135, False)])
def test_gelu_erf_divisor_within_rtol_fuses(caplog, divisor, fused):
    """1.4142 and 1.41415 are within 1e-4 of √2 (relative); 1.414 and 1.4135 are not."""
    proto = gelu_model("(x*e)*h", lambda n, x: n.op("Add", n.op("Erf", n.op("Div", x, n.c(divisor))), n.c(1.0)))
    model, modified = _debug_run(caplog, "fuse-gelu", proto)
    assert modified == fused
    if fused:
        assert_close_in_ort("fuse-gelu", proto, model)
        _, strict, _ = apply("fuse-gelu", proto, rtol=1e-6)
        assert not strict
    else:
        assert f"the Erf divisor: constant {divisor} is not 1.414214" in caplog.text


def test_gelu_constant_of_higher_rank_is_left_alone(caplog):
    proto = gelu_model("(x*e)*h", lambda n, x: erf_plus_one(n, x, "div"), half=np.full((1, 1, 1, 1), 0.5))
    _, modified = _debug_run(caplog, "fuse-gelu", proto)
    assert not modified and "has rank 4, more than the input's (3)" in caplog.text


def test_gelu_forms_option_selects_rules():
    proto = gelu_model("(x*e)*h", lambda n, x: tanh_plus_one(n, x, "pow"))
    _, modified, _ = apply("fuse-gelu", proto, forms=("erf",))
    assert not modified


def test_gelu_below_opset_20_names_the_opset_pass(caplog):
    proto = gelu_model("(x*e)*h", lambda n, x: erf_plus_one(n, x, "div"), opset=17)
    _, modified = _debug_run(caplog, "fuse-gelu", proto)
    assert not modified and "opset 17 outside [20" in caplog.text and "`opset` pass" in caplog.text


def test_gelu_keeps_symbolic_dims():
    n = Net()
    x = n.op("Identity", "x")
    n.op("Mul", n.op("Mul", x, erf_plus_one(n, x, "div")), n.c(0.5), out="y")
    proto = n.model([tensor("x", ("batch", "seq", 16))], [tensor("y", ("batch", "seq", 16))], 20)
    model = _fused_gelu_any(proto)
    assert [str(d) for d in model.graph.outputs[0].shape] == ["batch", "seq", "16"]
    assert_close_in_ort("fuse-gelu", proto, model, feed_for(proto, batch=3, seq=9))


def _fused_gelu_any(proto):
    model, modified, _ = apply("fuse-gelu", proto)
    assert modified and ops(model)["Gelu"] == 1 and ops(model)["Erf"] == 0
    return model


# --- RMSNorm ------------------------------------------------------------------------------

def rms_norm_model(square="pow", divide="reciprocal", gamma_first=False, constants="initializer",
                   opset=23, gamma_value=None) -> onnx.ModelProto:
    n, d = Net(constants), 16
    sq = n.op("Pow", "x", n.c(2.0)) if square == "pow" else n.op("Mul", "x", "x")
    mean = n.op("ReduceMean", sq, n.c(np.array([-1], np.int64), np.int64), keepdims=1)
    rms = n.op("Sqrt", n.op("Add", mean, n.c(1e-6)))
    normed = n.op("Div", "x", rms) if divide == "div" else n.op("Mul", "x", n.op("Reciprocal", rms))
    gamma = n.c(np.random.default_rng(0).uniform(0.5, 1.5, d) if gamma_value is None else gamma_value)
    n.op("Mul", *((gamma, normed) if gamma_first else (normed, gamma)), out="y")
    return n.model([tensor("x", (2, 5, d))], [tensor("y", (2, 5, d))], opset)


@pytest.mark.parametrize("constants", ["initializer", "constant"])
@pytest.mark.parametrize("gamma_first", [False, True])
@pytest.mark.parametrize("divide", ["reciprocal", "div"])
@pytest.mark.parametrize("square", ["pow", "mul"])
def test_rmsnorm_variants_fuse(square, divide, gamma_first, constants):
    proto = rms_norm_model(square, divide, gamma_first, constants)
    model, modified, _ = apply("fuse-rmsnorm", proto)
    assert modified and ops(model) == Counter({"RMSNormalization": 1})
    node = next(n for n in model.graph if n.op_type == "RMSNormalization")
    assert node.attributes.get_float("epsilon") == pytest.approx(1e-6)
    assert_close_in_ort("fuse-rmsnorm", proto, model)


def test_rmsnorm_scalar_gamma_is_left_alone(caplog):
    proto = rms_norm_model(gamma_value=np.ones((1, 1, 16)))
    _, modified = _debug_run(caplog, "fuse-rmsnorm", proto)
    assert not modified and "gamma has shape [1, 1, 16]" in caplog.text


def test_rmsnorm_below_opset_23_names_the_opset_pass(caplog):
    proto = rms_norm_model(opset=20)
    _, modified = _debug_run(caplog, "fuse-rmsnorm", proto)
    assert not modified and "`opset` pass" in caplog.text
    raised, _, _ = apply("opset", proto, target=23)
    model = ir.serde.deserialize_model(ir.serde.serialize_model(raised))
    assert get_pass("fuse-rmsnorm")().run(model, PassContext()).modified


# --- options ------------------------------------------------------------------------------

@pytest.mark.parametrize("spec", [{"forms": ()}, {"forms": ("cubic",)}, {"rtol": 1e-3}, {"max_rounds": 0}])
def test_gelu_bad_options_are_refused(spec):
    from graphopt.errors import InputError

    with pytest.raises(InputError):
        get_pass("fuse-gelu")(**spec)


def test_rmsnorm_with_float32_compute_around_float16_fuses():
    """fp16 in, Cast to float for the statistics, Cast back, then γ (fp16): stash_type float."""
    n, d = Net(), 16
    xf = n.op("Cast", "x", to=onnx.TensorProto.FLOAT)
    mean = n.op("ReduceMean", n.op("Pow", xf, n.c(2.0)), n.c(np.array([-1], np.int64), np.int64), keepdims=1)
    rms = n.op("Sqrt", n.op("Add", mean, n.c(1e-6)))
    normed = n.op("Cast", n.op("Mul", xf, n.op("Reciprocal", rms)), to=onnx.TensorProto.FLOAT16)
    n.op("Mul", normed, n.c(np.linspace(0.5, 1.5, d), np.float16), out="y")
    f16 = onnx.TensorProto.FLOAT16
    proto = n.model([helper.make_tensor_value_info("x", f16, [2, 5, d])],
                    [helper.make_tensor_value_info("y", f16, [2, 5, d])], 23)
    model, modified, _ = apply("fuse-rmsnorm", proto)
    assert modified and ops(model) == Counter({"RMSNormalization": 1})
    node = next(n for n in model.graph if n.op_type == "RMSNormalization")
    assert node.attributes.get_int("stash_type") == onnx.TensorProto.FLOAT
    feed = {"x": np.random.default_rng(0).standard_normal((2, 5, d)).astype(np.float16)}
    ref, got = run_ort(proto, feed)[0], run_ort(ir.serde.serialize_model(model), feed)[0]
    assert np.abs(ref.astype(np.float32) - got).max() <= 2e-3  # fp16 output: one ulp at |y| ~ 2..4
