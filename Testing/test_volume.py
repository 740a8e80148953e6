"""The Volume type: index <-> physical mapping, RAS <-> LPS, orientation codes, geometry comparison, shear refusal.

SimpleITK is the reference for index/physical mapping and orientation codes.
"""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from MedAnalysisLib.errors import GeometryError
from MedAnalysisLib.volume import (
    LPS_TO_RAS,
    Volume,
    geometry_differences,
    orientation_code,
    require_same_geometry,
    rotation_about_axis,
    same_geometry,
)


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    return q @ np.diag(np.sign(np.diag(r)))


def test_index_to_physical_matches_simpleitk(oblique_volume_factory) -> None:
    volume = oblique_volume_factory()
    image = volume.to_sitk()
    rng = np.random.default_rng(1)
    indices = rng.uniform(-2, 40, size=(20, 3))
    ours = volume.index_to_physical(indices)
    reference = np.array([image.TransformContinuousIndexToPhysicalPoint(tuple(p)) for p in indices])
    np.testing.assert_allclose(ours, reference, atol=1e-9)
    np.testing.assert_allclose(volume.physical_to_index(ours), indices, atol=1e-9)
    # single point in, single point out
    assert volume.index_to_physical((0, 0, 0)).shape == (3,)
    np.testing.assert_allclose(volume.index_to_physical((0, 0, 0)), volume.origin)


def test_cube_centre_lands_on_the_recorded_physical_point(oblique_volume_factory) -> None:
    volume = oblique_volume_factory(cube_center_ijk=(10, 12, 7))
    centre = np.array(volume.metadata["cube_center_lps"])
    ijk = np.round(volume.physical_to_index(centre)).astype(int)
    assert tuple(ijk) == (10, 12, 7)
    assert volume.array[ijk[2], ijk[1], ijk[0]] == 100


def test_ijk_to_ras_flips_x_and_y_of_lps(oblique_volume_factory) -> None:
    volume = oblique_volume_factory()
    ijk_to_ras = volume.ijk_to_ras()
    ijk_to_lps = volume.ijk_to_lps()
    point = np.array([3.0, 4.0, 5.0, 1.0])
    lps = ijk_to_lps @ point
    ras = ijk_to_ras @ point
    np.testing.assert_allclose(ras[:3], [-lps[0], -lps[1], lps[2]], atol=1e-12)
    np.testing.assert_allclose(LPS_TO_RAS @ LPS_TO_RAS, np.eye(3))
    assert ijk_to_ras[3].tolist() == [0, 0, 0, 1]


def test_from_ijk_to_ras_round_trip_is_exact(oblique_volume_factory) -> None:
    volume = oblique_volume_factory()
    back = Volume.from_ijk_to_ras(volume.array, volume.ijk_to_ras(), metadata={"a": 1})
    assert geometry_differences(volume, back, 1e-12, 1e-12, 1e-12) == []
    assert back.metadata == {"a": 1}
    assert back.array is volume.array or np.shares_memory(back.array, volume.array)


def test_from_ijk_to_ras_refuses_sheared_and_degenerate_matrices() -> None:
    sheared = np.eye(4)
    sheared[0, 1] = 0.3  # the j axis leans towards x
    with pytest.raises(GeometryError, match="orthonormal"):
        Volume.from_ijk_to_ras(np.zeros((2, 2, 2)), sheared)
    degenerate = np.eye(4)
    degenerate[2, 2] = 0
    with pytest.raises(GeometryError, match="non-zero columns"):
        Volume.from_ijk_to_ras(np.zeros((2, 2, 2)), degenerate)
    with pytest.raises(GeometryError, match="4x4"):
        Volume.from_ijk_to_ras(np.zeros((2, 2, 2)), np.eye(3))


def test_sheared_direction_is_refused() -> None:
    direction = np.eye(3)
    direction[:, 1] = [0.2, 0.98, 0.0]  # not orthogonal to the i axis
    with pytest.raises(GeometryError, match="expected an orthonormal direction"):
        Volume(np.zeros((2, 3, 4)), direction=direction)


@pytest.mark.parametrize(
    ("array", "kwargs", "match"),
    [
        (np.zeros((3, 4)), {}, "3D array"),
        (np.zeros((2, 2, 2)), {"spacing": (1.0, 0.0, 1.0)}, "positive finite spacing"),
        (np.zeros((2, 2, 2)), {"spacing": (1.0, np.nan, 1.0)}, "positive finite spacing"),
        (np.zeros((2, 2, 2)), {"origin": (0.0, np.inf, 0.0)}, "finite origin"),
        (np.zeros((2, 2, 2)), {"spacing": (1.0, 1.0)}, "3 spacings"),
    ],
)
def test_invalid_geometry_is_refused(array: np.ndarray, kwargs: dict, match: str) -> None:
    with pytest.raises(GeometryError, match=match):
        Volume(array, **kwargs)


def test_orientation_codes_match_simpleitk() -> None:
    assert orientation_code(np.eye(3)) == "LPS"
    assert orientation_code(np.diag([-1.0, -1.0, 1.0])) == "RAS"
    assert Volume(np.zeros((2, 2, 2)), direction=np.diag([1.0, -1.0, -1.0])).orientation_code() == "LAI"
    rng = np.random.default_rng(7)
    for _ in range(25):
        direction = _random_rotation(rng)
        expected = sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(tuple(direction.ravel()))
        assert orientation_code(direction) == expected


def test_same_geometry_uses_the_stated_tolerances() -> None:
    base = Volume(np.zeros((4, 5, 6)), spacing=(0.5, 0.6, 2.0), origin=(1.0, 2.0, 3.0), direction=rotation_about_axis("z", 20))
    close = Volume(np.ones((4, 5, 6)), spacing=(0.50005, 0.6, 2.0), origin=(1.0005, 2.0, 3.0), direction=base.direction)
    assert same_geometry(base, close)  # defaults: 1e-4 mm spacing, 1e-3 mm origin
    assert not same_geometry(base, close, spacing_tol=1e-5)
    assert not same_geometry(base, close, origin_tol=1e-4)
    shifted = Volume(np.zeros((4, 5, 6)), spacing=base.spacing, origin=(1.01, 2.0, 3.0), direction=base.direction)
    assert geometry_differences(base, shifted) == [f"origin {base.origin} vs {shifted.origin}"]
    rotated = Volume(np.zeros((4, 5, 6)), spacing=base.spacing, origin=base.origin, direction=rotation_about_axis("z", 20.01))
    assert not same_geometry(base, rotated)
    assert same_geometry(base, rotated, direction_tol=1e-3)
    other_shape = Volume(np.zeros((4, 5, 7)), spacing=base.spacing, origin=base.origin, direction=base.direction)
    assert "shape" in geometry_differences(base, other_shape)[0]


def test_require_same_geometry_names_both_grids() -> None:
    image = Volume(np.zeros((4, 5, 6)), spacing=(1.0, 1.0, 2.0))
    label = Volume(np.zeros((4, 5, 6), np.uint8), spacing=(1.0, 1.0, 3.0))
    require_same_geometry(image, image.with_array(np.zeros((4, 5, 6), np.uint8)))
    with pytest.raises(GeometryError, match=r"expected the label on the image's grid.*spacing"):
        require_same_geometry(image, label)


def test_sitk_round_trip_keeps_voxels_and_geometry(oblique_volume_factory) -> None:
    volume = oblique_volume_factory()
    back = Volume.from_sitk(volume.to_sitk())
    np.testing.assert_array_equal(back.array, volume.array)
    assert geometry_differences(volume, back, 0, 0, 0) == []
    vector = volume.with_array(np.stack([volume.array, -volume.array], axis=-1))
    image = vector.to_sitk()
    assert image.GetNumberOfComponentsPerPixel() == 2
    back = Volume.from_sitk(image)
    assert back.n_components == 2 and back.shape == volume.shape
    np.testing.assert_array_equal(back.array[..., 1], -volume.array)


def test_with_array_checks_the_spatial_shape(oblique_volume_factory) -> None:
    volume = oblique_volume_factory(shape=(4, 5, 6))
    assert volume.with_array(np.zeros((4, 5, 6, 3)), note="x").metadata["note"] == "x"
    with pytest.raises(GeometryError, match=r"spatial shape \(4, 5, 6\)"):
        volume.with_array(np.zeros((4, 5, 7)))
    assert volume.size_ijk == (6, 5, 4)


def test_from_sitk_refuses_2d_images() -> None:
    with pytest.raises(GeometryError, match="expected a 3D image, got a 2D image"):
        Volume.from_sitk(sitk.Image(4, 5, sitk.sitkUInt8))
