"""Symbolic dims whose size follows from other dims: the length of a KV-cache decoder's mask.

A decoder step with a KV cache takes `input_ids [batch, seq]`, the cache `[batch, heads, past,
head_dim]` per layer and an `attention_mask [batch, total]` whose length must be past + seq: the
model gathers mask positions up to past + seq, so any other length fails at run time (a
TorchScript-exported Llama: "indices element out of data bounds, idx=16 must be within [-16,15]"
with every dim at 16). Sizing each dim on its own never runs such a model. Two forms say the
relation:
- the dim_param is an expression of other dim_params and integers with +, - and * (Optimum
  writes "past_sequence_length + sequence_length" or "past_sequence_length + 1", torch.export
  "s0 + s1"): it is evaluated on the sizes of the others;
- the dim_param's words include "total" and the model also has a dim whose words include "past"
  and a sequence dim (TorchScript exports with dynamic_axes, ORT GenAI's
  "total_sequence_length"): total = past + seq.
`derivations(slots)` returns, for each such slot, a function from the other slots' sizes to its
size; the shape search sets derived slots from them instead of trying sizes of their own.
"""

from __future__ import annotations

import ast
import re
from typing import Callable, Iterable, Mapping

Derivation = Callable[[Mapping[str, int]], int]
OPERATORS = {ast.Add: lambda a, b: a + b, ast.Sub: lambda a, b: a - b, ast.Mult: lambda a, b: a * b}


def derivations(labels: Iterable[str], sequence: set[str]) -> dict[str, Derivation]:
    """{label: size from the others} for the derived slots. `labels`: the slots' labels (a named
    dim's label is its dim_param); `sequence`: labels of sequence-kind slots."""
    labels = list(labels)
    found: dict[str, Derivation] = {}
    for label in labels:
        expression = _expression(label, set(labels) - {label})
        if expression is not None:
            found[label] = expression
    past = [label for label in labels if "past" in dim_words(label) and label not in found]
    seq = [label for label in labels
           if label in sequence and label not in found and not {"past", "total"} & set(dim_words(label))]
    for label in labels:
        if label not in found and "total" in dim_words(label) and past and seq:
            found[label] = lambda sizes, p=past[0], s=seq[0]: sizes[p] + sizes[s]
    return found


def dim_words(name: str) -> list[str]:
    """`image_width` -> image, width; `seqLen` -> seq, len; `p2o.DynamicDimension.0` -> p, 2, o, ..."""
    return [w.lower() for w in re.findall(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|\d+", name)]


def _expression(text: str, names: set[str]) -> Derivation | None:
    """An evaluator of `text` when it is an expression of `names` and integers with + - * (at
    least one operator and one name), else None."""
    try:
        tree = ast.parse(text, mode="eval").body
    except SyntaxError:
        return None
    if not isinstance(tree, ast.BinOp) or not _allowed(tree, names):
        return None
    return lambda sizes: _evaluate(tree, sizes)


def _allowed(node: ast.AST, names: set[str]) -> bool:
    if isinstance(node, ast.BinOp):
        return type(node.op) in OPERATORS and _allowed(node.left, names) and _allowed(node.right, names)
    if isinstance(node, ast.Name):
        return node.id in names
    return isinstance(node, ast.Constant) and type(node.value) is int


def _evaluate(node: ast.AST, sizes: Mapping[str, int]) -> int:
    if isinstance(node, ast.BinOp):
        return OPERATORS[type(node.op)](_evaluate(node.left, sizes), _evaluate(node.right, sizes))
    if isinstance(node, ast.Name):
        return sizes[node.id]
    return node.value
