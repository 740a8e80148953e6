"""Sliding-window inference: coverage, blending, batching, padding, TTA, memory budget and bad input."""

from __future__ import annotations

import numpy as np
import pytest

from MedAnalysisLib.errors import ImageValidationError, InputError, MemoryBudgetError
from MedAnalysisLib.inference.sliding_window import (
    estimate_memory_bytes,
    make_grid,
    sliding_window_predict,
    tta_flip_sets,
    window_starts,
)


def pointwise_probabilities(x: np.ndarray) -> np.ndarray:
    """A voxel-wise 'model': two-class probabilities from a sigmoid of channel 0 (position independent)."""
    p = 1.0 / (1.0 + np.exp(-x[..., :1]))
    return np.concatenate([1.0 - p, p], axis=-1).astype(np.float32)


def random_image(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


@pytest.mark.parametrize("overlap", [0.0, 0.25, 0.5, 0.75])
@pytest.mark.parametrize("shape", [(17, 23, 40), (8, 8, 8), (9, 31, 12)])
def test_grid_covers_every_voxel(overlap: float, shape: tuple[int, int, int]) -> None:
    patch = (8, 8, 8)
    grid = make_grid(shape, patch, overlap)
    coverage = np.zeros(shape, np.int32)
    for window in grid.slices():
        coverage[window] += 1
    assert coverage.min() >= 1
    assert len(grid) == len(list(grid.corners()))
    if overlap == 0.0:  # no overlap wanted: only the last window per axis may overlap its neighbour
        assert all(len(s) == -(-n // p) for s, n, p in zip(grid.starts, shape, patch))


def test_window_starts_match_the_usual_grid() -> None:
    # 256 voxels, 96-voxel windows, overlap 0.25 -> step 72, last window flush with the border.
    assert window_starts(256, 96, 0.25) == [0, 72, 144, 160]
    assert window_starts(160, 96, 0.25) == [0, 64]
    assert window_starts(96, 96, 0.5) == [0]
    with pytest.raises(InputError, match="overlap"):
        window_starts(100, 10, 1.0)


@pytest.mark.parametrize("overlap", [0.0, 0.5])
@pytest.mark.parametrize("gaussian", [True, False])
@pytest.mark.parametrize("output", ["probabilities", "labels"])
def test_blending_reproduces_a_position_independent_model(overlap: float, gaussian: bool, output: str) -> None:
    """Any normalised weighting reproduces a voxel-wise model: this checks coverage and normalisation, not the
    weights (see test_blending_weights_match_an_independent_oracle)."""
    image = random_image((21, 18, 30, 1))
    expected = pointwise_probabilities(image)
    result = sliding_window_predict(
        pointwise_probabilities, image, (8, 10, 12), n_classes=2, overlap=overlap, gaussian=gaussian,
        batch_size=3, output=output,  # type: ignore[arg-type]
    )
    if output == "probabilities":
        assert result.shape == (21, 18, 30, 2) and result.dtype == np.float32
        np.testing.assert_allclose(result, expected, atol=1e-5)
    else:
        assert result.shape == (21, 18, 30) and result.dtype == np.uint8
        np.testing.assert_array_equal(result, np.argmax(expected, axis=-1))


def window_dependent_probabilities(x: np.ndarray) -> np.ndarray:
    """A 'model' whose answer for a voxel depends on the window it sees (through the window's mean), as a real
    network's does near window borders: blending weights change the result, so a test can tell them apart."""
    context = x[..., :1].mean(axis=(1, 2, 3), keepdims=True)
    p = 1.0 / (1.0 + np.exp(-(x[..., :1] + 4.0 * context)))
    return np.concatenate([1.0 - p, p], axis=-1).astype(np.float32)


def blend_oracle(image: np.ndarray, patch: tuple[int, int, int], overlap: float, gaussian: bool) -> np.ndarray:
    """Sliding-window blending written out from its definition, without the library: windows every
    int(patch * (1 - overlap)) voxels plus one flush with the far border; each window's output weighted by a Gaussian
    of standard deviation patch / 8 centred on the window (exp(-d^2 / 2 sigma^2) per axis, multiplied), or by 1;
    the weighted sum divided by the sum of weights at each voxel."""
    shape = image.shape[:3]
    starts = []
    for length, size in zip(shape, patch):
        step = int(size * (1 - overlap))
        axis = list(range(0, length - size + 1, step))
        if axis[-1] != length - size:
            axis.append(length - size)
        starts.append(axis)
    weights_1d = []
    for size in patch:
        d = np.arange(size) - (size - 1) / 2.0
        weights_1d.append(np.exp(-(d**2) / (2 * (size / 8.0) ** 2)) if gaussian else np.ones(size))
    weight = weights_1d[0][:, None, None] * weights_1d[1][None, :, None] * weights_1d[2][None, None, :]
    total = np.zeros((*shape, 2))
    norm = np.zeros(shape)
    for k in starts[0]:
        for j in starts[1]:
            for i in starts[2]:
                window = (slice(k, k + patch[0]), slice(j, j + patch[1]), slice(i, i + patch[2]))
                out = window_dependent_probabilities(image[window][None])[0]
                total[window] += out * weight[..., None]
                norm[window] += weight
    return total / norm[..., None]


@pytest.mark.parametrize("overlap", [0.25, 0.5])
@pytest.mark.parametrize("gaussian", [True, False])
def test_blending_weights_match_an_independent_oracle(overlap: float, gaussian: bool) -> None:
    """With a window-dependent model the blend is only right with the right weights: uniform weights in place of
    the Gaussian (or a Gaussian of another width) miss the oracle by far more than the tolerance."""
    image = random_image((20, 22, 26, 1), seed=5)
    patch = (8, 10, 12)
    expected = blend_oracle(image, patch, overlap, gaussian)
    other = blend_oracle(image, patch, overlap, not gaussian)
    assert np.abs(expected - other).max() > 1e-2  # the two weightings really differ on this image
    result = sliding_window_predict(window_dependent_probabilities, image, patch, n_classes=2, overlap=overlap,
                                    gaussian=gaussian, batch_size=4)
    np.testing.assert_allclose(result, expected, atol=2e-5)
    labels = sliding_window_predict(window_dependent_probabilities, image, patch, n_classes=2, overlap=overlap,
                                    gaussian=gaussian, batch_size=4, output="labels")
    clear = np.abs(expected[..., 1] - 0.5) > 1e-3  # leave out near-ties
    np.testing.assert_array_equal(labels[clear], np.argmax(expected, axis=-1)[clear])


def test_test_time_flips_are_undone() -> None:
    image = random_image((12, 14, 16, 1), seed=3)
    assert len(tta_flip_sets(True)) == 8
    result = sliding_window_predict(pointwise_probabilities, image, (8, 8, 8), n_classes=2, tta_flips=True)
    np.testing.assert_allclose(result, pointwise_probabilities(image), atol=1e-5)


def test_flip_averaging_of_a_shift_model() -> None:
    """A model that looks one voxel to the right along i: flipping i makes it look left; TTA averages both."""

    def look_right(x: np.ndarray) -> np.ndarray:
        shifted = np.concatenate([x[..., 1:, :1], x[..., -1:, :1]], axis=-2)
        return np.concatenate([shifted, -shifted], axis=-1)

    image = random_image((8, 8, 20, 1), seed=4)
    result = sliding_window_predict(look_right, image, (8, 8, 20), n_classes=2, tta_flips=[(2,)])
    x = image[..., 0]
    interior = 0.5 * (x[:, :, 2:] + x[:, :, :-2])
    np.testing.assert_allclose(result[:, :, 1:-1, 0], interior, atol=1e-6)


def test_volume_smaller_than_the_patch() -> None:
    image = random_image((5, 7, 9, 1))
    seen = []

    def record(x: np.ndarray) -> np.ndarray:
        seen.append(x.shape)
        return pointwise_probabilities(x)

    result = sliding_window_predict(record, image, (8, 16, 16), n_classes=2, overlap=0.5)
    assert seen == [(1, 8, 16, 16, 1)]
    assert result.shape == (5, 7, 9, 2)
    np.testing.assert_allclose(result, pointwise_probabilities(image), atol=1e-5)


def test_bad_inputs_are_refused_with_clear_messages() -> None:
    with pytest.raises(ImageValidationError, match=r"expected an image of shape \(k, j, i\)"):
        sliding_window_predict(pointwise_probabilities, np.zeros((16, 16), np.float32), (8, 8, 8), n_classes=2)
    image = random_image((10, 10, 10, 1))
    image[3, 4, 5, 0] = np.nan
    with pytest.raises(ImageValidationError, match="1 NaN/Inf voxels"):
        sliding_window_predict(pointwise_probabilities, image, (8, 8, 8), n_classes=2)
    with pytest.raises(InputError, match="patch size of three"):
        sliding_window_predict(pointwise_probabilities, random_image((10, 10, 10)), (8, 8), n_classes=2)
    with pytest.raises(InputError, match="expected the model to return shape"):
        sliding_window_predict(pointwise_probabilities, random_image((10, 10, 10)), (8, 8, 8), n_classes=3)


def test_memory_budget_lowers_the_batch_then_refuses() -> None:
    image = random_image((16, 64, 64, 1))
    sizes: list[int] = []

    def record(x: np.ndarray) -> np.ndarray:
        sizes.append(x.shape[0])
        return pointwise_probabilities(x)

    big = estimate_memory_bytes((16, 64, 64), (16, 32, 32), n_channels=1, n_classes=2, batch_size=4)
    small = estimate_memory_bytes((16, 64, 64), (16, 32, 32), n_channels=1, n_classes=2, batch_size=1)
    budget_mb = (small["total"] + 1024) / 2**20
    assert big["total"] > small["total"]
    result = sliding_window_predict(
        record, image, (16, 32, 32), n_classes=2, overlap=0.5, batch_size=4, memory_budget_mb=budget_mb
    )
    assert max(sizes) == 1 and len(sizes) == 9
    np.testing.assert_allclose(result, pointwise_probabilities(image), atol=1e-5)
    # The probabilities alone exceed this budget; the labels output needs no probability volume and fits.
    labels_only = estimate_memory_bytes((16, 64, 64), (16, 32, 32), n_channels=1, n_classes=2, batch_size=1, output="labels")
    tight = (labels_only["total"] + 1024) / 2**20
    with pytest.raises(MemoryBudgetError, match="output='labels'"):
        sliding_window_predict(record, image, (16, 32, 32), n_classes=2, memory_budget_mb=tight)
    labels = sliding_window_predict(record, image, (16, 32, 32), n_classes=2, memory_budget_mb=tight, output="labels")
    np.testing.assert_array_equal(labels, np.argmax(pointwise_probabilities(image), axis=-1))


def test_cancel_between_model_calls() -> None:
    from MedAnalysisLib.errors import CancelledError

    calls = []
    with pytest.raises(CancelledError):
        sliding_window_predict(
            lambda x: (calls.append(1), pointwise_probabilities(x))[1], random_image((16, 16, 16)), (8, 8, 8),
            n_classes=2, batch_size=1, should_stop=lambda: len(calls) >= 2,
        )
    assert len(calls) == 2
