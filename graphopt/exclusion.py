"""Which nodes a quantizing pass leaves alone: by name, by op type, or by a name pattern.

One concern shared by `quantize`, `quantize-dynamic` and `quantize-weights` (their
`exclude_nodes`, `exclude_ops`, `exclude_regex` options): an `Exclusion` says why a node is
excluded, or None, so the pass can report the reason with the node it kept float.
"""

from __future__ import annotations

import re
from typing import Callable

import onnx_ir as ir

Exclusion = Callable[[ir.Node], "str | None"]


def exclusion(nodes: tuple[str, ...], ops: tuple[str, ...], pattern: str) -> Exclusion:
    """The reason `node` is excluded (by name, op type or `pattern` on its name), or None."""
    regex = re.compile(pattern) if pattern else None

    def reason(node: ir.Node) -> str | None:
        if node.name in nodes:
            return "excluded by name"
        if node.op_type in ops:
            return f"op type {node.op_type} excluded"
        if regex is not None and regex.search(node.name or ""):
            return f"name matches exclude_regex {pattern!r}"
        return None

    return reason


def check_pattern(pattern: str) -> None:
    """Options validation: a bad `exclude_regex` is a ValueError naming the regex error."""
    if pattern:
        try:
            re.compile(pattern)
        except re.error as exc:
            raise ValueError(f"exclude_regex: {exc}") from None
