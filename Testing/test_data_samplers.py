"""Samplers: foreground oversampling, slices, padded sequences, and seed determinism."""

from __future__ import annotations

import numpy as np
import pytest

from MedAnalysisLib.data.datasets import load_dataset, read_case
from MedAnalysisLib.data.samplers import PatchSampler, SequenceSampler, SliceSampler
from MedAnalysisLib.errors import InputError
from MedAnalysisLib.preprocessing.augment import Augmenter
from MedAnalysisLib.preprocessing.plan import Normalization, Plan
from MedAnalysisLib.preprocessing.transforms import PreparedCase, apply_plan, prepare_slices
from MedAnalysisLib.volume import Volume

PLAN = Plan(target_spacing=None, patch_size=(16, 16, 16), normalization=Normalization("zscore"), slice_shape=(32, 32),
            label_values=(0, 1, 2))


def tiny_case(seed: int, shape=(20, 40, 40), target=None) -> PreparedCase:
    rng = np.random.default_rng(seed)
    label = np.zeros(shape, np.uint8)
    k, j, i = rng.integers(2, 14, size=3)
    label[k : k + 3, j : j + 3, i : i + 3] = 1  # small class 1
    if seed % 2 == 0:
        label[1:3, 30:36, 30:36] = 2  # class 2 only in some cases, far away
    image = Volume(rng.normal(size=shape).astype(np.float32) + label, spacing=(1, 1, 1))
    prepared = apply_plan(PLAN, image, image.with_array(label))
    return PreparedCase(prepared.image, prepared.label, prepared.inverse, target=target, case_id=f"c{seed}")


def test_patch_batches_have_the_contract_shapes_and_oversample_every_class():
    cases = [tiny_case(n) for n in range(4)]
    sampler = PatchSampler(cases, (16, 16, 16), 6, foreground_fraction=1.0, seed=0)
    for seed in range(5):
        x, y = sampler.batch(np.random.default_rng(seed))
        assert x.shape == (6, 16, 16, 16, 1) and x.dtype == np.float32
        assert y.shape == (6, 16, 16, 16) and y.dtype == np.int32
        present = [set(np.unique(patch)) - {0} for patch in y]
        assert all(present), "every patch must contain foreground"
        assert {1, 2} <= set().union(*present), "both classes get their share"
    none_forced = PatchSampler(cases, (16, 16, 16), 6, foreground_fraction=0.0, seed=0)
    share = np.mean([(y > 0).any(axis=(1, 2, 3)).mean() for y in (none_forced.batch(s)[1] for s in range(10))])
    assert share < 0.9  # tiny objects: random patches often miss them


def test_same_seed_same_batch_with_augmentation_and_threads():
    cases = [tiny_case(n) for n in range(3)]
    sampler = PatchSampler(cases, (16, 16, 16), 3, augmenter=Augmenter({"p_rotate": 1.0, "p_noise": 1.0}), seed=0)
    a = sampler.batch(np.random.default_rng(42))
    b = sampler.batch(np.random.default_rng(42))
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    one = list(sampler.batches(4, seed=9, workers=1))
    two = list(sampler.batches(4, seed=9, workers=2))
    for (x1, y1), (x2, y2) in zip(one, two, strict=True):
        np.testing.assert_array_equal(x1, x2)
        np.testing.assert_array_equal(y1, y2)
    assert not np.array_equal(one[0][0], one[1][0])


def test_patch_larger_than_the_image_is_zero_padded():
    small = tiny_case(1, shape=(8, 10, 12))
    sampler = PatchSampler([small], (24, 24, 24), 2, foreground_fraction=0.5)
    x, y = sampler.batch(0)
    assert x.shape == (2, 24, 24, 24, 1) and (y == 1).any()
    with pytest.raises(InputError, match="label"):
        PatchSampler([PreparedCase(small.image, None, small.inverse)], (8, 8, 8), 2)


def test_slice_sampler_targets():
    cases = [tiny_case(n, target=n % 2) for n in range(4)]
    masks = SliceSampler(cases, 5, slice_shape=(24, 24), foreground_fraction=0.6, seed=0)
    x, y = masks.batch(np.random.default_rng(0))
    assert x.shape == (5, 24, 24, 1) and y.shape == (5, 24, 24) and y.dtype == np.int32
    assert (y[-3:] > 0).any(axis=(1, 2)).all()  # the foreground share comes last
    scans = SliceSampler(cases, 4, target="case")
    x, y = scans.batch(1)
    assert x.shape == (4, 40, 40, 1) and y.shape == (4,) and set(y) <= {0, 1}
    flags = SliceSampler(cases, 8, target="slice_foreground", foreground_fraction=0.5)
    _, y = flags.batch(2)
    assert y.shape == (8,) and y[-4:].all()


def test_sequence_sampler_pads_and_masks(shared_data):
    dataset = load_dataset(shared_data / "hippocampus")
    plan = PLAN.replace(target_spacing="1,1,1", orientation="LPS", normalization={"scheme": "zscore_nonzero"},
                        slice_shape="48,48")
    cases = []
    for n, case in enumerate(dataset.cases[:4]):
        images, label = read_case(case)
        prepared = apply_plan(plan, images, label, slice_shape=plan.slice_shape, pad_to_patch=False)
        cases.append(PreparedCase(prepared.image, prepared.label, prepared.inverse, target=n % 2))
        if n == 0:
            slices, _ = prepare_slices(plan, images)
            np.testing.assert_array_equal(slices, prepared.image)
    lengths = [c.image.shape[0] for c in cases]
    sampler = SequenceSampler(cases, 4, augmenter=Augmenter({"flip_axes": (1, 2)}), seed=0)
    x, mask, y_slices, y_scan = sampler.batch(np.random.default_rng(0))
    assert x.shape == (4, max(lengths), 48, 48, 1) and mask.shape == (4, max(lengths)) and mask.dtype == bool
    assert y_slices.shape == (4, max(lengths)) and y_scan.shape == (4,)
    for b in range(4):
        assert not x[b][~mask[b]].any() and not y_slices[b][~mask[b]].any()
        assert mask[b].sum() in lengths
    batches = list(sampler.ordered_batches())
    _, mask, y_slices, y_scan = batches[0]
    assert mask.sum(axis=1).tolist() == lengths and y_scan.tolist() == [0, 1, 0, 1]
    assert (y_slices.sum(axis=1) > 0).all()  # every hippocampus scan has labelled slices
    window = SequenceSampler(cases, 2, max_slices=10)
    x, mask, _, _ = window.batch(3)
    assert x.shape[1] == 10 and mask.all()


def test_cases_without_any_foreground_still_sample():
    empty = tiny_case(3)
    blank = PreparedCase(empty.image, np.zeros_like(empty.label), empty.inverse)
    x, y = PatchSampler([blank], (16, 16, 16), 3, foreground_fraction=1.0).batch(0)
    assert x.shape == (3, 16, 16, 16, 1) and not y.any() and np.isfinite(x).all()
