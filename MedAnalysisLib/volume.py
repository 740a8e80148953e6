"""The one image type of MedAnalysis: voxels plus exact geometry.

Conventions (fixed for the whole code base, see DESIGN.md decision 1):

* ``Volume.array`` is a numpy array in ``(k, j, i)`` = ``(z, y, x)`` order, the order of
  ``SimpleITK.GetArrayFromImage`` and ``slicer.util.arrayFromVolume``. Multi-component images carry the
  components last: ``(k, j, i, c)``.
* ``spacing`` and ``origin`` are in ITK order ``(i, j, k)`` = ``(x, y, z)``, in millimetres; ``origin`` is the
  physical position of the centre of voxel ``(0, 0, 0)`` in the LPS patient coordinate system (DICOM, ITK).
* ``direction`` is a 3x3 matrix whose *columns* are the unit vectors of the i, j and k index axes in LPS, the
  same as ``np.array(image.GetDirection()).reshape(3, 3)`` in SimpleITK.

The RAS <-> LPS conversion lives here and nowhere else (:data:`LPS_TO_RAS`, :meth:`Volume.ijk_to_ras`,
:meth:`Volume.from_ijk_to_ras`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from MedAnalysisLib.errors import GeometryError

if TYPE_CHECKING:  # SimpleITK is imported lazily by the functions that need it
    import SimpleITK as sitk

#: Flips x and y: LPS <-> RAS (the matrix is its own inverse).
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])

#: Default tolerances of :func:`same_geometry`: spacing and origin in mm, direction as cosine difference.
DEFAULT_SPACING_TOL = 1e-4
DEFAULT_ORIGIN_TOL = 1e-3
DEFAULT_DIRECTION_TOL = 1e-5


@dataclass(frozen=True, eq=False)
class Volume:
    """Voxels with their geometry.

    Attributes:
        array: Voxels, ``(k, j, i)`` or ``(k, j, i, c)``; any numeric dtype. Units are the image's own (HU for CT
            after the modality LUT, arbitrary for MR, class indices for label maps).
        spacing: Voxel size along i, j, k in mm.
        origin: LPS position of voxel (0, 0, 0) in mm.
        direction: 3x3, columns are the i, j, k axis directions in LPS.
        metadata: Non-identifying facts about the image (modality, series description, ...). Never patient data.
    """

    array: np.ndarray
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0)
    direction: np.ndarray = field(default_factory=lambda: np.eye(3))
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        array = np.asarray(self.array)
        if array.ndim not in (3, 4):
            raise GeometryError(
                f"expected a 3D array (k, j, i) or a multi-component array (k, j, i, c), got an array with "
                f"{array.ndim} dimensions and shape {array.shape}"
            )
        spacing = tuple(float(s) for s in self.spacing)
        origin = tuple(float(o) for o in self.origin)
        direction = np.asarray(self.direction, dtype=np.float64)
        if len(spacing) != 3 or len(origin) != 3 or direction.shape != (3, 3):
            raise GeometryError(
                f"expected 3 spacings, 3 origin coordinates and a 3x3 direction, got {len(spacing)}, {len(origin)} "
                f"and {direction.shape}"
            )
        if not all(np.isfinite(spacing)) or min(spacing) <= 0:
            raise GeometryError(f"expected positive finite spacing in mm, got {spacing}")
        if not all(np.isfinite(origin)):
            raise GeometryError(f"expected a finite origin, got {origin}")
        check_direction(direction)
        object.__setattr__(self, "array", array)
        object.__setattr__(self, "spacing", spacing)
        object.__setattr__(self, "origin", origin)
        object.__setattr__(self, "direction", direction)
        object.__setattr__(self, "metadata", dict(self.metadata))

    # ------------------------------------------------------------------ shape and copies
    @property
    def shape(self) -> tuple[int, int, int]:
        """Spatial shape in (k, j, i) order."""
        return tuple(int(s) for s in self.array.shape[:3])  # type: ignore[return-value]

    @property
    def size_ijk(self) -> tuple[int, int, int]:
        """Spatial size in ITK (i, j, k) order."""
        k, j, i = self.shape
        return (i, j, k)

    @property
    def n_components(self) -> int:
        return 1 if self.array.ndim == 3 else int(self.array.shape[3])

    def with_array(self, array: np.ndarray, **metadata: Any) -> Volume:
        """A new Volume with the same geometry and other voxels (same spatial shape required)."""
        array = np.asarray(array)
        if tuple(array.shape[:3]) != self.shape:
            raise GeometryError(f"expected voxels of spatial shape {self.shape} (k, j, i), got {array.shape}")
        return dataclasses.replace(self, array=array, metadata={**self.metadata, **metadata})

    def copy(self) -> Volume:
        return dataclasses.replace(self, array=self.array.copy(), direction=self.direction.copy())

    # ------------------------------------------------------------------ affine matrices
    def ijk_to_lps(self) -> np.ndarray:
        """4x4 matrix taking homogeneous (i, j, k, 1) voxel indices to LPS millimetres."""
        matrix = np.eye(4)
        matrix[:3, :3] = self.direction @ np.diag(self.spacing)
        matrix[:3, 3] = self.origin
        return matrix

    def ijk_to_ras(self) -> np.ndarray:
        """4x4 IJK-to-RAS matrix, as Slicer's ``vtkMRMLVolumeNode.GetIJKToRASMatrix`` expects."""
        matrix = self.ijk_to_lps()
        matrix[:3, :] = LPS_TO_RAS @ matrix[:3, :]
        return matrix

    @classmethod
    def from_ijk_to_ras(cls, array: np.ndarray, ijk_to_ras: np.ndarray, metadata: dict[str, Any] | None = None) -> Volume:
        """Build a Volume from Slicer's IJK-to-RAS matrix (spacing and direction are factored out of it)."""
        ijk_to_ras = np.asarray(ijk_to_ras, dtype=np.float64)
        if ijk_to_ras.shape != (4, 4):
            raise GeometryError(f"expected a 4x4 IJK-to-RAS matrix, got shape {ijk_to_ras.shape}")
        lps = LPS_TO_RAS @ ijk_to_ras[:3, :]
        spacing = np.linalg.norm(lps[:3, :3], axis=0)
        if np.any(spacing <= 0):
            raise GeometryError(f"expected an IJK-to-RAS matrix with non-zero columns, got {ijk_to_ras.tolist()}")
        return cls(
            array=array,
            spacing=tuple(spacing),  # type: ignore[arg-type]
            origin=tuple(lps[:3, 3]),  # type: ignore[arg-type]
            direction=lps[:3, :3] / spacing,
            metadata=metadata or {},
        )

    # ------------------------------------------------------------------ points
    def index_to_physical(self, ijk: np.ndarray | tuple[float, float, float]) -> np.ndarray:
        """LPS point(s) in mm of continuous index/indices given in (i, j, k) order, shape (3,) or (n, 3)."""
        points = np.asarray(ijk, dtype=np.float64)
        matrix = self.ijk_to_lps()
        return points @ matrix[:3, :3].T + matrix[:3, 3]

    def physical_to_index(self, lps: np.ndarray | tuple[float, float, float]) -> np.ndarray:
        """Continuous (i, j, k) index/indices of LPS point(s) in mm, shape (3,) or (n, 3)."""
        points = np.asarray(lps, dtype=np.float64)
        matrix = self.ijk_to_lps()
        return (points - matrix[:3, 3]) @ np.linalg.inv(matrix[:3, :3]).T

    def orientation_code(self) -> str:
        """Three-letter ITK/DICOM-style code of the closest axis letters in LPS, e.g. ``"LPS"`` or ``"RAI"``.

        Letter n names the patient direction the n-th index axis (i, j, k) points *to*.
        """
        return orientation_code(self.direction)

    # ------------------------------------------------------------------ SimpleITK bridge
    def to_sitk(self) -> sitk.Image:
        """A SimpleITK image with the same voxels and geometry (the array is copied)."""
        import SimpleITK as sitk

        image = sitk.GetImageFromArray(self.array, isVector=self.array.ndim == 4)
        image.SetSpacing(self.spacing)
        image.SetOrigin(self.origin)
        image.SetDirection(tuple(self.direction.ravel()))
        return image

    @classmethod
    def from_sitk(cls, image: sitk.Image, metadata: dict[str, Any] | None = None) -> Volume:
        """A Volume from a 3D SimpleITK image (2D and 4D images must be handled by the caller)."""
        import SimpleITK as sitk

        if image.GetDimension() != 3:
            raise GeometryError(f"expected a 3D image, got a {image.GetDimension()}D image of size {image.GetSize()}")
        return cls(
            array=sitk.GetArrayFromImage(image),
            spacing=image.GetSpacing(),
            origin=image.GetOrigin(),
            direction=np.array(image.GetDirection()).reshape(3, 3),
            metadata=metadata or {},
        )

    def describe_geometry(self) -> str:
        """One line, for error messages: shape, spacing, origin, orientation."""
        return (
            f"shape (k,j,i)={self.shape}, spacing={tuple(round(s, 6) for s in self.spacing)} mm, "
            f"origin={tuple(round(o, 4) for o in self.origin)} mm LPS, orientation {self.orientation_code()}"
        )


def check_direction(direction: np.ndarray, tolerance: float = 1e-4) -> None:
    """Raise :class:`GeometryError` unless ``direction`` is a finite orthonormal 3x3 matrix.

    A sheared (non-orthonormal) direction cannot be represented by ITK or Slicer without losing geometry, so it is
    refused rather than silently orthogonalised.
    """
    direction = np.asarray(direction, dtype=np.float64)
    if direction.shape != (3, 3) or not np.all(np.isfinite(direction)):
        raise GeometryError(f"expected a finite 3x3 direction matrix, got {direction.tolist()}")
    error = np.abs(direction.T @ direction - np.eye(3)).max()
    if error > tolerance:
        raise GeometryError(
            "expected an orthonormal direction matrix (rotation or reflection, no shear), got one whose columns "
            f"deviate from orthonormal by {error:.3g}: {np.round(direction, 6).tolist()}"
        )


def orientation_code(direction: np.ndarray) -> str:
    """Closest LPS axis letters of each column of a 3x3 direction matrix (see :meth:`Volume.orientation_code`)."""
    letters = (("L", "R"), ("P", "A"), ("S", "I"))
    matrix = np.asarray(direction, dtype=np.float64)
    # Each index axis gets a distinct patient axis: pairs are taken by decreasing |cosine| (as ITK does), so an
    # oblique direction never yields an impossible code such as "SAI".
    axis_of_column: dict[int, int] = {}
    for flat in np.argsort(-np.abs(matrix), axis=None, kind="stable"):
        row, column = divmod(int(flat), 3)
        if column not in axis_of_column and row not in axis_of_column.values():
            axis_of_column[column] = row
    return "".join(
        letters[axis][0] if matrix[axis, column] > 0 else letters[axis][1]
        for column, axis in sorted(axis_of_column.items())
    )


def geometry_differences(
    a: Volume,
    b: Volume,
    spacing_tol: float = DEFAULT_SPACING_TOL,
    origin_tol: float = DEFAULT_ORIGIN_TOL,
    direction_tol: float = DEFAULT_DIRECTION_TOL,
) -> list[str]:
    """Human-readable list of the ways two volumes' grids differ beyond the tolerances (empty when they match).

    Tolerances are absolute: spacing and origin in mm, direction as the largest element-wise difference.
    """
    differences = []
    if a.shape != b.shape:
        differences.append(f"shape {a.shape} vs {b.shape}")
    if np.abs(np.subtract(a.spacing, b.spacing)).max() > spacing_tol:
        differences.append(f"spacing {a.spacing} vs {b.spacing}")
    if np.abs(np.subtract(a.origin, b.origin)).max() > origin_tol:
        differences.append(f"origin {a.origin} vs {b.origin}")
    if np.abs(a.direction - b.direction).max() > direction_tol:
        differences.append(f"direction {np.round(a.direction, 6).tolist()} vs {np.round(b.direction, 6).tolist()}")
    return differences


def same_geometry(
    a: Volume,
    b: Volume,
    spacing_tol: float = DEFAULT_SPACING_TOL,
    origin_tol: float = DEFAULT_ORIGIN_TOL,
    direction_tol: float = DEFAULT_DIRECTION_TOL,
) -> bool:
    """True when both volumes sit on the same voxel grid within the given absolute tolerances."""
    return not geometry_differences(a, b, spacing_tol, origin_tol, direction_tol)


def require_same_geometry(a: Volume, b: Volume, what: str = "label", **tolerances: float) -> None:
    """Raise :class:`GeometryError` naming both geometries when ``a`` and ``b`` are on different grids."""
    differences = geometry_differences(a, b, **tolerances)
    if differences:
        raise GeometryError(
            f"expected the {what} on the image's grid ({a.describe_geometry()}), got ({b.describe_geometry()}); "
            f"differences: {'; '.join(differences)}"
        )


def rotation_about_axis(axis: str, degrees: float) -> np.ndarray:
    """A 3x3 rotation matrix about the LPS x, y or z axis, handy for building oblique test volumes."""
    angle = np.deg2rad(degrees)
    c, s = np.cos(angle), np.sin(angle)
    matrices = {
        "x": [[1, 0, 0], [0, c, -s], [0, s, c]],
        "y": [[c, 0, s], [0, 1, 0], [-s, 0, c]],
        "z": [[c, -s, 0], [s, c, 0], [0, 0, 1]],
    }
    if axis not in matrices:
        raise ValueError(f"expected axis 'x', 'y' or 'z', got {axis!r}")
    return np.array(matrices[axis], dtype=np.float64)
