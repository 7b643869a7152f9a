"""The package's layout rules: one table of passes, family faces, no import cycles, layers.

The import graph is read from the source (every `import` and `from ... import`, including the
ones inside functions), so a lazy import cannot hide a cycle or a layer violation.
"""

from __future__ import annotations

import ast
from pathlib import Path

import networkx as nx

import graphopt.passes
from graphopt.pass_api import Pass
from graphopt.registry import registered_passes

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "graphopt"
QUANTIZE = "graphopt.passes.quantize"
CALIBRATION = "graphopt.passes.quantize.calibration"
ABOVE_PASSES = {"graphopt", "graphopt.api", "graphopt.cli", "graphopt.manager", "graphopt.registry",
                "graphopt.recipes", "graphopt.targets", "graphopt.auto", "graphopt.pass_api"}


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(source: str, module: str, is_package: bool, known: set[str]) -> set[str]:
    """Modules of `known` that `source` imports (a `from M import x` of a submodule x counts as M.x)."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".")[: len(module.split(".")) - node.level + (1 if is_package else 0)]
                base = ".".join(anchor + ([base] if base else []))
            submodules = {f"{base}.{a.name}" for a in node.names} & known
            found.update(submodules if submodules else {base})
    return {m for m in found if m in known}


def import_graph(root: Path = PACKAGE) -> nx.DiGraph:
    files = {module_name(f, root.parent): f for f in sorted(root.rglob("*.py"))}
    graph = nx.DiGraph()
    graph.add_nodes_from(files)
    for name, path in files.items():
        for target in imported_modules(path.read_text(), name, path.name == "__init__.py", set(files)):
            if target != name:
                graph.add_edge(name, target)
    return graph


GRAPH = import_graph()


def _is_face_import(importer: str, target: str) -> bool:
    """A package's face is its __init__; importing it from outside or inside is always fine,
    and a package imports its own submodules to build that face."""
    return importer == target or importer.startswith(target + ".") or target.startswith(importer + ".")


def test_the_checkout_has_no_aliased_passes_folder_and_no_package_dir():
    assert not (ROOT / "passes").exists()
    assert "package-dir" not in (ROOT / "pyproject.toml").read_text()


def test_the_table_lists_every_pass_under_its_own_name():
    table = graphopt.passes.PASSES
    assert len(table) == 30
    for name, cls in table.items():
        assert issubclass(cls, Pass) and cls.name == name, name
        assert cls.__module__.startswith("graphopt.passes."), name
    assert set(table) <= set(registered_passes())


def test_no_import_cycles():
    cycles = [c for c in nx.simple_cycles(GRAPH)]
    assert cycles == [], cycles[:5]


def test_calibration_is_imported_only_inside_quantize():
    outside = [(a, b) for a, b in GRAPH.edges if b.startswith(CALIBRATION) and not a.startswith(QUANTIZE)]
    assert outside == []
    for tool in (ROOT / "tools").glob("*.py"):
        names = imported_modules(tool.read_text(), "tools." + tool.stem, False, set(GRAPH))
        assert not {m for m in names if m.startswith(CALIBRATION + ".")}, f"{tool.name} imports calibration internals"


def test_modules_below_the_pass_layer_do_not_import_it():
    """Core modules that passes use (io, runtime, lossy, activations, ...) sit below the pass API:
    none of them may import pass_api, the registry, the manager or a pass."""
    passes = {m for m in GRAPH if m.startswith("graphopt.passes")}
    below = set().union(*(nx.descendants(GRAPH, m) for m in passes)) - passes - ABOVE_PASSES
    assert below, "the pass layer uses no core module?"
    bad = [(a, b) for a in below for b in GRAPH.successors(a) if b in ABOVE_PASSES | passes]
    assert bad == []


def test_a_family_imports_another_family_only_through_its_face():
    families = {m for m in GRAPH if m.count(".") == 2 and m.startswith("graphopt.passes.")}

    def family(module: str) -> str | None:
        return next((f for f in families if module == f or module.startswith(f + ".")), None)

    bad = [(a, b) for a, b in GRAPH.edges
           if family(a) and family(b) and family(a) != family(b) and b != family(b)]
    assert bad == []


def test_the_scanner_sees_lazy_and_relative_imports():
    known = {"graphopt.a", "graphopt.b", "graphopt.c", "graphopt.c.d"}
    source = "def f():\n    from graphopt import a\nfrom .c import d\nimport graphopt.b\n"
    assert imported_modules(source, "graphopt.x", False, known) == {"graphopt.a", "graphopt.b", "graphopt.c.d"}
    assert imported_modules("from graphopt.c import helper\n", "graphopt.x", False, known) == {"graphopt.c"}


def test_graphopt_passes_names_the_module_of_every_pass(capsys):
    from graphopt.cli import main

    assert main(["passes"]) == 0
    out = capsys.readouterr().out
    for cls in graphopt.passes.PASSES.values():
        assert f"module: {cls.__module__}.{cls.__qualname__}" in out, cls.name
