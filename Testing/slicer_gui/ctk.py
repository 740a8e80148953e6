"""The ``ctk`` module: look-alikes of the CTK widgets a panel uses (behaviour read from CTK's sources).

- ``ctkCollapsibleButton``: a checkable button holding a layout; ``collapsed`` and ``contentsCollapsed(bool)``.
  Unlike CTK it does not hide its children while collapsed (that is presentation only; it keeps the visibility a
  panel sets on them testable with ``isHidden()``).
- ``ctkPathLineEdit``: ``currentPath``, ``filters``, ``nameFilters`` and ``options`` as attributes (PythonQt exposes
  Q_PROPERTYs so; ``setFilters``/``setNameFilters`` are C++ only), the ``setCurrentPath`` and ``browse`` slots,
  ``currentPathChanged(QString)`` and ``validInputChanged(bool)``. As in CTK built with Qt5 (Slicer 5.10), the name
  filters become a validator: ``*.ext`` patterns accept only paths ending in those extensions, other patterns
  (``bundle.json``) add nothing, no pattern accepts any non-empty text; ``currentPathChanged`` is emitted only when
  the text changes to an acceptable path. ``browse()`` opens the ``qt.QFileDialog`` static function CTK picks:
  ``getSaveFileName`` for ``Files|Writable``, ``getOpenFileName`` for ``Files``, else ``getExistingDirectory``,
  called with the keyword arguments parent, caption, dir, filter (file dialogs only) and options.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

from PySide6 import QtCore, QtGui, QtWidgets
from PySide6.QtCore import Signal

from .pythonqt import Offers, PythonQtObject

_NAME_FILTER = re.compile(r"^(.*)\(([a-zA-Z0-9_.*? +;#\-\[\]@\{\}/!<>\$%&=^~:\|]*)\)$")
_WILDCARD = re.compile(r"^[\w\s\.\*\_\~\$\[\]]+$")
_last_directory = [""]  # ctkPathLineEdit's static current directory: where the next dialog starts


def name_filters_to_regexp(name_filters: list[str]) -> str:
    """The validator pattern CTK (Qt5 build) makes of ``nameFilters``."""
    extensions: list[str] = []
    for name_filter in name_filters:
        match = _NAME_FILTER.search(name_filter)
        extensions += match.group(2).split() if match else ([name_filter] if _WILDCARD.search(name_filter) else [])
    parts = [rf".*\.{m.group(1)}?$" for m in (re.search(r"\*\.(\w+)", e) for e in extensions) if m]
    return "(" + "|".join(parts) + ")" if parts else ".+"


class ctkCollapsibleButton(PythonQtObject, QtWidgets.QAbstractButton):  # noqa: N801 - CTK's name
    """Checkable section header whose ``collapsed`` state follows the check state (see the module docstring)."""

    contentsCollapsed = Signal(bool)
    OFFERS = Offers(signals={"contentsCollapsed(bool)": "contentsCollapsed"}, properties=("collapsed",))

    def __init__(self, parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent)
        self._collapsed = False
        self.setCheckable(True)
        self.setChecked(True)
        self.toggled.connect(lambda checked: self._collapse(not checked))

    @property
    def collapsed(self) -> bool:
        return self._collapsed

    @collapsed.setter
    def collapsed(self, value: bool) -> None:
        self.setChecked(not value)

    def _collapse(self, value: bool) -> None:
        if value != self._collapsed:
            self._collapsed = value
            self.contentsCollapsed.emit(value)

    def paintEvent(self, event: QtGui.QPaintEvent) -> None:  # noqa: N802 - Qt's name
        align = QtCore.Qt.AlignmentFlag.AlignLeft | QtCore.Qt.AlignmentFlag.AlignVCenter
        QtGui.QPainter(self).drawText(self.rect().adjusted(4, 0, 0, 0), align,
                                      ("+ " if self._collapsed else "- ") + self.text())


class ctkPathLineEdit(PythonQtObject, QtWidgets.QWidget):  # noqa: N801 - CTK's name
    """Path field with a browse button (see the module docstring)."""

    currentPathChanged = Signal(str)
    validInputChanged = Signal(bool)
    Dirs, Files, Drives, NoSymLinks, TypeMask = 0x001, 0x002, 0x004, 0x008, 0x00F
    Readable, Writable, Executable, PermissionMask = 0x010, 0x020, 0x040, 0x070
    Modified, Hidden, System, AccessMask = 0x080, 0x100, 0x200, 0x3F0
    AllDirs, CaseSensitive, NoDotAndDotDot, NoDot, NoDotDot, NoFilter = 0x400, 0x800, 0x1000, 0x2000, 0x4000, -1
    AllEntries = Dirs | Files | Drives
    ShowDirsOnly, DontResolveSymlinks, DontConfirmOverwrite, DontUseSheet = 0x01, 0x02, 0x04, 0x08
    DontUseNativeDialog, ReadOnly, HideNameFilterDetails = 0x10, 0x20, 0x40
    def __init__(self, parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent)
        self._filters = self.AllEntries | self.NoDotAndDotDot | self.Readable | self.Executable
        self._name_filters: list[str] = []
        self._options = 0
        self._regexp = name_filters_to_regexp([])
        self._valid = False
        layout = QtWidgets.QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        self._line_edit = QtWidgets.QLineEdit(self)
        self._line_edit.textChanged.connect(self._text_changed)
        layout.addWidget(self._line_edit)
        button = QtWidgets.QToolButton(self)
        button.setText("...")
        button.clicked.connect(self.browse)
        layout.addWidget(button)

    @property
    def currentPath(self) -> str:  # noqa: N802 - CTK's name
        return self._line_edit.text()

    @currentPath.setter
    def currentPath(self, path: str) -> None:  # noqa: N802
        self.setCurrentPath(path)

    @property
    def filters(self) -> int:
        return self._filters

    @filters.setter
    def filters(self, value: int) -> None:
        self._filters = int(value)

    @property
    def nameFilters(self) -> list[str]:  # noqa: N802
        return list(self._name_filters)

    @nameFilters.setter
    def nameFilters(self, value: list[str]) -> None:  # noqa: N802
        self._name_filters = [str(v) for v in value]
        self._regexp = name_filters_to_regexp(self._name_filters)

    @property
    def options(self) -> int:
        return self._options

    @options.setter
    def options(self, value: int) -> None:
        self._options = int(value)

    def setCurrentPath(self, path: str) -> None:  # noqa: N802
        """Show ``path``; ``currentPathChanged`` follows when the text changed and is acceptable."""
        self._line_edit.setText(str(path))

    def _text_changed(self, text: str) -> None:
        valid = re.fullmatch(self._regexp, text) is not None
        if valid:
            path = Path(text).absolute()
            try:  # QFileInfo never raises; a name too long for the file system is just not a file
                is_file = path.is_file()
            except OSError:
                is_file = False
            _last_directory[0] = str(path.parent if is_file else path)
            self.currentPathChanged.emit(text)
        if valid != self._valid:
            self._valid = valid
            self.validInputChanged.emit(valid)

    def browse(self) -> None:
        """Open the file dialog CTK opens for these filters; a chosen path becomes the current path."""
        dialog = sys.modules["qt"].QFileDialog
        start = self.currentPath or _last_directory[0]
        common: dict[str, Any] = {"parent": self, "dir": start, "options": self._options}
        if self._filters & self.Files:
            text_filter = ";;".join(self._name_filters)
            if self._filters & self.Writable:
                path = dialog.getSaveFileName(caption="Select a file to save ", filter=text_filter, **common)
            else:
                path = dialog.getOpenFileName(caption="Open a file", filter=text_filter, **common)
        else:
            path = dialog.getExistingDirectory(caption="Select a directory...", **common)
        if isinstance(path, tuple):  # PySide6's file-name dialogs return (path, chosen filter); C++ returns the path
            path = path[0]
        if path:
            self.setCurrentPath(path)


ctkPathLineEdit.OFFERS = Offers(
    signals={"currentPathChanged(QString)": "currentPathChanged", "validInputChanged(bool)": "validInputChanged"},
    slots=("setCurrentPath(QString)", "browse()"),
    properties=("currentPath", "filters", "nameFilters", "options"),
    enums={name: value for name, value in vars(ctkPathLineEdit).items() if name[:1].isupper() and isinstance(value, int)})
