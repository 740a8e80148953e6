"""``slicer.ScriptedLoadableModule`` and the C++ objects Slicer wraps scripted modules in, as look-alikes.

The four Python classes follow Slicer's ``Base/Python/slicer/ScriptedLoadableModule.py``: the widget without a parent
makes a ``qMRMLWidget`` with a QVBoxLayout on ``slicer.mrmlScene`` and runs ``setup()`` itself; ``resourcePath``
resolves under the module file's folder (``slicer.modules.<name>.path``); the logic's ``getParameterNode`` finds or
creates the singleton ``vtkMRMLScriptedModuleNode`` (singleton tag and ``ModuleName`` attribute = module name) in
``slicer.mrmlScene``. Left out: the developer section (Reload/Test buttons), the module manager's unload signal.

``qSlicerScriptedLoadableModuleWidget`` stands for the panel Slicer passes as ``parent``: ``isEntered`` and
``moduleName`` properties, ``enter()``/``exit()`` (which set ``isEntered`` and then call the Python widget's
``enter``/``exit``, as Slicer does) and ``self()``. ``qSlicerScriptedLoadableModule`` is the module object handed to
``ScriptedLoadableModule.__init__``.
"""

from __future__ import annotations

import importlib
import logging
import os
import unittest
from typing import Any

import slicer
from PySide6 import QtWidgets
from PySide6.QtCore import Signal

from .pythonqt import Offers, PythonQtObject

__all__ = ["ScriptedLoadableModule", "ScriptedLoadableModuleWidget", "ScriptedLoadableModuleLogic",
           "ScriptedLoadableModuleTest"]


class qSlicerScriptedLoadableModule:  # noqa: N801 - Slicer's name
    """The module object: the properties ``ScriptedLoadableModule.__init__`` fills, and the module file's path."""

    OFFERS = Offers(properties=("title", "categories", "dependencies", "contributors", "helpText",
                                "acknowledgementText", "path", "hidden", "index"))

    def __init__(self, path: str) -> None:
        self.path = str(path)
        self.title, self.helpText, self.acknowledgementText = "", "", ""
        self.categories: list[str] = []
        self.dependencies: list[str] = []
        self.contributors: list[str] = []
        self.hidden, self.index = False, -1


class qSlicerScriptedLoadableModuleWidget(PythonQtObject, QtWidgets.QWidget):  # noqa: N801
    """The module panel that hosts a scripted widget (``widget.parent`` in Slicer)."""

    mrmlSceneChanged = Signal(object)
    OFFERS = Offers(signals={"mrmlSceneChanged(vtkMRMLScene*)": "mrmlSceneChanged"},
                    slots=("setMRMLScene(vtkMRMLScene*)",), invokables=("enter()", "exit()", "self()"),
                    properties=("isEntered", "moduleName"))

    def __init__(self, moduleName: str = "", parent: QtWidgets.QWidget | None = None) -> None:  # noqa: N803
        super().__init__(parent)
        self.setLayout(QtWidgets.QVBoxLayout())
        self._module_name, self._entered, self._python = moduleName, False, None
        self._scene: slicer.vtkMRMLScene | None = None

    @property
    def isEntered(self) -> bool:  # noqa: N802 - Slicer's name
        return self._entered

    @property
    def moduleName(self) -> str:  # noqa: N802
        return self._module_name

    def setMRMLScene(self, scene: slicer.vtkMRMLScene | None) -> None:  # noqa: N802
        if scene is not self._scene:
            self._scene = scene
            self.mrmlSceneChanged.emit(scene)

    def _bind(self, widget: Any) -> None:
        """Attach the Python widget (what Slicer does when it creates the module's widget representation)."""
        self._python = widget

    def self(self) -> Any:
        return self._python

    def enter(self) -> None:
        self._entered = True
        if hasattr(self._python, "enter"):
            self._python.enter()

    def exit(self) -> None:
        self._entered = False
        if hasattr(self._python, "exit"):
            self._python.exit()


def _module_path(module_name: str) -> str:
    module = getattr(slicer.modules, module_name.lower(), None)
    if module is None or not getattr(module, "path", None):
        raise RuntimeError(f"slicer.modules.{module_name.lower()} is not registered; load the module file with the "
                           "layer's load_module_file so that resourcePath() can find its folder")
    return module.path


class ScriptedLoadableModule:
    """Base of a scripted module's description class."""

    def __init__(self, parent: qSlicerScriptedLoadableModule) -> None:
        self.parent = parent
        self.moduleName = type(self).__name__
        parent.title, parent.categories, parent.dependencies = "", [], []
        parent.contributors = ["(template default)"]
        parent.helpText = parent.acknowledgementText = ""
        if not hasattr(slicer, "selfTests"):
            slicer.selfTests = {}
        slicer.selfTests[self.moduleName] = self.runTest

    def resourcePath(self, filename: str) -> str:  # noqa: N802 - Slicer's name
        return os.path.join(os.path.dirname(self.parent.path), "Resources", filename)

    def runTest(self, msec: int = 100, **kwargs: Any) -> None:  # noqa: N802
        test_class = getattr(importlib.import_module(type(self).__module__), self.moduleName + "Test", None)
        if test_class is None:
            raise AssertionError(f"Test case class not found: {type(self).__module__}.{self.moduleName}Test")
        test = test_class()
        test.messageDelay = msec
        test.runTest(**kwargs)


class ScriptedLoadableModuleWidget:
    """Base of a scripted module's panel."""

    def __init__(self, parent: QtWidgets.QWidget | None = None) -> None:
        self.moduleName = type(self).__name__.removesuffix("Widget")
        self.developerMode = False
        if not parent:
            import qt

            self.parent = slicer.qMRMLWidget()
            self.parent.setLayout(qt.QVBoxLayout())
            self.parent.setMRMLScene(slicer.mrmlScene)
        else:
            self.parent = parent
        self.layout = self.parent.layout()
        if not parent:
            self.setup()
            self.parent.show()

    def resourcePath(self, filename: str) -> str:  # noqa: N802
        return os.path.join(os.path.dirname(_module_path(self.moduleName)), "Resources", filename)

    def setup(self) -> None:
        """Slicer's version adds the developer section when developer mode is on (it is off here)."""

    def cleanup(self) -> None:
        """Called when the module is unloaded."""


class ScriptedLoadableModuleLogic:
    """Base of a scripted module's logic: the module's parameter node."""

    def __init__(self, parent: Any = None) -> None:
        self.moduleName = type(self).__name__.removesuffix("Logic")
        self.isSingletonParameterNode = True

    def getParameterNode(self) -> slicer.vtkMRMLScriptedModuleNode:  # noqa: N802
        """The module's parameter node in ``slicer.mrmlScene``, created on first use."""
        scene = slicer.mrmlScene
        if self.isSingletonParameterNode:
            node = scene.GetSingletonNode(self.moduleName, "vtkMRMLScriptedModuleNode")
            if node:
                if node.GetAttribute("ModuleName") != self.moduleName:
                    node.SetAttribute("ModuleName", self.moduleName)
                return node
        else:
            for node in self.getAllParameterNodes():
                return node
        return scene.AddNode(self.createParameterNode())

    def getAllParameterNodes(self) -> list[slicer.vtkMRMLScriptedModuleNode]:  # noqa: N802
        scene = slicer.mrmlScene
        nodes = [scene.GetNthNodeByClass(i, "vtkMRMLScriptedModuleNode")
                 for i in range(scene.GetNumberOfNodesByClass("vtkMRMLScriptedModuleNode"))]
        return [n for n in nodes if n.GetAttribute("ModuleName") == self.moduleName]

    def createParameterNode(self) -> slicer.vtkMRMLScriptedModuleNode | None:  # noqa: N802
        scene = slicer.mrmlScene
        if scene is None:
            return None
        node = scene.CreateNodeByClass("vtkMRMLScriptedModuleNode")
        node.UnRegister(None)
        if self.isSingletonParameterNode:
            node.SetSingletonTag(self.moduleName)
        node.SetAttribute("ModuleName", self.moduleName)
        node.SetName(scene.GenerateUniqueName(self.moduleName))
        return node


class ScriptedLoadableModuleTest(unittest.TestCase):
    """Base of a module self-test; ``delayDisplay`` logs the message and processes events."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.enableScreenshots = False
        self.screenshotScaleFactor = 1.0

    def delayDisplay(self, message: str, requestedDelay: int | None = None, msec: int | None = None) -> None:  # noqa: N802,N803
        logging.info(message)
        slicer.app.processEvents()

    def runTest(self) -> None:  # noqa: N802
        logging.warning("No test is defined in " + type(self).__name__)
