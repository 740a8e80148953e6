"""Label-map post-processing with SimpleITK: keep the largest connected component per label, fill holes.

Label maps are integer arrays in ``(k, j, i)`` order; when a spacing is needed it is ITK ``(i, j, k)`` in mm.
Connectivity is face (6-) connectivity in 3D, which is what a reader expects of "one object" in a label map.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from MedAnalysisLib.errors import InputError

#: Names accepted by :func:`postprocess_labels` (the bundle's ``inference.postprocess`` and the CLI's spelling).
STEPS = {"largest_component": "largest_component", "largest-component": "largest_component",
         "fill_holes": "fill_holes", "fill-holes": "fill_holes", "none": "none"}


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 6-connected component of a boolean ``(k, j, i)`` mask (empty stays empty)."""
    import SimpleITK as sitk

    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        return mask.copy()
    components = sitk.ConnectedComponent(sitk.GetImageFromArray(mask.astype(np.uint8)), False)
    labels = sitk.GetArrayFromImage(components)
    counts = np.bincount(labels.ravel())
    counts[0] = 0
    return labels == int(np.argmax(counts))


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """``mask`` with every background region not 6-connected to the volume border filled (3D holes)."""
    import SimpleITK as sitk

    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        return mask.copy()
    filled = sitk.BinaryFillhole(sitk.GetImageFromArray(mask.astype(np.uint8)), False, 1)
    return sitk.GetArrayFromImage(filled).astype(bool)


def normalise_steps(steps: str | Iterable[str] | None) -> tuple[str, ...]:
    """Canonical step names from a bundle value (``"none"``, ``"fill_holes"``...) or CLI list; unknown -> InputError."""
    if steps is None:
        return ()
    items = [steps] if isinstance(steps, str) else list(steps)
    out = []
    for item in items:
        if item not in STEPS:
            raise InputError(f"expected post-processing among {sorted(set(STEPS.values()))}, got {item!r}")
        if STEPS[item] != "none" and STEPS[item] not in out:
            out.append(STEPS[item])
    return tuple(out)


def postprocess_labels(
    labels: np.ndarray, steps: str | Sequence[str] | None, *, label_values: Iterable[int] | None = None
) -> np.ndarray:
    """Apply post-processing to each foreground label of an integer ``(k, j, i)`` label map.

    Args:
        labels: Integer label map; 0 is the background.
        steps: ``"largest_component"`` and/or ``"fill_holes"`` (CLI spellings with hyphens accepted); ``"none"``,
            ``None`` or ``()`` return the map unchanged.
        label_values: Labels to process (default: every non-zero value present).

    Returns:
        A new label map of the same dtype. Removed voxels become background; filled holes take the label whose
        hole they are, unless another foreground label already occupies them.
    """
    canonical = normalise_steps(steps)
    labels = np.asarray(labels)
    if labels.ndim != 3 or not np.issubdtype(labels.dtype, np.integer):
        raise InputError(f"expected an integer (k, j, i) label map, got {labels.dtype} of shape {labels.shape}")
    if not canonical:
        return labels.copy()
    values = sorted(int(v) for v in (np.unique(labels) if label_values is None else label_values) if int(v) != 0)
    result = labels.copy()
    for value in values:
        mask = result == value
        if "largest_component" in canonical:
            kept = largest_component(mask)
            result[mask & ~kept] = 0
            mask = kept
        if "fill_holes" in canonical:
            filled = fill_holes(mask)
            result[filled & (result == 0)] = value
    return result
