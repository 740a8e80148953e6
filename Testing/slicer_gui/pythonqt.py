"""PythonQt's conventions on PySide6 objects, and the declaration of what each look-alike class offers.

Inside Slicer every QObject has ``obj.connect("signal(signature)", callable)`` and ``disconnect``; signals are named
by their Qt-normalized C++ signature, so a wrong signature is an error. :class:`PythonQtObject` adds both to PySide6
classes. :class:`Offers` lists, in the C++ names of Slicer's and CTK's headers, every signal, slot, invokable method,
property and enum constant a look-alike class offers to Python; ``Testing/test_slicer_gui_manifest.py`` resolves each
of them in ``shared/slicer-api/manifest.json`` for every supported Slicer version, and checks that a look-alike has no
public member that its ``OFFERS`` does not declare.
"""

from __future__ import annotations

import types
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from PySide6 import QtCore

#: C++ parameter type of a look-alike signal -> the overload key of its PySide6 ``Signal``.
_OVERLOADS: dict[str, type] = {"bool": bool, "int": int, "QString": str}


@dataclass(frozen=True)
class Offers:
    """What a look-alike class offers to Python, named as in its Slicer/CTK header.

    signals: Qt-normalized signature -> the PySide6 signal that carries it (``"name"`` or ``"name[bool]"``).
    slots / invokables: Qt-normalized signatures (callable as methods of the same name).
    properties: Q_PROPERTY names, exposed as Python attributes as PythonQt does.
    enums: enum constants with their values. decorated: PythonQt decorator methods (``"static name()"``).
    """

    signals: Mapping[str, str] = field(default_factory=dict)
    slots: tuple[str, ...] = ()
    invokables: tuple[str, ...] = ()
    properties: tuple[str, ...] = ()
    enums: Mapping[str, int] = field(default_factory=dict)
    decorated: tuple[str, ...] = ()

    def python_names(self) -> set[str]:
        """The attribute names these offers put on the Python class."""
        methods = (*self.slots, *self.invokables, *(d.removeprefix("static ") for d in self.decorated))
        return ({m.split("(")[0] for m in methods} | set(self.properties) | set(self.enums)
                | {s.split("[")[0] for s in self.signals.values()})


def normalized(signature: str) -> str:
    """Qt's normalized form of a signal/slot signature (``const QString &`` -> ``QString``)."""
    return bytes(QtCore.QMetaObject.normalizedSignature(signature).data()).decode()


def offers_of(cls: type) -> list[Offers]:
    """The ``OFFERS`` declared by ``cls`` and its look-alike bases, most derived first."""
    return [k.__dict__["OFFERS"] for k in cls.__mro__ if "OFFERS" in k.__dict__]


def qt_signals(obj: QtCore.QObject) -> set[str]:
    """The signals of ``obj``'s Qt meta-object (PySide6 classes)."""
    meta = obj.metaObject()
    return {bytes(meta.method(i).methodSignature().data()).decode() for i in range(meta.methodCount())
            if meta.method(i).methodType() == QtCore.QMetaMethod.MethodType.Signal}


class PythonQtObject:
    """Mixin for QObject classes: PythonQt's ``connect``/``disconnect`` by normalized signal signature."""

    OFFERS: ClassVar[Offers] = Offers()

    def _signal(self, signature: str) -> tuple[Any, str]:
        wanted = normalized(signature)
        for offers in offers_of(type(self)):
            if wanted in offers.signals:
                name, _, overload = offers.signals[wanted].partition("[")
                instance = getattr(self, name)
                return (instance[_OVERLOADS[overload.rstrip("]")]] if overload else instance), wanted
        if wanted in qt_signals(self):  # type: ignore[arg-type]
            return None, wanted
        known = sorted({s for o in offers_of(type(self)) for s in o.signals} | qt_signals(self))  # type: ignore[arg-type]
        raise ValueError(f"{type(self).__name__} has no signal {signature!r} (normalized {wanted!r}); "
                         f"its signals are: {', '.join(known)}")

    def __getattribute__(self, name: str) -> Any:
        # PySide6 finds QObject's own connect/disconnect before a subclass's: hand out PythonQt's explicitly.
        if name in ("connect", "disconnect"):
            return types.MethodType(getattr(PythonQtObject, f"_pythonqt_{name}"), self)
        return super().__getattribute__(name)

    def _pythonqt_connect(self, signal: str, slot: Callable[..., Any]) -> bool:
        """``connect``: call ``slot`` when ``signal`` (a Qt signature such as ``"clicked(bool)"``) is emitted."""
        if not callable(slot):
            raise TypeError(f"expected a callable slot for {signal!r}, got {slot!r}")
        instance, wanted = self._signal(signal)
        if instance is None:
            return bool(QtCore.QObject.connect(self, QtCore.SIGNAL(wanted), slot))  # type: ignore[call-overload]
        instance.connect(slot)
        return True

    def _pythonqt_disconnect(self, signal: str, slot: Callable[..., Any]) -> bool:
        """``disconnect``: undo ``connect``."""
        instance, wanted = self._signal(signal)
        if instance is None:
            return bool(QtCore.QObject.disconnect(self, QtCore.SIGNAL(wanted), slot))  # type: ignore[call-overload]
        return bool(instance.disconnect(slot))
