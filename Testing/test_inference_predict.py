"""predict(): a trained tiny bundle on oblique, anisotropic scans; exact geometry; bad input refused."""

from __future__ import annotations

import numpy as np
import pytest
from helpers_inference import shared_cube_bundle

from MedAnalysisLib.errors import ImageValidationError, InputError
from MedAnalysisLib.inference.postprocess import fill_holes, largest_component, postprocess_labels
from MedAnalysisLib.inference.predict import label_volume_table, predict
from MedAnalysisLib.volume import Volume


@pytest.fixture(scope="module")
def bundle():  # noqa: ANN201
    from MedAnalysisLib.bundles import load_bundle

    return load_bundle(shared_cube_bundle())


def test_golden_cube_on_an_oblique_anisotropic_volume(bundle, oblique_volume_factory) -> None:  # noqa: ANN001
    volume = oblique_volume_factory(shape=(20, 30, 40), spacing=(0.8, 1.1, 2.5), cube_half=4)
    result = predict(bundle, volume, return_probabilities=True)
    label = result.label
    assert label is not None and result.task == "segmentation"
    # Exactly the input's grid: same shape, spacing, origin and direction, bit for bit.
    assert label.shape == volume.shape
    assert label.spacing == volume.spacing and label.origin == volume.origin
    assert np.array_equal(label.direction, volume.direction)
    assert label.array.dtype == np.uint8 and set(np.unique(label.array)) <= {0, 1}
    # The cube is found where it is in physical space.
    truth = volume.array == 100
    found = label.array == 1
    assert 2 * (found & truth).sum() / (found.sum() + truth.sum()) > 0.7
    centroid_lps = volume.index_to_physical(np.argwhere(found).mean(axis=0)[::-1])
    assert np.linalg.norm(centroid_lps - np.array(volume.metadata["cube_center_lps"])) < 2.5
    # Probabilities on the same grid, summing to one.
    probabilities = result.probabilities
    assert probabilities is not None and probabilities.array.shape == (*volume.shape, 2)
    np.testing.assert_allclose(probabilities.array.sum(-1), 1.0, atol=1e-4)
    # Table with the label's name and physical volume; provenance.
    (row,) = result.table
    assert row["name"] == "cube" and row["voxels"] == int(found.sum())
    assert row["volume_ml"] == pytest.approx(found.sum() * np.prod(volume.spacing) / 1000)
    assert result.bundle_sha256 == bundle.weights_sha256 and result.details["windows"] >= 1
    assert {"preprocess", "model", "postprocess", "total"} <= set(result.timings)


def test_memory_budget_falls_back_to_labels_only(bundle, oblique_volume_factory) -> None:  # noqa: ANN001
    volume = oblique_volume_factory(shape=(20, 30, 40), spacing=(0.8, 1.1, 2.5), cube_half=4)
    from MedAnalysisLib.inference.model_runner import activation_bytes_estimate
    from MedAnalysisLib.inference.sliding_window import estimate_memory_bytes
    from MedAnalysisLib.preprocessing.transforms import apply_plan

    patch = bundle.plan.patch_size
    shape = apply_plan(bundle.plan, volume).image.shape[:3]
    needs = {
        output: estimate_memory_bytes(shape, patch, n_channels=1, n_classes=2, batch_size=1, output=output,
                                      window_activation_bytes=activation_bytes_estimate(bundle.model, patch))["total"]
        for output in ("labels", "probabilities")
    }
    budget_mb = (needs["labels"] + needs["probabilities"]) / 2 / 2**20  # room for labels, not for probabilities
    full = predict(bundle, volume)
    tight = predict(bundle, volume, memory_budget_mb=budget_mb, batch_size=4)
    assert tight.details["output"] == "labels" and full.details["output"] == "probabilities"
    agreement = (tight.label.array == full.label.array).mean()
    assert agreement > 0.98  # nearest-neighbour vs linear inversion differ only at a few boundary voxels


def test_bad_inputs_get_clear_errors(bundle) -> None:  # noqa: ANN001
    one_slice = Volume(np.zeros((1, 32, 32), np.float32), spacing=(1.0, 1.0, 3.0))
    with pytest.raises(ImageValidationError, match="expected a 3D volume for the 3D model 'unet3d', got a 2D image"):
        predict(bundle, one_slice)
    nan = np.random.default_rng(0).normal(size=(10, 12, 14)).astype(np.float32)
    nan[2, 3, 4] = np.nan
    with pytest.raises(ImageValidationError, match="1 NaN/Inf voxels"):
        predict(bundle, Volume(nan))
    with pytest.raises(InputError, match=r"expected 1 image channel\(s\)"):
        predict(bundle, [Volume(np.zeros((8, 8, 8), np.float32))] * 2)
    with pytest.raises(InputError, match="expected a Volume"):
        predict(bundle, np.zeros((8, 8, 8), np.float32))  # type: ignore[arg-type]


def test_small_volume_below_the_patch_size(bundle) -> None:  # noqa: ANN001
    image = np.random.default_rng(1).normal(size=(6, 7, 5)).astype(np.float32)
    image[2:5, 2:6, 1:4] = 100
    volume = Volume(image, spacing=(1.5, 1.5, 1.5), origin=(3.0, -2.0, 1.0))
    result = predict(bundle, volume)
    assert result.label.shape == (6, 7, 5)
    assert (result.label.array[2:5, 2:6, 1:4] == 1).mean() > 0.5


def test_label_volume_table_counts_physical_volume() -> None:
    labels = np.zeros((4, 4, 4), np.uint8)
    labels[0, :2, :2] = 1
    labels[3] = 2
    rows = label_volume_table(Volume(labels, spacing=(0.5, 2.0, 3.0)), {0: "bg", 1: "a", 2: "b", 3: "absent"})
    assert [(r["name"], r["voxels"]) for r in rows] == [("a", 4), ("b", 16), ("absent", 0)]
    assert rows[1]["volume_mm3"] == pytest.approx(16 * 3.0) and rows[1]["volume_ml"] == pytest.approx(0.048)


def test_postprocessing_keeps_largest_component_and_fills_holes() -> None:
    labels = np.zeros((9, 9, 9), np.uint8)
    labels[1:6, 1:6, 1:6] = 1
    labels[3, 3, 3] = 0  # a hole
    labels[8, 8, 8] = 1  # a speck
    labels[7:9, 0:2, 0:2] = 2
    assert largest_component(labels == 1).sum() == 5**3 - 1
    assert fill_holes(labels == 1)[3, 3, 3]
    out = postprocess_labels(labels, ["largest-component", "fill-holes"])
    assert out[8, 8, 8] == 0 and out[3, 3, 3] == 1 and (out == 2).sum() == 8
    assert out.dtype == labels.dtype
    assert np.array_equal(postprocess_labels(labels, "none"), labels)
    with pytest.raises(InputError, match="post-processing"):
        postprocess_labels(labels, "smooth")
