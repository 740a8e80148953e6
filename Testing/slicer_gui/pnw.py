"""``slicer.parameterNodeWrapper`` look-alike: typed parameters stored in the real ``vtkMRMLScriptedModuleNode``.

Storage follows Slicer's serializers: numbers, strings and paths as ``str(value)``, bools as ``"True"``/``"False"``,
a node as the node reference of the parameter's name (with an empty parameter of that name), a list as ``<name>_len``
plus one entry per element (``<name>_0``, ``<name>_1``...; nodes as references of those names). Writes are validated
(``NotNone``/``IsInstance`` of the type, ``Choice``, ``WithinRange``) and grouped in one ModifiedEvent; lists read back
as an observed list that writes its changes through (``+`` is refused, as in Slicer). Values are read from the node
every time (Slicer caches them; the values are the same).

``connectGui`` binds each widget whose ``SlicerParameterName`` dynamic property names a parameter, both ways, with
the GUI connector Slicer would pick (:data:`CONNECTORS`, in Slicer's order): exact widget classes
(``type(widget) in widgets``) and Slicer's own ``canRepresent`` type test, evaluated from its text (the manifest test
compares both with Slicer's). No connector fits: ``RuntimeError``, as in Slicer. Not provided: tuples, dicts, unions
other than of nodes, enums, QColor, parameter packs, prefixes, ``Minimum``/``Maximum``/``Decimals``/``SingleStep``.
"""

from __future__ import annotations

import collections.abc
import logging
import pathlib
import sys
import types
import typing
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import slicer
import vtk
from PySide6 import QtWidgets

__all__ = ["parameterNodeWrapper", "Choice", "WithinRange", "Default"]

SlicerParameterNamePropertyName = "SlicerParameterName"


# ============================================================================ validators and defaults
class Validator:
    """Base of the validators (``Choice``, ``WithinRange``); ``validate`` raises on a bad value."""

    def validate(self, value: Any) -> None:
        raise NotImplementedError


class WithinRange(Validator):
    """The value lies in [minimum, maximum]."""

    def __init__(self, minimum: Any, maximum: Any) -> None:
        self.minimum, self.maximum = minimum, maximum

    def validate(self, value: Any) -> None:
        if not self.minimum <= value <= self.maximum:
            raise ValueError(f"Value must be within range [{self.minimum}, {self.maximum}], is {value}")


class Choice(Validator):
    """The value is one of ``choices``."""

    def __init__(self, choices: Iterable[Any]) -> None:
        self.choices = list(choices)

    def validate(self, value: Any) -> None:
        if value not in self.choices:
            raise ValueError(f"Value is {value}, but must be in one of the following: {self.choices}")


class Default:
    """A default value (or a generator of one) given as an annotation."""

    def __init__(self, value: Any = None, *, generator: Callable[[], Any] | None = None) -> None:
        self._value, self._generator = value, generator

    @property
    def value(self) -> Any:
        return self._generator() if self._generator is not None else self._value


def splitAnnotations(annotated: Any) -> tuple[Any, list[Any]]:  # noqa: N802 - Slicer's name
    """(the type, its ``Annotated`` extras)."""
    if typing.get_origin(annotated) is typing.Annotated:
        base, *extras = typing.get_args(annotated)
        return base, list(extras)
    return annotated, []


def unannotatedType(annotated: Any) -> Any:  # noqa: N802
    return splitAnnotations(annotated)[0]


def _node_types(annotated: Any) -> list[type] | None:
    """The node classes of a node type or a union of node types (None allowed in the union), else None."""
    type_ = unannotatedType(annotated)
    args = typing.get_args(type_) if typing.get_origin(type_) in (typing.Union, types.UnionType) else ()
    members = [a for a in args if a is not type(None)] if args else [type_]
    ok = all(isinstance(m, type) and issubclass(m, slicer.vtkMRMLNode) for m in members)
    return members if ok else None


def isNodeOrUnionOfNodes(annotated: Any) -> bool:  # noqa: N802
    return _node_types(annotated) is not None


# ============================================================================ serializers
class _Serializer:
    """Reads and writes one kind of value as the Slicer serializer ``name`` does; checks NotNone (except nodes),
    IsInstance of the type and the annotated validators before writing."""

    def __init__(self, name: str, type_: Any, validators: list[Validator]) -> None:
        self.name, self.type, self.validators = name, type_, validators

    def default(self) -> Any:
        if self.name == "PathSerializer":
            return self.type()
        return {"NumberSerializer": 0, "StringSerializer": "", "BoolSerializer": False}.get(self.name)

    def is_in(self, node: Any, name: str) -> bool:
        return bool(node.HasParameter(name))

    def validate(self, value: Any) -> None:
        if value is None and self.name != "NodeSerializer":
            raise ValueError("Value must not be None")
        allowed = (int, float) if self.type is float else self.type
        if value is not None and not isinstance(value, allowed):
            raise TypeError(f"Value must be of type '{allowed}', is type '{type(value)}' value '{value}'")
        for validator in self.validators:
            validator.validate(value)

    def write(self, node: Any, name: str, value: Any) -> None:
        self.validate(value)
        if self.name == "NodeSerializer":
            node.SetParameter(name, "")
            node.SetNodeReferenceID(name, value.GetID() if value is not None else None)
        else:
            node.SetParameter(name, ("True" if value else "False") if self.name == "BoolSerializer" else str(value))

    def read(self, node: Any, name: str) -> Any:
        if self.name == "NodeSerializer":
            return node.GetNodeReference(name)
        text = node.GetParameter(name)
        return text == "True" if self.name == "BoolSerializer" else self.type(text)

    def remove(self, node: Any, name: str) -> None:
        node.UnsetParameter(name)
        if self.name == "NodeSerializer":
            node.RemoveNodeReferenceIDs(name)


class _ListSerializer(_Serializer):
    def __init__(self, element: _Serializer) -> None:
        super().__init__("ListSerializer", list, [])
        self.element = element

    def default(self) -> list[Any]:
        return []

    def is_in(self, node: Any, name: str) -> bool:
        return bool(node.HasParameter(f"{name}_len"))

    def _len(self, node: Any, name: str) -> int:
        return int(node.GetParameter(f"{name}_len")) if self.is_in(node, name) else 0

    def write(self, node: Any, name: str, value: Any) -> None:
        values, old = list(value), self._len(node, name)
        for item in values:  # every element is checked before anything is written
            self.element.validate(item)
        with slicer.util.NodeModify(node):
            for index, item in enumerate(values):
                self.element.write(node, f"{name}_{index}", item)
            node.SetParameter(f"{name}_len", str(len(values)))
            for index in range(len(values), old):
                self.element.remove(node, f"{name}_{index}")

    def read(self, node: Any, name: str) -> ObservedList:
        return ObservedList(node, self, name,
                            [self.element.read(node, f"{name}_{i}") for i in range(self._len(node, name))])

    def remove(self, node: Any, name: str) -> None:
        with slicer.util.NodeModify(node):
            for index in range(self._len(node, name)):
                self.element.remove(node, f"{name}_{index}")
            node.UnsetParameter(f"{name}_len")


class ObservedList(collections.abc.MutableSequence):
    """A list parameter's value: changes are written back to the parameter node; ``+`` is refused as in Slicer."""

    def __init__(self, node: Any, serializer: _ListSerializer, name: str, values: list[Any]) -> None:
        self._node, self._serializer, self._name, self._list = node, serializer, name, values

    def _changed(self, result: Any = None) -> Any:
        self._serializer.write(self._node, self._name, self._list)
        return result

    def __getitem__(self, index: Any) -> Any:
        return self._list[index]

    def __setitem__(self, index: Any, value: Any) -> None:
        self._changed(self._list.__setitem__(index, value))

    def __delitem__(self, index: Any) -> None:
        self._changed(self._list.__delitem__(index))

    def __len__(self) -> int:
        return len(self._list)

    def insert(self, index: int, value: Any) -> None:
        self._changed(self._list.insert(index, value))

    def __eq__(self, other: object) -> bool:
        return self._list == (other._list if isinstance(other, ObservedList) else other)

    def __add__(self, other: Any) -> Any:
        raise NotImplementedError("Adding an ObservedList is not supported. However, += is supported.")

    __radd__ = __add__


#: (Slicer serializer, its ``canSerialize`` body as in Slicer, evaluated here), in Slicer's registration order.
SERIALIZERS: tuple[tuple[str, str], ...] = (
    ("NumberSerializer", "return type_ in (int, float)"),
    ("StringSerializer", "return type_ == str"),
    ("PathSerializer", "return type_ in (pathlib.Path, pathlib.PosixPath, pathlib.WindowsPath, pathlib.PurePath, "
                       "pathlib.PurePosixPath, pathlib.PureWindowsPath)"),
    ("BoolSerializer", "return type_ == bool"),
    ("NodeSerializer", "return issubclass(type_, slicer.vtkMRMLNode) if isinstance(type_, type) else False"),
    ("ListSerializer", "return typing.get_origin(type_) == list or type_ == list"),
)


def serializer_name(annotated: Any) -> str | None:
    """The Slicer serializer this layer uses for a (possibly annotated) type, or None."""
    namespace = {"type_": unannotatedType(annotated), "pathlib": pathlib, "slicer": slicer, "typing": typing}
    return next((name for name, test in SERIALIZERS if eval(test.removeprefix("return "), namespace)), None)


def create_serializer(annotated: Any) -> _Serializer:
    """The validated serializer for a (possibly annotated) type; raises like Slicer when none fits."""
    type_, annotations = splitAnnotations(annotated)
    validators = [a for a in annotations if isinstance(a, Validator)]
    name = serializer_name(type_)
    if name is None:
        raise Exception(f"Unable to create serializer for type: {type_}")  # noqa: TRY002 - Slicer's exception
    if name == "ListSerializer":
        return _ListSerializer(create_serializer(typing.get_args(type_)[0]))
    return _Serializer(name, type_, validators)


# ============================================================================ GUI connectors
@dataclass(frozen=True)
class Connector:
    """One of Slicer's GUI connectors: exact widget classes, Slicer's own type test (``can_represent`` evaluates it;
    the manifest test finds it in Slicer's ``canRepresent``), the widget's change signal, how to read and write."""

    name: str
    widgets: tuple[str, ...]
    can_represent_text: str
    signal: str
    read: Callable[[Any, Any], Any]
    write: Callable[[Any, Any], None]
    prepare: Callable[[Any, Any, list[Any]], None] = lambda widget, type_, annotations: None

    def can_represent(self, widget: Any, datatype: Any) -> bool:
        namespace = {"unannotatedType": unannotatedType, "isNodeOrUnionOfNodes": isNodeOrUnionOfNodes,
                     "pathlib": pathlib, "datatype": datatype}
        return type(widget) in _widget_classes(self.widgets) and bool(eval(self.can_represent_text, namespace))


class Binding:
    """A widget bound to a parameter by a :class:`Connector`."""

    def __init__(self, connector: Connector, widget: Any, datatype: Any) -> None:
        self.connector, self.widget, self._callback = connector, widget, None
        self.type, annotations = splitAnnotations(datatype)
        connector.prepare(widget, self.type, annotations)

    def on_changed(self, callback: Callable[[], None] | None) -> None:
        signal = getattr(self.widget, self.connector.signal) if self.connector.signal else None
        if signal is not None and self._callback is not None:
            signal.disconnect(self._changed)
        self._callback = callback
        if signal is not None and callback is not None:
            signal.connect(self._changed)

    def _changed(self, *args: Any) -> None:
        if self._callback is not None:
            self._callback()

    def read(self) -> Any:
        return self.connector.read(self.widget, self.type)

    def write(self, value: Any) -> None:
        self.connector.write(self.widget, value)


def _bounds(annotations: list[Any]) -> tuple[Any, Any]:
    within = next((a for a in annotations if isinstance(a, WithinRange)), None)
    return (within.minimum, within.maximum) if within else (None, None)


def _prepare_int(widget: Any, type_: Any, annotations: list[Any]) -> None:
    low, high = _bounds(annotations)
    if isinstance(widget, QtWidgets.QSlider) and low is None:
        raise RuntimeError("Cannot connect a QSlider to an unbounded int parameter (add WithinRange).")
    widget.setRange(-2**31 if low is None else low, 2**31 - 1 if high is None else high)


def _prepare_float(widget: Any, type_: Any, annotations: list[Any]) -> None:
    low, high = _bounds(annotations)
    widget.setMinimum(float("-inf") if low is None else low)
    widget.setMaximum(float("inf") if high is None else high)


def _prepare_choices(widget: Any, type_: Any, annotations: list[Any]) -> None:
    choice = next((a for a in annotations if isinstance(a, Choice)), None)
    if choice is None:
        raise RuntimeError("ComboBoxToStringableConnector requires the Choice annotation to be used.")
    widget.clear()
    widget.addItems([str(c) for c in choice.choices])
    widget.setProperty("_slicer_gui_choices", choice.choices)


def _write_choice(widget: Any, value: Any) -> None:
    choices = widget.property("_slicer_gui_choices")
    if value not in choices:
        raise ValueError(f"Unable to find value {value} in choices {choices}")
    widget.setCurrentIndex(choices.index(value))


def _prepare_push_button(widget: Any, type_: Any, annotations: list[Any]) -> None:
    if not widget.isCheckable():
        logging.warning(f"Making push button checkable for conversion to bool: button {widget}")
        widget.setCheckable(True)


_BOOL, _STR = "unannotatedType(datatype) == bool", "unannotatedType(datatype) == str"
_PATHS = ("unannotatedType(datatype) in (pathlib.Path, pathlib.PosixPath, pathlib.WindowsPath, pathlib.PurePath, "
          "pathlib.PurePosixPath, pathlib.PureWindowsPath)")
#: The connectors this layer provides, in Slicer's registration order (widget lists as in Slicer).
CONNECTORS: tuple[Connector, ...] = (
    Connector("QCheckBoxToBoolConnector", ("QCheckBox", "ctkCheckBox"), _BOOL, "toggled",
              lambda w, t: w.isChecked(), lambda w, v: w.setChecked(bool(v))),
    Connector("QCheckablePushButtonToBoolConnector", ("QPushButton",), _BOOL, "toggled",
              lambda w, t: w.isChecked(), lambda w, v: w.setChecked(bool(v)), _prepare_push_button),
    Connector("QSliderOrSpinBoxToIntConnector", ("QSlider", "QSpinBox"), "unannotatedType(datatype) == int",
              "valueChanged", lambda w, t: int(w.value()), lambda w, v: w.setValue(v), _prepare_int),
    Connector("QDoubleSpinBoxCtkSliderWidgetToFloatIntConnector",
              ("QDoubleSpinBox", "ctkDoubleSlider", "ctkDoubleSpinBox", "ctkSliderWidget", "qMRMLSliderWidget",
               "qMRMLSpinBox"), "unannotatedType(datatype) in (float, int)", "valueChanged",
              lambda w, t: t(w.value()), lambda w, v: w.setValue(v), _prepare_float),
    Connector("QComboBoxToStringableConnector", ("QComboBox", "ctkComboBox"),
              "unannotatedType(datatype) in (int, float, str, bool)", "currentIndexChanged",
              lambda w, t: w.property("_slicer_gui_choices")[w.currentIndex()], _write_choice, _prepare_choices),
    Connector("QLineEditToStrConnector", ("QLineEdit",), _STR, "textChanged",
              lambda w, t: w.text(), lambda w, v: w.setText(v)),
    Connector("QLabelToStrConnector", ("QLabel",), _STR, "", lambda w, t: w.text(), lambda w, v: w.setText(v)),
    Connector("QTextEditPlainTextToStrConnector", ("QTextEdit",), _STR, "textChanged",
              lambda w, t: w.toPlainText(), lambda w, v: w.setPlainText(v)),
    Connector("ctkPathLineEditToPathConnector", ("ctkPathLineEdit",), _PATHS, "currentPathChanged",
              lambda w, t: t(w.currentPath), lambda w, v: setattr(w, "currentPath", str(v))),
    Connector("qMRMLNodeComboBoxToNodeConnector", ("qMRMLNodeComboBox",), "isNodeOrUnionOfNodes(datatype)",
              "currentNodeChanged", lambda w, t: w.currentNode(), lambda w, v: w.setCurrentNode(v),
              lambda w, t, a: setattr(w, "nodeTypes", [c.__name__ for c in _node_types(t) or []])),
)


def _widget_classes(names: Iterable[str]) -> set[type]:
    """The layer's classes for these names (qt compat classes, ``ctk`` and ``slicer`` look-alikes)."""
    qt, ctk = sys.modules.get("qt"), sys.modules.get("ctk")
    found = [getattr(qt, "COMPAT_CLASSES", {}).get(n) if n.startswith("Q") else
             getattr(ctk if n.startswith("ctk") else slicer, n, None) for n in names]
    return {c for c in found if isinstance(c, type)}


def createGuiConnector(widget: Any, datatype: Any) -> Binding:  # noqa: N802 - Slicer's name
    for connector in CONNECTORS:
        if connector.can_represent(widget, datatype):
            return Binding(connector, widget, datatype)
    raise RuntimeError(f"Unable to create GUI connector from datatype '{datatype}' to widget type '{type(widget)}'")


# ============================================================================ the wrapper
class _Parameter:
    def __init__(self, name: str, serializer: _Serializer, default: Any, annotated: Any) -> None:
        self.name, self.serializer, self.default, self.unalteredType = name, serializer, default, annotated


def _init(self: Any, parameterNode: Any, prefix: str | None = None) -> None:  # noqa: N803
    if prefix:
        raise NotImplementedError("parameterNodeWrapper prefixes are not provided by the test layer")
    self.parameterNode = parameterNode
    self._parameterGUIs, self._nextParameterGUIsTag, self._updatingGUIFromParameterNode = {}, 0, False
    with slicer.util.NodeModify(parameterNode):
        for parameter in self.allParameters.values():
            if not parameter.serializer.is_in(parameterNode, parameter.name):
                parameter.serializer.write(parameterNode, parameter.name, parameter.default.value)


def _parameter(self: Any, name: str) -> _Parameter:
    if name not in self.allParameters:
        raise ValueError(f"Cannot find a param with the given name: {name}\n  Found parameters ["
                         + "".join(f"\n    {n}," for n in self.allParameters) + "\n  ]")
    return self.allParameters[name]


def _getValue(self: Any, name: str) -> Any:  # noqa: N802
    parameter = _parameter(self, name)
    if not parameter.serializer.is_in(self.parameterNode, name):
        parameter.serializer.write(self.parameterNode, name, parameter.default.value)
    return parameter.serializer.read(self.parameterNode, name)


def _setValue(self: Any, name: str, value: Any) -> None:  # noqa: N802
    with slicer.util.NodeModify(self.parameterNode):
        _parameter(self, name).serializer.write(self.parameterNode, name, value)


def _updateGUIFromParameterNode(self: Any) -> None:  # noqa: N802
    if self._updatingGUIFromParameterNode:
        return
    self._updatingGUIFromParameterNode = True
    try:
        with slicer.util.NodeModify(self):
            for mapping in list(self._parameterGUIs.values()):
                for name, connector in mapping.items():
                    connector.write(self.getValue(name))
    finally:
        self._updatingGUIFromParameterNode = False


def _connectParametersToGui(self: Any, mapping: dict[str, Any]) -> int:  # noqa: N802
    for name in mapping:
        _parameter(self, name)
    connectors = {name: value if isinstance(value, Binding) else
                  createGuiConnector(value, self.allParameters[name].unalteredType) for name, value in mapping.items()}
    tag, self._nextParameterGUIsTag = self._nextParameterGUIsTag, self._nextParameterGUIsTag + 1
    self._parameterGUIs[tag] = connectors
    for name, connector in connectors.items():
        connector.write(self.getValue(name))

        def changed(name: str = name, connector: Binding = connector) -> None:
            with slicer.util.NodeModify(self):
                if not self._updatingGUIFromParameterNode:
                    self.setValue(name, connector.read())

        connector.on_changed(changed)
    self.AddObserver(vtk.vtkCommand.ModifiedEvent, lambda caller, event: _updateGUIFromParameterNode(self))
    return tag


def _connectGui(self: Any, gui: Any) -> int:  # noqa: N802
    widgets = (gui.findChildren(QtWidgets.QWidget) if getattr(gui, "isWidgetType", lambda: False)()
               else list(vars(gui).values()))
    return _connectParametersToGui(self, {w.property(SlicerParameterNamePropertyName): w for w in widgets
                                          if w.property(SlicerParameterNamePropertyName)})


def _disconnectGui(self: Any, tag: int) -> None:  # noqa: N802
    for connector in self._parameterGUIs.pop(tag, {}).values():
        connector.on_changed(None)


#: The members a @parameterNodeWrapper class gets (names as in Slicer; the manifest test checks them).
MEMBERS: dict[str, Any] = {
    "getValue": _getValue, "setValue": _setValue, "connectGui": _connectGui,
    "connectParametersToGui": _connectParametersToGui, "disconnectGui": _disconnectGui,
    "default": lambda self, name: _parameter(self, name).default,
    "StartModify": lambda self: self.parameterNode.StartModify(),
    "EndModify": lambda self, wasModified: self.parameterNode.EndModify(wasModified),
    "AddObserver": lambda self, event, callback, priority=0.0: self.parameterNode.AddObserver(event, callback,
                                                                                              priority),
    "RemoveObserver": lambda self, tag: self.parameterNode.RemoveObserver(tag),
    "Modified": lambda self: self.parameterNode.Modified(),
}


#: Everything a wrapped class offers beyond its parameters.
OFFERED_MEMBERS = (*MEMBERS, "dataType", "allParameters", "parameterNode")


def _process(cls: type) -> type:
    parameters: dict[str, _Parameter] = {}
    for name, annotated in typing.get_type_hints(cls, include_extras=True).items():
        try:
            serializer = create_serializer(annotated)
        except Exception as error:
            raise Exception(f"Unable to create serializer for {cls} member {name}") from error  # noqa: TRY002
        defaults = [a for a in splitAnnotations(annotated)[1] if isinstance(a, Default)]
        default = Default(getattr(cls, name)) if hasattr(cls, name) else (defaults[0] if defaults else
                                                                          Default(serializer.default()))
        parameters[name] = _Parameter(name, serializer, default, annotated)
        setattr(cls, name, property(lambda self, n=name: self.getValue(n),
                                    lambda self, value, n=name: self.setValue(n, value)))
    for member, value in {**MEMBERS, "allParameters": parameters, "_is_parameter_node_wrapper": True,
                          "dataType": staticmethod(lambda name: _parameter(cls, name).unalteredType)}.items():
        if member in vars(cls):
            raise ValueError(f"Cannot use reserved name '{member}' in a parameterNodeWrapper")
        setattr(cls, member, value)
    cls.__init__ = _init  # type: ignore[misc]
    return cls


def parameterNodeWrapper(classtype: type | None = None) -> Any:  # noqa: N802 - Slicer's name
    """Class decorator: typed properties stored in a vtkMRMLScriptedModuleNode, and GUI binding."""
    return _process if classtype is None else _process(classtype)
