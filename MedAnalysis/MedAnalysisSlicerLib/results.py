"""Uncertainty maps and explanations in the scene: volume nodes ready to overlay, and the table columns they add.

Plain Python (no Qt). A map is a float volume in [0, 1] on the input's grid (per-voxel entropy, member disagreement,
a class-activation heatmap); it becomes a scalar volume node named from the input and the model (never from DICOM
attributes), with a colour table node of the default scene suited to 0..1 data, a fixed 0..1 window, the input's
parent transform and its place in the subject hierarchy (under the input's study, as the label map).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from MedAnalysisLib import slicer_adapter
from MedAnalysisLib.errors import MedAnalysisError
from MedAnalysisLib.sanitize import terminal_field
from MedAnalysisLib.volume import require_same_geometry

#: Map kinds a prediction can give, the table column each adds (segmentation), and the file key words of a sidecar.
UNCERTAINTY_KINDS = ("entropy", "disagreement")
#: Sidecar ``outputs`` key of each map kind (``medanalysis predict --uncertainty --explain``).
SIDECAR_KEYS = {"entropy": "uncertainty_entropy", "disagreement": "uncertainty_disagreement",
                "explanation": "explanation"}


def mapColorNodeID(kind: str) -> str:
    """The colour node of a map kind: Iron (black-red-yellow-white) for uncertainty, Rainbow for an explanation
    heatmap; both are among the colour table nodes every Slicer scene has (``vtkMRMLColorTableNode`` types)."""
    import slicer

    table = slicer.vtkMRMLColorTableNode.Rainbow if kind == "explanation" else slicer.vtkMRMLColorTableNode.Iron
    return slicer.vtkMRMLColorLogic.GetColorTableNodeID(table)


def mapNode(scene: Any, volume: Any, name: str, kind: str, reference: Any) -> Any:
    """A scalar volume node holding a 0..1 map on the reference's grid, coloured and windowed for overlaying.

    Raises:
        GeometryError: the map is not on the reference's grid (nothing is added to the scene).
    """
    require_same_geometry(slicer_adapter.node_grid(reference), volume, what=f"{kind} map")
    node = slicer_adapter.scalar_volume_node_from_volume(scene, volume.with_array(
        np.asarray(volume.array, np.float32)), name, reference_node=reference)
    display = node.GetDisplayNode()
    colorID = mapColorNodeID(kind)
    if scene.GetNodeByID(colorID) is not None:
        display.SetAndObserveColorNodeID(colorID)
    display.AutoWindowLevelOff()
    display.SetWindowLevelMinMax(0.0, 1.0)
    node.SetAttribute("MedAnalysis.MapKind", kind)
    return node


def requireOnGrid(reference: Any, maps: dict[str, Any]) -> None:
    """Every map (kind -> Volume or None) on the reference node's grid, checked before any node is made, so a map
    off the grid leaves the scene as it was (GeometryError)."""
    grid = slicer_adapter.node_grid(reference)
    for kind, volume in maps.items():
        if volume is not None:
            require_same_geometry(grid, volume, what=f"{kind} map")


def meanPerLabel(labelVolume: Any, mapVolume: Any) -> dict[int, float]:
    """``{label value: mean of the map over that label's voxels}`` (labels without voxels are left out)."""
    labels = np.asarray(labelVolume.array).ravel().astype(np.int64)
    values = np.asarray(mapVolume.array, np.float64).ravel()
    if labels.shape != values.shape:
        raise MedAnalysisError(f"expected an uncertainty map on the label map's grid, got {values.size} voxels for "
                               f"{labels.size}")
    counts = np.bincount(labels)
    sums = np.bincount(labels, weights=values, minlength=counts.size)
    return {int(value): float(sums[value] / counts[value]) for value in np.nonzero(counts)[0]}


def addUncertaintyColumns(rows: list[dict], labelVolume: Any, maps: dict[str, Any],
                          libraryRows: list | None = None) -> list[dict]:
    """The per-label table rows with ``mean_entropy`` / ``mean_disagreement`` (NaN for labels without voxels).

    The library's own figures (``libraryRows``: the prediction's table, or the sidecar's ``volumes``) are used where
    they are numbers, so the scene shows what the files say; otherwise the mean is taken over the label's voxels."""
    given = {int(r["value"]): r for r in (libraryRows or []) if isinstance(r, dict)
             and isinstance(r.get("value"), int) and not isinstance(r.get("value"), bool)}
    for kind in UNCERTAINTY_KINDS:
        if kind not in maps:
            continue
        column, means = f"mean_{kind}", None
        for row in rows:
            value = given.get(int(row.get("value", -1)), {}).get(column)
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                means = meanPerLabel(labelVolume, maps[kind]) if means is None else means
                value = means.get(int(row.get("value", -1)), float("nan"))
            row[column] = float(value)
    return rows


def sidecarMapFiles(record: dict, outputFolder: Path) -> dict[str, Path]:
    """``{map kind: file}`` of the uncertainty and explanation maps a case sidecar lists in its ``outputs``.

    Only names of files directly in ``outputFolder`` are accepted (the sidecar is the child's, but a name with a
    folder part would read outside the job's scratch folder)."""
    files: dict[str, Path] = {}
    outputs = record.get("outputs") if isinstance(record.get("outputs"), dict) else {}
    for kind, key in SIDECAR_KEYS.items():
        name = outputs.get(key)
        if name is None:
            continue
        if not isinstance(name, str) or Path(name).name != name or name in ("", ".", "..") or "\\" in name:
            raise MedAnalysisError(f"expected a file name in the prediction's sidecar for {key}, got "
                                   f"{terminal_field(repr(name), 120)}")
        files[kind] = outputFolder / name
    return files


def mergeContributions(perSlice: list[dict] | None, contributions: list[dict] | None) -> list[dict] | None:
    """Per-slice rows with the explanation's ``contribution`` of each slice to the scan score (cnn_rnn); rows made
    from the contributions alone when the model gives no per-slice probabilities."""
    if not contributions:
        return perSlice
    bySlice = {int(c["slice"]): c for c in contributions if isinstance(c, dict) and "slice" in c}
    if not perSlice:
        return [{"slice": index, "position_lps": c.get("position_lps"), "contribution": float(c["contribution"])}
                for index, c in sorted(bySlice.items())]
    merged = []
    for row in perSlice:
        extra = bySlice.get(int(row["slice"])) if row.get("slice") is not None else None
        merged.append({**row, "contribution": float(extra["contribution"])} if extra and "contribution" not in row
                      else dict(row))
    return merged


def spreadBands(rows: list[dict], probabilityColumns: list[str]) -> dict[str, str]:
    """Add "<column> - spread" and "<column> + spread" to each per-slice row and return ``{band column: column}``.

    A per-class spread (``spread_<name>`` next to ``p_<name>``) bands that class; a single ``spread`` column bands
    the last probability column (the positive class of a binary model)."""
    bands: dict[str, str] = {}
    for column in probabilityColumns:
        name = column[2:]
        spreadColumn = f"spread_{name}" if any(f"spread_{name}" in row for row in rows) else (
            "spread" if column == probabilityColumns[-1] and any("spread" in row for row in rows) else None)
        if spreadColumn is None:
            continue
        low, high = f"{column} - spread", f"{column} + spread"
        for row in rows:
            p, s = row.get(column), row.get(spreadColumn)
            ok = isinstance(p, (int, float)) and isinstance(s, (int, float))
            row[low] = max(0.0, float(p) - float(s)) if ok else float("nan")
            row[high] = min(1.0, float(p) + float(s)) if ok else float("nan")
        bands[low] = bands[high] = column
    return bands


def lighter(color: tuple[int, int, int]) -> tuple[int, int, int]:
    """A colour halfway to white (the spread band of a class drawn in its own colour, lighter)."""
    return tuple(int(round(c + (255 - c) * 0.5)) for c in color)  # type: ignore[return-value]
