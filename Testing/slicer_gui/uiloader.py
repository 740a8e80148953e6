"""``qt.QUiLoader``: PySide6's loader creating the compat Qt classes and the Slicer/CTK look-alikes.

Standard class names become the ``qt`` compat classes (so ``type(w) == qt.QCheckBox``), custom ones the look-alikes
of ``ctk`` and ``slicer``; a custom class without a look-alike is an error. A look-alike's Slicer/CTK properties are
applied after loading, as PythonQt attributes (``<set>ctkPathLineEdit::Dirs|...</set>`` through its enum values); a
property that is neither offered by the look-alike nor a Qt property of its base class is an error (Slicer would
warn and ignore it). Dynamic properties (``SlicerParameterName``) stay as Qt sets them. The ``<connections>`` are
made with PythonQt's ``connect`` after loading; a signal or slot the objects do not have is an error.
"""

from __future__ import annotations

import sys
import xml.etree.ElementTree as ET
from typing import Any

import slicer
from PySide6 import QtCore, QtUiTools, QtWidgets

from .pythonqt import normalized, offers_of


def lookalike_classes() -> dict[str, type]:
    """Class name -> the class the loader creates (compat Qt classes and the installed look-alikes)."""
    qt, ctk = sys.modules["qt"], sys.modules["ctk"]
    custom = {name: getattr(ctk, name) for name in ("ctkCollapsibleButton", "ctkPathLineEdit")}
    custom |= {name: getattr(slicer, name) for name in ("qMRMLWidget", "qMRMLNodeComboBox", "qMRMLPlotWidget")}
    return {**qt.COMPAT_CLASSES, **custom}


def _qt_base(cls: type) -> Any:
    """The PySide6 class a compat class or look-alike derives from."""
    return next(k for k in cls.__mro__ if k.__module__.startswith("PySide6"))


def _value(element: ET.Element, cls: type) -> Any:
    """A .ui property value as Python (enum/set names through the look-alike's enums)."""
    tag, text = element.tag, element.text or ""
    if tag in ("set", "enum"):
        enums = {k: v for offers in offers_of(cls) for k, v in offers.enums.items()}
        value = 0
        for part in text.split("|"):
            owner, _, key = part.strip().rpartition("::")
            if owner not in ("", cls.__name__) or key not in enums:
                raise ValueError(f"{cls.__name__} has no enum value {part.strip()!r}")
            value |= enums[key]
        return value
    converters = {"bool": lambda: text == "true", "string": lambda: text, "number": lambda: int(text),
                  "double": lambda: float(text), "stringlist": lambda: [s.text or "" for s in element.iter("string")]}
    if tag not in converters:
        raise ValueError(f"property values of type <{tag}> on {cls.__name__} are not supported by the layer")
    return converters[tag]()


class UiLoader(QtUiTools.QUiLoader):
    """Loads .ui files into the compat classes and look-alikes (see the module docstring)."""

    def load(self, device: Any, parentWidget: QtWidgets.QWidget | None = None) -> QtWidgets.QWidget:  # noqa: N803
        if isinstance(device, QtCore.QIODevice):
            data = bytes(device.readAll().data())
        else:
            with open(str(device), "rb") as file:
                data = file.read()
        root = ET.fromstring(data)
        classes = lookalike_classes()
        self._custom = {c.findtext("class") for c in root.iter("customwidget")}
        properties: list[tuple[str, str, Any]] = []
        for element in root.iter("widget"):
            cls = classes.get(element.get("class", ""))
            if cls is None or not offers_of(cls):
                continue
            offered = {p for offers in offers_of(cls) for p in offers.properties}
            for prop in [p for p in element.findall("property") if p.get("stdset") != "0"]:
                if prop.get("name") in offered:
                    properties.append((element.get("name", ""), prop.get("name", ""), _value(prop[0], cls)))
                    element.remove(prop)
                elif _qt_base(cls).staticMetaObject.indexOfProperty(prop.get("name", "")) < 0:
                    raise ValueError(f"{cls.__name__} {element.get('name')!r} has no property {prop.get('name')!r}")
        connections = root.find("connections")
        if connections is not None:
            root.remove(connections)
        buffer = QtCore.QBuffer()
        buffer.setData(ET.tostring(root))
        buffer.open(QtCore.QIODevice.OpenModeFlag.ReadOnly)
        widget = super().load(buffer, parentWidget)
        if widget is None:
            raise RuntimeError(f"Could not load the UI file: {self.errorString()}")
        named = {o.objectName(): o for o in [widget, *widget.findChildren(QtCore.QObject)] if o.objectName()}
        for name, prop, value in properties:
            setattr(named[name], prop, value)
        for connection in connections if connections is not None else []:
            sender, signal, receiver, slot = (connection.findtext(t) or "" for t in
                                              ("sender", "signal", "receiver", "slot"))
            target = named[receiver]
            slots = {s for offers in offers_of(type(target)) for s in offers.slots}
            if normalized(slot) not in slots and target.metaObject().indexOfSlot(normalized(slot)) < 0:
                raise ValueError(f"{type(target).__name__} {receiver!r} has no slot {slot!r}")
            named[sender].connect(signal, getattr(target, slot.split("(")[0]))
        return widget

    def createWidget(self, className: str, parent: QtWidgets.QWidget | None = None,  # noqa: N802,N803
                     name: str = "") -> QtWidgets.QWidget:
        cls = lookalike_classes().get(className)
        if cls is None:
            if className in getattr(self, "_custom", set()):
                raise RuntimeError(f"the test layer has no look-alike of {className}; add one (checked against the "
                                   "manifest) before using it in the .ui")
            return super().createWidget(className, parent, name)
        widget = cls(parent)
        widget.setObjectName(name)
        return widget

    def createLayout(self, className: str, parent: QtCore.QObject | None = None,  # noqa: N802,N803
                     name: str = "") -> QtWidgets.QLayout:
        cls = sys.modules["qt"].COMPAT_CLASSES.get(className)
        if cls is None:
            return super().createLayout(className, parent, name)
        layout = cls() if isinstance(parent, QtWidgets.QLayout) else cls(parent)
        layout.setObjectName(name)
        return layout
