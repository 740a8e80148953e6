"""The library's modules import each other without cycles, and each one imports on its own in a fresh interpreter.

The graph counts every import that runs (module level and inside functions; ``if TYPE_CHECKING:`` blocks do not run),
and importing ``a.b.c`` counts as importing the packages ``a.b`` too, because Python runs their ``__init__`` first.
A cycle would mean two modules that can only be understood (and imported) together: lower layers never import
higher ones (DESIGN.md).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[1]
PACKAGE = PROJECT_ROOT / "MedAnalysisLib"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PROJECT_ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imported_names(tree: ast.AST, package: str) -> list[str]:
    """Every module name an import statement that can run refers to (``from m import x``: ``m.x`` if a module)."""
    found: list[str] = []

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                for other in child.orelse:
                    visit_one(other)
                continue
            visit_one(child)

    def visit_one(node: ast.AST) -> None:
        if isinstance(node, ast.Import):
            found.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([node.module] if node.module else []))
            found.extend(f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base for alias in node.names)
        visit(node)

    visit(tree)
    return found


def import_graph() -> dict[str, set[str]]:
    """Module -> the library modules it imports (including the packages whose ``__init__`` those imports run)."""
    graph: dict[str, set[str]] = {}
    for name, path in MODULES.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets: set[str] = set()
        for imported in _imported_names(ast.parse(path.read_text(encoding="utf-8")), package):
            parts = imported.split(".")
            for end in range(1, len(parts) + 1):
                target = ".".join(parts[:end])
                # A module's own packages are already being imported when it runs: not an edge.
                if target in MODULES and not (name == target or name.startswith(target + ".")):
                    targets.add(target)
        graph[name] = targets
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for successor in sorted(graph[node]):
            if successor not in index:
                connect(successor)
                low[node] = min(low[node], low[successor])
            elif successor in on_stack:
                low[node] = min(low[node], index[successor])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return found


def test_the_library_has_no_import_cycle() -> None:
    graph = import_graph()
    assert "MedAnalysisLib.bundles.single" in graph and graph["MedAnalysisLib.bundles.ensemble"]
    assert cycles(graph) == []


def test_the_cycle_finder_finds_cycles_through_functions_and_package_inits() -> None:
    """The oracle: cycles built by hand, one through a function-level import, one through a package's ``__init__``."""
    assert cycles({"a": {"b"}, "b": {"a"}, "c": set()}) == [["a", "b"]]
    tree = ast.parse("def f():\n    from MedAnalysisLib.bundles import load_bundle\n"
                     "if TYPE_CHECKING:\n    import MedAnalysisLib.training\n")
    assert _imported_names(tree, "MedAnalysisLib") == ["MedAnalysisLib.bundles"]
    graph = import_graph()
    # terminology is imported by bundles.summary; were it to import the bundles package, the package __init__ would
    # close a cycle: the graph must count that edge.
    graph["MedAnalysisLib.terminology"] = graph["MedAnalysisLib.terminology"] | {"MedAnalysisLib.bundles"}
    assert any({"MedAnalysisLib.terminology", "MedAnalysisLib.bundles"} <= set(c) for c in cycles(graph))


def test_layers_the_issue_named_import_only_downward() -> None:
    graph = import_graph()
    assert "MedAnalysisLib.training.runner" not in graph["MedAnalysisLib.training.callbacks"]
    assert not any(m.startswith("MedAnalysisLib.bundles.ensemble") for m in graph["MedAnalysisLib.bundles.single"])
    assert not any(m.startswith("MedAnalysisLib.preprocessing") for m in graph["MedAnalysisLib.data.samplers"])
    assert graph["MedAnalysisLib.labels"] <= {"MedAnalysisLib.errors"}


#: The modules issue 20 named (bundles, the training callbacks and runner, preprocessing) and their neighbours.
FRESH_IMPORTS = sorted(n for n in MODULES if n.startswith(("MedAnalysisLib.bundles", "MedAnalysisLib.training",
                                                            "MedAnalysisLib.preprocessing", "MedAnalysisLib.data"))
                       or n in ("MedAnalysisLib.labels", "MedAnalysisLib.terminology", "MedAnalysisLib.keras_compat",
                                "MedAnalysisLib.runtime", "MedAnalysisLib.bundle", "MedAnalysisLib.ensemble"))


@pytest.mark.slow
def test_each_module_imports_first_in_a_fresh_interpreter() -> None:
    """A cycle that the graph might miss (an import built at run time) still bites when the import starts from a
    module of the cycle: each module is imported first in its own interpreter, two at a time."""
    assert len(FRESH_IMPORTS) > 20
    failures = []
    for start in range(0, len(FRESH_IMPORTS), 2):
        children = {name: subprocess.Popen([sys.executable, "-c", f"import {name}"], cwd=PROJECT_ROOT,
                                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                    for name in FRESH_IMPORTS[start:start + 2]}
        for name, child in children.items():
            _, err = child.communicate(timeout=120)
            if child.returncode != 0:
                failures.append(f"{name}: {err.strip().splitlines()[-1]}")
    assert failures == []


def test_the_old_module_names_still_give_the_same_objects() -> None:
    """``MedAnalysisLib.bundle`` and ``MedAnalysisLib.ensemble`` are kept for scripts written against them."""
    import MedAnalysisLib.bundle as old_bundle
    import MedAnalysisLib.bundles as bundles
    import MedAnalysisLib.ensemble as old_ensemble

    for name in ("BundleConfig", "LabelInfo", "LoadedBundle", "load_bundle", "read_bundle_config", "save_bundle",
                 "bundle_summary", "copy_with_inference_defaults", "default_labels"):
        assert getattr(old_bundle, name) is getattr(bundles, name)
    assert old_ensemble.make_ensemble is bundles.make_ensemble
    assert old_ensemble.LoadedEnsemble is bundles.LoadedEnsemble
    old = {"MedAnalysisLib.bundle", "MedAnalysisLib.ensemble"}
    users = [name for name, imported in import_graph().items() if name not in old and old & imported]
    assert users == [], "the library itself imports MedAnalysisLib.bundles, not the old names"
