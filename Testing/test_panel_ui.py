"""The panel file agrees with the code: every ``self.ui.X`` exists with the right class, every signal and method the
code uses exists on that class, and every parameter-node binding names a real parameter of a supported type.

Qt classes are checked against PySide6's real meta-objects; Slicer/CTK classes (not installable here) against the
signals and methods declared in their public headers (listed below with the header they come from).
"""

from __future__ import annotations

import ast
import re
import typing
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from PySide6 import QtWidgets

PROJECT_ROOT = Path(__file__).resolve().parents[1]
UI_FILE = PROJECT_ROOT / "MedAnalysis" / "Resources" / "UI" / "MedAnalysis.ui"
MODULE_FILE = PROJECT_ROOT / "MedAnalysis" / "MedAnalysis.py"

#: Signals and Python-callable methods (public slots and Q_INVOKABLE; property accessors are C++-only and reached as
#: attributes in PythonQt) of the Slicer/CTK widgets the panel uses, as the Slicer 5.10 API manifest lists them
#: (Testing/test_slicer_gui_manifest.py checks the module against the manifest of every supported version).
CUSTOM_CLASSES: dict[str, dict[str, set[str]]] = {
    "ctkCollapsibleButton": {"signals": {"contentsCollapsed(bool)"}, "methods": set()},
    "ctkPathLineEdit": {"signals": {"currentPathChanged(QString)", "validInputChanged(bool)"},
                        "methods": {"setCurrentPath", "browse", "addCurrentPathToHistory", "retrieveHistory",
                                    "comboBox"}},
    "qMRMLWidget": {"signals": {"mrmlSceneChanged(vtkMRMLScene*)"}, "methods": {"setMRMLScene", "mrmlScene"}},
    "qMRMLNodeComboBox": {"signals": {"currentNodeChanged(vtkMRMLNode*)", "currentNodeChanged(bool)",
                                      "currentNodeIDChanged(QString)", "nodeActivated(vtkMRMLNode*)",
                                      "nodeAdded(vtkMRMLNode*)", "nodeAddedByUser(vtkMRMLNode*)",
                                      "nodeAboutToBeRemoved(vtkMRMLNode*)"},
                          "methods": {"currentNode", "setCurrentNode", "setCurrentNodeID", "setMRMLScene",
                                      "mrmlScene", "nodeCount", "nodeFromIndex", "addNode", "removeCurrentNode"}},
    "qMRMLPlotWidget": {"signals": set(), "methods": {"setMRMLPlotViewNode", "mrmlPlotViewNode",
                                                      "setMRMLAbstractViewNode"}},
}

#: Exact widget classes ``parameterNodeWrapper.connectGui`` binds for each parameter type (the GuiConnector classes
#: of Slicer's Base/Python/slicer/parameterNodeWrapper/guiConnectors.py match ``type(widget) ==`` these).
#: A QComboBox needs a ``Choice`` annotation; ctkPathLineEdit binds only pathlib paths.
BINDABLE = {
    "str": {"QComboBox", "QLineEdit", "QTextEdit"},
    "bool": {"QCheckBox", "QPushButton", "QComboBox"},
    "int": {"QSpinBox", "QSlider", "QComboBox"},
    "float": {"QDoubleSpinBox", "ctkSliderWidget", "QComboBox"},
    "path": {"ctkPathLineEdit", "ctkDirectoryButton"},
    "node": {"qMRMLNodeComboBox"},
}

#: Widget name suffix -> the class the code expects (the code calls methods of that class on it).
SUFFIX_CLASSES = [
    ("CollapsibleButton", {"ctkCollapsibleButton"}), ("Button", {"QPushButton"}), ("Selector", {"qMRMLNodeComboBox"}),
    ("PathLineEdit", {"ctkPathLineEdit"}), ("LineEdit", {"QLineEdit"}), ("ComboBox", {"QComboBox"}), ("CheckBox", {"QCheckBox"}),
    ("ProgressBar", {"QProgressBar"}), ("TableWidget", {"QTableWidget"}), ("SpinBox", {"QSpinBox", "QDoubleSpinBox"}),
    ("PlotWidget", {"qMRMLPlotWidget"}), ("ListWidget", {"QListWidget"}), ("Label", {"QLabel"}),
]


def load_ui() -> tuple[dict[str, str], dict[str, str], ET.Element]:
    """(widget name -> class, custom class -> Qt base class, root) of the .ui file."""
    root = ET.parse(UI_FILE).getroot()
    widgets = {w.get("name"): w.get("class") for w in root.iter("widget")}
    extends = {c.findtext("class"): c.findtext("extends") for c in root.iter("customwidget")}
    return widgets, extends, root


def qt_class(name: str, extends: dict[str, str]) -> type:
    while not hasattr(QtWidgets, name):
        name = extends[name]
    return getattr(QtWidgets, name)


def qt_signals(cls: type) -> set[str]:
    meta = cls.staticMetaObject
    found = set()
    for index in range(meta.methodCount()):
        method = meta.method(index)
        if method.methodType() == method.MethodType.Signal:
            found.add(bytes(method.methodSignature()).decode())
    return found


def class_signals(name: str, extends: dict[str, str]) -> set[str]:
    signals = set(CUSTOM_CLASSES.get(name, {}).get("signals", set()))
    current = name
    while current in extends:
        current = extends[current]
        signals |= CUSTOM_CLASSES.get(current, {}).get("signals", set())
    return signals | qt_signals(qt_class(name, extends))


def class_has_method(name: str, method: str, extends: dict[str, str]) -> bool:
    current = name
    while current in CUSTOM_CLASSES or current in extends:
        if method in CUSTOM_CLASSES.get(current, {}).get("methods", set()):
            return True
        if current not in extends:
            break
        current = extends[current]
    return hasattr(qt_class(name, extends), method)


class UiUse(ast.NodeVisitor):
    """Collects ``self.ui.X`` names, ``self.ui.X.method(...)`` calls and ``.connect("signal", ...)`` pairs."""

    def __init__(self) -> None:
        self.names: set[str] = set()
        self.prefixes: set[str] = set()
        self.calls: set[tuple[str, str]] = set()
        self.connections: set[tuple[str, str]] = set()
        self.aliases: dict[str, set[str]] = {}

    @staticmethod
    def _ui_name(node: ast.AST) -> str | None:
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute) and node.value.attr == "ui"
                and isinstance(node.value.value, ast.Name) and node.value.value.id == "self"):
            return node.attr
        return None

    def visit_Attribute(self, node: ast.Attribute) -> None:
        name = self._ui_name(node)
        if name:
            self.names.add(name)
        self.generic_visit(node)

    def visit_Call(self, node: ast.Call) -> None:
        func = node.func
        # getattr(self.ui, f"inputVolumeSelector{index}")
        if (isinstance(func, ast.Name) and func.id == "getattr" and len(node.args) >= 2
                and isinstance(node.args[0], ast.Attribute) and node.args[0].attr == "ui"
                and isinstance(node.args[1], ast.JoinedStr)):
            prefix = "".join(p.value for p in node.args[1].values if isinstance(p, ast.Constant))
            self.prefixes.add(prefix)
        if isinstance(func, ast.Attribute):
            owner = self._ui_name(func.value)
            if owner is None and isinstance(func.value, ast.Call):
                inner = func.value
                if (isinstance(inner.func, ast.Name) and inner.func.id == "getattr" and len(inner.args) >= 2
                        and isinstance(inner.args[1], ast.JoinedStr)):
                    prefix = "".join(p.value for p in inner.args[1].values if isinstance(p, ast.Constant))
                    owner = f"{prefix}*"
            if owner:
                self.calls.add((owner, func.attr))
                if func.attr == "connect" and node.args and isinstance(node.args[0], ast.Constant):
                    self.connections.add((owner, node.args[0].value))
        self.generic_visit(node)

    def visit_For(self, node: ast.For) -> None:
        # for selector in (self.ui.a, self.ui.b): selector.connect("sig", ...)
        if isinstance(node.target, ast.Name) and isinstance(node.iter, (ast.Tuple, ast.List)):
            members = {self._ui_name(e) for e in node.iter.elts} - {None}
            if members:
                self.aliases[node.target.id] = members  # type: ignore[assignment]
                for stmt in ast.walk(node):
                    if (isinstance(stmt, ast.Call) and isinstance(stmt.func, ast.Attribute)
                            and isinstance(stmt.func.value, ast.Name) and stmt.func.value.id == node.target.id):
                        for member in members:
                            self.calls.add((member, stmt.func.attr))
                            if stmt.func.attr == "connect" and isinstance(stmt.args[0], ast.Constant):
                                self.connections.add((member, stmt.args[0].value))
        self.generic_visit(node)


@pytest.fixture(scope="module")
def ui():
    return load_ui()


@pytest.fixture(scope="module")
def uses():
    visitor = UiUse()
    visitor.visit(ast.parse(MODULE_FILE.read_text(encoding="utf-8")))
    return visitor


def expand(owner: str, widgets: dict[str, str]) -> list[str]:
    if owner.endswith("*"):
        matches = [name for name in widgets if re.fullmatch(re.escape(owner[:-1]) + r"\d+", name)]
        assert matches, f"expected widgets named {owner[:-1]}0, 1, ... in the .ui file, found none"
        return matches
    return [owner]


def test_every_widget_the_code_reaches_exists_with_the_expected_class(ui, uses):
    widgets, _, _ = ui
    assert len(uses.names) >= 30  # the visitor really found the panel's widgets
    missing = sorted(name for name in uses.names if name not in widgets)
    assert not missing, f"self.ui names missing from MedAnalysis.ui: {missing}"
    for prefix in uses.prefixes:
        assert [n for n in widgets if n.startswith(prefix)], f"no widget named {prefix}N in the .ui file"
    for name in sorted(uses.names | {n for n in widgets if n}):
        if name not in widgets:
            continue
        for suffix, classes in SUFFIX_CLASSES:
            if name.endswith(suffix):
                assert widgets[name] in classes, f"expected {name} to be a {classes}, got {widgets[name]}"
                break


def test_every_connected_signal_exists_on_its_widget_class(ui, uses):
    widgets, extends, _ = ui
    assert len(uses.connections) >= 12
    for owner, signal in sorted(uses.connections):
        for name in expand(owner, widgets):
            signals = class_signals(widgets[name], extends)
            assert signal in signals, f"{name} ({widgets[name]}) has no signal {signal}; it has {sorted(signals)}"


def test_every_method_the_code_calls_exists_on_its_widget_class(ui, uses):
    widgets, extends, _ = ui
    for owner, method in sorted(uses.calls):
        for name in expand(owner, widgets):
            assert class_has_method(widgets[name], method, extends), \
                f"{name} ({widgets[name]}) has no method {method}()"


def test_designer_connections_use_real_signals_and_slots(ui):
    widgets, extends, root = ui
    connections = root.find("connections")
    assert connections is not None and len(connections) >= 8
    for connection in connections:
        sender, receiver = connection.findtext("sender"), connection.findtext("receiver")
        signal, slot = connection.findtext("signal"), connection.findtext("slot")
        assert signal in class_signals(widgets[sender], extends), f"{sender} has no signal {signal}"
        slot_name = slot.split("(")[0]
        assert class_has_method(widgets[receiver], slot_name, extends), f"{receiver} has no slot {slot}"


def parameter_annotations() -> dict[str, str]:
    """Parameter name -> 'str' | 'bool' | 'int' | 'float' | 'node' | 'list' from MedAnalysisParameterNode."""
    tree = ast.parse(MODULE_FILE.read_text(encoding="utf-8"))
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "MedAnalysisParameterNode")
    kinds = {}
    for stmt in cls.body:
        if isinstance(stmt, ast.AnnAssign):
            text = ast.unparse(stmt.annotation)
            base = re.sub(r"^Annotated\[(\w+),.*\]$", r"\1", text)
            kinds[stmt.target.id] = ("node" if base.startswith("vtkMRML") else "list" if base.startswith("list[")
                                     else "path" if base in ("pathlib.Path", "Path") else base)
    return kinds


def choices(name: str) -> list[str] | None:
    tree = ast.parse(MODULE_FILE.read_text(encoding="utf-8"))
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "MedAnalysisParameterNode")
    for stmt in cls.body:
        if isinstance(stmt, ast.AnnAssign) and stmt.target.id == name:
            for node in ast.walk(stmt.annotation):
                if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "Choice":
                    return [ast.literal_eval(e) for e in node.args[0].elts]
    return None


def test_parameter_bindings_name_real_parameters_of_bindable_types(ui):
    widgets, _, root = ui
    kinds = parameter_annotations()
    bound = {}
    for widget in root.iter("widget"):
        for prop in widget.findall("property"):
            if prop.get("name") == "SlicerParameterName":
                bound[prop.findtext("string")] = widget
    assert len(bound) >= 20
    for parameter, widget in bound.items():
        assert parameter in kinds, f"{widget.get('name')} binds unknown parameter {parameter!r}"
        assert widget.get("class") in BINDABLE[kinds[parameter]], \
            f"{widget.get('name')} ({widget.get('class')}) cannot hold a {kinds[parameter]} parameter"
        allowed = choices(parameter)
        if widget.get("class") == "QComboBox":  # the connector refills the items from Choice: keep them identical
            items = [item.findtext("property/string") for item in widget.findall("item")]
            assert allowed is not None, f"{parameter} is bound to a QComboBox without a Choice annotation"
            assert items == allowed, f"{widget.get('name')} items {items} differ from the parameter's choices {allowed}"
    unbound = {name for name, kind in kinds.items() if kind != "list"} - set(bound)
    assert not unbound, f"parameters without a widget: {sorted(unbound)}"


def test_annotations_are_types_parameter_node_wrapper_supports():
    kinds = parameter_annotations()
    assert set(kinds.values()) <= {"str", "bool", "int", "float", "path", "node", "list"}, kinds
    assert kinds["bundlePath"] == "path"
    assert typing.get_origin(typing.Annotated[int, 0]) is typing.Annotated  # the annotation form used
