"""Running rewrite rules as a verified graphopt pass.

A rule is data: an onnxscript `RewriteRule` (pattern + check + replacement). A `RuleGroup`
bundles rules with the default-domain opset range they apply to. `apply_rule_group` applies
each rule to a fixed point (counting applications per rule) and, when debug logging is on,
replays the rules on a clone under onnxscript's `MatchingTracer` so each rule logs why its
best remaining partial match was refused. A rule that raises is dropped and the group
restarts from a snapshot taken before it (one clone per pass, shared tensors).

Rewrites happen through onnxscript's replacement machinery (`replace_nodes_and_values`),
which creates new nodes and fresh initializers and leaves shared tensors untouched.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Sequence

import onnx_ir as ir
from onnx_ir.passes.common import RemoveUnusedNodesPass
from onnxscript.rewriter import MatchingTracer, MatchStatus, RewriteRule, RewriteRuleSet

from graphopt.analyses import Shapes
from graphopt.pass_api import PassContext, PassResult, default_opset, quiet_libraries, structure_fingerprint
from graphopt.size import data_bytes

NO_LIMIT = 10_000


@dataclass(frozen=True)
class RuleGroup:
    """Named rules and the default-domain opset range they are valid for."""

    rules: tuple[tuple[str, RewriteRule], ...]
    min_opset: int = 1
    max_opset: int = NO_LIMIT
    needs_shapes: bool = False  # run shape inference first (rules that check ranks/shapes)
    rule_min_opsets: tuple[tuple[str, int], ...] = ()  # rules that emit ops newer than the group's

    @classmethod
    def of(cls, min_opset: int = 1, max_opset: int = NO_LIMIT, needs_shapes: bool = False,
           rule_min_opsets: dict[str, int] | None = None, **rules) -> RuleGroup:
        """`RuleGroup.of(name=rule_or_ruleset, ...)`; a rule set contributes name.0, name.1, ...
        `rule_min_opsets={"name": 14}` gates one rule (or rule set) by the model's opset."""
        items = []
        for name, rule in rules.items():
            members = list(rule) if not isinstance(rule, RewriteRule) else [rule]
            items += [(name if len(members) == 1 else f"{name}.{i}", r) for i, r in enumerate(members)]
        return cls(tuple(items), min_opset, max_opset, needs_shapes, tuple((rule_min_opsets or {}).items()))

    def opset_refusal(self, opset: int) -> str | None:
        """Why the group does not apply at this default-domain opset, or None."""
        if self.min_opset <= opset <= self.max_opset:
            return None
        upper = "...)" if self.max_opset == NO_LIMIT else f"{self.max_opset}]"
        return (f"opset {opset} outside [{self.min_opset}, {upper}"
                + (" (the `opset` pass can raise it)" if opset < self.min_opset else ""))

    def rules_for(self, opset: int) -> tuple[list[tuple[str, RewriteRule]], dict[str, int]]:
        """(rules valid at this opset, {gated rule name: opset it needs})."""
        gates = dict(self.rule_min_opsets)
        needed = {name: gates[name.split(".")[0]] for name, _ in self.rules
                  if gates.get(name.split(".")[0], 0) > opset}
        return [(n, r) for n, r in self.rules if n not in needed], needed


@dataclass(frozen=True)
class RuleOptions:
    max_rounds: int = 8

    def validate(self) -> None:
        if self.max_rounds < 1:
            raise ValueError("max_rounds must be >= 1")


def apply_rule_group(pass_name: str, group: RuleGroup, model: ir.Model, ctx: PassContext,
                     max_rounds: int) -> PassResult:
    """Apply every rule to a fixed point; stats count applications per rule."""
    opset = default_opset(model)
    refusal = group.opset_refusal(opset)
    if refusal is not None:
        ctx.no_match(pass_name, "model", refusal)
        return PassResult(model, False, {"skipped": refusal})
    if group.needs_shapes:
        ctx.analysis(Shapes, model)
    bytes_before, fingerprint = data_bytes(model), structure_fingerprint(model)
    snapshot = model.clone()  # restart point if a library rule raises mid-rewrite
    active, gated = group.rules_for(opset)
    for name in sorted({n.split(".")[0] for n in gated}):
        ctx.no_match(pass_name, "model", f"{name}: needs opset {gated[next(g for g in gated if g.startswith(name))]}"
                     f", model has {opset} (the `opset` pass can raise it)")
    while True:
        try:
            counts = _apply_to_fixed_point(model, active, max_rounds)
            break
        except _RuleRaised as failure:
            ctx.no_match(pass_name, "model", f"{failure.name}: rule raised {failure.error}; rule skipped")
            active = [(n, r) for n, r in active if n != failure.name]
            model = snapshot.clone()
    if ctx.logger.isEnabledFor(logging.DEBUG):
        _log_refusals(pass_name, active, model, ctx)
    applied = {name: n for name, n in counts.items() if n}
    if not applied:  # onnxscript's rewriter drops dead nodes even when no rule fired: say so
        return PassResult(model, structure_fingerprint(model) != fingerprint, {"rewrites": {}})
    with quiet_libraries():  # rewrites leave the replaced weights behind; drop what nothing reads
        RemoveUnusedNodesPass()(model)
    # a fused weight can add bytes (BN folded into a shared weight gives each user its own copy)
    return PassResult(model, True, {"rewrites": applied, "bytes_added": data_bytes(model) - bytes_before})


class _RuleRaised(Exception):
    def __init__(self, name: str, exc: Exception):
        super().__init__(name)
        self.name, self.error = name, f"{type(exc).__name__}: {exc}"


def _apply_to_fixed_point(model: ir.Model, rules: list[tuple[str, RewriteRule]], max_rounds: int) -> dict[str, int]:
    """Apply each rule in turn until a round changes nothing; count applications per rule."""
    counts = {name: 0 for name, _ in rules}
    with quiet_libraries():
        for _ in range(max_rounds):
            changed = 0
            for name, rule in rules:
                try:
                    n = RewriteRuleSet([rule]).apply_to_model(model)
                except Exception as exc:  # a library rule bug must not cost the group's other rewrites
                    raise _RuleRaised(name, exc) from exc
                counts[name] += n
                changed += n
            if not changed:
                break
    return counts


def _log_refusals(pass_name: str, rules: Sequence[tuple[str, RewriteRule]], model: ir.Model,
                  ctx: PassContext) -> None:
    """Where each rule's best remaining partial match failed, and why (after rewriting, what
    is left unmatched is what was refused)."""
    if not rules:
        return
    tracer = MatchingTracer()
    names = {id(rule): name for name, rule in rules}
    with quiet_libraries():
        RewriteRuleSet([rule for _, rule in rules]).apply_to_model(model.clone(), tracer=tracer)
    for rule, matches in tracer.best_matches_map.items():
        for info in matches[:3]:
            if info.status == MatchStatus.SUCCESS:
                continue
            reason = info.match_result.reason or info.status.name.lower().replace("_", " ")
            ctx.no_match(pass_name, info.root_node.name or info.root_node.op_type,
                         f"{names.get(id(rule), rule.name)}: {reason}")

