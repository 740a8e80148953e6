"""Keeps the Slicer GUI test layer and the module honest against ``shared/slicer-api/manifest.json``.

1. Everything a look-alike class of ``Testing/slicer_gui`` offers (its ``OFFERS``: signals, slots, invokables,
   PythonQt decorators, properties, enum values) resolves in the manifest class it stands for, in Slicer 5.10.0,
   5.12.0 and main; it derives from the same Qt class; it has no public member that is neither offered nor a Qt
   member of that base.
2. The parameterNodeWrapper look-alike: its serializers and GUI connectors are Slicer's (same names, same
   ``canSerialize``/``canRepresent`` text, same widget classes), the manifest connectors it leaves out bind no class
   the layer provides, and it can serialize every parameter of ``MedAnalysisParameterNode``.
3. Every Slicer/CTK/MRML/``slicer.util``/``slicer.packaging``/``slicer.app``/``slicer.modules`` name used by
   ``MedAnalysis/MedAnalysis.py``, ``MedAnalysis/MedAnalysisSlicerLib/*.py`` and ``MedAnalysisLib/slicer_adapter.py``
   (AST scan) resolves in each version, except the names in :data:`GUARDED` (used behind a version check), whose
   claimed versions are checked too. Qt names are checked against PySide6, VTK core names against ``vtk``.

The manifest lives beside the project (``../shared/slicer-api/manifest.json``; ``MEDANALYSIS_SLICER_API`` overrides
it). Without it these tests skip, unless ``MEDANALYSIS_REQUIRE_SHARED=1``.
"""

from __future__ import annotations

import ast
import inspect
import json
import os
import re
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import vtk
from PySide6 import QtCore, QtGui, QtUiTools, QtWidgets
from slicer_gui import app, ctk, mrml, pnw, scripted
from slicer_gui.fixtures import load_module_file, slicer_gui  # noqa: F401 - pytest fixtures
from slicer_gui.pythonqt import PythonQtObject, offers_of

PROJECT_ROOT = Path(__file__).resolve().parents[1]
VERSIONS = ("5.10.0", "5.12.0", "main")
_api_path = Path(os.environ.get("MEDANALYSIS_SLICER_API", PROJECT_ROOT.parent / "shared" / "slicer-api"))
MANIFEST = _api_path / "manifest.json" if _api_path.is_dir() else _api_path
UI_FILE = PROJECT_ROOT / "MedAnalysis" / "Resources" / "UI" / "MedAnalysis.ui"
SCANNED = [PROJECT_ROOT / "MedAnalysis" / "MedAnalysis.py",
           *sorted((PROJECT_ROOT / "MedAnalysis" / "MedAnalysisSlicerLib").glob("*.py")),
           PROJECT_ROOT / "MedAnalysisLib" / "slicer_adapter.py"]

#: Look-alike classes and the Slicer/CTK class each stands for.
LOOKALIKES: dict[type, str] = {
    ctk.ctkCollapsibleButton: "ctkCollapsibleButton", ctk.ctkPathLineEdit: "ctkPathLineEdit",
    mrml.qMRMLWidget: "qMRMLWidget", mrml.qMRMLNodeComboBox: "qMRMLNodeComboBox",
    mrml.qMRMLPlotWidget: "qMRMLPlotWidget",
    scripted.qSlicerScriptedLoadableModuleWidget: "qSlicerScriptedLoadableModuleWidget",
    scripted.qSlicerScriptedLoadableModule: "qSlicerScriptedLoadableModule",
    app.qSlicerApplication: "qSlicerApplication", app.qSlicerLayoutManager: "qSlicerLayoutManager",
    app.qSlicerAbstractCoreModule: "qSlicerAbstractCoreModule",
}
#: Look-alikes that are plain Python objects although Slicer's class is a QObject (nothing Qt-inherited is used).
PLAIN_LOOKALIKES = {"qSlicerApplication", "qSlicerScriptedLoadableModule", "qSlicerAbstractCoreModule"}
#: Manifest connectors the layer leaves out, with the reason (the test checks they bind nothing the layer provides,
#: except where the reason says why that cannot matter for the module).
CONNECTORS_LEFT_OUT = {
    "QComboBoxToEnumConnector": "enum parameters: MedAnalysisParameterNode has none (checked below)",
}
#: Names used only behind a version check: name -> the versions that have it (checked against the manifest).
GUARDED: dict[str, set[str]] = {
    "slicer.packaging": {"5.12.0", "main"},
    "slicer.packaging.pip_install": {"5.12.0", "main"},
}
#: Attributes of the widget that hold the parameter node wrapper (their members are checked as wrapper members).
WRAPPER_ATTRIBUTES = {"_parameterNode"}
#: Return types of calls the scanner follows (class, method) -> class.
RETURNS = {("qSlicerApplication", "layoutManager"): "qSlicerLayoutManager",
           ("qSlicerApplication", "applicationLogic"): "vtkSlicerApplicationLogic",
           ("qSlicerApplication", "mrmlScene"): "vtkMRMLScene"}
_QT_MODULES = (QtWidgets, QtGui, QtCore, QtUiTools)


@pytest.fixture(scope="module")
def api() -> dict[str, Any]:
    if not MANIFEST.is_file():
        reason = (f"the Slicer API manifest is not at {MANIFEST} (set MEDANALYSIS_SLICER_API to its path; "
                  "see shared/slicer-api/README.md)")
        if os.environ.get("MEDANALYSIS_REQUIRE_SHARED") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    return json.loads(MANIFEST.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def qapp() -> QtWidgets.QApplication:
    return QtWidgets.QApplication.instance() or QtWidgets.QApplication(["manifest-test"])


# ============================================================================ resolving names in the manifest
def chain(api: dict[str, Any], version: str, cls: str) -> Iterator[dict[str, Any]]:
    """The manifest entries of ``cls`` and its Slicer/CTK bases (breadth first)."""
    classes, queue, seen = api["versions"][version]["classes"], [cls], set()
    while queue:
        name = queue.pop(0)
        if name in seen or name not in classes:
            continue
        seen.add(name)
        yield classes[name]
        queue += classes[name]["bases"]


def members(api: dict[str, Any], version: str, cls: str) -> dict[str, set[str]]:
    """Every member ``cls`` has in ``version``, by kind (signatures for signals/slots/invokables, names otherwise)."""
    found: dict[str, set[str]] = {k: set() for k in ("signals", "slots", "invokables", "properties", "methods",
                                                      "decorated", "enums")}
    for entry in chain(api, version, cls):
        for kind in ("signals", "slots", "invokables", "properties", "methods"):
            found[kind] |= set(entry.get(kind, []))
        found["decorated"] |= {d.removeprefix("static ") for d in entry.get("decorated", [])}
        found["enums"] |= {k for values in entry.get("enums", {}).values() for k in values}
    return found


def resolves(api: dict[str, Any], version: str, cls: str, name: str, call: bool) -> bool:
    """Whether Python can use ``name`` on ``cls`` in ``version``: read it, or call it (PythonQt looks up properties
    before methods, so a property name cannot be called)."""
    have = members(api, version, cls)
    callables = {s.split("(")[0] for k in ("slots", "invokables", "decorated") for s in have[k]} | have["methods"]
    if call:
        return name in callables and name not in have["properties"]
    return name in have["properties"] | have["enums"] | callables


def qt_base(api: dict[str, Any], version: str, cls: str) -> str | None:
    """The first Qt class among ``cls``'s bases."""
    for entry in chain(api, version, cls):
        for base in entry["bases"]:
            if base.startswith("Q") and hasattr(QtWidgets, base) or hasattr(QtCore, base):
                return base
    return None


def enum_value(expression: str, enums: dict[str, str]) -> int:
    """A manifest enum expression (``0x010``, ``-1``, ``Dirs | Files``) as a number."""
    return sum({int(p.strip(), 0) if re.fullmatch(r"-?(0x[0-9a-fA-F]+|\d+)", p.strip())
                else enum_value(enums[p.strip()], enums) for p in expression.split("|")})


# ============================================================================ 1. the look-alikes
@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("cls", list(LOOKALIKES), ids=lambda c: c.__name__)
def test_lookalike_offers_resolve_in_the_manifest(api: dict[str, Any], version: str, cls: type) -> None:
    name = LOOKALIKES[cls]
    have = members(api, version, name)
    problems = []
    for offers in offers_of(cls):
        problems += [f"signal {s}" for s in offers.signals if s not in have["signals"]]
        problems += [f"slot {s}" for s in offers.slots if s not in have["slots"]]
        problems += [f"invokable {s}" for s in offers.invokables if s not in have["invokables"] | have["slots"]]
        problems += [f"decorated {s}" for s in offers.decorated if s.removeprefix("static ") not in have["decorated"]]
        problems += [f"property {p}" for p in offers.properties if p not in have["properties"]]
        manifest_enums = {k: v for e in chain(api, version, name) for values in e.get("enums", {}).values()
                          for k, v in values.items()}
        for key, value in offers.enums.items():
            if key not in manifest_enums or enum_value(manifest_enums[key], manifest_enums) != value:
                problems.append(f"enum {key}={value} (manifest: {manifest_enums.get(key)})")
    assert not problems, f"{cls.__name__} offers what Slicer {version}'s {name} lacks: {problems}"


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("cls", list(LOOKALIKES), ids=lambda c: c.__name__)
def test_lookalike_derives_from_the_real_qt_base(api: dict[str, Any], version: str, cls: type) -> None:
    name = LOOKALIKES[cls]
    if name in PLAIN_LOOKALIKES:
        assert not issubclass(cls, QtCore.QObject)
        return
    qt_classes = [k for k in cls.__mro__ if k.__module__.startswith("PySide6")]
    assert qt_classes[0].__name__ == qt_base(api, version, name), f"{cls.__name__} derives from {qt_classes[0]}"


@pytest.mark.parametrize("cls", list(LOOKALIKES), ids=lambda c: c.__name__)
def test_lookalike_has_no_undeclared_public_member(qapp: QtWidgets.QApplication, cls: type) -> None:
    offered = set().union(*(o.python_names() for o in offers_of(cls))) | {"OFFERS"}
    qt = next((k for k in cls.__mro__ if k.__module__.startswith("PySide6")), object)
    names = {n for k in cls.__mro__ if k.__module__.startswith("slicer_gui") and k is not PythonQtObject
             for n in vars(k)}
    instance = {
        app.qSlicerApplication: lambda: app.qSlicerApplication(None, []),
        scripted.qSlicerScriptedLoadableModule: lambda: scripted.qSlicerScriptedLoadableModule("/m.py"),
        app.qSlicerAbstractCoreModule: lambda: app.qSlicerAbstractCoreModule("m"),
        app.qSlicerLayoutManager: lambda: app.qSlicerLayoutManager([]),
    }.get(cls, lambda: cls())()
    names |= set(vars(instance)) if not isinstance(instance, QtCore.QObject) else set()
    extra = {n for n in names if not n.startswith("_") and n not in offered and not hasattr(qt, n)}
    assert not extra, f"{cls.__name__} has public members its OFFERS does not declare: {sorted(extra)}"


# ============================================================================ 2. parameterNodeWrapper
@pytest.mark.parametrize("version", VERSIONS)
def test_wrapper_serializers_and_connectors_are_slicers(api: dict[str, Any], version: str) -> None:
    facts = api["versions"][version]["parameterNodeWrapper"]
    for name, text in pnw.SERIALIZERS:
        assert facts["serializers"].get(name) == text, f"{name}: layer {text!r}, Slicer {facts['serializers'].get(name)!r}"
    order = list(facts["serializers"])
    assert [order.index(n) for n, _ in pnw.SERIALIZERS] == sorted(order.index(n) for n, _ in pnw.SERIALIZERS)
    for connector in pnw.CONNECTORS:
        real = facts["gui_connectors"].get(connector.name)
        assert real is not None, f"Slicer {version} has no {connector.name}"
        assert set(connector.widgets) == set(real["widgets"]), connector.name
        assert connector.can_represent_text in real["canRepresent"], connector.name
    order = list(facts["gui_connectors"])
    assert [order.index(c.name) for c in pnw.CONNECTORS] == sorted(order.index(c.name) for c in pnw.CONNECTORS)
    provided = set(__import__("slicer_gui.qt").qt.COMPAT_CLASSES) | {LOOKALIKES[c] for c in LOOKALIKES}
    layer = {c.name for c in pnw.CONNECTORS}
    for name, real in facts["gui_connectors"].items():
        if name not in layer and name not in CONNECTORS_LEFT_OUT:
            assert not set(real["widgets"]) & provided, f"{name} binds {real['widgets']}: the layer must provide it"
    assert set(pnw.OFFERED_MEMBERS) <= set(facts["wrapped_class_members"])
    assert facts["widget_property_names"]["SlicerParameterNamePropertyName"] == pnw.SlicerParameterNamePropertyName


def test_wrapper_serializes_every_parameter_of_the_module(slicer_gui: Any, load_module_file: Any) -> None:  # noqa: F811
    module = load_module_file()
    for name, parameter in module.MedAnalysisParameterNode.allParameters.items():
        type_ = pnw.unannotatedType(parameter.unalteredType)
        assert pnw.serializer_name(type_) is not None, name
        for argument in typing.get_args(type_):
            assert pnw.serializer_name(argument) is not None, f"{name}: {argument}"
        assert not (isinstance(type_, type) and issubclass(type_, __import__("enum").Enum)), \
            f"{name} is an enum: the layer leaves out QComboBoxToEnumConnector"


def parameters_of(signature: str) -> list[tuple[str, bool]]:
    """(name, has a default) of each parameter of a manifest signature such as ``(value=None, *, generator=None)``."""
    args = ast.parse(f"def f{signature}: pass").body[0].args  # type: ignore[attr-defined]
    positional = [*args.posonlyargs, *args.args]
    defaults = [False] * (len(positional) - len(args.defaults)) + [True] * len(args.defaults)
    found = [(a.arg, d) for a, d in zip(positional, defaults, strict=True)]
    found += [(f"*{args.vararg.arg}", False)] if args.vararg else []
    found += [(a.arg, d is not None) for a, d in zip(args.kwonlyargs, args.kw_defaults, strict=True)]
    return found + ([(f"**{args.kwarg.arg}", False)] if args.kwarg else [])


def parameters_of_function(function: Any) -> list[tuple[str, bool]]:
    stars = {inspect.Parameter.VAR_POSITIONAL: "*", inspect.Parameter.VAR_KEYWORD: "**"}
    return [(stars.get(p.kind, "") + p.name, p.default is not inspect.Parameter.empty)
            for p in inspect.signature(function).parameters.values() if p.name != "self"]


@pytest.mark.parametrize("version", VERSIONS)
def test_python_lookalikes_match_slicers_python_modules(api: dict[str, Any], version: str) -> None:
    """The layer's ScriptedLoadableModule, parameterNodeWrapper, i18n and replaced slicer.util functions have
    Slicer's names and signatures."""
    modules = api["versions"][version]["python_modules"]
    for name in scripted.__all__:
        real, ours = modules["slicer.ScriptedLoadableModule"][name], getattr(scripted, name)
        if name != "ScriptedLoadableModuleTest":  # unittest's own __init__ signature differs in form only
            assert parameters_of_function(ours.__init__) == parameters_of(real["init"]), name
        methods = {n: f for n, f in vars(ours).items() if callable(f) and not n.startswith("_")}
        for method, function in methods.items():
            assert method in real["methods"], f"{name}.{method} is not in Slicer {version}"
            assert parameters_of_function(function) == parameters_of(real["methods"][method]), f"{name}.{method}"
    wrapper = modules["slicer.parameterNodeWrapper"]
    for name in pnw.__all__:
        signature = wrapper[name] if isinstance(wrapper[name], str) else wrapper[name]["init"]
        function = getattr(pnw, name) if isinstance(wrapper[name], str) else getattr(pnw, name).__init__
        assert parameters_of_function(function) == parameters_of(signature), name
    assert {"tr", "translate"} <= set(modules["slicer.i18n"])
    assert set(app.util_functions(app.DialogScript(), [])) <= set(modules["slicer.util"])


# ============================================================================ 3. the names the module uses
class Scan(ast.NodeVisitor):
    """Collects ``(kind, owner, name, detail)`` uses of Slicer/Qt/VTK names in one file, typing expressions lightly:
    ``mod:slicer.util``, ``cls:qMRMLNodeComboBox`` (also Qt classes), ``many:A,B`` (a loop over widgets),
    ``modules``/``module:plots``/``logic:plots``, ``ui`` (``self.ui``), ``wrapper`` (a parameter node wrapper)."""

    def __init__(self, ui: dict[str, str], parameters: set[str]) -> None:
        self.ui, self.parameters, self.uses = ui, parameters, []
        self.env: dict[str, str] = {}  # names in the current function
        self.classes: dict[str, dict[str, str]] = {}  # class -> its self attributes
        self.self_attrs: dict[str, str] = {}
        self.foreign: set[str] = set()  # names of other imported modules (json, np, ...): not checked

    def visit_ClassDef(self, node: ast.ClassDef) -> None:  # noqa: N802
        bases = {ast.unparse(b) for b in node.bases}
        parent = {"ScriptedLoadableModule": "cls:qSlicerScriptedLoadableModule",
                  "ScriptedLoadableModuleWidget": "cls:qSlicerScriptedLoadableModuleWidget"}
        defaults = {"parent": parent[b] for b in bases if b in parent}
        if "ScriptedLoadableModuleWidget" in bases:
            defaults |= {"layout": "cls:QVBoxLayout", **{name: "wrapper" for name in WRAPPER_ATTRIBUTES}}
        outer, self.self_attrs = self.self_attrs, self.classes.setdefault(node.name, defaults)
        self.generic_visit(node)
        self.self_attrs = outer

    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:  # noqa: N802
        outer, self.env = self.env, dict(self.env)
        self.generic_visit(node)
        self.env = outer

    def kind(self, node: ast.AST) -> str | None:
        if isinstance(node, ast.Name):
            return f"mod:{node.id}" if node.id in ("slicer", "qt", "ctk", "vtk") else self.env.get(node.id)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            owner, name = self.kind(node.func.value), node.func.attr
            if owner and owner.startswith("cls:") and (owner[4:], name) in RETURNS:
                return f"cls:{RETURNS[(owner[4:], name)]}"
            if owner and owner.startswith("module:") and name == "logic":
                return f"logic:{owner[7:]}"
            if owner == "mod:slicer.util" and name == "loadUI":
                return f"cls:{self.ui.get('', '')}"
            return f"cls:{name}" if owner in ("mod:qt", "mod:ctk") else None
        if not isinstance(node, ast.Attribute):
            return None
        if isinstance(node.value, ast.Name) and node.value.id == "self":
            return "ui" if node.attr == "ui" else self.self_attrs.get(node.attr)
        owner = self.kind(node.value)
        if owner == "ui":
            return f"cls:{self.ui[node.attr]}" if node.attr in self.ui else None
        if owner == "mod:slicer":
            return {"util": "mod:slicer.util", "packaging": "mod:slicer.packaging", "app": "cls:qSlicerApplication",
                    "mrmlScene": "cls:vtkMRMLScene", "modules": "modules"}.get(node.attr, f"cls:{node.attr}")
        if owner == "modules":
            return f"module:{node.attr}"
        return f"cls:{node.attr}" if owner in ("mod:qt", "mod:ctk") else None

    def visit_Import(self, node: ast.Import) -> None:  # noqa: N802
        for alias in node.names:
            if alias.name.split(".")[0] not in ("slicer", "qt", "ctk", "vtk"):
                self.foreign.add((alias.asname or alias.name).split(".")[0])
            elif alias.name.startswith("slicer."):
                self.uses.append(("module", alias.name, "", None))

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:  # noqa: N802
        if node.module and node.module.split(".")[0] == "slicer":
            for alias in node.names:
                self.uses.append(("from", node.module, alias.name, None))
        else:
            self.foreign |= {alias.asname or alias.name for alias in node.names}

    def visit_Assign(self, node: ast.Assign) -> None:  # noqa: N802
        value, call = self.kind(node.value), node.value
        if isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute) and call.func.attr == "import_module" \
                and call.args and isinstance(call.args[0], ast.Constant) and str(call.args[0].value).startswith("slicer"):
            value = f"mod:{call.args[0].value}"
            self.uses.append(("module", call.args[0].value, "", None))
        for target in node.targets:
            if isinstance(target, ast.Attribute) and isinstance(target.value, ast.Name) and target.value.id == "self":
                if value:
                    self.self_attrs[target.attr] = value
            elif not (isinstance(node.value, ast.Constant) and node.value.value is None):  # None keeps the type
                self._bind(target, value)
        self.generic_visit(node)

    def _bind(self, target: ast.AST, value: str | None) -> None:
        """Names assigned something the scan cannot type lose their type (no leaking between uses)."""
        for name in (n.id for n in ast.walk(target) if isinstance(n, ast.Name)):
            if value and isinstance(target, ast.Name):
                self.env[name] = value
            else:
                self.env.pop(name, None)

    def visit_For(self, node: ast.For) -> None:  # noqa: N802
        kinds = {self.kind(e) for e in node.iter.elts} if isinstance(node.iter, (ast.Tuple, ast.List)) else {None}
        typed = all(k and k.startswith("cls:") for k in kinds)
        self._bind(node.target, "many:" + ",".join(sorted(str(k)[4:] for k in kinds)) if typed else None)
        self.generic_visit(node)

    def visit_Call(self, node: ast.Call) -> None:  # noqa: N802
        if isinstance(node.func, ast.Attribute):
            owner = self.kind(node.func.value)
            if node.func.attr in ("connect", "disconnect") and node.args and isinstance(node.args[0], ast.Constant) \
                    and isinstance(node.args[0].value, str):
                self.uses.append(("signal", owner, node.args[0].value, node.lineno))
            elif owner is not None and owner != "wrapper":
                self.uses.append(("call", owner, node.func.attr, tuple(k.arg for k in node.keywords if k.arg)))
        self.generic_visit(node)

    def visit_Attribute(self, node: ast.Attribute) -> None:  # noqa: N802
        root = node
        while isinstance(root, ast.Attribute):
            root = root.value
        owner = self.kind(node.value)
        if owner is not None:
            self.uses.append(("attr", owner, node.attr, tuple(sorted(self.parameters)) if owner == "wrapper" else None))
        elif not (isinstance(root, ast.Name) and root.id in self.foreign) and node.attr[:1].isupper() \
                and len(node.attr) > 2 and not node.attr.isupper():
            self.uses.append(("attr", None, node.attr, None))
        self.generic_visit(node)


def ui_classes() -> dict[str, str]:
    """Widget name -> class in the .ui ("" -> the root widget's class)."""
    import xml.etree.ElementTree as ET

    root = ET.parse(UI_FILE).getroot().find("widget")
    assert root is not None
    return {"": root.get("class", ""), **{w.get("name", ""): w.get("class", "") for w in root.iter("widget")}}


def wrapper_parameters(tree: ast.AST) -> set[str]:
    """The parameter names of the @parameterNodeWrapper classes in a file."""
    return {t.target.id for c in ast.walk(tree) if isinstance(c, ast.ClassDef)
            and any("parameterNodeWrapper" in ast.unparse(d) for d in c.decorator_list)
            for t in c.body if isinstance(t, ast.AnnAssign) and isinstance(t.target, ast.Name)}


def pyside(name: str) -> type | None:
    return next((getattr(m, name) for m in _QT_MODULES if hasattr(m, name)), None)


def vtk_names() -> set[str]:
    from vtkmodules import vtkCommonCore, vtkCommonDataModel, vtkCommonMath

    return {n for m in (vtkCommonCore, vtkCommonDataModel, vtkCommonMath) for c in vars(m).values()
            if isinstance(c, type) for n in dir(c)}


def check_use(api: dict[str, Any], version: str, use: tuple[Any, ...], everywhere: set[str]) -> str | None:
    """None when the use resolves in ``version``, else the dotted name that does not."""
    kind, owner, name, detail = use
    modules = api["versions"][version]["python_modules"]
    classes = api["versions"][version]["classes"]
    if kind == "module":
        return None if owner in modules or owner == "slicer.util" else owner
    if kind == "from":
        if owner == "slicer":
            return None if name in classes else f"slicer.{name}"
        return None if owner in modules and name in modules[owner] else f"{owner}.{name}"
    if owner is None:  # a VTK-style name on something the scan cannot type: some MRML class or VTK core has it
        return None if name in everywhere else f"?.{name}"
    call = kind == "call"
    if owner == "ui":
        return None if name in ui_classes() else f"self.ui.{name} (no such widget in the .ui)"
    if owner == "wrapper":
        wrapped = api["versions"][version]["parameterNodeWrapper"]["wrapped_class_members"]
        return None if name in wrapped or name in detail else f"parameter node wrapper .{name}"
    if owner == "mod:slicer":
        known = {"util", "app", "mrmlScene", "modules"} | {m.removeprefix("slicer.") for m in modules} | set(classes)
        return None if name in known else f"slicer.{name}"
    if owner == "mod:ctk":
        return None if name in classes else f"ctk.{name}"
    if owner.startswith("mod:slicer."):
        module = owner[4:]
        if module not in modules:
            return module
        signature = modules[module].get(name)
        if signature is None or not isinstance(signature, str):
            return None if signature is not None else f"{module}.{name}"
        keywords = detail if call else ()
        unknown = [k for k in keywords if "**" not in signature and not re.search(rf"\b{k}\b", signature)]
        return f"{module}.{name}({', '.join(unknown)}=)" if unknown else None
    if owner == "mod:qt":
        return None if pyside(name) is not None else f"qt.{name}"
    if owner == "mod:vtk":
        return None if hasattr(vtk, name) else f"vtk.{name}"
    if owner == "modules":
        known = api["versions"][version]["slicer_modules"]
        return None if name in known["loadable"] or name in known["scripted"] else f"slicer.modules.{name}"
    if owner.startswith("module:"):
        return None if resolves(api, version, "qSlicerAbstractCoreModule", name, call) else f"module.{name}"
    if owner.startswith("logic:"):
        logic = api["versions"][version]["slicer_modules"]["loadable"][owner[6:]]["logic_class"]
        return None if resolves(api, version, logic, name, call) else f"{logic}.{name}"
    owners = owner[5:].split(",") if owner.startswith("many:") else [owner[4:]]
    for cls in owners:
        problem = check_on_class(api, version, cls, kind, name, call)
        if problem:
            return problem
    return None


def check_on_class(api: dict[str, Any], version: str, cls: str, kind: str, name: str, call: bool) -> str | None:
    classes = api["versions"][version]["classes"]
    qt = pyside(cls)
    if kind == "signal":
        signature = QtCore.QMetaObject.normalizedSignature(name).data().decode()
        if cls in classes and signature in members(api, version, cls)["signals"]:
            return None
        base = pyside(qt_base(api, version, cls) or "") if cls in classes else qt
        meta = base.staticMetaObject if base is not None else None
        ok = meta is not None and meta.indexOfSignal(signature) >= 0
        return None if ok else f"{cls}.connect({name!r})"
    if cls in classes:
        if resolves(api, version, cls, name, call):
            return None
        base = pyside(qt_base(api, version, cls) or "")
        if base is not None and hasattr(base, name):
            return None
        vtk_base = [b for e in chain(api, version, cls) for b in e["bases"] if b.startswith("vtk") and hasattr(vtk, b)]
        return None if any(hasattr(getattr(vtk, b), name) for b in vtk_base) else f"{cls}.{name}"
    if qt is not None:
        if not hasattr(qt, name):
            return f"{cls}.{name}"
        meta = getattr(qt, "staticMetaObject", None)
        if call and meta is not None and meta.indexOfProperty(name) >= 0:
            return f"{cls}.{name}() (PythonQt returns the property value for .{name}; read it without calling)"
        return None
    return f"{cls} (not a Slicer/CTK/MRML class of this version, nor a Qt class)"


@pytest.fixture(scope="module")
def module_uses() -> list[tuple[str, tuple[Any, ...]]]:
    return collect_uses()


def collect_uses() -> list[tuple[str, tuple[Any, ...]]]:
    """(file name, use) for every use the scan finds in the scanned files."""
    ui, uses = ui_classes(), []
    for path in SCANNED:
        tree = ast.parse(path.read_text(encoding="utf-8"))
        scan = Scan(ui, wrapper_parameters(tree))
        scan.visit(tree)  # first pass: what names and self attributes hold
        scan.uses.clear()
        scan.visit(tree)
        uses += [(path.name, use) for use in scan.uses]
    return uses


def guarded_name(use: tuple[Any, ...]) -> str:
    kind, owner, name, _ = use
    return str(owner) if kind == "module" else f"{str(owner).removeprefix('mod:')}.{name}"


@pytest.mark.parametrize("version", VERSIONS)
def test_every_slicer_name_the_module_uses_resolves(api: dict[str, Any], module_uses: list[Any], version: str) -> None:
    everywhere = {n for e in api["versions"][version]["classes"].values()
                  for n in [*e.get("methods", []), *(k for v in e.get("enums", {}).values() for k in v)]} | vtk_names()
    missing = set()
    for path, use in module_uses:
        problem = check_use(api, version, use, everywhere)
        if problem and not (guarded_name(use) in GUARDED and version not in GUARDED[guarded_name(use)]):
            missing.add(f"{path}: {problem}")
    assert not missing, f"names that do not resolve in Slicer {version}: {sorted(missing)}"


def test_guarded_names_exist_exactly_where_claimed(api: dict[str, Any]) -> None:
    for name, versions in GUARDED.items():
        module, _, member = name.rpartition(".") if name.count(".") > 1 else (name, "", "")
        have = {v for v in api["versions"] if module in api["versions"][v]["python_modules"]
                and (not member or member in api["versions"][v]["python_modules"][module])}
        assert have & set(VERSIONS) == versions, f"{name}: exists in {sorted(have)}, claimed {sorted(versions)}"


def test_the_scan_sees_the_module(module_uses: list[Any]) -> None:
    """Guards the scanner itself: it must find the uses it is meant to check."""
    found = {(path, kind, str(owner), name) for path, (kind, owner, name, _) in module_uses}
    assert ("MedAnalysis.py", "signal", "cls:QTimer", "timeout()") in found
    assert ("MedAnalysis.py", "call", "mod:slicer.util", "loadUI") in found
    assert any(k == "signal" and o.startswith("many:") for _, k, o, _ in found)
    assert ("installer.py", "call", "mod:slicer.packaging", "pip_install") in found


def test_the_checker_rejects_wrong_uses(api: dict[str, Any]) -> None:
    """Guards the checker itself: each wrong use below must be reported."""
    source = '''
import slicer


class SomeWidget(ScriptedLoadableModuleWidget):
    def setup(self):
        self.ui.applyButton.connect("clicked(int)", self.setup)
        self.ui.bundlePathLineEdit.setFilters(1)
        self.ui.bundlePathLineEdit.currentPath()
        self.ui.statusLabel.text()
        self.ui.noSuchWidget.show()
        slicer.util.setSliceViewerLayers(labelmap=None)
        slicer.app.layoutManager().setLayouts(3)
        slicer.modules.nosuchmodule.logic()
        self._parameterNode.noSuchParameter
'''
    tree = ast.parse(source)
    scan = Scan(ui_classes(), {"bundlePath"})
    scan.visit(tree)
    everywhere = vtk_names()
    problems = {check_use(api, "main", use, everywhere) for use in scan.uses} - {None}
    expected = ["QPushButton.connect('clicked(int)')", "ctkPathLineEdit.setFilters", "ctkPathLineEdit.currentPath",
                "QLabel.text() (PythonQt", "self.ui.noSuchWidget", "slicer.util.setSliceViewerLayers(labelmap=)",
                "qSlicerLayoutManager.setLayouts", "slicer.modules.nosuchmodule", "parameter node wrapper .noSuch"]
    for text in expected:
        assert any(p.startswith(text) for p in problems), f"not reported: {text}; reported: {sorted(problems)}"
