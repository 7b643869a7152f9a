"""What `graphopt passes` prints, without importing the passes.

The pass modules pull in onnx, onnx_ir, onnxscript, onnxruntime and numpy: about 3 s of CPU
before a word is printed. `graphopt passes [NAME]` reads `passes/catalogue.json` instead, a
snapshot of every built-in pass's name, tolerance, summary, module, options (type, default and
the note its Options class gives) and its module's first paragraph, plus the recipes.
`build_catalogue()` makes it from the live classes; tools/write_pass_catalogue.py writes it and
tests/test_catalogue.py fails when the file and the code differ, so it cannot go stale.
Passes a program registers at run time (graphopt.register) exist only in that program.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

CATALOGUE = Path(__file__).parent / "passes" / "catalogue.json"


def build_catalogue() -> dict[str, Any]:
    """The catalogue from the built-in pass classes and recipes (imports them all)."""
    import sys

    from graphopt.options import describe_options, option_notes
    from graphopt.passes import PASSES
    from graphopt.recipes import RECIPES

    passes = {}
    for name, cls in sorted(PASSES.items()):
        notes = option_notes(cls.Options)
        doc = (sys.modules[cls.__module__].__doc__ or "").strip()
        passes[name] = {
            "tolerance": cls.tolerance.kind, "summary": cls.summary,
            "module": f"{cls.__module__}.{cls.__qualname__}", "doc": doc.split("\n\n")[0],
            "options": [{"name": opt, "type": kind, "default": _plain(default), "note": notes.get(opt, "")}
                        for opt, kind, default in describe_options(cls.Options)]}
    return {"passes": passes, "recipes": {name: list(items) for name, items in RECIPES.items()}}


def load_catalogue() -> dict[str, Any]:
    return json.loads(CATALOGUE.read_text())


def catalogue_text(catalogue: dict[str, Any]) -> str:
    """`graphopt passes`: every pass with its options, then the recipes."""
    lines = []
    for name, entry in catalogue["passes"].items():
        lines.append(f"{name}  [{entry['tolerance']}]  {entry['summary']}")
        lines.append(f"    module: {entry['module']}")
        lines += [f"    {o['name']}: {o['type']} = {_shown(o['default'])}" for o in entry["options"]]
    lines.append("\nrecipes:")
    lines += [f"  {name}: {','.join(items)}" for name, items in catalogue["recipes"].items()]
    return "\n".join(lines)


def pass_text(name: str, entry: dict[str, Any]) -> str:
    """`graphopt passes NAME`: summary, the module's statement, each option with its note."""
    lines = [f"{name}  [{entry['tolerance']}]  {entry['summary']}", ""]
    if entry["doc"]:
        lines += [entry["doc"], ""]
    rows = entry["options"]
    lines.append(f"options (--passes {name}:key=value;key=value):" if rows else "options: none")
    for o in rows:
        lines.append(f"  {o['name']}: {o['type']} = {_shown(o['default'])}")
        if o["note"]:
            lines.append(f"      {o['note']}")
    return "\n".join(lines)


def _plain(value: Any) -> Any:
    """A default as JSON holds it (tuples as lists; anything else not JSON as its text)."""
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def _shown(value: Any) -> str:
    """The default as the option parser's Python value printed (what `passes` always showed)."""
    return str(tuple(value)) if isinstance(value, list) else str(value)
