"""``slicer.app``, ``slicer.modules`` and the GUI half of ``slicer.util``, as look-alikes over the real scene.

- ``qSlicerApplication``: ``majorVersion``/``minorVersion`` (from the slicer-core wheel; tests may set them),
  ``processEvents()``, ``applicationLogic()`` (the scene's real ``vtkSlicerApplicationLogic``), ``mrmlScene()``,
  ``layoutManager()``, ``testingEnabled()`` (True) and ``restart()`` (recorded, nothing restarts).
- ``qSlicerLayoutManager``: ``setLayout(int)`` records the call, sets ``layout`` and emits ``layoutChanged(int)``.
- ``qSlicerAbstractCoreModule``: an entry of ``slicer.modules`` (``logic()`` gives the real module logic; a module
  file loaded by the layer has ``path``).
- ``slicer.util`` GUI functions: the dialogs answer from a :class:`DialogScript` (a dialog no test expected fails
  the test), ``setSliceViewerLayers`` records its arguments (bound to slicer-core's own signature, so a wrong
  keyword fails as in Slicer), ``pip_install`` refuses to run pip, ``childWidgetVariables`` uses ``objectName``
  (PySide6 has no PythonQt ``name`` alias). ``loadUI``, ``WaitCursor``, ``restart``, ``NodeModify`` and the rest
  of ``slicer.util`` are slicer-core's own functions running over this layer.
"""

from __future__ import annotations

import importlib.metadata
import inspect
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import slicer
from PySide6 import QtCore, QtWidgets
from PySide6.QtCore import Signal

from .pythonqt import Offers, PythonQtObject

Calls = list[tuple[str, dict[str, Any]]]


@dataclass
class DialogCall:
    """One ``slicer.util`` dialog the code under test opened."""

    kind: str
    text: str
    arguments: dict[str, Any]


@dataclass
class DialogScript:
    """The dialogs a test expects, in order, with their answers; every dialog opened is recorded in ``calls``."""

    calls: list[DialogCall] = field(default_factory=list)
    unexpected: list[DialogCall] = field(default_factory=list)
    _expected: deque[tuple[str, Any, str]] = field(default_factory=deque)

    def expect(self, kind: str, answer: Any = None, contains: str = "") -> None:
        """Expect ``slicer.util.<kind>`` next, its text containing ``contains``; it returns ``answer``."""
        self._expected.append((kind, answer, contains))

    def show(self, kind: str, text: str, arguments: dict[str, Any]) -> Any:
        call = DialogCall(kind, str(text), arguments)
        self.calls.append(call)
        if not self._expected or self._expected[0][0] != kind or self._expected[0][2] not in call.text:
            self.unexpected.append(call)
            wanted = f"{self._expected[0][0]} containing {self._expected[0][2]!r}" if self._expected else "none"
            raise AssertionError(f"unexpected dialog slicer.util.{kind}({call.text!r}); the test expected {wanted}")
        return self._expected.popleft()[1]

    def problems(self) -> list[str]:
        """Dialogs opened unexpectedly and expected dialogs that never opened."""
        return ([f"unexpected dialog {c.kind}: {c.text!r}" for c in self.unexpected]
                + [f"expected dialog {kind} containing {text!r} was not shown" for kind, _, text in self._expected])


class qSlicerLayoutManager(PythonQtObject, QtCore.QObject):  # noqa: N801 - Slicer's name
    """Records layout changes (no views exist here)."""

    layoutChanged = Signal(int)
    OFFERS = Offers(signals={"layoutChanged(int)": "layoutChanged"}, slots=("setLayout(int)",),
                    properties=("layout",))

    def __init__(self, calls: Calls, scene: Any = None) -> None:
        super().__init__()
        self._calls, self._scene = calls, scene
        self._layout = slicer.vtkMRMLLayoutNode.SlicerLayoutInitialView

    def _layout_node(self) -> Any:
        return self._scene.GetSingletonNode("vtkMRMLLayoutNode", "vtkMRMLLayoutNode") if self._scene else None

    @property
    def layout(self) -> int:
        node = self._layout_node()
        return node.GetViewArrangement() if node is not None else self._layout

    @layout.setter
    def layout(self, value: int) -> None:
        self.setLayout(value)

    def setLayout(self, layout: int) -> None:  # noqa: N802
        """Like qMRMLLayoutManager::setLayout: the scene's layout node gets the arrangement."""
        self._calls.append(("setLayout", {"layout": int(layout)}))
        node = self._layout_node()
        if node is not None:
            node.SetViewArrangement(int(layout))
        if int(layout) != self._layout:
            self._layout = int(layout)
            self.layoutChanged.emit(self._layout)


class qSlicerApplication:  # noqa: N801
    """``slicer.app`` (see the module docstring)."""

    OFFERS = Offers(properties=("majorVersion", "minorVersion"), slots=("restart()",),
                    invokables=("applicationLogic()", "layoutManager()", "mrmlScene()"),
                    decorated=("processEvents()", "static testingEnabled()"))

    def __init__(self, scene_bundle: Any, calls: Calls) -> None:
        version = importlib.metadata.version("slicer-core").split(".")
        self.majorVersion, self.minorVersion = int(version[0]), int(version[1])
        self._bundle, self._calls = scene_bundle, calls
        self._layout_manager = qSlicerLayoutManager(calls, getattr(scene_bundle, "scene", None))

    def processEvents(self) -> None:  # noqa: N802 - Slicer's name
        QtWidgets.QApplication.processEvents()

    def applicationLogic(self) -> slicer.vtkSlicerApplicationLogic:  # noqa: N802
        return self._bundle.app_logic

    def mrmlScene(self) -> slicer.vtkMRMLScene:  # noqa: N802
        return self._bundle.scene

    def layoutManager(self) -> qSlicerLayoutManager:  # noqa: N802
        return self._layout_manager

    @staticmethod
    def testingEnabled() -> bool:  # noqa: N802
        return True

    def restart(self) -> None:
        self._calls.append(("restart", {}))


class qSlicerAbstractCoreModule:  # noqa: N801
    """An entry of ``slicer.modules``."""

    OFFERS = Offers(invokables=("logic()",), properties=("name", "path"))

    def __init__(self, name: str, logic: Any = None, path: str = "") -> None:
        self.name, self.path, self._logic = name, path, logic

    def logic(self) -> Any:
        return self._logic


def modules_namespace(bundle: Any) -> SimpleNamespace:
    """``slicer.modules`` with the loadable modules whose real logics the test scene wires."""
    logics = {"Volumes": bundle.volumes_logic, "Segmentations": bundle.segmentations_logic,
              "SubjectHierarchy": bundle.subject_hierarchy_logic, "Tables": bundle.tables_logic,
              "Plots": bundle.plots_logic, "Colors": bundle.app_logic.GetColorLogic()}
    return SimpleNamespace(**{name.lower(): qSlicerAbstractCoreModule(name, logic) for name, logic in logics.items()})


def childWidgetVariables(widget: QtCore.QObject) -> Any:  # noqa: N802 - Slicer's name
    """An object with the widget and each named descendant as attributes (Slicer includes layouts too)."""
    ui = type("", (), {})()
    for child in [widget, *widget.findChildren(QtCore.QObject)]:
        if child.objectName():
            setattr(ui, child.objectName(), child)
    return ui


def util_functions(dialogs: DialogScript, calls: Calls) -> dict[str, Callable[..., Any]]:
    """The ``slicer.util`` functions this layer replaces, each checked against slicer-core's own signature."""
    real = {name: getattr(slicer.util, name) for name in ("confirmOkCancelDisplay", "confirmYesNoDisplay",
                                                           "errorDisplay", "infoDisplay", "warningDisplay",
                                                           "setSliceViewerLayers", "pip_install")}

    def dialog(kind: str) -> Callable[..., Any]:
        def show(*args: Any, **kwargs: Any) -> Any:
            bound = inspect.signature(real[kind]).bind(*args, **kwargs)
            return dialogs.show(kind, bound.arguments["text"], dict(bound.arguments))

        return show

    def set_slice_viewer_layers(*args: Any, **kwargs: Any) -> None:
        calls.append(("setSliceViewerLayers", dict(inspect.signature(real["setSliceViewerLayers"])
                                                    .bind(*args, **kwargs).arguments)))

    def pip_install(*args: Any, **kwargs: Any) -> None:
        raise AssertionError(f"slicer.util.pip_install{args} would run pip in a test; replace the installer")

    return {**{kind: dialog(kind) for kind in list(real)[:5]}, "setSliceViewerLayers": set_slice_viewer_layers,
            "pip_install": pip_install, "childWidgetVariables": childWidgetVariables}
