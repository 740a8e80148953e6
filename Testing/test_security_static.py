"""No code from files: the package never calls an API that can execute what a file or archive contains.

The check reads the syntax tree of every module (so docstrings that name the forbidden calls do not count) and fails
on any of:

* ``pickle`` / ``cPickle`` / ``dill`` / ``cloudpickle`` / ``marshal`` / ``shelve`` / ``joblib`` loading (and their
  imports), ``torch.load``;
* ``keras.models.load_model`` / ``keras.saving.load_model`` / ``tf.saved_model.load`` / any ``load_model(`` or
  ``TFSMLayer``, ``safe_mode=False``, Keras ``Lambda`` layers;
* ``eval(`` / ``exec(`` / ``compile(`` / ``__import__(`` builtins;
* ``yaml.load(`` / ``yaml.unsafe_load(`` / ``yaml.full_load(``;
* ``allow_pickle=True`` anywhere, and any ``np.load`` / ``numpy.load`` without ``allow_pickle=False``;
* ``extractall(`` / ``extract(`` / ``extractfile(`` and any ``tarfile`` use outside
  ``MedAnalysisLib/safe_archive.py`` (the single archive extractor, which validates every entry first);
* ``shell=True`` in a subprocess call.

A second test feeds the same checker a module that does every one of these, so the check itself cannot rot into
one that passes everything.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = (ROOT / "MedAnalysisLib", ROOT / "MedAnalysis")
ARCHIVE_MODULE = ROOT / "MedAnalysisLib" / "safe_archive.py"

_FORBIDDEN_MODULES = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "marshal", "shelve", "joblib"}
_FORBIDDEN_CALLS = {
    "pickle.load", "pickle.loads", "pickle.Unpickler", "_pickle.load", "_pickle.loads", "dill.load", "dill.loads",
    "cloudpickle.load", "cloudpickle.loads", "marshal.load", "marshal.loads", "shelve.open", "joblib.load",
    "torch.load", "yaml.load", "yaml.unsafe_load", "yaml.full_load", "yaml.load_all", "yaml.unsafe_load_all",
    "tf.saved_model.load", "tensorflow.saved_model.load",
}
_FORBIDDEN_NAMES = {"eval", "exec", "compile", "__import__", "load_model", "TFSMLayer", "Lambda"}
_FORBIDDEN_ATTRIBUTES = {"load_model", "TFSMLayer", "Lambda"}
_EXTRACT_ATTRIBUTES = {"extract", "extractall", "extractfile"}


def _dotted(node: ast.AST) -> str:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
    return ".".join(reversed(parts))


def unsafe_constructs(source: str, *, archive_module: bool = False) -> list[str]:
    """``"line: what"`` for every forbidden construct in a module's source (see the module docstring)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        line = getattr(node, "lineno", 0)
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [alias.name for alias in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            for name in names:
                top = name.split(".")[0]
                if top in _FORBIDDEN_MODULES or (top == "tarfile" and not archive_module):
                    found.append(f"{line}: import {name}")
            if isinstance(node, ast.ImportFrom):
                for alias in node.names:
                    if alias.name in _FORBIDDEN_NAMES - {"eval", "exec", "compile", "__import__"}:
                        found.append(f"{line}: from {node.module} import {alias.name}")
        if not isinstance(node, ast.Call):
            continue
        name = _dotted(node.func)
        if name in _FORBIDDEN_CALLS:
            found.append(f"{line}: {name}(")
        elif isinstance(node.func, ast.Name) and node.func.id in _FORBIDDEN_NAMES:
            found.append(f"{line}: {node.func.id}(")
        elif isinstance(node.func, ast.Attribute) and node.func.attr in _FORBIDDEN_ATTRIBUTES | _EXTRACT_ATTRIBUTES:
            if node.func.attr in _FORBIDDEN_ATTRIBUTES or not archive_module:
                found.append(f"{line}: .{node.func.attr}(")
        elif name.startswith("tarfile.") and not archive_module:
            found.append(f"{line}: {name}(")
        keywords = {k.arg: k.value for k in node.keywords if k.arg}
        for key, bad in (("allow_pickle", True), ("safe_mode", False), ("shell", True)):
            value = keywords.get(key)
            if isinstance(value, ast.Constant) and value.value is bad:
                found.append(f"{line}: {key}={bad}")
        if name in ("np.load", "numpy.load"):
            value = keywords.get("allow_pickle")
            if not (isinstance(value, ast.Constant) and value.value is False):
                found.append(f"{line}: {name}( without allow_pickle=False")
    return found


def _modules() -> list[Path]:
    return sorted(p for package in PACKAGES for p in package.rglob("*.py"))


def test_the_package_has_modules_to_check() -> None:
    modules = _modules()
    assert ARCHIVE_MODULE in modules and (ROOT / "MedAnalysisLib" / "bundles" / "single.py") in modules
    assert len(modules) > 40


@pytest.mark.parametrize("path", _modules(), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_no_code_from_files(path: Path) -> None:
    problems = unsafe_constructs(path.read_text(encoding="utf-8"), archive_module=path == ARCHIVE_MODULE)
    assert problems == [], f"{path.relative_to(ROOT)} uses APIs that can run code from files: {problems}"


HOSTILE_MODULE = '''
import pickle
import tarfile
from keras.models import load_model
import numpy as np, yaml, subprocess, zipfile, keras
pickle.loads(b"")
load_model("x.keras")
keras.models.load_model("x.keras", safe_mode=False)
keras.saving.load_model("x.keras")
keras.layers.Lambda(lambda t: t)
keras.layers.TFSMLayer("saved")
eval("1")
exec("pass")
__import__("os")
yaml.load("a: 1")
np.load("a.npy")
np.load("a.npy", allow_pickle=True)
zipfile.ZipFile("a.zip").extractall("out")
zipfile.ZipFile("a.zip").extract("m", "out")
tarfile.open("a.tar").extractall("out")
subprocess.run("ls", shell=True)
'''


def test_the_checker_finds_every_forbidden_construct() -> None:
    problems = unsafe_constructs(HOSTILE_MODULE)
    text = "\n".join(problems)
    for expected in ("import pickle", "import tarfile", "from keras.models import load_model", "pickle.loads(",
                     "load_model(", ".load_model(", "safe_mode=False", ".Lambda(", ".TFSMLayer(", "eval(", "exec(",
                     "__import__(", "yaml.load(", "np.load( without allow_pickle=False", "allow_pickle=True",
                     ".extractall(", ".extract(", "tarfile.open(", "shell=True"):
        assert expected in text, f"the checker missed {expected!r}; it found {problems}"
    # safe_archive.py alone may extract (after validating every entry); everything else stays forbidden there too.
    archive_problems = "\n".join(unsafe_constructs(HOSTILE_MODULE, archive_module=True))
    assert ".extract" not in archive_problems and "tarfile" not in archive_problems
    assert "pickle.loads(" in archive_problems and "eval(" in archive_problems
    assert unsafe_constructs('"""Never call keras.models.load_model or pickle.load or eval(x)."""\nnp = None\n') == []
    assert unsafe_constructs("import numpy as np\nnp.load('a.npz', allow_pickle=False)\n") == []
