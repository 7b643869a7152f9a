"""Normalization and activation fusions: decomposed LayerNorm, RMSNorm and GELU into ONNX ops.

The algebra each pass relies on (x: the input, reductions over the last axis of size D):

- fuse-layernorm (opset >= 17): with μ = mean(x), d = x − μ and σ² = mean(d²) (d² written
  Pow(d, 2) or d·d), y = d / √(σ² + ε) (or d · 1/√(σ² + ε)) · γ + β
  = LayerNormalization(x, γ, β; axis=−1, epsilon=ε). γ and β must be constants of shape [D]
  (the ONNX op broadcasts them over the normalized axis only), ε a constant scalar, both
  ReduceMeans over the last axis only with keepdims=1 (axes as attribute, opset <= 17, or as
  input, opset >= 18). Without β the node has two inputs; an Add of a constant [D] after an
  existing LayerNormalization becomes its bias.
- fuse-rmsnorm (opset >= 23): y = x / √(mean(x²) + ε) · γ (or x · 1/√(…)) = RMSNormalization(x,
  γ; axis=−1, epsilon=ε), optionally with a Cast to a wider compute type around the
  normalization (then stash_type is that type).
- fuse-gelu (opset >= 20): ½·x·(1 + erf(x/√2)) = Gelu(x) (approximate="none"), the Erf argument
  written x/c with c ≈ √2 or x·c with c ≈ 1/√2, and the three factors x, ½, (1 + erf) multiplied
  in any grouping and order; ½·x·(1 + tanh(√(2/π)·(x + 0.044715·x³))) = Gelu(x,
  approximate="tanh"), x³ as Pow(x, 3), (x·x)·x or x·(x·x). Every constant must equal its
  expected value within `rtol` (relative, an option, default and maximum 1e-4: exporters
  write √2 as 1.4142, 1/√2 as 0.7071, √(2/π) as 0.7979); otherwise the rule refuses and says
  which constant is off.

Before matching, each pass runs shape inference (dtypes and shapes for the checks), marks
Constant-node outputs as constants (in subgraphs too), and puts the constant operand of every
binary Add/Mul second (a commutation, exact in IEEE arithmetic) so each rule needs one operand
order; the swap is undone on every node the rules left in place. The rules are onnxscript
rewrite rules (onnxscript's own LayerNorm and RMSNorm rules, extended with the forms above
and with the constant/shape checks they lack), so they also rewrite inside If/Loop bodies.

Tolerance: these rewrites re-associate float arithmetic. ORT's fused kernels reduce in a
different order than ReduceMean/Sub/Pow; the differences are far inside
reassoc(rtol 1e-4, atol 1e-5) (measured: docs/design-measurements.md). For GELU, a constant
accepted within `rtol` (≤ 1e-4) of its exact value moves the output by at most rtol·|y| (½), 0.5·rtol·|x|
(the added 1) and 0.3·rtol (the Erf scale: max over x of x²·e^(−x²/2)/√(2π) = 0.29; the
Tanh scale and cubic coefficient: 0.25 and 0.03), i.e. ≤ 1.5e-4·max|y| + 3e-5 together: reassoc(rtol 2e-4, atol 3e-5). ORT's Gelu kernel itself
differs from the formula by far less than that (measured: docs/design-measurements.md).
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Literal

import onnx_ir as ir
from onnxscript.optimizer import basic_constant_propagation
from onnxscript.rewriter import pattern

from graphopt.analyses import Shapes
from graphopt.pass_api import Pass, PassContext, PassResult, default_opset
from graphopt.passes.fusion.rules import RuleGroup, RuleOptions, apply_rule_group
from graphopt.tolerance import Reassoc
from graphopt.upstream import LayerNormBiasFusion, LayerNormFusion, RmsNormFusion

NORM_TOLERANCE = Reassoc(rtol=1e-4, atol=1e-5)
GELU_TOLERANCE = Reassoc(rtol=2e-4, atol=3e-5)
FLOAT_TYPES = frozenset({ir.DataType.FLOAT, ir.DataType.DOUBLE, ir.DataType.FLOAT16, ir.DataType.BFLOAT16})
_COMMUTATIVE = ("Add", "Mul")


# --- shared checks -----------------------------------------------------------------------

def _fail(reason: str, *sources) -> pattern.MatchResult:
    return pattern.MatchResult().fail(reason, [s for s in sources if s is not None])


def _last_dim(x: ir.Value) -> int | None:
    if x.shape is None or x.shape.rank() == 0:
        return None
    dim = x.shape[-1]
    return dim if isinstance(dim, int) else None


def _rank_problem(constant: ir.Value, x: ir.Value) -> str | None:
    """A size-1 constant of higher rank than x would broadcast the output to that rank."""
    ndim, rank = len(constant.const_value.shape), x.shape.rank() if x.shape is not None else None
    if ndim and (rank is None or ndim > rank):
        return f"{constant.name} has rank {ndim}, more than the input's ({rank}): it broadcasts the output"
    return None


def _parameter_problem(label: str, value: ir.Value, x: ir.Value) -> str | None:
    """Why constant γ/β `value` cannot be a normalization parameter over x's last axis."""
    if value.is_graph_input() or value.const_value is None:
        return f"{label} ({value.name}) is not a constant"
    dims, size = tuple(value.const_value.shape), _last_dim(x)
    if len(dims) != 1:
        return f"{label} has shape {list(dims)}, not [D] (one value per element of the last axis)"
    if size is not None and dims[0] != size:
        return f"{label} has {dims[0]} values, the normalized axis has {size}"
    if size is None and dims[0] == 1:
        return f"{label} has 1 value and the normalized axis has an unknown size"
    return None


@contextlib.contextmanager
def _assumed_dtype(value: ir.Value, dtype: ir.DataType | None):
    """Let a library check see `dtype` on an untyped value; the IR is left as it was."""
    if value.type is not None or dtype is None:
        yield
        return
    value.dtype = dtype
    try:
        yield
    finally:
        value.type = None


def _axes_of(axes_input: ir.Value | None, axes_attr: ir.Attr | None) -> list[int] | None:
    if axes_attr is not None:
        return list(axes_attr.as_ints())
    if axes_input is not None and axes_input.const_value is not None:
        return [int(a) for a in axes_input.const_value.numpy().reshape(-1)]
    return None


def _reduction_problem(x: ir.Value, reductions: list[tuple]) -> str | None:
    """Each reduction is (axes input, axes attribute, keepdims attribute) of a ReduceMean."""
    rank = x.shape.rank() if x.shape is not None else None
    for axes_input, axes_attr, keepdims in reductions:
        if keepdims is not None and keepdims.as_int() != 1:
            return "ReduceMean has keepdims=0"
        axes = _axes_of(axes_input, axes_attr)
        if axes is None:
            return "ReduceMean axes are missing or not constant"
        if rank is not None:
            axes = [a - rank if a >= 0 else a for a in axes]
        if axes != [-1]:
            return f"ReduceMean axes {axes} are not the last axis"
    return None


def _reduce_mean(op, value, n: int):
    """ReduceMean over axes given as input (opset >= 18) or attribute (opset <= 17)."""
    return op.ReduceMean(value, pattern.Var(f"axes_in{n}", can_match_none=True),
                         axes=pattern.AttrVar(f"axes_attr{n}", can_match_none=True),
                         keepdims=pattern.AttrVar(f"keepdims{n}", can_match_none=True))


def _reductions(bindings: dict, count: int) -> list[tuple]:
    return [(bindings.get(f"axes_in{n}"), bindings.get(f"axes_attr{n}"), bindings.get(f"keepdims{n}"))
            for n in range(1, count + 1)]


# --- LayerNorm ----------------------------------------------------------------------------

class LayerNormRule(LayerNormFusion):
    """onnxscript's LayerNormFusion for both ReduceMean forms, with γ, axes and use checks."""

    def pattern(self, op, x, scale, epsilon):
        deviation = op.Sub(x, _reduce_mean(op, x, 1))
        squared = pattern.OrValue([op.Mul(deviation, deviation), op.Pow(deviation, 2)])
        std_dev = op.Sqrt(op.Add(_reduce_mean(op, squared, 2), epsilon))
        inv_std_dev = op.Reciprocal(std_dev)
        normalized = pattern.OrValue([op.Div(deviation, std_dev), op.Mul(deviation, inv_std_dev),
                                      op.Mul(inv_std_dev, deviation)])
        return op.Mul(normalized, scale)

    def check(self, context, x, scale, epsilon, **bindings) -> pattern.MatchResult:
        problem = _reduction_problem(x, _reductions(bindings, 2)) or _parameter_problem("gamma", scale, x)
        if problem:
            return _fail(problem, x, scale)
        with _assumed_dtype(x, scale.const_value.dtype):  # Mul(normalized, γ) forces one type
            result = super().check(context, x=x, epsilon=epsilon)
        if not result:
            return result
        problem = _rank_problem(epsilon, x) or (f"epsilon {self._epsilon} is negative" if self._epsilon < 0 else None)
        return _fail(problem, epsilon) if problem else result


class LayerNormBiasRule(LayerNormBiasFusion):
    """onnxscript's LayerNormBiasFusion, only for a constant β of the normalized shape."""

    def check(self, context, x, scale, bias, normalized, **_) -> pattern.MatchResult:
        axis = normalized.producer().attributes.get_int("axis", -1)
        rank = x.shape.rank() if x.shape is not None else None
        if axis != -1 and (rank is None or axis != rank - 1):
            return _fail(f"LayerNormalization axis {axis} is not the last axis", normalized)
        problem = _parameter_problem("beta", bias, x)
        return _fail(problem, bias) if problem else pattern.MatchResult()


LAYER_NORM_RULES = RuleGroup.of(17, layer_norm=LayerNormRule.rule("LayerNormFusion"),
                                layer_norm_bias=LayerNormBiasRule.rule("LayerNormBiasFusion"))


# --- RMSNorm ------------------------------------------------------------------------------

class RmsNormRule(RmsNormFusion):
    """onnxscript's RmsNormFusion plus x·x, Div and both Mul orders, with γ and axes checks."""

    def __init__(self, name: str):
        super().__init__(name, mul_order=True)

    def pattern(self, op, x, scale, epsilon, compute_dtype, target_dtype):
        xc = pattern.OrValue([op.Cast(x, to=compute_dtype), x])
        squared = pattern.OrValue([op.Pow(xc, 2.0), op.Mul(xc, xc)])
        rms = op.Sqrt(op.Add(_reduce_mean(op, squared, 1), epsilon))
        normalized = pattern.OrValue([op.Div(xc, rms), op.Mul(xc, op.Reciprocal(rms)),
                                      op.Mul(op.Reciprocal(rms), xc)])
        normalized = pattern.OrValue([op.Cast(normalized, to=target_dtype), normalized])
        return op.Mul(normalized, scale)

    def check(self, context, x, scale, epsilon, compute_dtype=None, target_dtype=None,
              **bindings) -> pattern.MatchResult:
        problem = _reduction_problem(x, _reductions(bindings, 1)) or _parameter_problem("gamma", scale, x)
        if problem:
            return _fail(problem, x, scale)
        assumed = scale.const_value.dtype if compute_dtype is None and target_dtype is None else x.dtype
        with _assumed_dtype(x, assumed):  # without Casts, Mul(normalized, γ) forces one type
            result = super().check(context, x, scale, epsilon, compute_dtype, target_dtype)
        if not result:
            return result
        problem = _rank_problem(epsilon, x)
        return _fail(problem, epsilon) if problem else result


RMS_NORM_RULES = RuleGroup.of(23, rms_norm=RmsNormRule.rule("RmsNormFusion"))


# --- GELU ---------------------------------------------------------------------------------

SQRT2, SQRT_2_OVER_PI, TANH_CUBIC = math.sqrt(2.0), math.sqrt(2.0 / math.pi), 0.044715
# How the three factors x, h (½) and e (1 + erf/tanh) are grouped, constants second.
ARRANGEMENTS = ("(x*e)*h", "(x*h)*e", "e*(x*h)", "x*(e*h)", "(e*h)*x")


class GeluRule(pattern.RewriteRuleClassBase):
    """One GELU form ("erf" or "tanh") in one grouping of its factors -> ONNX Gelu."""

    def __init__(self, form: str, arrangement: str, rtol: float):
        super().__init__(f"Gelu{form.title()}[{arrangement}]")
        self._form, self._arrangement, self._rtol = form, arrangement, rtol

    def pattern(self, op, x, half, one, c_erf, k, c3, three):
        if self._form == "erf":
            core = op.Erf(pattern.OrValue([op.Div(x, c_erf), op.Mul(x, c_erf)],
                                          tag_var="erf_scaling", tag_values=["div", "mul"]))
        else:
            cube = pattern.OrValue([op.Pow(x, three), op.Mul(op.Mul(x, x), x), op.Mul(x, op.Mul(x, x))])
            inner = op.Mul(cube, c3)
            core = op.Tanh(op.Mul(pattern.OrValue([op.Add(x, inner), op.Add(inner, x)]), k))
        e = op.Add(core, one)
        return {
            "(x*e)*h": lambda: op.Mul(pattern.OrValue([op.Mul(x, e), op.Mul(e, x)]), half),
            "(x*h)*e": lambda: op.Mul(op.Mul(x, half), e),
            "e*(x*h)": lambda: op.Mul(e, op.Mul(x, half)),
            "x*(e*h)": lambda: op.Mul(x, op.Mul(e, half)),
            "(e*h)*x": lambda: op.Mul(op.Mul(e, half), x),
        }[self._arrangement]()

    def check(self, context, x, half, one, c_erf=None, k=None, c3=None, three=None,
              erf_scaling=None, **_) -> pattern.MatchResult:
        if x.dtype is not None and x.dtype not in FLOAT_TYPES:
            return _fail(f"input type {x.dtype} is not a float type", x)
        expected = [("the factor ½", half, 0.5), ("the added 1", one, 1.0)]
        if self._form == "erf":
            divides = erf_scaling == "div"
            expected.append((f"the Erf {'divisor' if divides else 'scale'}", c_erf,
                             SQRT2 if divides else 1 / SQRT2))
        else:
            expected += [("the Tanh scale √(2/π)", k, SQRT_2_OVER_PI), ("the cubic coefficient", c3, TANH_CUBIC)]
            expected += [("the exponent", three, 3.0)] if three is not None else []
        for label, value, want in expected:
            problem = _constant_problem(value, want, self._rtol, x)
            if problem:
                return _fail(f"{label}: {problem}", value)
        return pattern.MatchResult()

    def rewrite(self, op, x, **_):
        return op.Gelu(x, approximate="none" if self._form == "erf" else "tanh")


def _constant_problem(value: ir.Value | None, want: float, rtol: float, x: ir.Value) -> str | None:
    if value is None or value.const_value is None or value.is_graph_input():
        return f"{getattr(value, 'name', None)} is not a constant"
    if value.const_value.size != 1:
        return f"{value.name} has shape {list(value.const_value.shape)}, not a scalar"
    problem = _rank_problem(value, x)
    if problem:
        return problem
    got = float(value.const_value.numpy().reshape(-1)[0])
    if not abs(got - want) <= rtol * abs(want):
        return f"constant {got:.7g} is not {want:.7g} (|difference| {abs(got - want):.3g} > {rtol:g} relative)"
    return None


def gelu_rule_group(forms: tuple[str, ...], rtol: float) -> RuleGroup:
    rules = {f"gelu_{form}": [GeluRule.rule(form, arr, rtol) for arr in ARRANGEMENTS] for form in forms}
    return RuleGroup.of(20, **rules)


# --- passes -------------------------------------------------------------------------------

@dataclass(frozen=True)
class GeluOptions(RuleOptions):
    forms: tuple[Literal["erf", "tanh"], ...] = ("erf", "tanh")
    rtol: float = 1e-4  # relative tolerance on each constant (√2, 1/√2, ½, 1, √(2/π), 0.044715, 3)

    def validate(self) -> None:
        super().validate()
        if not self.forms or set(self.forms) - {"erf", "tanh"}:
            raise ValueError("forms must be a non-empty list of erf|tanh")
        if not 0 <= self.rtol <= 1e-4:
            raise ValueError("rtol must be in [0, 1e-4] (the pass's tolerance assumes at most 1e-4)")


@contextlib.contextmanager
def _prepared(pass_name: str, model: ir.Model, ctx: PassContext):
    """Types and shapes, Constant-node values, constants second in Add/Mul; swaps undone after."""
    try:
        ctx.analysis(Shapes, model)
    except Exception as exc:  # noqa: BLE001 - matching still works, with fewer checks possible
        ctx.no_match(pass_name, "model", f"shape inference failed ({exc}); dtype/shape checks see less")
    nodes = list(ir.traversal.RecursiveGraphIterator(model.graph))
    basic_constant_propagation(nodes)
    swapped = [node for node in nodes if _constant_first(node)]
    for node in swapped:
        _swap_operands(node)
    try:
        yield
    finally:
        for node in swapped:
            if node.graph is not None and len(node.inputs) == 2:
                _swap_operands(node)


def _is_constant(value: ir.Value | None) -> bool:
    return value is not None and value.const_value is not None


def _constant_first(node: ir.Node) -> bool:
    if node.op_type not in _COMMUTATIVE or node.domain not in ("", "ai.onnx") or len(node.inputs) != 2:
        return False
    return _is_constant(node.inputs[0]) and not _is_constant(node.inputs[1])


def _swap_operands(node: ir.Node) -> None:
    a, b = node.inputs
    node.replace_input_with(0, b)
    node.replace_input_with(1, a)


def run_rule_group(pass_name: str, group: RuleGroup, model: ir.Model, ctx: PassContext,
                   max_rounds: int) -> PassResult:
    """`apply_rule_group` after the preparation above (skipped when the opset is out of range)."""
    if not group.min_opset <= default_opset(model) <= group.max_opset:
        return apply_rule_group(pass_name, group, model, ctx, max_rounds)
    with _prepared(pass_name, model, ctx):
        return apply_rule_group(pass_name, group, model, ctx, max_rounds)


class NormalizationPass(Pass):
    """A rule-group pass whose group may depend on its options (`rule_group`)."""

    Options = RuleOptions
    tolerance = NORM_TOLERANCE

    def rule_group(self) -> RuleGroup:
        raise NotImplementedError

    def requires(self, model: ir.Model, ctx: PassContext) -> str | None:
        return self.rule_group().opset_refusal(default_opset(model))

    def run(self, model: ir.Model, ctx: PassContext) -> PassResult:
        return run_rule_group(self.name, self.rule_group(), model, ctx, self.options.max_rounds)


class FuseLayerNorm(NormalizationPass):
    name = "fuse-layernorm"
    summary = "decomposed LayerNorm (ReduceMean, Sub, Pow, ..., Div, Mul gamma, Add beta) into LayerNormalization (opset >= 17)"

    def rule_group(self) -> RuleGroup:
        return LAYER_NORM_RULES


class FuseRmsNorm(NormalizationPass):
    name = "fuse-rmsnorm"
    summary = "x / sqrt(mean(x^2) + eps) * gamma into RMSNormalization (opset >= 23)"

    def rule_group(self) -> RuleGroup:
        return RMS_NORM_RULES


class FuseGelu(NormalizationPass):
    name = "fuse-gelu"
    summary = "erf and tanh GELU formulas into Gelu (opset >= 20)"
    Options = GeluOptions
    tolerance = GELU_TOLERANCE

    def rule_group(self) -> RuleGroup:
        return gelu_rule_group(self.options.forms, self.options.rtol)
