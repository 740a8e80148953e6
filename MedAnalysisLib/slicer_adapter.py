"""Adapters between Slicer's MRML scene and the library's :class:`~MedAnalysisLib.volume.Volume`.

This is the only library module that touches ``slicer``; it imports it lazily (inside functions), so the package
imports without Slicer. It runs inside the Slicer application and on the scene of the ``slicer-core`` wheel.

Conventions:

* Slicer nodes hold geometry in RAS (``IJKToRAS``); a :class:`Volume` holds it in LPS. The conversion is done only
  by :meth:`Volume.from_ijk_to_ras` and :meth:`Volume.ijk_to_ras`, so geometry round-trips exactly.
* ``slicer.util.arrayFromVolume`` returns voxels in ``(k, j, i)`` order, the order of :attr:`Volume.array`.
* Input nodes are only read: their voxels are copied, never referenced, and nothing is set on them.
* Output nodes get the input's grid, the input's parent transform, and are placed under the input's study (its
  parent item) in the subject hierarchy.

Labels are described by objects with ``value``, ``name``, ``color`` ((r, g, b) integers 0-255) and ``terminology``
attributes (``MedAnalysisLib.bundles.LabelInfo``), or by dicts with the same keys.

Names set on the scene (node names, segment names, color table entries, table column names and text cells, plot
titles) come from bundles and files; they pass :func:`~MedAnalysisLib.sanitize.terminal_field` (:func:`_shown`), so
a control character, line break or bidirectional override in a label name shows as a visible escape in Slicer's
node lists, segment tables and tooltips instead of reshaping the text around it. Segments are matched to labels by
that same shown name, so a name round-trips through the scene.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np

from MedAnalysisLib.errors import GeometryError, ImageValidationError, InputError
from MedAnalysisLib.sanitize import terminal_field
from MedAnalysisLib.volume import Volume

#: Terminology context names Slicer uses for the category/type and anatomic-region code lists.
DEFAULT_TERMINOLOGY_CONTEXT = "Segmentation category and type - 3D Slicer General Anatomy list"
DEFAULT_ANATOMIC_CONTEXT = "Anatomic codes - DICOM master list"
BINARY_LABELMAP = "Binary labelmap"
#: Attribute set on the color tables :func:`labelmap_node_from_volume` makes, so that writing into the same labelmap
#: again updates its table instead of leaving the previous one behind.
COLOR_TABLE_ATTRIBUTE = "MedAnalysis.LabelColors"
#: The longest name set on the scene (a longer one ends with how many characters were left out).
NAME_LIMIT = 200


def _shown(value: Any) -> str:
    """A name from a bundle or a file as it is set on the scene (see the module docstring)."""
    return terminal_field(value, NAME_LIMIT)


@dataclass(frozen=True)
class Label:
    """One output class: label value in the label map, display name, RGB color 0-255, serialized terminology."""

    value: int
    name: str
    color: tuple[int, int, int]
    terminology: str

    @property
    def color_float(self) -> tuple[float, float, float]:
        return tuple(c / 255.0 for c in self.color)  # type: ignore[return-value]


# ---------------------------------------------------------------------------------------------- labels/terminology
def _field(item: Any, name: str, default: Any = None) -> Any:
    if isinstance(item, Mapping):
        return item.get(name, default)
    return getattr(item, name, default)


def _code_triple(code: Any) -> tuple[str, str, str]:
    """(scheme, value, meaning) of a coded concept given as a dict, a 3-sequence or ``"SCHEME^VALUE^Meaning"``."""
    if code is None or code == "":
        return ("", "", "")
    if isinstance(code, str):
        parts = code.split("^")
        if len(parts) != 3:
            raise InputError(f"expected a code as 'SCHEME^VALUE^Meaning', got {code!r}")
        return (parts[0], parts[1], parts[2])
    if isinstance(code, Mapping):
        def pick(*keys: str) -> str:
            for key in keys:
                if code.get(key) not in (None, ""):
                    return str(code[key])
            return ""

        return (
            pick("scheme", "coding_scheme", "CodingSchemeDesignator", "codingSchemeDesignator", "designator"),
            pick("code", "value", "code_value", "CodeValue", "codeValue"),
            pick("meaning", "code_meaning", "CodeMeaning", "codeMeaning"),
        )
    if isinstance(code, Sequence) and len(code) == 3:
        return (str(code[0]), str(code[1]), str(code[2]))
    raise InputError(f"expected a coded concept (dict, 3-tuple or 'SCHEME^VALUE^Meaning'), got {code!r}")


def terminology_string(terminology: Any, name: str = "") -> str:
    """Slicer's serialized terminology entry for a bundle label's terminology.

    Args:
        terminology: ``None``; an already serialized Slicer string (``"context~SCT^...^...~..."``); or a dict with
            ``category`` and ``type`` (required) and optionally ``type_modifier``, ``anatomic_region`` (or
            ``region``), ``anatomic_region_modifier``, ``context`` and ``anatomic_context``. Each code is a dict
            (``scheme``/``code``/``meaning`` or the DICOM names ``CodingSchemeDesignator``/``CodeValue``/
            ``CodeMeaning``), a 3-tuple, or ``"SCHEME^VALUE^Meaning"``.
        name: The label name, used for a generic "Tissue" type when there is no terminology.

    Returns:
        ``context~category~type~typeModifier~anatomicContext~region~regionModifier`` with codes as
        ``SCHEME^VALUE^Meaning``, the format of ``vtkSegment.SetTerminology``.
    """
    if isinstance(terminology, str) and "~" in terminology:
        return terminology
    if not terminology:
        # No standard code known: the generic SNOMED CT "Tissue" concept keeps the segment valid in Slicer's
        # terminology selector; the name stays the label name.
        terminology = {"category": ("SCT", "85756007", "Tissue"), "type": ("SCT", "85756007", "Tissue")}
    if not isinstance(terminology, Mapping):
        raise InputError(f"expected the terminology of label {name!r} as a dict or a Slicer string, got {terminology!r}")
    if not terminology.get("category") or not terminology.get("type"):
        raise InputError(
            f"expected the terminology of label {name!r} to hold at least 'category' and 'type', got keys "
            f"{sorted(terminology)}"
        )

    def code(*keys: str) -> str:
        for key in keys:
            if terminology.get(key):
                return "^".join(_code_triple(terminology[key]))
        return "^^"

    return "~".join(
        [
            str(terminology.get("context") or DEFAULT_TERMINOLOGY_CONTEXT),
            code("category"),
            code("type"),
            code("type_modifier", "typeModifier"),
            str(terminology.get("anatomic_context") or DEFAULT_ANATOMIC_CONTEXT),
            code("anatomic_region", "region", "anatomicRegion"),
            code("anatomic_region_modifier", "region_modifier", "anatomicRegionModifier"),
        ]
    )


def normalize_labels(labels: Iterable[Any] | Mapping[int, Any]) -> list[Label]:
    """Foreground labels (value > 0) as :class:`Label`, sorted by value; validates values, names and colors.

    Accepts ``LabelInfo`` objects, dicts with ``value``/``name``/``color``/``terminology``, or a mapping
    ``{value: name}``.
    """
    items: list[Any]
    if isinstance(labels, Mapping):
        items = [{"value": int(v), "name": str(n) if not isinstance(n, Mapping) else n.get("name")} for v, n in
                 labels.items()]
    else:
        items = list(labels)
    result: dict[int, Label] = {}
    for item in items:
        value = _field(item, "value")
        name = _field(item, "name")
        if value is None or int(value) != value or int(value) < 0:
            raise InputError(f"expected a non-negative integer label value, got {value!r}")
        if not name:
            raise InputError(f"expected a name for label {value}, got {name!r}")
        value = int(value)
        if value == 0:
            continue  # background is not a segment
        if value in result:
            raise InputError(f"expected unique label values, got {value} twice")
        color = _field(item, "color") or _default_color(value)
        if len(color) != 3 or not all(0 <= int(c) <= 255 for c in color):
            raise InputError(f"expected an (r, g, b) color with integers 0-255 for label {name!r}, got {color!r}")
        result[value] = Label(value, _shown(name), tuple(int(c) for c in color),  # type: ignore[arg-type]
                              terminology_string(_field(item, "terminology"), str(name)))
    return [result[v] for v in sorted(result)]


def _default_color(value: int) -> tuple[int, int, int]:
    palette = [(128, 174, 128), (241, 214, 145), (177, 122, 101), (111, 184, 210), (216, 101, 79), (221, 130, 101),
               (144, 238, 144), (192, 104, 88), (220, 245, 20), (78, 63, 0)]
    return palette[(value - 1) % len(palette)]


# ---------------------------------------------------------------------------------------------- matrices
def _vtk_matrix(array: np.ndarray) -> Any:
    import vtk

    matrix = vtk.vtkMatrix4x4()
    for row in range(4):
        for column in range(4):
            matrix.SetElement(row, column, float(array[row, column]))
    return matrix


def ijk_to_ras_array(node: Any) -> np.ndarray:
    """The node's 4x4 IJK-to-RAS matrix as a numpy array (local coordinates, parent transforms not applied)."""
    import vtk

    matrix = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(matrix)
    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])


# ---------------------------------------------------------------------------------------------- scene -> Volume
def volume_from_node(node: Any) -> Volume:
    """A :class:`Volume` copy of a scalar (or labelmap) volume node: voxels (k, j, i), geometry RAS -> LPS.

    The node's own IJK-to-RAS is used; a parent transform is not applied (outputs get the same parent transform,
    see :func:`place_like`). The node is not modified.

    Raises:
        InputError: the node is not a scalar volume node or holds no image data.
    """
    import slicer

    if node is None or not node.IsA("vtkMRMLScalarVolumeNode"):
        got = "nothing" if node is None else node.GetClassName()
        raise InputError(f"expected a scalar volume node (vtkMRMLScalarVolumeNode or labelmap), got {got}")
    if node.GetImageData() is None:
        raise InputError(f"expected volume node {node.GetName()!r} to hold image data, got an empty node")
    array = np.array(slicer.util.arrayFromVolume(node), copy=True)
    if array.ndim != 3:
        raise ImageValidationError(f"expected a 3D scalar volume (k, j, i), got voxels of shape {array.shape}")
    metadata: dict[str, Any] = {}
    modality = volume_modality(node)
    if modality:
        metadata["Modality"] = modality
    return Volume.from_ijk_to_ras(array, ijk_to_ras_array(node), metadata=metadata)


def volume_modality(node: Any) -> str:
    """The DICOM modality of a volume node (``"CT"``, ``"MR"``, ...) from its attributes or subject-hierarchy item;
    "" when unknown (volumes loaded from NIfTI/NRRD files)."""
    return _subject_hierarchy_attribute(node, "DICOM.Modality")


def _subject_hierarchy_attribute(node: Any, name: str) -> str:
    scene = node.GetScene()
    value = node.GetAttribute(name) or ""
    if scene is None or value:
        return value
    sh = scene.GetSubjectHierarchyNode()
    item = sh.GetItemByDataNode(node) if sh else 0
    return sh.GetItemAttribute(item, name) if item else ""


# ---------------------------------------------------------------------------------------------- Volume -> scene
def node_grid(node: Any) -> Volume:
    """The voxel grid of a volume node as a :class:`Volume` whose array is a zero-copy view (geometry only)."""
    dimensions = node.GetImageData().GetDimensions() if node.GetImageData() is not None else (0, 0, 0)
    shape = (dimensions[2], dimensions[1], dimensions[0])
    return Volume.from_ijk_to_ras(np.broadcast_to(np.zeros((), np.uint8), shape), ijk_to_ras_array(node))


def _require_grid(volume: Volume, reference: Any | None) -> None:
    if reference is None:
        return
    from MedAnalysisLib.volume import require_same_geometry

    require_same_geometry(node_grid(reference), volume, what="output")


def place_like(output: Any, reference: Any | None) -> None:
    """Give ``output`` the reference's parent transform and put it under the reference's parent item (its study)."""
    if reference is None:
        return
    if output.IsA("vtkMRMLTransformableNode") and reference.IsA("vtkMRMLTransformableNode"):
        output.SetAndObserveTransformNodeID(reference.GetTransformNodeID())
    scene = output.GetScene()
    sh = scene.GetSubjectHierarchyNode()
    reference_item = sh.GetItemByDataNode(reference)
    parent = sh.GetItemParent(reference_item) if reference_item else sh.GetSceneItemID()
    output_item = sh.GetItemByDataNode(output)
    if output_item:
        sh.SetItemParent(output_item, parent)
    else:  # the application creates items for new nodes; a bare scene does not
        sh.CreateItem(parent, output)


def _set_voxels(node: Any, volume: Volume) -> None:
    import slicer

    slicer.util.updateVolumeFromArray(node, np.ascontiguousarray(volume.array))
    node.SetIJKToRASMatrix(_vtk_matrix(volume.ijk_to_ras()))
    node.Modified()


def _node_ids(scene: Any) -> list[str]:
    """IDs of the scene's nodes, in the order they were added."""
    return [scene.GetNthNode(n).GetID() for n in range(scene.GetNumberOfNodes())]


def _remove_nodes_added_since(scene: Any, before: set[str]) -> None:
    """Remove, newest first, every node added to the scene after ``before`` (a set of node IDs) was taken."""
    for node_id in reversed([node_id for node_id in _node_ids(scene) if node_id not in before]):
        added = scene.GetNodeByID(node_id)
        if added is not None:  # removing a node can remove the nodes that came with it
            scene.RemoveNode(added)


@contextmanager
def _temporary_nodes(scene: Any) -> Iterator[None]:
    """Remove every node added to the scene inside the block, on every exit (temporary nodes and whatever Slicer
    adds along with them: display nodes, color tables)."""
    before = set(_node_ids(scene))
    try:
        yield
    finally:
        _remove_nodes_added_since(scene, before)


@contextmanager
def _removed_on_error(scene: Any) -> Iterator[None]:
    """Remove the nodes added inside the block when it raises, so a failed call leaves no half-made output."""
    before = set(_node_ids(scene))
    try:
        yield
    except BaseException:
        _remove_nodes_added_since(scene, before)
        raise


def _add_node(scene: Any, class_name: str, name: str, node: Any | None) -> Any:
    if node is not None:
        if not node.IsA(class_name):
            raise InputError(f"expected an output node of class {class_name}, got {node.GetClassName()}")
        return node
    return scene.AddNewNodeByClass(class_name, scene.GenerateUniqueName(_shown(name)))


def color_table_node(scene: Any, labels: Sequence[Label], name: str) -> Any:
    """A user color table node (0 = background, transparent) with one entry per label value.

    The table is an ordinary, saveable color node: shown to editors, so Slicer's Save Data dialog offers it (and gives
    it its default storage node) and the label names and colors survive saving and loading the labelmap.
    """
    table = scene.AddNewNodeByClass("vtkMRMLColorTableNode", scene.GenerateUniqueName(_shown(name)))
    table.SetTypeToUser()
    table.HideFromEditorsOff()  # color nodes are hidden by default; the Save Data dialog skips hidden nodes
    table.SetAttribute(COLOR_TABLE_ATTRIBUTE, "1")
    _fill_color_table(table, labels)
    return table


def _fill_color_table(table: Any, labels: Sequence[Label]) -> None:
    highest = max([label.value for label in labels], default=0)
    table.SetNumberOfColors(highest + 1)
    table.SetColor(0, "Background", 0.0, 0.0, 0.0, 0.0)
    for value in range(1, highest + 1):
        table.SetColor(value, "", 0.0, 0.0, 0.0, 0.0)
    for label in labels:
        table.SetColor(label.value, label.name, *label.color_float, 1.0)


def _own_color_table(scene: Any, display_node: Any) -> Any | None:
    """The color table :func:`color_table_node` made for this display node, when no other display node uses it."""
    colors = display_node.GetColorNode()
    if colors is None or not colors.IsA("vtkMRMLColorTableNode") or not colors.GetAttribute(COLOR_TABLE_ATTRIBUTE):
        return None
    for n in range(scene.GetNumberOfNodesByClass("vtkMRMLDisplayNode")):
        other = scene.GetNthNodeByClass(n, "vtkMRMLDisplayNode")
        if other.GetID() != display_node.GetID() and other.GetColorNodeID() == colors.GetID():
            return None
    return colors


def scalar_volume_node_from_volume(scene: Any, volume: Volume, name: str, *, reference_node: Any | None = None,
                                   node: Any | None = None) -> Any:
    """A scalar volume node (e.g. a probability map) holding ``volume``; placed like ``reference_node``."""
    if volume.array.ndim != 3:
        raise ImageValidationError(f"expected a single-component volume (k, j, i), got shape {volume.array.shape}")
    with _removed_on_error(scene):
        node = _add_node(scene, "vtkMRMLScalarVolumeNode", name, node)
        _set_voxels(node, volume)
        if node.GetDisplayNode() is None:
            node.CreateDefaultDisplayNodes()
        place_like(node, reference_node)
    return node


def labelmap_node_from_volume(scene: Any, label_volume: Volume, labels: Iterable[Any] | Mapping[int, Any], *,
                              name: str = "Labels", reference_node: Any | None = None,
                              node: Any | None = None) -> Any:
    """A labelmap volume node with a color table built from the bundle labels.

    Args:
        scene: The MRML scene.
        label_volume: Integer label map, (k, j, i), on the reference's grid when ``reference_node`` is given.
        labels: The bundle labels (value, name, color, terminology).
        name: Node name (made unique in the scene).
        reference_node: The input volume node: its grid is required, its transform and study are reused.
        node: An existing labelmap node to overwrite (the output the user chose); a new node otherwise. Its color
            table is updated in place when this function made it and nothing else uses it.
    """
    _require_integer(label_volume)
    _require_grid(label_volume, reference_node)
    label_list = normalize_labels(labels)
    with _removed_on_error(scene):
        node = _add_node(scene, "vtkMRMLLabelMapVolumeNode", name, node)
        _set_voxels(node, label_volume)
        if node.GetDisplayNode() is None:
            node.CreateDefaultDisplayNodes()
        colors = _own_color_table(scene, node.GetDisplayNode())
        if colors is not None:
            _fill_color_table(colors, label_list)
            colors.Modified()
        else:
            colors = color_table_node(scene, label_list, f"{node.GetName()} colors")
        node.GetDisplayNode().SetAndObserveColorNodeID(colors.GetID())
        place_like(node, reference_node)
    return node


def _require_integer(volume: Volume) -> None:
    if volume.array.ndim != 3 or not np.issubdtype(volume.array.dtype, np.integer):
        raise ImageValidationError(
            f"expected an integer label map (k, j, i), got dtype {volume.array.dtype} and shape {volume.array.shape}"
        )


def segmentation_node_from_volume(scene: Any, label_volume: Volume, labels: Iterable[Any] | Mapping[int, Any], *,
                                  name: str = "Segmentation", reference_node: Any | None = None,
                                  node: Any | None = None) -> Any:
    """A segmentation node with one segment per bundle label (names, colors, terminology), in one shared layer.

    Every foreground label of the bundle gets a segment, also when the prediction holds none of its voxels, so the
    user sees every class the model knows. Label values in the map that the bundle does not name are refused.
    The input volume becomes the segmentation's reference geometry.

    Args: see :func:`labelmap_node_from_volume`; ``node`` is an existing segmentation node to overwrite.
    """
    _require_integer(label_volume)
    _require_grid(label_volume, reference_node)
    label_list = normalize_labels(labels)
    unknown = _unknown_values(label_volume.array, {0} | {label.value for label in label_list})
    if unknown:
        raise InputError(
            f"expected only the bundle's label values {[label.value for label in label_list]} in the label map, got "
            f"also {unknown}"
        )
    highest = max([label.value for label in label_list], default=0)
    dtype = np.uint8 if highest < 256 else np.uint16
    layer = _oriented_image(label_volume.with_array(label_volume.array.astype(dtype)))

    with _removed_on_error(scene):
        node = _fill_segmentation(scene, layer, label_list, name, reference_node, node)
    return node


def _oriented_image(volume: Volume) -> Any:
    """A ``vtkOrientedImageData`` holding a copy of ``volume``'s voxels and geometry (RAS).

    The labelmap node it is made from is never added to the scene. ``CreateOrientedImageDataFromVolumeNode`` returns
    a new object the caller owns (C++ takes it with ``vtkSmartPointer::Take``; Slicer's Python calls
    ``UnRegister(None)`` on it); without the release the image, one full-size labelmap, is never freed.
    """
    import slicer

    temporary = slicer.vtkMRMLLabelMapVolumeNode()
    _set_voxels(temporary, volume)
    image = slicer.vtkSlicerSegmentationsModuleLogic.CreateOrientedImageDataFromVolumeNode(temporary)
    if image is None:
        raise ImageValidationError(f"expected Slicer to accept the label map of shape {volume.array.shape}, got "
                                   "no image from it")
    # A fresh object: this wrapper and the reference the caller owns are its only holders. The check keeps this
    # right should Slicer ever mark the method as returning a new instance (the wrapper would then own it alone).
    if image.GetReferenceCount() > 1:
        image.UnRegister(None)
    return image


def _fill_segmentation(scene: Any, layer: Any, label_list: list[Label], name: str, reference_node: Any | None,
                       node: Any | None) -> Any:
    import slicer

    node = _add_node(scene, "vtkMRMLSegmentationNode", name, node)
    segmentation = node.GetSegmentation()
    segmentation.RemoveAllSegments()
    segmentation.SetSourceRepresentationName(BINARY_LABELMAP)
    if reference_node is not None:
        node.SetReferenceImageGeometryParameterFromVolumeNode(reference_node)
    else:
        node.SetReferenceImageGeometryParameterFromVolumeNode(None)
    for label in label_list:
        segment = slicer.vtkSegment()
        segment.SetName(label.name)
        segment.SetNameAutoGenerated(False)
        segment.SetColor(*label.color_float)
        segment.SetColorAutoGenerated(False)
        segment.SetTerminology(label.terminology)
        segment.SetLabelValue(label.value)
        segment.AddRepresentation(BINARY_LABELMAP, layer)
        segmentation.AddSegment(segment, _segment_id(label))
    if node.GetDisplayNode() is None:
        node.CreateDefaultDisplayNodes()
    place_like(node, reference_node)
    return node


def _unknown_values(array: np.ndarray, known: set[int]) -> list[int]:
    """Sorted values of an integer label array that are not in ``known``.

    A lookup table indexed by the voxels answers in one pass without sorting (``np.unique`` on a 512x512x300 map
    takes seconds); the slow exact listing only runs when something unknown is there.
    """
    low, high = int(array.min()), int(array.max())
    if low >= 0 and high < 2**16:
        allowed = np.zeros(high + 1, dtype=bool)
        allowed[[v for v in known if v <= high]] = True
        if allowed[array].all():
            return []
    return sorted({int(v) for v in np.unique(array)} - known)


def _segment_id(label: Label) -> str:
    return f"label_{label.value}"


def label_volume_from_segmentation(segmentation_node: Any, labels: Iterable[Any] | Mapping[int, Any],
                                   reference_node: Any) -> Volume:
    """The segments named like the bundle labels, exported as one label map on the reference volume's grid.

    Used to turn user segmentations into training labels. Segments are matched to labels by name (case-insensitive);
    a label without a segment stays empty, a segment without a label is ignored.

    The scene is left as it was: the temporary labelmap, and the display node and ``<segmentation>_ColorTable`` color
    table Slicer's export adds for it (and a segmentation display node, when the segmentation had none), are removed,
    also when the export fails.

    Raises:
        InputError: no segment matches any label name.
    """
    import slicer
    import vtk

    label_list = normalize_labels(labels)
    segmentation = segmentation_node.GetSegmentation()
    by_name = {_shown(segmentation.GetNthSegment(n).GetName()).lower(): segmentation.GetNthSegmentID(n)
               for n in range(segmentation.GetNumberOfSegments())}
    reference = volume_from_node(reference_node)
    highest = max([label.value for label in label_list], default=0)
    result = np.zeros(reference.shape, np.uint16 if highest > 255 else np.uint8)
    scene = segmentation_node.GetScene()
    matched = [(label, by_name[label.name.lower()]) for label in label_list if label.name.lower() in by_name]
    if matched:
        with _temporary_nodes(scene):
            exported = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "__medanalysis_temporary__")
            for label, segment_id in matched:
                ids = vtk.vtkStringArray()
                ids.InsertNextValue(segment_id)
                if not slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode(
                        segmentation_node, ids, exported, reference_node):
                    raise GeometryError(f"could not export segment {label.name!r} on the reference volume's grid")
                result[slicer.util.arrayFromVolume(exported) > 0] = label.value
    if not matched:
        raise InputError(
            f"expected segments named like the labels {[label.name for label in label_list]}, got segments "
            f"{sorted(by_name)}"
        )
    return reference.with_array(result)


# ---------------------------------------------------------------------------------------------- tables and plots
def table_node_from_rows(scene: Any, rows: Sequence[Mapping[str, Any]], name: str, *,
                         columns: Sequence[str] | None = None, units: Mapping[str, str] | None = None,
                         reference_node: Any | None = None, node: Any | None = None) -> Any:
    """A table node with one row per dict: integer, float and string columns typed as such.

    Args:
        scene: The MRML scene.
        rows: Table rows; every row has the same keys (missing values become empty/NaN).
        name: Node name (made unique).
        columns: Column order (default: the keys of the first row, in order).
        units: Optional unit label per column (``"mm3"``, ``"mL"``), shown by Slicer's table view.
        reference_node: Node whose study the table is placed under.
        node: Existing table node to overwrite.
    """
    with _removed_on_error(scene):
        node = _add_node(scene, "vtkMRMLTableNode", name, node)
        _fill_table(node, rows, columns, units)
        place_like(node, reference_node)
    return node


def _fill_table(node: Any, rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None,
                units: Mapping[str, str] | None) -> None:
    import vtk

    table = node.GetTable()
    table.Initialize()
    columns = list(columns or (list(rows[0]) if rows else []))
    for column in columns:
        values = [row.get(column) for row in rows]
        present = [v for v in values if v is not None]
        if present and all(isinstance(v, (bool, np.bool_)) for v in present):
            array = vtk.vtkIntArray()
            converted = [int(bool(v)) if v is not None else 0 for v in values]
        elif present and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in present) \
                and len(present) == len(values):
            array = vtk.vtkIntArray()
            converted = [int(v) for v in values]
        elif present and all(isinstance(v, (int, float, np.integer, np.floating)) for v in present):
            array = vtk.vtkDoubleArray()
            converted = [float(v) if v is not None else float("nan") for v in values]
        else:
            array = vtk.vtkStringArray()
            converted = ["" if v is None else _shown(v) for v in values]
        array.SetName(_shown(column))
        for value in converted:
            array.InsertNextValue(value)
        table.AddColumn(array)
    for column, unit in (units or {}).items():
        if column in columns:
            node.SetColumnUnitLabel(_shown(column), unit)
    node.SetUseColumnTitleAsColumnHeader(True)
    node.Modified()


def rows_from_table_node(node: Any) -> list[dict[str, Any]]:
    """The rows of a table node as dicts (numbers as float/int, strings as str), for tests and exports."""
    table = node.GetTable()
    rows: list[dict[str, Any]] = [{} for _ in range(table.GetNumberOfRows())]
    for c in range(table.GetNumberOfColumns()):
        column = table.GetColumn(c)
        for r, row in enumerate(rows):
            if column.IsA("vtkStringArray"):
                row[column.GetName()] = column.GetValue(r)
            elif column.IsA("vtkIntArray"):
                row[column.GetName()] = int(column.GetValue(r))
            else:
                row[column.GetName()] = float(column.GetValue(r))
    return rows


def plot_chart_from_table(scene: Any, table_node: Any, x_column: str, y_columns: Sequence[str], *, title: str,
                          x_title: str, y_title: str, colors: Mapping[str, tuple[int, int, int]] | None = None,
                          reference_node: Any | None = None, chart_node: Any | None = None) -> Any:
    """A plot chart node with one line series per ``y_columns`` entry against ``x_column`` of ``table_node``.

    With ``chart_node`` (an existing chart) its series are replaced: the series nodes it held are removed from the
    scene, except those another chart also shows.
    """
    with _removed_on_error(scene):
        chart = _add_node(scene, "vtkMRMLPlotChartNode", title, chart_node)
        _remove_plot_series(scene, chart)
        chart.SetTitle(_shown(title))
        chart.SetXAxisTitle(_shown(x_title))
        chart.SetYAxisTitle(_shown(y_title))
        chart.SetLegendVisibility(True)
        for index, column in enumerate(y_columns):
            series = scene.AddNewNodeByClass("vtkMRMLPlotSeriesNode",
                                             scene.GenerateUniqueName(_shown(f"{title} {column}")))
            series.SetAndObserveTableNodeID(table_node.GetID())
            series.SetXColumnName(_shown(x_column))
            series.SetYColumnName(_shown(column))
            series.SetPlotType(series.PlotTypeScatter)
            series.SetMarkerStyle(series.MarkerStyleNone)
            color = (colors or {}).get(column) or _default_color(index + 1)
            series.SetColor(*(c / 255.0 for c in color))
            chart.AddAndObservePlotSeriesNodeID(series.GetID())
            place_like(series, reference_node)
        place_like(chart, reference_node)
    return chart


def _remove_plot_series(scene: Any, chart: Any) -> None:
    """Detach every series from ``chart`` and remove from the scene those no other chart shows."""
    held = [chart.GetNthPlotSeriesNodeID(n) for n in range(chart.GetNumberOfPlotSeriesNodes())]
    chart.RemoveAllPlotSeriesNodeIDs()
    others = [scene.GetNthNodeByClass(n, "vtkMRMLPlotChartNode")
              for n in range(scene.GetNumberOfNodesByClass("vtkMRMLPlotChartNode"))]
    others = [other for other in others if other.GetID() != chart.GetID()]
    for series_id in dict.fromkeys(held):
        series = scene.GetNodeByID(series_id) if series_id else None
        if series is not None and not any(other.HasPlotSeriesNodeID(series_id) for other in others):
            scene.RemoveNode(series)


def study_item(node: Any) -> int:
    """The subject-hierarchy item that holds ``node`` (its study when loaded from DICOM); 0 when none."""
    scene = node.GetScene()
    sh = scene.GetSubjectHierarchyNode()
    item = sh.GetItemByDataNode(node)
    return int(sh.GetItemParent(item)) if item else 0


def snapshot(node: Any) -> tuple[np.ndarray, np.ndarray, int]:
    """(voxel copy, IJK-to-RAS, modified time) of a volume node, to prove an input was not modified."""
    import slicer

    return np.array(slicer.util.arrayFromVolume(node), copy=True), ijk_to_ras_array(node), int(node.GetMTime())


def require_scene(node: Any) -> Any:
    """The node's scene, or an InputError when the node is not in a scene."""
    scene = node.GetScene() if node is not None else None
    if scene is None:
        raise InputError("expected a node that belongs to an MRML scene, got a node outside any scene")
    return scene


__all__ = [
    "Label",
    "color_table_node",
    "label_volume_from_segmentation",
    "labelmap_node_from_volume",
    "node_grid",
    "normalize_labels",
    "place_like",
    "plot_chart_from_table",
    "rows_from_table_node",
    "scalar_volume_node_from_volume",
    "segmentation_node_from_volume",
    "snapshot",
    "study_item",
    "table_node_from_rows",
    "terminology_string",
    "volume_from_node",
    "volume_modality",
]
