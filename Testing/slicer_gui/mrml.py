"""Look-alikes of Slicer's MRML widgets, working on the real slicer-core scene (``slicer.qMRML*`` once installed).

- ``qMRMLWidget``: ``setMRMLScene(vtkMRMLScene*)`` emits ``mrmlSceneChanged(vtkMRMLScene*)`` when the scene
  changes; .ui ``<connections>`` carry it to the children.
- ``qMRMLNodeComboBox``: lists the scene's nodes in scene order, filtered as qMRMLSortFilterProxyModel does (nodes
  with HideFromEditors unless ``showHidden``; ``nodeTypes`` by ``IsA``; with ``showChildNodeTypes`` false only the
  exact classes; ``hideChildNodeTypes``); follows NodeAdded/NodeRemoved, batch/close/import ends and each node's
  ModifiedEvent (name, HideFromEditors). Selection as in Qt5's QComboBox under qMRMLNodeComboBox: ``setMRMLScene``
  selects the first node (None with ``noneEnabled``); a removed or filtered-out current node gives way to the node
  after it, else the last one, else none; a node added to a combo box that shows no item at all (no None item, no
  add/remove/rename/edit actions) becomes current. ``currentNodeChanged(vtkMRMLNode*)``, ``currentNodeChanged(bool)``
  and ``currentNodeIDChanged(QString)`` follow every change of the current item and a rename of the current node.
  Like the real widget it is disabled while it has no scene. Not provided: attribute filters, node creation.
- ``qMRMLPlotWidget``: holds the plot view node given to ``setMRMLPlotViewNode``.
"""

from __future__ import annotations

import weakref
from typing import Any

import shiboken6
import slicer
from PySide6 import QtWidgets
from PySide6.QtCore import Signal

from .pythonqt import Offers, PythonQtObject

_SCENE_RESET_EVENTS = ("EndBatchProcessEvent", "EndCloseEvent", "EndImportEvent", "EndRestoreEvent")
_combo_boxes: weakref.WeakSet[qMRMLNodeComboBox] = weakref.WeakSet()


def detach_all() -> None:
    """Remove every combo box's scene observers (before a test's scene is closed)."""
    for combo in list(_combo_boxes):
        if shiboken6.isValid(combo):
            combo._observe(None)


class qMRMLWidget(PythonQtObject, QtWidgets.QWidget):  # noqa: N801 - Slicer's name
    """A widget with an MRML scene."""

    mrmlSceneChanged = Signal(object)
    OFFERS = Offers(signals={"mrmlSceneChanged(vtkMRMLScene*)": "mrmlSceneChanged"},
                    slots=("setMRMLScene(vtkMRMLScene*)",), invokables=("mrmlScene()",))

    def __init__(self, parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent)
        self._scene: slicer.vtkMRMLScene | None = None

    def setMRMLScene(self, scene: slicer.vtkMRMLScene | None) -> None:  # noqa: N802 - Slicer's name
        if scene is not self._scene:
            self._scene = scene
            self.mrmlSceneChanged.emit(scene)

    def mrmlScene(self) -> slicer.vtkMRMLScene | None:  # noqa: N802
        return self._scene


class qMRMLPlotWidget(qMRMLWidget):  # noqa: N801
    """Plot view widget: keeps its plot view node (nothing is rendered)."""

    OFFERS = Offers(slots=("setMRMLPlotViewNode(vtkMRMLPlotViewNode*)",), invokables=("mrmlPlotViewNode()",))

    def __init__(self, parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent)
        self._view_node: slicer.vtkMRMLPlotViewNode | None = None

    def setMRMLPlotViewNode(self, node: slicer.vtkMRMLPlotViewNode | None) -> None:  # noqa: N802
        if node is not None and not node.IsA("vtkMRMLPlotViewNode"):
            raise TypeError(f"expected a vtkMRMLPlotViewNode, got {node.GetClassName()}")
        self._view_node = node

    def mrmlPlotViewNode(self) -> slicer.vtkMRMLPlotViewNode | None:  # noqa: N802
        return self._view_node


def _setting(name: str, refresh: bool = True) -> property:
    """A Q_PROPERTY of the combo box as a Python attribute; changing a filter re-lists the nodes."""

    def get(self: qMRMLNodeComboBox) -> Any:
        value = self._settings[name]
        return list(value) if isinstance(value, list) else value

    def set_(self: qMRMLNodeComboBox, value: Any) -> None:
        self._settings[name] = [str(v) for v in value if str(v)] if isinstance(self._settings[name], list) else value
        if refresh:
            self._refresh()

    return property(get, set_, doc=f"qMRMLNodeComboBox's ``{name}`` property.")


#: The combo box's Q_PROPERTYs this look-alike offers, with qMRMLNodeComboBox's defaults.
_COMBO_SETTINGS: dict[str, Any] = {
    "nodeTypes": [], "showChildNodeTypes": True, "hideChildNodeTypes": [], "showHidden": False, "noneEnabled": False,
    "addEnabled": True, "removeEnabled": True, "editEnabled": False, "renameEnabled": False, "noneDisplay": "None",
    "baseName": ""}


class qMRMLNodeComboBox(PythonQtObject, QtWidgets.QWidget):  # noqa: N801
    """Node selector on the real scene (see the module docstring)."""

    currentNodeChanged = Signal((object,), (bool,))
    currentNodeIDChanged = Signal(str)
    nodeAdded = Signal(object)
    nodeAboutToBeRemoved = Signal(object)
    OFFERS = Offers(
        signals={"currentNodeChanged(vtkMRMLNode*)": "currentNodeChanged",
                 "currentNodeChanged(bool)": "currentNodeChanged[bool]",
                 "currentNodeIDChanged(QString)": "currentNodeIDChanged",
                 "nodeAdded(vtkMRMLNode*)": "nodeAdded", "nodeAboutToBeRemoved(vtkMRMLNode*)": "nodeAboutToBeRemoved"},
        slots=("setMRMLScene(vtkMRMLScene*)", "setCurrentNode(vtkMRMLNode*)", "setCurrentNodeID(QString)"),
        invokables=("currentNode()", "mrmlScene()", "nodeCount()", "nodeFromIndex(int)"),
        properties=(*_COMBO_SETTINGS, "currentNodeID"))

    def __init__(self, parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent)
        self._settings: dict[str, Any] = {k: list(v) if isinstance(v, list) else v for k, v in _COMBO_SETTINGS.items()}
        self._scene: slicer.vtkMRMLScene | None = None
        self._scene_tags: list[int] = []
        self._node_tags: dict[str, tuple[slicer.vtkMRMLNode, int]] = {}
        self._nodes: list[slicer.vtkMRMLNode] = []
        self._current: slicer.vtkMRMLNode | None = None
        self._current_name = ""
        self._requested: slicer.vtkMRMLNode | str | None = None
        self._combo = QtWidgets.QComboBox(self)
        self._combo.activated.connect(self._user_selected)
        layout = QtWidgets.QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self._combo)
        self.setEnabled(False)
        _combo_boxes.add(self)

    # ------------------------------------------------------------------ filtering and listing
    def _accepts(self, node: slicer.vtkMRMLNode) -> bool:
        settings = self._settings
        if not settings["showHidden"] and node.GetHideFromEditors():
            return False
        if not settings["nodeTypes"]:
            return True
        for node_type in settings["nodeTypes"]:
            if not node.IsA(node_type):
                continue
            if not settings["showChildNodeTypes"] and node_type != node.GetClassName():
                continue
            if settings["showChildNodeTypes"] and any(node.IsA(t) for t in settings["hideChildNodeTypes"]):
                return False
            return True
        return False

    def _scene_nodes(self) -> list[slicer.vtkMRMLNode]:
        scene = self._scene
        return [scene.GetNthNode(i) for i in range(scene.GetNumberOfNodes())] if scene is not None else []

    def _observe(self, scene: slicer.vtkMRMLScene | None) -> None:
        if self._scene is not None:
            for tag in self._scene_tags:
                self._scene.RemoveObserver(tag)
        for node, tag in self._node_tags.values():
            node.RemoveObserver(tag)
        self._scene, self._scene_tags, self._node_tags = scene, [], {}
        if scene is not None:
            self._scene_tags = [scene.AddObserver(getattr(scene, event), self._scene_event)
                                for event in ("NodeAddedEvent", "NodeRemovedEvent", *_SCENE_RESET_EVENTS)]

    def _scene_event(self, caller: Any, event: str) -> None:
        if shiboken6.isValid(self) and not (event in ("NodeAddedEvent", "NodeRemovedEvent")
                                            and self._scene is not None and self._scene.IsBatchProcessing()):
            self._refresh()

    def _node_modified(self, caller: Any, event: str) -> None:
        if shiboken6.isValid(self):
            self._refresh()

    def _relist(self) -> list[slicer.vtkMRMLNode]:
        """Re-list the nodes and keep the node observers in step; returns the previous list."""
        candidates = [n for n in self._scene_nodes()
                      if not self._settings["nodeTypes"] or any(n.IsA(t) for t in self._settings["nodeTypes"])]
        for node_id in set(self._node_tags) - {n.GetID() for n in candidates}:
            node, tag = self._node_tags.pop(node_id)
            node.RemoveObserver(tag)
        for node in candidates:
            if node.GetID() not in self._node_tags:
                self._node_tags[node.GetID()] = (node, node.AddObserver("ModifiedEvent", self._node_modified))
        old, self._nodes = self._nodes, [n for n in candidates if self._accepts(n)]
        for node in old:
            if node not in self._nodes:
                self.nodeAboutToBeRemoved.emit(node)
        for node in self._nodes:
            if node not in old:
                self.nodeAdded.emit(node)
        return old

    def _refresh(self) -> None:
        """Re-list the nodes and move the selection as the real widget does."""
        old = self._relist()
        current = self._current
        if current is not None and current not in self._nodes:
            position = old.index(current) if current in old else 0
            current = self._nodes[min(position, len(self._nodes) - 1)] if self._nodes else None
        elif current is None and self._nodes and not old and not self._has_extra_items():
            current = self._nodes[0]
        self._show(current)

    def _has_extra_items(self) -> bool:
        return any(self._settings[k] for k in ("noneEnabled", "addEnabled", "removeEnabled", "renameEnabled",
                                               "editEnabled"))

    def _show(self, node: slicer.vtkMRMLNode | None, force_emit: bool = False) -> None:
        none_item = [self._settings["noneDisplay"]] if self._settings["noneEnabled"] else []
        names = none_item + [n.GetName() or "" for n in self._nodes]
        blocked = self._combo.blockSignals(True)
        self._combo.clear()
        self._combo.addItems(names)
        index = self._nodes.index(node) + len(none_item) if node is not None else (0 if none_item else -1)
        self._combo.setCurrentIndex(index)
        self._combo.blockSignals(blocked)
        name = node.GetName() or "" if node is not None else ""
        changed = node is not self._current or (node is not None and name != self._current_name)
        self._current, self._current_name = node, name
        if changed or force_emit:
            self.currentNodeChanged[object].emit(node)
            self.currentNodeChanged[bool].emit(node is not None)
            self.currentNodeIDChanged.emit(node.GetID() if node is not None else "")

    def _user_selected(self, index: int) -> None:
        offset = 1 if self._settings["noneEnabled"] else 0
        self._show(self._nodes[index - offset] if index >= offset else None)

    # ------------------------------------------------------------------ public API (see OFFERS)
    def setMRMLScene(self, scene: slicer.vtkMRMLScene | None) -> None:  # noqa: N802 - Slicer's name
        """Show ``scene``'s nodes; the requested node, else the first node (None with noneEnabled) is current."""
        if scene is self._scene:
            return
        had_nodes, previous = self.nodeCount() > 0, self.currentNodeID
        self._observe(scene)
        self._relist()
        requested, self._requested = self._requested, None
        if had_nodes:
            wanted = scene.GetNodeByID(previous) if scene is not None and previous else None
        elif isinstance(requested, str):
            wanted = scene.GetNodeByID(requested) if scene is not None and requested else None
        elif requested is not None:
            wanted = requested
        else:
            wanted = self._nodes[0] if self._nodes and not self._settings["noneEnabled"] else None
        self._show(wanted if wanted in self._nodes else None, force_emit=True)
        self.setEnabled(scene is not None)

    def mrmlScene(self) -> slicer.vtkMRMLScene | None:  # noqa: N802
        return self._scene

    def currentNode(self) -> slicer.vtkMRMLNode | None:  # noqa: N802
        return self._current

    @property
    def currentNodeID(self) -> str:  # noqa: N802
        return self._current.GetID() if self._current is not None else ""

    def setCurrentNode(self, node: slicer.vtkMRMLNode | None) -> None:  # noqa: N802
        """Select ``node``; a node this combo box does not list selects none."""
        if node is not None and not isinstance(node, slicer.vtkMRMLNode):
            raise TypeError(f"expected a vtkMRMLNode or None, got {node!r} (use setCurrentNodeID for an ID)")
        if self._scene is None:
            self._requested = node
        self._show(node if node in self._nodes else None)

    def setCurrentNodeID(self, node_id: str) -> None:  # noqa: N802
        if self._scene is None:
            self._requested = node_id
            return
        self.setCurrentNode(self._scene.GetNodeByID(node_id) if node_id else None)

    def nodeCount(self) -> int:  # noqa: N802
        return len(self._nodes) if self._scene is not None else 0

    def nodeFromIndex(self, index: int) -> slicer.vtkMRMLNode | None:  # noqa: N802
        return self._nodes[index] if 0 <= index < len(self._nodes) else None


for _name in _COMBO_SETTINGS:
    setattr(qMRMLNodeComboBox, _name, _setting(_name, refresh=_name != "baseName"))
