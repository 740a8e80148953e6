"""Transforms that apply and invert a preprocessing plan: exact geometry, golden physical point, bad input."""

from __future__ import annotations

import itertools
import warnings

import numpy as np
import pytest

from MedAnalysisLib.errors import GeometryError, ImageValidationError, PlanError
from MedAnalysisLib.preprocessing.plan import Normalization, Plan
from MedAnalysisLib.preprocessing.transforms import (
    Grid,
    Inverse,
    PreprocessingWarning,
    apply_plan,
    body_box,
    invert_plan,
    normalize,
    prepare_slices,
    reorient,
    resample_to_spacing,
    spacing_grid,
    widen_to_aspect,
)
from MedAnalysisLib.volume import Volume, rotation_about_axis


def plan_for(**fields: object) -> Plan:
    base = dict(target_spacing=(1.5, 1.5, 1.5), patch_size=(32, 32, 32), normalization=Normalization("zscore"))
    base.update(fields)
    return Plan(**base)  # type: ignore[arg-type]


def centroid_lps(volume: Volume, mask: np.ndarray) -> np.ndarray:
    kji = np.argwhere(mask).mean(axis=0)
    return volume.index_to_physical(kji[::-1])


def assert_same_grid(a: Volume, b: Volume) -> None:
    assert a.shape == b.shape
    assert a.spacing == b.spacing
    assert a.origin == b.origin
    assert np.array_equal(a.direction, b.direction)


@pytest.mark.parametrize("orientation", ["LPS", "RAS", ""])
@pytest.mark.parametrize("interpolation", ["linear", "bspline"])
def test_golden_cube_stays_at_its_physical_point(oblique_volume_factory, orientation, interpolation):
    volume = oblique_volume_factory()
    cube_lps = np.array(volume.metadata["cube_center_lps"])
    cube = volume.array == 100
    plan = plan_for(orientation=orientation, image_interpolation=interpolation)
    prepared = apply_plan(plan, volume, volume.with_array(cube.astype(np.uint8)))

    # On the prepared (resampled, 1.5 mm) grid the bright cube is where it was, within half a voxel.
    prepared_volume = prepared.inverse.prepared_volume(prepared.image[..., 0])
    bright = prepared.image[..., 0] > prepared.image[..., 0].max() / 2
    assert np.linalg.norm(centroid_lps(prepared_volume, bright) - cube_lps) < 0.5 * 1.5
    assert np.linalg.norm(centroid_lps(prepared_volume, prepared.label == 1) - cube_lps) < 0.5 * 1.5

    # A label "prediction" made on the prepared grid goes back exactly onto the input grid. It passed through the
    # 1.5 mm grid, so nearest-neighbour rounding may move its edges by up to half a prepared voxel.
    back = invert_plan(plan, (prepared.label == 1).astype(np.uint8), prepared.inverse, kind="label")
    assert_same_grid(back, volume)
    assert np.linalg.norm(centroid_lps(back, back.array == 1) - cube_lps) < 0.5 * 1.5
    assert (back.array == 1).sum() > 0.8 * cube.sum()

    # A soft map (the prepared image itself, scaled to 0..1) comes back within half an *input* voxel.
    image = prepared.image[..., 0]
    soft = (image - image.min()) / (image.max() - image.min())
    back_soft = invert_plan(plan, soft, prepared.inverse, kind="probability")
    assert_same_grid(back_soft, volume)
    assert np.linalg.norm(centroid_lps(back_soft, back_soft.array > 0.5) - cube_lps) < 0.5 * min(volume.spacing)


def test_probabilities_invert_onto_the_input_grid_and_stay_normalised(oblique_volume_factory):
    volume = oblique_volume_factory()
    plan = plan_for()
    prepared = apply_plan(plan, volume)
    bright = (prepared.image[..., 0] > prepared.image[..., 0].max() / 2).astype(np.float32)
    probabilities = np.stack([1 - bright, bright], axis=-1)
    back = invert_plan(plan, probabilities, prepared.inverse, kind="probability")
    assert_same_grid(back, volume)
    assert back.array.shape == (*volume.shape, 2) and back.array.dtype == np.float32
    np.testing.assert_allclose(back.array.sum(axis=-1), 1.0, atol=1e-5)
    agreement = ((back.array[..., 1] > 0.5) == (volume.array == 100)).mean()
    assert agreement > 0.99


def test_without_resampling_the_inverse_is_exact_voxel_for_voxel(oblique_volume_factory):
    volume = oblique_volume_factory()
    label = volume.with_array((np.arange(volume.array.size).reshape(volume.shape) % 7).astype(np.int16))
    plan = plan_for(target_spacing=None, crop_to_nonzero=True, patch_size=(64, 64, 64), label_values=tuple(range(7)))
    prepared = apply_plan(plan, volume, label)
    assert prepared.image.shape[:3] == (64, 64, 64)  # padded up to the patch
    back = invert_plan(plan, prepared.label, prepared.inverse, kind="label")
    assert_same_grid(back, volume)
    np.testing.assert_array_equal(back.array, label.array)


def test_every_signed_axis_permutation_reorients_exactly():
    rng = np.random.default_rng(3)
    array = rng.normal(size=(4, 5, 6)).astype(np.float32)
    tilt = rotation_about_axis("y", 12) @ rotation_about_axis("z", -7)
    for perm in itertools.permutations(range(3)):
        for signs in itertools.product((1, -1), repeat=3):
            direction = tilt @ (np.eye(3)[:, perm] * signs)
            volume = Volume(array, spacing=(0.5, 1.0, 3.0), origin=(1.0, -2.0, 3.0), direction=direction)
            for code in ("LPS", "RAS", "AIL"):
                out, r = reorient(volume, code)
                assert out.orientation_code() == code
                # every voxel keeps its physical position and value
                for kji in [(0, 0, 0), (3, 4, 5), (1, 2, 3)]:
                    value = array[kji]
                    position = volume.index_to_physical(kji[::-1])
                    new_kji = np.rint(out.physical_to_index(position)[::-1]).astype(int)
                    assert out.array[tuple(new_kji)] == value
                back = Grid.of(out)
                assert back.shape[0] * back.shape[1] * back.shape[2] == array.size
                assert sorted(out.spacing) == sorted(volume.spacing)


def test_spacing_grid_keeps_extent_centre_and_untouched_axes():
    grid = Grid((10, 20, 30), (0.7, 0.7, 2.5), (5.0, 6.0, 7.0), tuple(rotation_about_axis("z", 30).ravel()))
    new = spacing_grid(grid, (1.4, 0.7, 2.5))
    assert new.shape == (10, 20, 15)
    assert new.spacing == (1.4, 0.7, 2.5)
    old_centre = grid.index_to_physical(((30 - 1) / 2, (20 - 1) / 2, (10 - 1) / 2))
    new_centre = new.index_to_physical(((15 - 1) / 2, (20 - 1) / 2, (10 - 1) / 2))
    np.testing.assert_allclose(new_centre, old_centre, atol=1e-9)
    # j and k were already at the target: their voxel centres coincide
    np.testing.assert_allclose(new.index_to_physical((0, 3, 4)) - grid.index_to_physical((0.5, 3, 4)), 0, atol=1e-9)


def test_resample_to_spacing_dtypes():
    volume = Volume(np.arange(4 * 6 * 8, dtype=np.int16).reshape(4, 6, 8), spacing=(0.5, 0.5, 2.0))
    image = resample_to_spacing(volume, (1.0, 1.0, 1.0))
    assert image.shape == (8, 3, 4) and image.array.dtype == np.float32
    label = resample_to_spacing(volume.with_array((volume.array % 3).astype(np.uint8)), (1.0, 1.0, 1.0), kind="label")
    assert label.array.dtype == np.uint8 and set(np.unique(label.array)) <= {0, 1, 2}


def test_label_off_the_image_grid_is_an_error_naming_both_geometries(oblique_volume_factory):
    volume = oblique_volume_factory()
    shifted = Volume(
        (volume.array == 100).astype(np.uint8),
        spacing=volume.spacing,
        origin=tuple(np.add(volume.origin, (2.0, 0.0, 0.0))),
        direction=volume.direction,
    )
    with pytest.raises(GeometryError) as info:
        apply_plan(plan_for(), volume, shifted)
    message = str(info.value)
    assert "origin" in message and str(volume.shape) in message and "-10.5" in message and "-12.5" in message

    wrong_shape = Volume(np.zeros((10, 30, 40), np.uint8), volume.spacing, volume.origin, volume.direction)
    with pytest.raises(GeometryError, match="shape"):
        apply_plan(plan_for(), volume, wrong_shape)

    # asked for: the label is resampled onto the image grid (nearest neighbour) and follows the image
    prepared = apply_plan(plan_for(), volume, shifted, resample_label=True)
    assert prepared.label is not None and prepared.label.shape == prepared.image.shape[:3]
    assert prepared.label.max() == 1


def test_constant_image_and_empty_mask_give_finite_output_with_a_warning():
    constant = Volume(np.full((6, 7, 8), 42.0, np.float32))
    for scheme in ("zscore", "zscore_nonzero"):
        with pytest.warns(PreprocessingWarning, match="constant"):
            prepared = apply_plan(plan_for(normalization=Normalization(scheme), target_spacing=None, patch_size=(8, 8, 8)), constant)
        assert np.all(np.isfinite(prepared.image)) and np.all(prepared.image == 0)
    empty = Volume(np.zeros((6, 7, 8), np.float32))
    with pytest.warns(PreprocessingWarning):
        prepared = apply_plan(plan_for(normalization=Normalization("zscore_nonzero")), empty)
    assert np.all(np.isfinite(prepared.image))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = normalize(np.zeros((3, 3, 3)), Normalization("none"))
    assert out.dtype == np.float32


def test_ct_normalisation_clips_then_uses_dataset_statistics():
    norm = Normalization("ct", clip_low=-100.0, clip_high=300.0, mean=50.0, std=100.0)
    values = np.array([[[-1000.0, 50.0, 250.0, 3000.0]]], dtype=np.float32)
    np.testing.assert_allclose(normalize(values, norm), [[[-1.5, 0.0, 2.0, 2.5]]])
    with pytest.raises(ImageValidationError):
        normalize(np.array([[[np.nan]]]), norm)


def test_zscore_nonzero_leaves_the_background_at_zero():
    array = np.zeros((4, 4, 4), np.float32)
    array[1:3, 1:3, 1:3] = [[[1, 2], [3, 4]], [[5, 6], [7, 8]]]
    out = normalize(array, Normalization("zscore_nonzero"))
    assert np.all(out[array == 0] == 0)
    assert abs(out[array != 0].mean()) < 1e-6 and abs(out[array != 0].std() - 1) < 1e-5


def test_multichannel_and_channel_count_checks(oblique_volume_factory):
    volume = oblique_volume_factory()
    plan = plan_for(n_channels=2, channel_names=("t1", "t2"))
    prepared = apply_plan(plan, [volume, volume.with_array(volume.array * 2)])
    assert prepared.image.shape[-1] == 2
    with pytest.raises(PlanError, match="expected 2 image channel"):
        apply_plan(plan, volume)
    other = Volume(volume.array, spacing=(1, 1, 1))
    with pytest.raises(GeometryError, match="image channel 1"):
        apply_plan(plan, [volume, other])


def test_prepare_slices_resizes_in_plane_and_inverts(oblique_volume_factory):
    volume = oblique_volume_factory()
    plan = plan_for(slice_shape=(48, 40))
    slices, inverse = prepare_slices(plan, volume)
    assert slices.shape[1:] == (48, 40, 1) and slices.dtype == np.float32
    assert inverse.prepared.spacing[2] == 1.5  # slice spacing at the target, in-plane resized
    bright = (slices[..., 0] > slices[..., 0].max() / 2).astype(np.uint8)
    back = invert_plan(plan, bright, inverse, kind="label")
    assert_same_grid(back, volume)
    cube_lps = np.array(volume.metadata["cube_center_lps"])
    assert np.linalg.norm(centroid_lps(back, back.array == 1) - cube_lps) < 0.5 * min(volume.spacing)


def test_inverse_round_trips_through_a_dict_and_refuses_wrong_shapes(oblique_volume_factory):
    volume = oblique_volume_factory()
    plan = plan_for()
    prepared = apply_plan(plan, volume)
    inverse = Inverse.from_dict(prepared.inverse.to_dict())
    assert inverse == prepared.inverse
    with pytest.raises(GeometryError, match="prepared grid"):
        invert_plan(plan, np.zeros((3, 3, 3), np.uint8), inverse)
    with pytest.raises(PlanError):
        Inverse.from_dict({"original": {}})


def test_a_single_slice_is_not_resampled_into_several():
    grid = Grid((1, 64, 64), (0.7, 0.7, 5.0), (0.0, 0.0, 0.0), tuple(np.eye(3).ravel()))
    new = spacing_grid(grid, (1.4, 1.4, 1.0))
    assert new.shape == (1, 32, 32) and new.spacing == (1.4, 1.4, 5.0)


def test_label_values_outside_the_plan_are_refused(oblique_volume_factory):
    volume = oblique_volume_factory()
    label = volume.with_array((volume.array == 100).astype(np.uint8) * 3)
    with pytest.raises(ImageValidationError, match=r"label values among the plan's \[0, 1\], got \[3\]"):
        apply_plan(plan_for(), volume, label)


def ct_phantom() -> tuple[Volume, dict[str, np.ndarray]]:
    """Air (-1000 HU) around an elliptic trunk (40 HU), an arm (300 HU) beside it, a 1-voxel table top and a speck."""
    k, j, i = np.mgrid[0:6, 0:120, 0:160]
    trunk = ((j - 55) / 35.0) ** 2 + ((i - 70) / 45.0) ** 2 <= 1
    arm = ((j - 55) / 10.0) ** 2 + ((i - 135) / 10.0) ** 2 <= 1
    table = (j == 100) & (i >= 5) & (i < 155)
    speck = (j == 5) & (i == 150)
    array = np.full(k.shape, -1000, dtype=np.int16)
    for part, value in ((trunk, 40), (arm, 300), (table, 300), (speck, 200)):
        array[part] = value
    volume = Volume(array, spacing=(0.8, 0.8, 2.5), origin=(-64.0, -48.0, 10.0))
    return volume, {"trunk": trunk, "arm": arm, "table": table, "speck": speck}


def test_body_box_keeps_trunk_and_arm_and_drops_air_table_and_noise():
    volume, parts = ct_phantom()
    box = body_box([np.asarray(volume.array)], -500.0, volume.spacing)
    (k0, k1), (j0, j1), (i0, i1) = box
    assert (k0, k1) == (0, 6)
    assert (j0, j1) == (20, 91)  # the trunk's rows 20..90; the table top (row 100) and the speck (row 5) are out
    assert (i0, i1) == (25, 146)  # from the trunk's left edge to the arm's right edge
    # a multi-channel image counts a voxel as body where any channel is, and air alone has no body
    two = np.stack([np.full(volume.shape, -1000, np.int16), np.asarray(volume.array)], axis=-1)
    assert body_box([two], -500.0, volume.spacing) == box
    assert body_box([np.full((2, 8, 8), -1000.0)], -500.0, (1.0, 1.0, 1.0)) is None


def test_ct_body_crop_inverts_exactly_and_the_original_is_untouched():
    volume, parts = ct_phantom()
    before = np.asarray(volume.array).copy()
    plan = plan_for(target_spacing=None, normalization=Normalization("ct", -1000.0, 400.0, 0.0, 100.0),
                    body_threshold=-500.0, patch_size=(1, 8, 8))
    label = volume.with_array(parts["arm"].astype(np.uint8))
    prepared = apply_plan(plan, volume, label, pad_to_patch=False)
    assert prepared.image.shape[:3] == (6, 71, 121)
    assert np.array_equal(np.asarray(volume.array), before)
    # the prepared grid is the cropped part of the input grid: same spacing, origin at the box corner
    corner = volume.index_to_physical((25, 20, 0))
    assert np.allclose(prepared.inverse.prepared.origin, corner) and prepared.inverse.prepared.spacing == volume.spacing
    back = invert_plan(plan, prepared.label, prepared.inverse, kind="label")
    assert_same_grid(back, volume)
    assert np.array_equal(back.array, parts["arm"])  # voxel for voxel; outside the box is background
    soft = invert_plan(plan, np.stack([1.0 - prepared.label, prepared.label], -1).astype(np.float32),
                       prepared.inverse, kind="probability")
    assert np.allclose(soft.array[..., 0][~parts["arm"]], 1.0) and np.allclose(soft.array[..., 1][parts["arm"]], 1.0)


def test_widen_to_aspect_grows_the_short_side_around_its_centre_inside_the_image():
    shape, spacing = (1, 100, 200), (1.0, 1.0, 1.0)
    assert widen_to_aspect(((0, 1), (40, 60), (50, 150)), shape, spacing, 1.0) == ((0, 1), (0, 100), (50, 150))
    assert widen_to_aspect(((0, 1), (10, 90), (95, 105)), shape, spacing, 1.0) == ((0, 1), (10, 90), (60, 140))
    # near the edge the box is shifted inwards, not cut
    assert widen_to_aspect(((0, 1), (10, 90), (0, 10)), shape, spacing, 1.0) == ((0, 1), (10, 90), (0, 80))
    # the aspect is in mm: rows of 2 mm need half as many voxels
    assert widen_to_aspect(((0, 1), (0, 10), (0, 100)), shape, (1.0, 2.0, 1.0), 1.0) == ((0, 1), (0, 50), (0, 100))
    # already right, or an aspect of 2 (tall slices)
    assert widen_to_aspect(((0, 1), (0, 50), (0, 50)), shape, spacing, 1.0) == ((0, 1), (0, 50), (0, 50))
    assert widen_to_aspect(((0, 1), (0, 50), (0, 50)), shape, spacing, 2.0) == ((0, 1), (0, 100), (0, 50))


@pytest.mark.parametrize("keep_aspect", [True, False])
def test_slices_of_a_body_crop_are_scaled_not_stretched(keep_aspect):
    volume, parts = ct_phantom()
    plan = plan_for(target_spacing=None, normalization=Normalization("ct", -1000.0, 400.0, 0.0, 100.0),
                    body_threshold=-500.0, slice_shape=(64, 64), slice_keep_aspect=keep_aspect)
    slices, inverse = prepare_slices(plan, volume)
    assert slices.shape == (6, 64, 64, 1)
    # the trunk + arm box is 71 x 121 voxels of 0.8 mm: widened to 120 rows (all the image has), pixels stay square
    # within the one voxel the image lacks; otherwise they are 1.7 times wider than tall
    spacing = inverse.prepared.spacing
    assert (abs(spacing[0] / spacing[1] - 1) < 0.01) is keep_aspect
    arm = slices[2, ..., 0] > 2.0  # 300 HU -> 3.0; the trunk is at 0.4
    rows, cols = np.flatnonzero(arm.any(axis=1)), np.flatnonzero(arm.any(axis=0))
    ratio = (rows[-1] - rows[0] + 1) / (cols[-1] - cols[0] + 1)
    assert bool(abs(ratio - 1) < 0.15) is keep_aspect  # the round arm stays round only when the aspect is kept
    back = invert_plan(plan, (slices[..., 0] > 0).astype(np.uint8), inverse, kind="label")
    assert_same_grid(back, volume)
    assert ((back.array == 1) == (parts["trunk"] | parts["arm"])).mean() > 0.95  # 1.5 mm pixels, edges differ
