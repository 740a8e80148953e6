"""The ``qt`` module as PythonQt shows it inside Slicer, built on PySide6.

Every name of PySide6's QtCore, QtGui, QtWidgets and QtUiTools is here, flat, as in PythonQt's ``qt``. The QObject
classes a panel uses are thin subclasses that add PythonQt's ``connect("signal(signature)", callable)`` and
``disconnect``; the .ui loader (:class:`QUiLoader`) creates exactly these classes, so ``type(w) == qt.QCheckBox``
holds as in Slicer. Methods keep PySide6's calling style (``label.text()``): properties are not attributes here.

``QFileDialog`` and ``QMessageBox`` static functions return what PythonQt returns (``getOpenFileName`` gives a
``str``, not PySide6's tuple) and never open a window in a test: they raise unless the test replaces them
(``monkeypatch.setattr(qt.QFileDialog, "getOpenFileName", fake)``).
"""

from __future__ import annotations

from typing import Any, NoReturn

from PySide6 import QtCore, QtGui, QtUiTools, QtWidgets

from .pythonqt import PythonQtObject

_SOURCES = (QtWidgets, QtGui, QtCore, QtUiTools)


def _pythonqt(base: type) -> type:
    """``base`` with PythonQt's connect/disconnect."""
    return type(base.__name__, (PythonQtObject, base), {
        "__module__": __name__, "__qualname__": base.__name__,
        "__doc__": f"PySide6 ``{base.__name__}`` with PythonQt's connect/disconnect by signal signature."})


QObject = _pythonqt(QtCore.QObject)
QTimer = _pythonqt(QtCore.QTimer)
QWidget = _pythonqt(QtWidgets.QWidget)
QFrame = _pythonqt(QtWidgets.QFrame)
QGroupBox = _pythonqt(QtWidgets.QGroupBox)
QPushButton = _pythonqt(QtWidgets.QPushButton)
QToolButton = _pythonqt(QtWidgets.QToolButton)
QRadioButton = _pythonqt(QtWidgets.QRadioButton)
QCheckBox = _pythonqt(QtWidgets.QCheckBox)
QComboBox = _pythonqt(QtWidgets.QComboBox)
QSpinBox = _pythonqt(QtWidgets.QSpinBox)
QDoubleSpinBox = _pythonqt(QtWidgets.QDoubleSpinBox)
QSlider = _pythonqt(QtWidgets.QSlider)
QLabel = _pythonqt(QtWidgets.QLabel)
QLineEdit = _pythonqt(QtWidgets.QLineEdit)
QTextEdit = _pythonqt(QtWidgets.QTextEdit)
QProgressBar = _pythonqt(QtWidgets.QProgressBar)
QTableWidget = _pythonqt(QtWidgets.QTableWidget)
QListWidget = _pythonqt(QtWidgets.QListWidget)
QTabWidget = _pythonqt(QtWidgets.QTabWidget)
QScrollArea = _pythonqt(QtWidgets.QScrollArea)
QVBoxLayout = _pythonqt(QtWidgets.QVBoxLayout)
QHBoxLayout = _pythonqt(QtWidgets.QHBoxLayout)
QFormLayout = _pythonqt(QtWidgets.QFormLayout)
QGridLayout = _pythonqt(QtWidgets.QGridLayout)

#: The classes the .ui loader creates for standard class names.
COMPAT_CLASSES: dict[str, type] = {name: cls for name, cls in dict(globals()).items()
                                   if isinstance(cls, type) and issubclass(cls, PythonQtObject)}


def _no_window(what: str) -> NoReturn:
    raise RuntimeError(f"{what} would open a modal window in a test; replace it first, e.g. "
                       f"monkeypatch.setattr(qt.{what.split('.')[0]}, {what.split('.')[1]!r}, fake) "
                       f"(PythonQt returns a str for file names)")


class QFileDialog(PythonQtObject, QtWidgets.QFileDialog):
    """PythonQt-style static dialogs that refuse to open in a test (see the module docstring)."""

    @staticmethod
    def getOpenFileName(*args: Any, **kwargs: Any) -> str:  # noqa: N802 - Qt's name
        _no_window("QFileDialog.getOpenFileName")

    @staticmethod
    def getSaveFileName(*args: Any, **kwargs: Any) -> str:  # noqa: N802
        _no_window("QFileDialog.getSaveFileName")

    @staticmethod
    def getExistingDirectory(*args: Any, **kwargs: Any) -> str:  # noqa: N802
        _no_window("QFileDialog.getExistingDirectory")


class QMessageBox(PythonQtObject, QtWidgets.QMessageBox):
    """Message boxes that refuse to open in a test (panels use ``slicer.util`` dialogs, which tests script)."""

    @staticmethod
    def question(*args: Any, **kwargs: Any) -> int:
        _no_window("QMessageBox.question")

    @staticmethod
    def information(*args: Any, **kwargs: Any) -> int:
        _no_window("QMessageBox.information")

    @staticmethod
    def warning(*args: Any, **kwargs: Any) -> int:
        _no_window("QMessageBox.warning")

    @staticmethod
    def critical(*args: Any, **kwargs: Any) -> int:
        _no_window("QMessageBox.critical")

    def exec(self) -> int:
        _no_window("QMessageBox.exec")


def __getattr__(name: str) -> Any:
    """Every other PySide6 name, flat; ``QUiLoader`` is the loader that creates the compat and look-alike classes."""
    if name == "QUiLoader":
        from .uiloader import UiLoader

        return UiLoader
    for module in _SOURCES:
        if hasattr(module, name):
            return getattr(module, name)
    raise AttributeError(f"module 'qt' has no attribute {name!r} (not in PySide6 QtCore/QtGui/QtWidgets/QtUiTools)")
