"""A small compatibility layer that runs a Slicer scripted module's real widget in pytest.

What it provides, once :func:`install` has run (``Testing/slicer_gui/fixtures.py`` does it per test):

- ``qt``: PySide6 (QtCore, QtGui, QtWidgets, QtUiTools) as one flat module, with PythonQt's
  ``connect("signal(signature)", slot)`` on the QObject classes a panel uses (``qt.py``).
- ``ctk``: ``ctkCollapsibleButton`` and ``ctkPathLineEdit`` look-alikes (``ctk.py``).
- on the real ``slicer`` module of slicer-core: ``qMRMLWidget``, ``qMRMLNodeComboBox``, ``qMRMLPlotWidget``
  (``mrml.py``), ``qSlicerScriptedLoadableModuleWidget``/``qSlicerScriptedLoadableModule`` (``scripted.py``),
  ``slicer.app``, ``slicer.modules``, ``slicer.mrmlScene`` and the GUI half of ``slicer.util`` (``app.py``), and the
  modules ``slicer.ScriptedLoadableModule``, ``slicer.parameterNodeWrapper`` (``pnw.py``) and ``slicer.i18n``.

What is real: Qt itself (PySide6 widgets, signals, the .ui loader, offscreen), the MRML scene with its nodes,
application logic and module logics (``Testing/slicer_scene.py``), and slicer-core's ``slicer.util`` functions that
work without the application (``loadUI``, ``NodeModify``, ``VTKObservationMixin``, ``WaitCursor``, ``restart``...).
What is a look-alike, written from Slicer's and CTK's sources: the Slicer/CTK widget classes, ``slicer.app``, the
dialogs and layer-only parts of ``slicer.util``, ``ScriptedLoadableModule`` and ``parameterNodeWrapper``. Each
module's docstring says what it leaves out or simplifies.

How it is kept honest: every signal, slot, property, invokable and enum a look-alike offers is declared in its
``OFFERS`` and ``Testing/test_slicer_gui_manifest.py`` resolves each of them (and every Slicer name the module
uses) in ``../shared/slicer-api/manifest.json`` for Slicer 5.10.0, 5.12.0 and main; a public member a look-alike
does not declare fails that test. ``Testing/test_slicer_gui_layer.py`` checks the behaviour on the real scene.
Exceptions raised in slots and VTK observers (which Qt and VTK only print) are collected and fail the test.

Per-user state is kept out of the user's own: ``qt.QSettings()`` (Slicer's per-user settings) reads and writes an
INI file in a fresh temporary folder for each install, and ``MEDANALYSIS_MODEL_CACHE`` (the model cache) points
into that folder unless the test set it; both are undone by :func:`uninstall`.

PySide6 6.12.0 releases True one time too often for each signal it delivers to Python, which aborts Python 3.11
after a few hundred signals; pyproject.toml keeps it out on Python < 3.12 and
``Testing/test_slicer_gui_layer.py::test_the_qt_binding_keeps_reference_counts`` checks the installed binding.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
import tempfile
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import slicer
import slicer.util
from PySide6 import QtCore, QtWidgets

from . import app, ctk, mrml, pnw, qt, scripted

PROJECT_ROOT = Path(__file__).resolve().parents[2]
MODULE_FILE = PROJECT_ROOT / "MedAnalysis" / "MedAnalysis.py"
_MISSING = object()


def _module(name: str, members: dict[str, Any]) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__dict__.update(members)
    return module


@dataclass
class Installed:
    """The installed layer: the scene, ``slicer.app``, the dialog script and what the code under test did."""

    scene_bundle: Any
    app: app.qSlicerApplication
    dialogs: app.DialogScript
    calls: app.Calls
    errors: list[BaseException] = field(default_factory=list)
    #: The temporary folder holding this install's settings file and model cache.
    user_folder: str = ""
    widgets: list[Any] = field(default_factory=list)
    _saved: list[tuple[Any, str, Any]] = field(default_factory=list)
    _module_snapshots: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)

    @property
    def scene(self) -> slicer.vtkMRMLScene:
        return self.scene_bundle.scene

    def _set(self, owner: Any, name: str, value: Any) -> None:
        """Set ``owner[name]`` (a dict) or ``owner.name``, remembering what was there."""
        if isinstance(owner, dict):
            self._saved.append((owner, name, owner.get(name, _MISSING)))
            owner[name] = value
        else:
            self._saved.append((owner, name, getattr(owner, name, _MISSING)))
            setattr(owner, name, value)

    def load_module_file(self, path: Path = MODULE_FILE) -> types.ModuleType:
        """Import a scripted module file fresh (as ``sys.modules[<stem>]``), with its folder on ``sys.path`` and
        ``slicer.modules.<stem lower>`` registered as Slicer does; all undone by :func:`uninstall`."""
        path = Path(path).resolve()
        prefix = f"{path.stem}SlicerLib"
        self._module_snapshots.append((path.stem, prefix, {n: m for n, m in sys.modules.items()
                                                           if n == path.stem or n.startswith(prefix)}))
        for name in self._module_snapshots[-1][2]:
            del sys.modules[name]
        self._set(sys, "path", [str(path.parent), *sys.path])
        self._set(slicer.modules, path.stem.lower(), app.qSlicerAbstractCoreModule(path.stem, path=str(path)))
        spec = importlib.util.spec_from_file_location(path.stem, path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[path.stem] = module
        spec.loader.exec_module(module)
        return module

    def make_module_widget(self, widget_class: type, *args: Any, **kwargs: Any) -> Any:
        """Do what Slicer does when a module panel is first shown: host panel, widget, ``setup()``, ``enter()``."""
        host = scripted.qSlicerScriptedLoadableModuleWidget(widget_class.__name__.removesuffix("Widget"))
        host.setMRMLScene(self.scene)
        widget = widget_class(host, *args, **kwargs)
        host._bind(widget)
        self.widgets.append(widget)
        widget.setup()
        host.enter()
        return widget


_installed: list[Installed] = []
_qapp: list[QtWidgets.QApplication] = []  # keeps the QApplication alive


def install(scene_bundle: Any) -> Installed:
    """Install the layer over ``scene_bundle`` (a :class:`slicer_scene.SlicerScene`); undo with :func:`uninstall`."""
    if _installed:
        raise RuntimeError("the slicer_gui layer is already installed")
    if not _qapp:
        _qapp.append(QtWidgets.QApplication.instance() or QtWidgets.QApplication(["slicer_gui"]))
    calls: app.Calls = []
    installed = Installed(scene_bundle, app.qSlicerApplication(scene_bundle, calls), app.DialogScript(), calls)
    _installed.append(installed)
    for name, module in (("qt", qt), ("ctk", ctk)):
        installed._set(sys.modules, name, module)
    python_modules = {
        "ScriptedLoadableModule": _module("slicer.ScriptedLoadableModule",
                                          {n: getattr(scripted, n) for n in scripted.__all__}),
        "parameterNodeWrapper": _module("slicer.parameterNodeWrapper", {n: getattr(pnw, n) for n in pnw.__all__}),
        "i18n": _module("slicer.i18n", {"tr": lambda text: text, "translate": lambda context, text: text}),
    }
    for name, module in python_modules.items():
        installed._set(sys.modules, f"slicer.{name}", module)
        installed._set(slicer, name, module)
    for cls in (mrml.qMRMLWidget, mrml.qMRMLNodeComboBox, mrml.qMRMLPlotWidget,
                scripted.qSlicerScriptedLoadableModuleWidget, scripted.qSlicerScriptedLoadableModule):
        installed._set(slicer, cls.__name__, cls)
    for name, value in (("app", installed.app), ("mrmlScene", scene_bundle.scene),
                        ("modules", app.modules_namespace(scene_bundle)), ("selfTests", {})):
        installed._set(slicer, name, value)
    for name, function in app.util_functions(installed.dialogs, calls).items():
        installed._set(slicer.util, name, function)

    def collect(kind: type, error: BaseException, trace: Any) -> None:
        installed.errors.append(error)

    installed._set(sys, "excepthook", collect)
    _isolate_user_state(installed)
    return installed


#: Environment variables :func:`_isolate_user_state` sets, with the value each had (None: unset).
_saved_environment: dict[str, str | None] = {}


def _isolate_user_state(installed: Installed) -> None:
    """Settings and the model cache in a fresh temporary folder (see the module docstring)."""
    installed.user_folder = tempfile.mkdtemp(prefix="slicer_gui-user-")
    QtCore.QSettings.setDefaultFormat(QtCore.QSettings.Format.IniFormat)
    QtCore.QSettings.setPath(QtCore.QSettings.Format.IniFormat, QtCore.QSettings.Scope.UserScope,
                             installed.user_folder)
    if "MEDANALYSIS_MODEL_CACHE" not in os.environ:
        _saved_environment["MEDANALYSIS_MODEL_CACHE"] = None
        os.environ["MEDANALYSIS_MODEL_CACHE"] = os.path.join(installed.user_folder, "models")


def _restore_user_state(installed: Installed) -> None:
    for name, value in _saved_environment.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    _saved_environment.clear()
    if installed.user_folder:
        shutil.rmtree(installed.user_folder, ignore_errors=True)


def uninstall() -> list[str]:
    """Undo :func:`install`; returns the problems seen (exceptions in slots/observers, dialog mismatches)."""
    installed = _installed.pop()
    mrml.detach_all()
    _restore_user_state(installed)
    for stem, prefix, before in reversed(installed._module_snapshots):
        for name in [n for n in sys.modules if n == stem or n.startswith(prefix)]:
            del sys.modules[name]
        sys.modules.update(before)
    for owner, name, value in reversed(installed._saved):
        if isinstance(owner, dict):
            owner.pop(name, None) if value is _MISSING else owner.__setitem__(name, value)
        elif value is _MISSING:
            delattr(owner, name)
        else:
            setattr(owner, name, value)
    return [f"{type(e).__name__} raised in a slot or observer: {e}" for e in installed.errors] + \
        installed.dialogs.problems()


def wait_until(condition: Any, timeout_s: float) -> None:
    """Let Qt run (the panel's poll timers included) until ``condition()`` holds; fail after ``timeout_s``."""
    import time

    deadline = time.monotonic() + timeout_s
    while not condition():
        QtWidgets.QApplication.processEvents()
        time.sleep(0.02)
        assert time.monotonic() < deadline, f"still waiting after {timeout_s} s"
