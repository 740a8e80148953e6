"""Geometric and intensity transforms that apply a :class:`Plan` and invert it exactly.

The pipeline of :func:`apply_plan`, each step recorded in an :class:`Inverse`:

1. **Reorient** to the plan's canonical orientation code by permuting and flipping array axes only. The result is
   the axis order whose directions are closest to the code, so oblique scans stay oblique and are *not*
   interpolated for this step (no voxel changes value; the direction matrix absorbs the permutation).
2. **Crop** to the bounding box of the non-zero voxels of all channels (if ``plan.crop_to_nonzero``), or of the
   body where the plan sets ``body_threshold`` (CT: :func:`body_box`).
3. **Normalise** intensities (see :class:`~MedAnalysisLib.preprocessing.plan.Normalization`) on the cropped grid.
4. **Resample** to the target spacing with SimpleITK (images linear or B-spline, labels nearest neighbour). The new
   grid keeps the direction and is centred on the old grid's extent, its size the old extent divided by the new
   spacing, rounded.
5. **Pad** symmetrically with zeros up to at least the plan's patch size.

:func:`invert_plan` undoes 5 -> 1 for a model output on the prepared grid (label maps by nearest neighbour,
probabilities linearly) and returns a :class:`Volume` with exactly the input's size, spacing, origin and direction.

Arrays are ``(k, j, i)`` or ``(k, j, i, C)``; spacings ``(i, j, k)`` mm; points LPS mm.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from MedAnalysisLib.errors import GeometryError, ImageValidationError, PlanError
from MedAnalysisLib.preprocessing.plan import Normalization, Plan
from MedAnalysisLib.volume import Volume, require_same_geometry

_LETTER_AXIS = {"L": (0, 1.0), "R": (0, -1.0), "P": (1, 1.0), "A": (1, -1.0), "S": (2, 1.0), "I": (2, -1.0)}

#: Relative spacing difference below which an axis is considered already at the target spacing.
SPACING_RTOL = 1e-6


class PreprocessingWarning(UserWarning):
    """Input that preprocessing can handle but that deserves a look (constant image, empty mask)."""


# ---------------------------------------------------------------------------------------------- grids


@dataclass(frozen=True)
class Grid:
    """A voxel grid without voxels: shape (k, j, i), spacing (i, j, k) mm, origin LPS mm, direction (row-major 9)."""

    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: tuple[float, ...]

    @classmethod
    def of(cls, volume: Volume) -> Grid:
        return cls(
            tuple(int(s) for s in volume.shape),  # type: ignore[arg-type]
            tuple(float(s) for s in volume.spacing),  # type: ignore[arg-type]
            tuple(float(o) for o in volume.origin),  # type: ignore[arg-type]
            tuple(float(d) for d in np.asarray(volume.direction).ravel()),
        )

    @property
    def direction_matrix(self) -> np.ndarray:
        return np.array(self.direction, dtype=np.float64).reshape(3, 3)

    def volume(self, array: np.ndarray, metadata: dict[str, Any] | None = None) -> Volume:
        """A Volume on this grid holding ``array`` ((k, j, i) or (k, j, i, C) of this spatial shape)."""
        array = np.asarray(array)
        if tuple(array.shape[:3]) != self.shape:
            raise GeometryError(f"expected an array of spatial shape {self.shape} (k, j, i), got {array.shape}")
        return Volume(array, self.spacing, self.origin, self.direction_matrix, metadata or {})

    def index_to_physical(self, ijk: Sequence[float] | np.ndarray) -> np.ndarray:
        matrix = self.direction_matrix @ np.diag(self.spacing)
        return np.asarray(ijk, dtype=np.float64) @ matrix.T + np.asarray(self.origin)

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Grid:
        return cls(
            tuple(int(v) for v in data["shape"]),  # type: ignore[arg-type]
            tuple(float(v) for v in data["spacing"]),  # type: ignore[arg-type]
            tuple(float(v) for v in data["origin"]),  # type: ignore[arg-type]
            tuple(float(v) for v in data["direction"]),
        )


# ---------------------------------------------------------------------------------------------- reorientation


@dataclass(frozen=True)
class Reorientation:
    """Axis permutation and flips: new ITK axis ``t`` is old axis ``axes[t]``, reversed where ``flips[t]``."""

    axes: tuple[int, int, int] = (0, 1, 2)
    flips: tuple[bool, bool, bool] = (False, False, False)

    @property
    def is_identity(self) -> bool:
        return self.axes == (0, 1, 2) and not any(self.flips)


def reorientation_to(direction: np.ndarray, code: str) -> Reorientation:
    """The permutation/flip that brings a direction matrix closest to an orientation code (e.g. ``"LPS"``).

    Each code letter names the patient direction the i, j, k axis should point to (as
    :meth:`Volume.orientation_code`). Axes are paired with patient axes by decreasing alignment, so for oblique
    directions every axis goes to the patient axis it is closest to and no voxel is interpolated.
    """
    if not code:
        return Reorientation()
    try:
        targets = [_LETTER_AXIS[c] for c in code.upper()]
    except KeyError:
        raise PlanError(f"expected an orientation code of L/R, P/A, S/I letters such as 'LPS', got {code!r}") from None
    if len(targets) != 3 or sorted(a for a, _ in targets) != [0, 1, 2]:
        raise PlanError(f"expected an orientation code naming each patient axis once, such as 'LPS', got {code!r}")
    direction = np.asarray(direction, dtype=np.float64)
    # Pair index axes with patient axes by decreasing |cosine| (as Volume.orientation_code and ITK do), so the
    # result's orientation code is exactly ``code`` even for oblique scans.
    patient_axis_of: dict[int, int] = {}
    for flat in np.argsort(-np.abs(direction), axis=None, kind="stable"):
        row, column = divmod(int(flat), 3)
        if column not in patient_axis_of and row not in patient_axis_of.values():
            patient_axis_of[column] = row
    column_of = {row: column for column, row in patient_axis_of.items()}
    axes = tuple(column_of[targets[t][0]] for t in range(3))
    flips = tuple(bool(np.sign(direction[targets[t][0], axes[t]]) != targets[t][1]) for t in range(3))
    return Reorientation(axes, flips)  # type: ignore[arg-type]


def _reorient_array(array: np.ndarray, r: Reorientation) -> np.ndarray:
    if r.is_identity:
        return array
    # array axes are (k, j, i[, c]); ITK axis t lives at array axis 2 - t.
    source_axes = [2 - r.axes[2 - a] for a in range(3)]
    out = np.transpose(array, (*source_axes, *range(3, array.ndim)))
    for t in range(3):
        if r.flips[t]:
            out = np.flip(out, axis=2 - t)
    return np.ascontiguousarray(out)


def _unreorient_array(array: np.ndarray, r: Reorientation) -> np.ndarray:
    if r.is_identity:
        return array
    out = array
    for t in range(3):
        if r.flips[t]:
            out = np.flip(out, axis=2 - t)
    # out array axis (2 - t) holds old ITK axis r.axes[t]; put old axis n back at array axis 2 - n.
    inverse = [0, 0, 0]
    for t in range(3):
        inverse[2 - r.axes[t]] = 2 - t
    return np.ascontiguousarray(np.transpose(out, (*inverse, *range(3, array.ndim))))


def _reorient_grid(grid: Grid, r: Reorientation) -> Grid:
    if r.is_identity:
        return grid
    size_ijk = grid.shape[::-1]
    direction = grid.direction_matrix
    new_direction = np.zeros((3, 3))
    start_index = [0.0, 0.0, 0.0]
    for t in range(3):
        n = r.axes[t]
        new_direction[:, t] = direction[:, n] * (-1.0 if r.flips[t] else 1.0)
        if r.flips[t]:
            start_index[n] = size_ijk[n] - 1
    origin = grid.index_to_physical(start_index)
    spacing = tuple(grid.spacing[r.axes[t]] for t in range(3))
    shape_ijk = tuple(size_ijk[r.axes[t]] for t in range(3))
    return Grid(
        tuple(int(s) for s in shape_ijk[::-1]),  # type: ignore[arg-type]
        spacing,  # type: ignore[arg-type]
        tuple(float(o) for o in origin),  # type: ignore[arg-type]
        tuple(float(d) for d in new_direction.ravel()),
    )


def reorient(volume: Volume, code: str) -> tuple[Volume, Reorientation]:
    """Bring a volume to the orientation code by permuting/flipping axes only (exact; see :func:`reorientation_to`).

    Every voxel keeps its physical position: ``result.index_to_physical`` of a moved voxel equals the original's.
    """
    r = reorientation_to(volume.direction, code)
    grid = _reorient_grid(Grid.of(volume), r)
    return grid.volume(_reorient_array(np.asarray(volume.array), r), volume.metadata), r


# ---------------------------------------------------------------------------------------------- resampling

_Kind = Literal["image", "label", "probability"]


def _interpolator(kind: str, interpolation: str = "linear") -> int:
    import SimpleITK as sitk

    if kind == "label":
        return sitk.sitkNearestNeighbor
    if kind == "probability" or interpolation == "linear":
        return sitk.sitkLinear
    if interpolation == "bspline":
        return sitk.sitkBSpline
    raise PlanError(f"expected interpolation 'linear' or 'bspline', got {interpolation!r}")


def resample_array(
    array: np.ndarray,
    source: Grid,
    target: Grid,
    *,
    kind: _Kind = "image",
    interpolation: str = "linear",
    extrapolate: bool = False,
) -> np.ndarray:
    """Resample voxels from one grid to another in physical space with SimpleITK (multi-threaded).

    Args:
        array: ``(k, j, i)`` or ``(k, j, i, C)`` on ``source``.
        source: The grid of ``array``.
        target: The grid to sample on.
        kind: ``"image"`` (linear or B-spline, float32 out), ``"label"`` (nearest neighbour, dtype kept) or
            ``"probability"`` (linear, float32, per component).
        interpolation: For images: ``"linear"`` or ``"bspline"``.
        extrapolate: Points outside the source take the nearest voxel's value instead of 0.

    Returns:
        ``target.shape`` (+ C) array.
    """
    import SimpleITK as sitk

    array = np.asarray(array)
    if tuple(array.shape[:3]) != source.shape:
        raise GeometryError(f"expected an array of spatial shape {source.shape}, got {array.shape}")
    interpolator = _interpolator(kind, interpolation)
    if array.dtype == np.bool_:
        array = array.astype(np.uint8)
    # Integer images are handed to SimpleITK as they are: it interpolates in double precision and writes float32,
    # which saves a full-size float copy in numpy.
    vector = array.ndim == 4
    image = sitk.GetImageFromArray(array, isVector=vector)
    image.SetSpacing(source.spacing)
    image.SetOrigin(source.origin)
    image.SetDirection(source.direction)
    if kind == "label":
        out_type = image.GetPixelID()
    elif vector:
        out_type = sitk.sitkVectorFloat32
    else:
        out_type = sitk.sitkFloat32
    result = sitk.Resample(
        image,
        target.shape[::-1],
        sitk.Transform(),
        interpolator,
        target.origin,
        target.spacing,
        target.direction,
        0.0,
        out_type,
        extrapolate,
    )
    return sitk.GetArrayFromImage(result)


def spacing_grid(grid: Grid, spacing: Sequence[float]) -> Grid:
    """The grid of the same direction and extent centre with voxels of ``spacing`` (i, j, k) mm.

    Sizes are the old extent divided by the new spacing, rounded (at least 1); axes already at the spacing, and
    axes of a single voxel (one-slice images), keep their size, spacing and voxel positions exactly.
    """
    spacing = tuple(float(s) for s in spacing)
    if len(spacing) != 3 or min(spacing) <= 0:
        raise PlanError(f"expected 3 positive spacings (i, j, k) in mm, got {spacing}")
    size_ijk = np.array(grid.shape[::-1], dtype=np.float64)
    old = np.array(grid.spacing)
    new = np.array(spacing)
    # A single slice has no extent to resample into along its normal: it stays one slice (2D data stays 2D).
    same = (np.abs(new - old) <= SPACING_RTOL * old) | (size_ijk == 1)
    new = np.where(same, old, new)
    new_size = np.where(same, size_ijk, np.maximum(1, np.round(size_ijk * old / new)))
    start = (size_ijk - 1) / 2 - (new_size - 1) / 2 * new / old  # continuous old index of the new first voxel
    origin = grid.index_to_physical(np.where(same, 0.0, start))
    return Grid(
        tuple(int(s) for s in new_size[::-1]),  # type: ignore[arg-type]
        tuple(float(s) for s in new),  # type: ignore[arg-type]
        tuple(float(o) for o in origin),  # type: ignore[arg-type]
        grid.direction,
    )


def resample_to_spacing(
    volume: Volume, spacing: Sequence[float], *, kind: _Kind = "image", interpolation: str = "linear"
) -> Volume:
    """Resample a volume to a new voxel size (i, j, k) mm, keeping its direction and extent (see :func:`spacing_grid`).

    Images come back float32 (linear or B-spline), label maps keep their integer dtype (nearest neighbour),
    probabilities are interpolated linearly per component.
    """
    source = Grid.of(volume)
    target = spacing_grid(source, spacing)
    if target == source:
        return volume
    return target.volume(resample_array(volume.array, source, target, kind=kind, interpolation=interpolation), volume.metadata)


def resample_to_grid(volume: Volume, reference: Volume | Grid, *, kind: _Kind = "image", interpolation: str = "linear") -> Volume:
    """Resample a volume onto another volume's grid (physical space; outside the source -> 0)."""
    target = reference if isinstance(reference, Grid) else Grid.of(reference)
    source = Grid.of(volume)
    return target.volume(resample_array(volume.array, source, target, kind=kind, interpolation=interpolation), volume.metadata)


# ---------------------------------------------------------------------------------------------- crop and pad


def crop_grid(grid: Grid, box: Sequence[tuple[int, int]]) -> Grid:
    """The sub-grid of ``box`` = ((k0, k1), (j0, j1), (i0, i1)) (half-open voxel ranges)."""
    (k0, k1), (j0, j1), (i0, i1) = box
    origin = grid.index_to_physical((i0, j0, k0))
    return Grid((k1 - k0, j1 - j0, i1 - i0), grid.spacing, tuple(float(o) for o in origin), grid.direction)  # type: ignore[arg-type]


def nonzero_box(arrays: Sequence[np.ndarray]) -> tuple[tuple[int, int], ...] | None:
    """((k0, k1), (j0, j1), (i0, i1)) around the voxels non-zero in any array; None when every voxel is zero."""
    mask = np.zeros(arrays[0].shape[:3], dtype=bool)
    for array in arrays:
        mask |= (array != 0) if array.ndim == 3 else np.any(array != 0, axis=-1)
    if not mask.any():
        return None
    box = []
    for axis in range(3):
        present = np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != axis)))
        box.append((int(present[0]), int(present[-1]) + 1))
    return tuple(box)


#: Radius (mm, in-plane) of the opening that :func:`body_box` applies before it looks for the body: it removes the
#: table top, cables and blankets up to about twice as thick, never the body.
BODY_OPENING_MM = 2.5
#: Connected regions kept by :func:`body_box`: those with at least this share of the largest region's voxels (both
#: arms beside the chest are kept; specks of noise and table remnants are not).
BODY_MIN_SHARE = 0.05


def body_box(
    arrays: Sequence[np.ndarray], threshold: float, spacing: Sequence[float]
) -> tuple[tuple[int, int], ...] | None:
    """((k0, k1), (j0, j1), (i0, i1)) around the body: the large connected regions above ``threshold``.

    A voxel is "body" where any channel exceeds ``threshold`` (CT: -500 HU). The mask is opened slice by slice with
    a disc of :data:`BODY_OPENING_MM` (``spacing`` (i, j, k) mm), which cuts the thin table top off the patient; of
    the 3D connected regions left, every one with at least :data:`BODY_MIN_SHARE` of the largest one's voxels is
    kept (the trunk and the arms), and grown back by the same disc within the thresholded voxels, so the box ends at
    the skin. None when no voxel exceeds the threshold.
    """
    import SimpleITK as sitk

    mask = np.zeros(arrays[0].shape[:3], dtype=np.uint8)
    for array in arrays:
        mask |= (array > threshold) if array.ndim == 3 else np.any(array > threshold, axis=-1)
    if not mask.any():
        return None
    image = sitk.GetImageFromArray(mask)
    radius = [max(1, int(round(BODY_OPENING_MM / float(s)))) for s in spacing[:2]] + [0]
    opened = sitk.BinaryMorphologicalOpening(image, radius, sitk.sitkBall)
    if not np.any(sitk.GetArrayFromImage(opened)):
        opened = image  # everything above the threshold is thinner than the opening: keep it as it is
    regions = sitk.GetArrayFromImage(sitk.RelabelComponent(sitk.ConnectedComponent(opened), sortByObjectSize=True))
    sizes = np.bincount(regions.reshape(-1))[1:]
    keep = ((regions != 0) & (regions <= int(np.sum(sizes >= BODY_MIN_SHARE * sizes[0])))).astype(np.uint8)
    # give back what the opening shaved off the kept regions (skin at the extremes), nothing further away
    grown = sitk.GetArrayFromImage(sitk.BinaryDilate(sitk.GetImageFromArray(keep), radius, sitk.sitkBall))
    return nonzero_box([(grown != 0) & (mask != 0)])


def crop_box(
    arrays: Sequence[np.ndarray], spacing: Sequence[float], body_threshold: float | None
) -> tuple[tuple[int, int], ...] | None:
    """The crop of :func:`apply_plan` (and of the fingerprint, which measures it): :func:`body_box` with a body
    threshold, else :func:`nonzero_box`. None when there is nothing to crop to."""
    return nonzero_box(arrays) if body_threshold is None else body_box(arrays, body_threshold, spacing)


def widen_to_aspect(
    box: Sequence[tuple[int, int]], shape: Sequence[int], spacing: Sequence[float], aspect: float
) -> tuple[tuple[int, int], ...]:
    """``box`` ((k0, k1), (j0, j1), (i0, i1)) grown along j or i until its height/width in mm is ``aspect``.

    The box keeps its centre where the image (``shape`` (k, j, i), ``spacing`` (i, j, k) mm) allows and is shifted
    inwards where it would leave it; it never grows past the image, so an image of another aspect keeps some of it.
    """
    (k0, k1), (j0, j1), (i0, i1) = box
    height, width = (j1 - j0) * float(spacing[1]), (i1 - i0) * float(spacing[0])
    if height <= 0 or width <= 0:
        return tuple(box)

    def grow(start: int, stop: int, wanted: int, size: int) -> tuple[int, int]:
        wanted = min(max(wanted, stop - start), size)
        start = int(round((start + stop - wanted) / 2))
        start = min(max(start, 0), size - wanted)
        return start, start + wanted

    if height / width < aspect:
        j0, j1 = grow(j0, j1, int(round(width * aspect / float(spacing[1]))), int(shape[1]))
    else:
        i0, i1 = grow(i0, i1, int(round(height / aspect / float(spacing[0]))), int(shape[2]))
    return ((k0, k1), (j0, j1), (i0, i1))


def pad_amounts(shape: Sequence[int], minimum: Sequence[int]) -> tuple[tuple[int, int], ...]:
    """Symmetric (before, after) padding per axis bringing ``shape`` up to at least ``minimum``."""
    amounts = []
    for size, wanted in zip(shape, minimum, strict=True):
        missing = max(0, int(wanted) - int(size))
        amounts.append((missing // 2, missing - missing // 2))
    return tuple(amounts)


def pad_grid(grid: Grid, pad: Sequence[tuple[int, int]]) -> Grid:
    (kb, ka), (jb, ja), (ib, ia) = pad
    origin = grid.index_to_physical((-ib, -jb, -kb))
    shape = (grid.shape[0] + kb + ka, grid.shape[1] + jb + ja, grid.shape[2] + ib + ia)
    return Grid(shape, grid.spacing, tuple(float(o) for o in origin), grid.direction)  # type: ignore[arg-type]


def _pad(array: np.ndarray, pad: Sequence[tuple[int, int]], value: float = 0) -> np.ndarray:
    if not any(b or a for b, a in pad):
        return array
    widths = [*pad, *([(0, 0)] * (array.ndim - 3))]
    return np.pad(array, widths, mode="constant", constant_values=value)


# ---------------------------------------------------------------------------------------------- normalisation


def normalize(array: np.ndarray, normalization: Normalization, mask: np.ndarray | None = None) -> np.ndarray:
    """Normalise one channel ``(k, j, i)`` to float32 (never NaN; warns on constant images and empty masks).

    Args:
        array: Intensities of one channel.
        normalization: The scheme and, for CT, its dataset statistics.
        mask: Voxels that count for ``"zscore_nonzero"`` (default: ``array != 0``); voxels outside become 0.
    """
    data = np.asarray(array, dtype=np.float32)
    if not np.all(np.isfinite(data)):
        raise ImageValidationError("expected finite intensities, got NaN or Inf voxels")
    scheme = normalization.scheme
    if scheme == "none":
        return data
    if scheme == "ct":
        clipped = np.clip(data, normalization.clip_low, normalization.clip_high)
        return ((clipped - np.float32(normalization.mean)) / np.float32(normalization.std)).astype(np.float32)
    if scheme == "zscore_nonzero":
        region = (data != 0) if mask is None else np.asarray(mask, dtype=bool)
        if not region.any():
            warnings.warn(
                "expected non-zero voxels to normalise over, got an empty mask: the channel becomes all zeros",
                PreprocessingWarning,
                stacklevel=2,
            )
            return np.zeros_like(data)
        values = data[region].astype(np.float64)
        mean, std = float(values.mean()), float(values.std())
        out = np.zeros_like(data)
        out[region] = _zscore(data[region], mean, std)
        return out
    values = data.astype(np.float64)
    return _zscore(data, float(values.mean()), float(values.std()))


def _zscore(data: np.ndarray, mean: float, std: float) -> np.ndarray:
    if not std > 1e-8 * max(1.0, abs(mean)):
        warnings.warn(
            f"expected varying intensities, got a constant image (value {mean:g}): normalised to zeros",
            PreprocessingWarning,
            stacklevel=3,
        )
        return np.zeros_like(data, dtype=np.float32)
    return ((data - np.float32(mean)) / np.float32(std)).astype(np.float32)


# ---------------------------------------------------------------------------------------------- the plan


@dataclass(frozen=True)
class Inverse:
    """What :func:`invert_plan` needs to put a prepared-grid array back on the input grid.

    Attributes:
        original: The input grid.
        reorientation: Axis permutation/flips applied first.
        oriented: Grid after reorientation.
        crop_box: ((k0, k1), (j0, j1), (i0, i1)) on the oriented grid.
        cropped: Grid after cropping.
        resampled: Grid after resampling (equal to ``cropped`` when no resampling was needed).
        pad: ((before, after) per k, j, i) added after resampling.
        prepared: Grid of the prepared arrays.
    """

    original: Grid
    reorientation: Reorientation
    oriented: Grid
    crop_box: tuple[tuple[int, int], tuple[int, int], tuple[int, int]]
    cropped: Grid
    resampled: Grid
    pad: tuple[tuple[int, int], tuple[int, int], tuple[int, int]]
    prepared: Grid

    def prepared_volume(self, array: np.ndarray) -> Volume:
        """A Volume on the prepared grid (to inspect a prepared image or a raw prediction in physical space)."""
        return self.prepared.volume(array)

    def to_dict(self) -> dict[str, Any]:
        return {
            "original": self.original.to_dict(),
            "reorientation": {"axes": list(self.reorientation.axes), "flips": list(self.reorientation.flips)},
            "oriented": self.oriented.to_dict(),
            "crop_box": [list(b) for b in self.crop_box],
            "cropped": self.cropped.to_dict(),
            "resampled": self.resampled.to_dict(),
            "pad": [list(p) for p in self.pad],
            "prepared": self.prepared.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Inverse:
        try:
            return cls(
                Grid.from_dict(data["original"]),
                Reorientation(
                    tuple(int(a) for a in data["reorientation"]["axes"]),  # type: ignore[arg-type]
                    tuple(bool(f) for f in data["reorientation"]["flips"]),  # type: ignore[arg-type]
                ),
                Grid.from_dict(data["oriented"]),
                tuple(tuple(int(v) for v in b) for b in data["crop_box"]),  # type: ignore[arg-type]
                Grid.from_dict(data["cropped"]),
                Grid.from_dict(data["resampled"]),
                tuple(tuple(int(v) for v in p) for p in data["pad"]),  # type: ignore[arg-type]
                Grid.from_dict(data["prepared"]),
            )
        except (KeyError, TypeError, ValueError) as error:
            raise PlanError(f"expected an inverse record as written by Inverse.to_dict, got: {error!r}") from None


@dataclass(frozen=True)
class PreparedCase:
    """A case after :func:`apply_plan`.

    Attributes:
        image: float32 ``(k, j, i, C)`` on ``inverse.prepared``.
        label: Integer ``(k, j, i)`` on the same grid, or None.
        inverse: How to go back to the input grid.
        target: Classification target of the case, if any.
        case_id: Name of the case, if known.
    """

    image: np.ndarray
    label: np.ndarray | None
    inverse: Inverse
    target: float | int | None = None
    case_id: str = ""


def _split_channels(images: Volume | Sequence[Volume]) -> list[Volume]:
    volumes = [images] if isinstance(images, Volume) else list(images)
    if not volumes:
        raise PlanError("expected at least one image volume, got none")
    channels: list[Volume] = []
    for volume in volumes:
        if volume.array.ndim == 4:
            channels.extend(volume.with_array(volume.array[..., c]) for c in range(volume.array.shape[3]))
        else:
            channels.append(volume)
    return channels


def _label_dtype(array: np.ndarray) -> np.ndarray:
    if not np.issubdtype(array.dtype, np.integer):
        if not np.all(np.isfinite(array)) or not np.all(array == np.round(array)):
            raise ImageValidationError("expected integer label values, got non-integer values in the label map")
    low, high = (int(array.min()), int(array.max())) if array.size else (0, 0)
    for dtype in (np.uint8, np.int16, np.int32):
        info = np.iinfo(dtype)
        if info.min <= low and high <= info.max:
            return array.astype(dtype, copy=False)
    return array.astype(np.int64, copy=False)


def _target_grid(plan: Plan, cropped: Grid, slice_shape: tuple[int, int] | None) -> Grid:
    grid = cropped if plan.target_spacing is None else spacing_grid(cropped, plan.target_spacing)
    if slice_shape is None:
        return grid
    # In-plane resize to (rows j, columns i), keeping each axis's extent centre and extent.
    size_ijk = np.array(grid.shape[::-1], dtype=np.float64)
    spacing = np.array(grid.spacing)
    new_size = np.array([slice_shape[1], slice_shape[0], size_ijk[2]], dtype=np.float64)
    new_spacing = spacing * size_ijk / new_size
    start = (size_ijk - 1) / 2 - (new_size - 1) / 2 * new_spacing / spacing
    start[2] = 0.0
    new_spacing[2] = spacing[2]
    origin = grid.index_to_physical(start)
    return Grid(
        tuple(int(s) for s in new_size[::-1]),  # type: ignore[arg-type]
        tuple(float(s) for s in new_spacing),  # type: ignore[arg-type]
        tuple(float(o) for o in origin),  # type: ignore[arg-type]
        grid.direction,
    )


def apply_plan(
    plan: Plan,
    images: Volume | Sequence[Volume],
    label: Volume | None = None,
    *,
    resample_label: bool = False,
    pad_to_patch: bool = True,
    slice_shape: tuple[int, int] | None = None,
) -> PreparedCase:
    """Prepare one case for a model exactly as the plan says (see the module docstring for the steps).

    Args:
        plan: The preprocessing plan.
        images: One Volume per channel (all on one grid), or one multi-component Volume ``(k, j, i, C)``.
        label: Label map on the image grid, or None.
        resample_label: Resample a label that is on another grid onto the image grid (nearest neighbour) instead
            of raising.
        pad_to_patch: Pad with zeros to at least ``plan.patch_size`` (so patch-based models can always run).
        slice_shape: Also resize each axial slice to this (j, i) shape, in the same resampling step (what
            :func:`prepare_slices` does; pass the label too to train 2D models). No padding is then applied.

    Returns:
        :class:`PreparedCase` with the float32 ``(k, j, i, C)`` image, the integer label (or None) and the inverse.

    Raises:
        GeometryError: Channels on different grids, or a label off the image grid (beyond tolerance) without
            ``resample_label``; the message names both geometries.
        PlanError: The number of channels differs from the plan's.
        ImageValidationError: NaN/Inf intensities, non-integer labels, or (segmentation) label values outside
            ``plan.label_values``.
    """
    channels = _split_channels(images)
    if len(channels) != plan.n_channels:
        raise PlanError(f"expected {plan.n_channels} image channel(s) {list(plan.channel_names)}, got {len(channels)}")
    reference = channels[0]
    for n, channel in enumerate(channels[1:], start=1):
        require_same_geometry(reference, channel, what=f"image channel {n}")
    if label is not None:
        if label.array.ndim != 3:
            raise ImageValidationError(f"expected a 3D label map (k, j, i), got shape {label.array.shape}")
        if resample_label:
            if not _same_grid(reference, label):
                label = resample_to_grid(label.with_array(_label_dtype(label.array)), reference, kind="label")
        else:
            require_same_geometry(reference, label, what="label")
        if plan.task == "segmentation":
            known = np.isin(label.array, plan.label_values)
            if not known.all():  # a value outside the label set would silently become another class in training
                unknown = np.unique(np.asarray(label.array)[~known])
                raise ImageValidationError(
                    f"expected label values among the plan's {list(plan.label_values)}, got {unknown[:10].tolist()}"
                    f"{' ...' if unknown.size > 10 else ''} in {int((~known).sum())} voxel(s)"
                )
    original = Grid.of(reference)

    # 1. reorient (exact)
    r = reorientation_to(reference.direction, plan.orientation)
    oriented = _reorient_grid(original, r)
    arrays = [_reorient_array(np.asarray(c.array), r) for c in channels]
    label_array = _reorient_array(_label_dtype(np.asarray(label.array)), r) if label is not None else None

    # 2. crop to the non-zero voxels or the body
    full = ((0, oriented.shape[0]), (0, oriented.shape[1]), (0, oriented.shape[2]))
    box = crop_box(arrays, oriented.spacing, plan.body_threshold) if plan.crop_to_nonzero else full
    if box is None:
        found = ("an all-zero image" if plan.body_threshold is None
                 else f"no voxel above the body threshold {plan.body_threshold:g}")
        warnings.warn(f"expected a region to crop to, got {found}: nothing cropped", PreprocessingWarning, stacklevel=2)
        box = full
    if slice_shape is not None and plan.slice_keep_aspect:
        box = widen_to_aspect(box, oriented.shape, oriented.spacing, slice_shape[0] / slice_shape[1])
    slices = tuple(slice(a, b) for a, b in box)
    cropped = crop_grid(oriented, box)
    arrays = [a[slices] for a in arrays]
    if label_array is not None:
        label_array = np.ascontiguousarray(label_array[slices])

    # 3. normalise (mask = non-zero in any channel, as the crop)
    mask = None
    if plan.normalization.scheme == "zscore_nonzero":
        mask = np.zeros(cropped.shape, dtype=bool)
        for a in arrays:
            mask |= a != 0
    normalized = [normalize(a, plan.normalization, mask) for a in arrays]

    # 4. resample
    resampled = _target_grid(plan, cropped, slice_shape)
    if resampled != cropped:
        stacked = np.stack(normalized, axis=-1)
        if plan.image_interpolation == "linear":
            image = resample_array(stacked, cropped, resampled, kind="image")
            image = image.reshape(*resampled.shape, len(normalized))
        else:
            image = np.stack(
                [resample_array(c, cropped, resampled, kind="image", interpolation="bspline") for c in normalized], axis=-1
            )
        if label_array is not None:
            label_array = resample_array(label_array, cropped, resampled, kind="label")
    else:
        image = np.stack(normalized, axis=-1)

    # 5. pad
    pad = pad_amounts(resampled.shape, plan.patch_size) if pad_to_patch and slice_shape is None else ((0, 0),) * 3
    prepared = pad_grid(resampled, pad)
    image = _pad(image.astype(np.float32, copy=False), pad)
    if label_array is not None:
        label_array = _pad(label_array, pad)
    inverse = Inverse(original, r, oriented, box, cropped, resampled, pad, prepared)  # type: ignore[arg-type]
    return PreparedCase(np.ascontiguousarray(image), label_array, inverse)


def _same_grid(a: Volume, b: Volume) -> bool:
    from MedAnalysisLib.volume import same_geometry

    return same_geometry(a, b)


def invert_plan(
    plan: Plan, array: np.ndarray, inverse: Inverse, *, kind: Literal["label", "probability"] = "label"
) -> Volume:
    """Put a label map or probability map from the prepared grid back on the input grid.

    Args:
        plan: The plan that prepared the input (kept for symmetry and checks).
        array: ``(k, j, i)`` label map or ``(k, j, i)``/``(k, j, i, C)`` probabilities on ``inverse.prepared``.
        inverse: From :func:`apply_plan` or :func:`prepare_slices`.
        kind: ``"label"`` (nearest neighbour; integer dtype kept) or ``"probability"`` (linear, float32; outside
            the cropped region class 0 gets probability 1 when C > 1, else 0).

    Returns:
        A Volume with exactly the input's shape, spacing, origin and direction.

    Raises:
        GeometryError: ``array`` is not on the prepared grid.
    """
    if kind not in ("label", "probability"):
        raise PlanError(f"expected kind 'label' or 'probability', got {kind!r}")
    array = np.asarray(array)
    if tuple(array.shape[:3]) != inverse.prepared.shape or array.ndim not in (3, 4):
        raise GeometryError(
            f"expected an array on the prepared grid, shape {inverse.prepared.shape} (k, j, i)"
            f"{' [+ classes]' if kind == 'probability' else ''}, got {array.shape}"
        )
    if kind == "label":
        if array.ndim != 3:
            raise GeometryError(f"expected a (k, j, i) label map, got shape {array.shape}")
        array = _label_dtype(array)
    else:
        array = array.astype(np.float32, copy=False)
    # 5. un-pad
    (kb, ka), (jb, ja), (ib, ia) = inverse.pad
    shape = inverse.prepared.shape
    array = array[kb : shape[0] - ka, jb : shape[1] - ja, ib : shape[2] - ia]
    # 4. resample back (nearest-neighbour extrapolation covers the half voxel at the borders)
    if inverse.resampled != inverse.cropped:
        array = resample_array(array, inverse.resampled, inverse.cropped, kind=kind, extrapolate=True)
    # 2. un-crop
    oriented_shape = inverse.oriented.shape + array.shape[3:]
    full = np.zeros(oriented_shape, dtype=array.dtype)
    if kind == "probability" and array.ndim == 4 and array.shape[3] > 1:
        full[..., 0] = 1.0
    (k0, k1), (j0, j1), (i0, i1) = inverse.crop_box
    full[k0:k1, j0:j1, i0:i1] = array
    # 1. un-reorient
    restored = _unreorient_array(full, inverse.reorientation)
    return inverse.original.volume(restored)


def prepare_slices(plan: Plan, volume: Volume | Sequence[Volume]) -> tuple[np.ndarray, Inverse]:
    """Axial slices for 2D and slice-sequence models.

    The plan is applied (reorientation, crop, normalisation, target spacing) and each slice along k is resized
    in-plane to ``plan.slice_shape`` in the same single resampling step, so nothing is interpolated twice.

    Returns:
        ``(slices, inverse)``: float32 ``(S, H, W, C)`` with ``S`` = k, ``(H, W)`` = ``plan.slice_shape`` (j, i),
        and the inverse (pass an ``(S, H, W)`` or ``(S, H, W, C)`` prediction to :func:`invert_plan`).
    """
    prepared = apply_plan(plan, volume, pad_to_patch=False, slice_shape=tuple(plan.slice_shape))  # type: ignore[arg-type]
    return prepared.image, prepared.inverse
