"""Seeded augmentation: determinism, identical spatial transforms for image and label, finite intensities."""

from __future__ import annotations

import numpy as np
import pytest

from MedAnalysisLib.errors import PlanError
from MedAnalysisLib.preprocessing.augment import NO_AUGMENTATION, AugmentConfig, Augmenter

SPATIAL_ONLY = dict(p_gamma=0, p_brightness=0, p_contrast=0, p_noise=0, p_blur=0)
EVERYTHING = dict(p_flip=0.5, p_rot90=0.5, p_rotate=1, p_scale=1, p_elastic=1, p_gamma=1, p_brightness=1, p_contrast=1,
                  p_noise=1, p_blur=1)


def blob_case(shape=(24, 28, 28), seed=0):
    rng = np.random.default_rng(seed)
    label = np.zeros(shape, np.uint8)
    label[6:14, 8:20, 5:12] = 1
    label[15:20, 4:10, 15:25] = 2
    image = (label.astype(np.float32) * 10 + rng.normal(0, 0.1, size=shape).astype(np.float32))[..., None]
    return image, label


def test_same_seed_same_result_different_seed_different():
    image, label = blob_case()
    augmenter = Augmenter(EVERYTHING, seed=0)
    a = augmenter(image, label, np.random.default_rng(11))
    b = augmenter(image, label, np.random.default_rng(11))
    c = augmenter(image, label, np.random.default_rng(12))
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])
    # the augmenter's own seed drives calls without a generator
    first = Augmenter(EVERYTHING, seed=5)(image, label)
    again = Augmenter(EVERYTHING, seed=5)(image, label)
    np.testing.assert_array_equal(first[0], again[0])


@pytest.mark.parametrize("seed", range(6))
def test_spatial_transforms_move_image_and_label_together(seed):
    image, label = blob_case()
    config = dict(SPATIAL_ONLY, p_flip=0.5, p_rot90=1.0, p_rotate=1.0, p_scale=1.0, p_elastic=0.5)
    out_image, out_label = Augmenter(config)(image, label, np.random.default_rng(seed))
    assert out_image.shape == image.shape and out_label.shape == label.shape
    assert out_image.dtype == np.float32 and out_label.dtype == np.uint8
    assert set(np.unique(out_label)) <= {0, 1, 2}
    for value in (1, 2):
        inside = out_label == value
        if inside.sum() > 20:
            # the image was label * 10: where the label says `value`, the (linearly interpolated) image agrees
            assert np.median(out_image[..., 0][inside]) == pytest.approx(10 * value, abs=1.0)
    background = out_label == 0
    assert np.mean(np.abs(out_image[..., 0][background]) < 5) > 0.95


def test_flips_and_right_angles_are_exact():
    image, label = blob_case(shape=(10, 16, 16))
    config = dict(SPATIAL_ONLY, p_flip=1.0, p_rot90=1.0, p_rotate=0, p_scale=0)
    out_image, out_label = Augmenter(config)(image, label, np.random.default_rng(0))
    np.testing.assert_array_equal(np.round(out_image[..., 0] / 10).astype(np.uint8), out_label)
    assert sorted(np.unique(out_label, return_counts=True)[1]) == sorted(np.unique(label, return_counts=True)[1])


def test_intensity_transforms_keep_the_label_and_stay_finite():
    image, label = blob_case()
    config = dict(p_flip=0, p_rot90=0, p_rotate=0, p_scale=0, p_elastic=0, p_gamma=1, p_brightness=1, p_contrast=1,
                  p_noise=1, p_blur=1)
    for seed in range(4):
        out_image, out_label = Augmenter(config)(image, label, np.random.default_rng(seed))
        np.testing.assert_array_equal(out_label, label)
        assert np.all(np.isfinite(out_image)) and not np.array_equal(out_image, image)
    constant = np.full((8, 8, 8, 1), 3.0, np.float32)
    out, _ = Augmenter(config)(constant, None, np.random.default_rng(0))
    assert np.all(np.isfinite(out))


def test_two_dimensional_slices_and_multichannel():
    image, label = blob_case()
    out_image, out_label = Augmenter(EVERYTHING)(image[10], label[10], np.random.default_rng(3))
    assert out_image.shape == image[10].shape and out_label.shape == label[10].shape
    two = np.concatenate([image, -image], axis=-1)
    out, out_label = Augmenter(dict(SPATIAL_ONLY, p_rotate=1.0))(two, label, np.random.default_rng(1))
    np.testing.assert_allclose(out[..., 0], -out[..., 1], atol=1e-5)


def test_no_augmentation_is_identity_and_config_is_validated():
    image, label = blob_case()
    out_image, out_label = Augmenter(NO_AUGMENTATION)(image, label, np.random.default_rng(0))
    np.testing.assert_array_equal(out_image, image)
    np.testing.assert_array_equal(out_label, label)
    with pytest.raises(PlanError, match="p_flip"):
        AugmentConfig(p_flip=1.5)
    with pytest.raises(PlanError, match="unknown"):
        Augmenter({"p_sparkle": 0.5})
    with pytest.raises(PlanError, match="label of shape"):
        Augmenter()(image, label[:5], np.random.default_rng(0))
    assert AugmentConfig.from_dict(AugmentConfig().to_dict()) == AugmentConfig()


def test_context_margin_fills_rotated_patches_and_crops_the_centre():
    rng = np.random.default_rng(0)
    outer = rng.uniform(1.0, 2.0, size=(24, 24, 24, 1)).astype(np.float32)  # no zero anywhere
    label = (outer[..., 0] > 1.5).astype(np.uint8)
    rotating = Augmenter(dict(SPATIAL_ONLY, p_flip=0, p_rotate=1.0, rotate_degrees=15, p_scale=1.0, scale_range=(0.85, 0.9)))
    image, out_label = rotating(outer, label, np.random.default_rng(1), output_shape=(16, 16, 16))
    assert image.shape == (16, 16, 16, 1) and out_label.shape == (16, 16, 16)
    assert image.min() > 0.9  # filled from the context, no zero corners
    plain = Augmenter(NO_AUGMENTATION)
    image, out_label = plain(outer, label, np.random.default_rng(1), output_shape=(16, 16, 16))
    np.testing.assert_array_equal(image, outer[4:20, 4:20, 4:20])
    np.testing.assert_array_equal(out_label, label[4:20, 4:20, 4:20])
    flipped = Augmenter(dict(SPATIAL_ONLY, p_flip=1.0, p_rotate=0, p_scale=0))
    image, _ = flipped(outer, label, np.random.default_rng(1), output_shape=(16, 16, 16))
    np.testing.assert_array_equal(image, outer[::-1, ::-1, ::-1][4:20, 4:20, 4:20])
    with pytest.raises(PlanError, match="even margin"):
        plain(outer, label, np.random.default_rng(0), output_shape=(15, 16, 16))


def test_training_augmentation_settings_merge_into_the_defaults():
    """``train(augment=...)``: True gives the defaults, False none, a mapping changes only the fields it names
    (what ``medanalysis train --augment p_gamma=0`` passes), and a wrong field or value is refused by name."""
    from MedAnalysisLib.errors import InputError
    from MedAnalysisLib.training.pipeline import augment_settings

    assert augment_settings(True) == AugmentConfig()
    assert augment_settings(False) is None
    quantitative = augment_settings({"p_gamma": 0, "p_brightness": 0.0, "scale_range": [0.9, 1.1]})
    assert quantitative.p_gamma == 0 and quantitative.p_brightness == 0 and quantitative.scale_range == (0.9, 1.1)
    assert quantitative.p_rotate == AugmentConfig().p_rotate and quantitative.p_flip == AugmentConfig().p_flip
    with pytest.raises(PlanError, match=r"unknown \['p_gama'\]"):
        augment_settings({"p_gama": 0})
    with pytest.raises(PlanError, match="expected augmentation probability p_noise in"):
        augment_settings({"p_noise": 2})
    with pytest.raises(InputError, match="got str"):
        augment_settings("strong")  # type: ignore[arg-type]
