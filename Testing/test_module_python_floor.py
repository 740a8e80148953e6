"""The module file loads in every Slicer that might load it, and refuses the ones MedAnalysis cannot run in.

Slicer 5.8 ships Python 3.9, which this machine cannot provide: ``MedAnalysis/MedAnalysis.py`` is checked statically
instead. It must parse with Python 3.9's grammar, use no standard-library feature newer than 3.9, and import nothing
from MedAnalysis's own libraries (which need Python 3.10+) before its version check has passed. The module library
and ``MedAnalysisLib`` are checked against Python 3.12's grammar, the Python of every supported Slicer (5.10+).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[1]
MODULE_FILE = PROJECT_ROOT / "MedAnalysis" / "MedAnalysis.py"

#: Standard-library names added after Python 3.9 (attribute or imported name -> the version that added it).
NEWER_THAN_39 = {
    "pairwise": "3.10", "aiter": "3.10", "anext": "3.10", "bit_count": "3.10", "TypeAlias": "3.10",
    "ParamSpec": "3.10", "Concatenate": "3.10", "TypeGuard": "3.10", "is_typeddict": "3.10",
    "aclosing": "3.10", "EncodingWarning": "3.10", "packages_distributions": "3.10",
    "Self": "3.11", "LiteralString": "3.11", "Never": "3.11", "assert_never": "3.11", "reveal_type": "3.11",
    "StrEnum": "3.11", "ExceptionGroup": "3.11", "BaseExceptionGroup": "3.11", "TaskGroup": "3.11",
    "add_note": "3.11", "UTC": "3.11", "chdir": "3.11", "tomllib": "3.11", "batched": "3.12", "override": "3.12",
    "walk": "3.12", "is_junction": "3.12",
}
#: Keyword arguments added after 3.9 to functions the module could call.
NEWER_KEYWORDS = {("zip", "strict"): "3.10", ("dataclass", "slots"): "3.10", ("dataclass", "kw_only"): "3.10",
                  ("dataclass", "match_args"): "3.10", ("open", "encoding_errors"): "never"}


def names_and_calls(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            yield node.attr, node
        elif isinstance(node, ast.Name):
            yield node.id, node
        elif isinstance(node, ast.alias):
            yield node.name.split(".")[-1], node


def test_module_file_parses_with_python_39_grammar():
    ast.parse(MODULE_FILE.read_text(encoding="utf-8"), filename=str(MODULE_FILE), feature_version=(3, 9))


def test_module_file_uses_no_standard_library_feature_newer_than_39():
    tree = ast.parse(MODULE_FILE.read_text(encoding="utf-8"))
    found = [f"line {node.lineno}: {name} (Python {NEWER_THAN_39[name]})"
             for name, node in names_and_calls(tree) if name in NEWER_THAN_39 and hasattr(node, "lineno")]
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            function = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
            found += [f"line {node.lineno}: {function}({keyword.arg}=...) (Python {NEWER_KEYWORDS[function, keyword.arg]})"
                      for keyword in node.keywords if (function, keyword.arg) in NEWER_KEYWORDS]
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr) and _inside_runtime_type_check(tree, node):
            found.append(f"line {node.lineno}: X | Y as a runtime type (Python 3.10)")
    assert not found, "the module file must load in Slicer 5.8's Python 3.9 to say it is unsupported:\n" + "\n".join(found)


def _inside_runtime_type_check(tree: ast.AST, target: ast.AST) -> bool:
    for node in ast.walk(tree):
        if (isinstance(node, ast.Call) and getattr(node.func, "id", "") in ("isinstance", "issubclass")
                and any(target is child for argument in node.args[1:] for child in ast.walk(argument))):
            return True
    return False


def test_module_file_imports_its_libraries_only_after_the_version_check():
    """Top-level imports are the standard library and Slicer's own modules; MedAnalysisLib and
    MedAnalysisSlicerLib are imported only in the ``if UNSUPPORTED_REASON is None:`` branch or inside functions."""
    tree = ast.parse(MODULE_FILE.read_text(encoding="utf-8"))
    ours = ("MedAnalysisLib", "MedAnalysisSlicerLib")
    for statement in tree.body:
        if isinstance(statement, (ast.Import, ast.ImportFrom)):
            module = statement.module if isinstance(statement, ast.ImportFrom) else statement.names[0].name
            assert not (module or "").startswith(ours), f"line {statement.lineno}: {module} imported before the check"
    gate = [s for s in tree.body if isinstance(s, ast.If) and "UNSUPPORTED_REASON" in ast.unparse(s.test)]
    assert len(gate) == 1, "expected one 'if UNSUPPORTED_REASON is None:' block"
    gated = {n.module for n in ast.walk(gate[0]) if isinstance(n, ast.ImportFrom)}
    assert {"MedAnalysisSlicerLib.logic", "MedAnalysisLib.errors"} <= gated


@pytest.mark.parametrize("folder", ["MedAnalysis/MedAnalysisSlicerLib", "MedAnalysisLib"])
def test_libraries_parse_with_python_312_grammar(folder):
    """Every supported Slicer (5.10 and newer) runs Python 3.12."""
    for path in sorted((PROJECT_ROOT / folder).rglob("*.py")):
        ast.parse(path.read_text(encoding="utf-8"), filename=str(path), feature_version=(3, 12))


def test_the_checks_catch_what_they_look_for(tmp_path, monkeypatch):
    """The static checks fail on a file that uses Python 3.10 features."""
    bad = tmp_path / "MedAnalysis.py"
    bad.write_text("import itertools\npairs = list(zip([1], [2], strict=True))\nok = isinstance(1, int | str)\n"
                   "steps = list(itertools.pairwise([1, 2]))\n")
    monkeypatch.setattr(__import__(__name__), "MODULE_FILE", bad)
    with pytest.raises(AssertionError) as failure:
        test_module_file_uses_no_standard_library_feature_newer_than_39()
    assert "zip(strict" in str(failure.value) and "pairwise" in str(failure.value) and "X | Y" in str(failure.value)
    bad.write_text("match 1:\n    case 1:\n        pass\n")
    with pytest.raises(SyntaxError):
        test_module_file_parses_with_python_39_grammar()
