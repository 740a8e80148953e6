"""Explanations of classifiers (``MedAnalysisLib.inference.explain``): Grad-CAM and occlusion heatmaps on the input's
grid, cnn_rnn slice contributions, targets, ensembles, refusals, cancellation and the JAX path."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers_inference import CLASS_LABELS, make_cube_plan, train_classifier_bundle, train_cube_bundle

from MedAnalysisLib.errors import CancelledError, InputError
from MedAnalysisLib.volume import Volume

FAMILIES = ("slice_cnn", "cnn3d", "cnn_rnn")


def _load(path: Path) -> Any:
    from MedAnalysisLib.bundles import load_bundle

    return load_bundle(path)


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One untrained tiny bundle per classifier family (shapes and geometry only)."""
    folder = tmp_path_factory.mktemp("explain-bundles")
    return {family: train_classifier_bundle(folder / family, family) for family in FAMILIES}


def _box_volume(seed: int = 0, shape: tuple[int, int, int] = (16, 16, 16)) -> tuple[Volume, tuple[slice, ...]]:
    """Noise with a bright box at a known place (the box slices returned)."""
    rng = np.random.default_rng(seed)
    array = rng.normal(0, 1, size=shape).astype(np.float32)
    box = (slice(4, 9), slice(9, 14), slice(3, 8))
    array[box] = 100.0
    return Volume(array, spacing=(1.5, 1.5, 1.5)), box


def _identity_bundle(path: Path, family: str) -> Path:
    """A classifier whose answer is known: every convolution passes its input through (centre tap 1), the head sums
    the pooled features, so the evidence for "box" is where the normalised image is bright. Resampled to 1.5 mm and
    reoriented to LPS by its plan, so an oblique input goes through the whole plan and its inversion."""
    import keras

    from MedAnalysisLib.bundles import BundleConfig, LabelInfo, save_bundle
    from MedAnalysisLib.models import build_model

    keras.utils.set_random_seed(0)
    if family == "slice_cnn":
        hparams: dict[str, Any] = {"n_classes": 2, "in_channels": 1, "preset": "global_pool", "input_shape": [16, 16],
                                   "base_filters": 2, "n_blocks": 1, "norm": "none", "pooling": "avg", "dropout": 0.0}
    else:
        hparams = {"n_classes": 2, "in_channels": 1, "filters": [2], "norm": "none", "residual": False,
                   "dropout": 0.0}
    model = build_model(family, **hparams)
    for layer in model.layers:
        if type(layer).__name__.startswith("Conv"):
            kernel = np.zeros(layer.kernel.shape, np.float32)
            centre = tuple(s // 2 for s in kernel.shape[:-2])
            for out_channel in range(kernel.shape[-1]):
                kernel[(*centre, min(out_channel, kernel.shape[-2] - 1), out_channel)] = 1.0
            layer.set_weights([kernel, np.zeros(kernel.shape[-1], np.float32)])
        elif type(layer).__name__ == "Dense":
            layer.set_weights([np.ones(layer.kernel.shape, np.float32), np.zeros(layer.bias.shape, np.float32)])
    plan = make_cube_plan(task="classification", target_spacing=(1.5, 1.5, 1.5), recommended_model=family,
                          slice_shape=(16, 16), patch_size=(16, 16, 16))
    config = BundleConfig(name=f"identity-{family}", task="classification", family=family, hparams=hparams, plan=plan,
                          labels=tuple(LabelInfo(v, n, c) for v, n, c in CLASS_LABELS),
                          input={"channels": [{"name": "image", "modality": "MR"}]})
    return save_bundle(path, model, config)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("method", ["gradcam", "occlusion"])
def test_the_heatmap_lies_on_the_input_grid_in_zero_to_one(bundles: dict[str, Path], family: str, method: str,
                                                           oblique_volume_factory: Any) -> None:
    from MedAnalysisLib.inference.explain import Explanation, explain

    volume = oblique_volume_factory(shape=(6, 10, 12), spacing=(1.2, 1.0, 2.0), cube_half=1)
    result = explain(_load(bundles[family]), [volume], method=method)
    assert isinstance(result, Explanation)
    heat = result.heatmap
    assert heat.shape == volume.shape and heat.array.dtype == np.float32
    np.testing.assert_allclose(heat.spacing, volume.spacing)
    np.testing.assert_allclose(heat.origin, volume.origin)
    np.testing.assert_allclose(heat.direction, volume.direction)
    assert np.isfinite(heat.array).all() and heat.array.min() >= 0.0 and heat.array.max() <= 1.0
    assert result.method == method and (result.target_value, result.target_name) == (1, "box")
    assert (result.layer is not None) == (method == "gradcam")
    assert (result.slice_contributions is not None) == (family == "cnn_rnn")


@pytest.mark.parametrize("family", ["slice_cnn", "cnn3d"])
def test_the_heatmap_follows_a_bright_object_on_an_oblique_input(tmp_path: Path, family: str,
                                                                  oblique_volume_factory: Any) -> None:
    """The hottest place of the heatmap is the object's physical place, for two positions of the object on an
    oblique, anisotropic grid (plan: reorientation, resampling, slice resizing and their inversion)."""
    from MedAnalysisLib.inference.explain import explain

    loaded = _load(_identity_bundle(tmp_path / "identity", family))
    for centre in ((8, 6, 5), (26, 20, 12)):
        volume = oblique_volume_factory(shape=(16, 24, 32), spacing=(0.9, 1.1, 1.6), cube_center_ijk=centre,
                                        cube_half=2)
        heat = explain(loaded, [volume], method="gradcam").heatmap
        hot = np.argwhere(heat.array >= 0.5)
        weights = heat.array[heat.array >= 0.5]
        k, j, i = (hot * weights[:, None]).sum(axis=0) / weights.sum()
        found = np.asarray(heat.index_to_physical((i, j, k)))
        distance = float(np.linalg.norm(found - np.asarray(volume.metadata["cube_center_lps"])))
        assert distance < 2.5, f"heat centred {distance:.2f} mm from the object (expected < 2.5 mm)"
        # normalised over the whole volume: slices far from the object stay dark
        far = slice(0, 2) if centre[2] > 8 else slice(14, 16)
        assert heat.array[far].max() < 0.3


@pytest.mark.nightly
def test_gradcam_and_occlusion_find_the_box_a_trained_model_learned(tmp_path: Path) -> None:
    """A cnn3d trained (60 steps, fixed seed) to tell "box" from noise: the peak of both maps lies in (one voxel
    around) the box, which holds 8% of the volume; that region holds more than 15% of the Grad-CAM heat (20%
    measured: Grad-CAM is coarse, the last stage is at half resolution) and more than half of the occlusion heat (70%
    measured)."""
    from MedAnalysisLib.inference.explain import explain

    loaded = _load(train_classifier_bundle(tmp_path / "trained", "cnn3d", steps=60))
    volume, box = _box_volume(seed=3)
    around = np.zeros(volume.shape, bool)
    around[tuple(slice(max(0, b.start - 1), b.stop + 1) for b in box)] = True
    assert around.mean() < 0.09
    for method, least in (("gradcam", 0.15), ("occlusion", 0.5)):
        heat = explain(loaded, [volume], method=method).heatmap.array
        share = float(heat[around].sum() / heat.sum())
        assert share > least, f"expected more than {least:.0%} of the {method} heat around the box, got {share:.2f}"
        assert around[np.unravel_index(int(np.argmax(heat)), heat.shape)], f"{method} peak outside the box"


def test_the_model_split_reproduces_every_classifier_output() -> None:
    """Logits read from the cut model give back the model's own probabilities: presets basic (dense with a built-in
    sigmoid), global_pool with avg+max pooling, residual with three classes, cnn3d, cnn_rnn with attention or slice_max
    heads; Grad-CAM's layer is the last spatial stage."""
    from MedAnalysisLib.inference.explain_split import split_model
    from MedAnalysisLib.models import build_model

    rng = np.random.default_rng(0)
    slices = rng.normal(size=(3, 16, 16, 1)).astype(np.float32)
    cases = [
        ("slice_cnn", {"preset": "basic", "input_shape": [16, 16]}, "conv2d"),
        ("slice_cnn", {"preset": "global_pool", "base_filters": 2, "n_blocks": 2, "pooling": "avgmax"}, "block1_b_act"),
        ("slice_cnn", {"preset": "residual", "base_filters": 2, "n_blocks": 2, "n_classes": 3}, "stage1_act"),
        ("cnn3d", {"filters": [2, 4]}, "stage1_act"),
        ("cnn_rnn", {"encoder_filters": [2, 4], "rnn_units": 2, "attention_units": 2}, "slice_encoder/enc1_b_act"),
        ("cnn_rnn", {"encoder_filters": [2], "rnn_units": 2, "scan_head": "slice_max"}, "slice_encoder/enc0_b_act"),
    ]
    for family, hparams, layer in cases:
        model = build_model(family, **hparams)
        split = split_model(model, family)
        assert split.layer == layer
        if family == "slice_cnn":
            x, expected = slices, np.asarray(model(slices))
        elif family == "cnn3d":
            x = rng.normal(size=(2, 8, 8, 8, 1)).astype(np.float32)
            expected = np.asarray(model(x))
        else:
            x = slices[None]
            mask = np.array([[True, False, True]])
            expected = np.asarray(model({"slices": x, "mask": mask})["scan"])
            got = split.probabilities(split.logits(x, mask))
            np.testing.assert_allclose(got[:, -expected.shape[1]:], expected, atol=1e-5)
            continue
        got = split.probabilities(split.logits(x))
        np.testing.assert_allclose(got[:, -expected.shape[1]:], expected, atol=1e-5)


def test_cnn_rnn_slice_contributions_are_the_scan_probability_change_when_a_slice_is_masked(
        bundles: dict[str, Path]) -> None:
    from MedAnalysisLib.inference.explain import explain
    from MedAnalysisLib.preprocessing.transforms import prepare_slices

    loaded = _load(bundles["cnn_rnn"])
    volume, _ = _box_volume(seed=1, shape=(5, 16, 16))
    result = explain(loaded, [volume], target="no box")
    rows = result.slice_contributions
    assert rows is not None and [r["slice"] for r in rows] == list(range(5))
    for row in rows:
        np.testing.assert_allclose(row["position_lps"], volume.index_to_physical((7.5, 7.5, row["slice"])), atol=1e-3)
    slices, _ = prepare_slices(loaded.config.plan, [volume])
    full = 1.0 - float(np.asarray(loaded.model({"slices": slices[None], "mask": np.ones((1, 5), bool)})["scan"])[0, 0])
    for s, row in enumerate(rows):
        mask = np.ones((1, 5), bool)
        mask[0, s] = False
        without = 1.0 - float(np.asarray(loaded.model({"slices": slices[None], "mask": mask})["scan"])[0, 0])
        assert row["contribution"] == pytest.approx(full - without, abs=1e-5)  # sign kept: no clipping


def test_targets_by_name_or_value_and_unknown_targets_refused(bundles: dict[str, Path]) -> None:
    from MedAnalysisLib.inference.explain import explain

    loaded = _load(bundles["slice_cnn"])
    volume, _ = _box_volume(shape=(2, 16, 16))
    assert explain(loaded, [volume], target="no box").target_value == 0
    assert explain(loaded, [volume], target=0).target_name == "no box"
    assert explain(loaded, [volume], target=np.int64(1)).target_name == "box"
    assert explain(loaded, [volume], target="1").target_name == "box"  # a value typed on a command line
    for wrong in ("Box", "tumour", 2, -1, True, 1.0, "2", " 1", "\u0661", [1]):
        with pytest.raises(InputError) as caught:
            explain(loaded, [volume], target=wrong)  # type: ignore[arg-type]
        assert "expected target to be one of [0, 1, 'no box', 'box']" in str(caught.value)
        assert f"got {wrong!r}" in str(caught.value)


def test_bad_requests_are_refused_before_any_model_call(bundles: dict[str, Path], tmp_path: Path) -> None:
    """A segmentation bundle, an unknown method, a bad batch size, the wrong channel count, NaN voxels, arrays
    instead of Volumes, and an occlusion beyond the pass cap each get a typed error saying what was expected."""
    from MedAnalysisLib.errors import ImageValidationError
    from MedAnalysisLib.inference import explain as module

    volume, _ = _box_volume(shape=(2, 16, 16))
    segmentation = _load(train_cube_bundle(tmp_path / "seg", steps=1))
    with pytest.raises(InputError, match="expected a classification bundle .*got a segmentation bundle"):
        module.explain(segmentation, [volume])
    loaded = _load(bundles["slice_cnn"])
    for kwargs, message in (({"method": "shap"}, "expected method to be one of"),
                            ({"batch_size": 0}, "expected a batch size of at least 1, got 0")):
        with pytest.raises(InputError, match=message):
            module.explain(loaded, [volume], **kwargs)
    with pytest.raises(InputError, match=r"expected 1 image channel\(s\)"):
        module.explain(loaded, [volume, volume])
    with pytest.raises(ImageValidationError, match="expected finite voxel values"):
        module.explain(loaded, [volume.with_array(np.full(volume.shape, np.nan, np.float32))])
    with pytest.raises(InputError, match="expected a Volume or a list of Volumes"):
        module.explain(loaded, volume.array)  # type: ignore[arg-type]
    module_cap = module.MAX_OCCLUSION_PASSES
    try:
        module.MAX_OCCLUSION_PASSES = 10
        with pytest.raises(InputError, match=r"expected at most 10 occlusion passes, got 450"):
            module.explain(loaded, [volume], method="occlusion")
    finally:
        module.MAX_OCCLUSION_PASSES = module_cap


def test_gradcam_is_refused_where_no_gradient_can_be_taken() -> None:
    from MedAnalysisLib.inference.explain import _choose_method
    from MedAnalysisLib.inference.explain_split import Split

    without_conv = Split(None, "sigmoid", None, None)
    assert _choose_method("auto", without_conv) == "occlusion"
    with pytest.raises(InputError, match="got a model without a convolutional stage; use method='occlusion'"):
        _choose_method("gradcam", without_conv)


@pytest.mark.parametrize("method", ["gradcam", "occlusion"])
def test_a_set_stop_flag_cancels(bundles: dict[str, Path], method: str) -> None:
    from MedAnalysisLib.inference.explain import explain
    from MedAnalysisLib.progress import StopFlag

    flag = StopFlag()
    flag.set()
    volume, _ = _box_volume(shape=(4, 16, 16))
    with pytest.raises(CancelledError, match="stopped on request"):
        explain(_load(bundles["slice_cnn"]), [volume], method=method, stop_flag=flag)


def test_an_ensemble_explains_every_member_and_averages(tmp_path: Path) -> None:
    from MedAnalysisLib.bundles import load_bundle
    from MedAnalysisLib.bundles.ensemble import make_ensemble
    from MedAnalysisLib.inference.explain import explain

    members = [train_classifier_bundle(tmp_path / f"m{seed}", "slice_cnn", seed=seed) for seed in (0, 1)]
    ensemble = load_bundle(make_ensemble(members, tmp_path / "ensemble"))
    volume, _ = _box_volume(shape=(3, 16, 16))
    combined = explain(ensemble, [volume])
    separate = [explain(load_bundle(m), [volume]).heatmap.array for m in members]
    assert not np.allclose(separate[0], separate[1])
    np.testing.assert_allclose(combined.heatmap.array, np.mean(separate, axis=0), atol=1e-6)
    assert combined.method == "gradcam" and combined.heatmap.shape == volume.shape


_JAX_CHILD = """
import json, sys
import numpy as np
import keras
from MedAnalysisLib.bundles import load_bundle
from MedAnalysisLib.inference.explain import explain
from MedAnalysisLib.volume import Volume
folder = sys.argv[1]
with np.load(folder + "/input.npz", allow_pickle=False) as saved:
    volume = Volume(saved["array"], spacing=(1.5, 1.5, 1.5))
out = {"backend": keras.backend.backend()}
for family in sys.argv[2:]:
    result = explain(load_bundle(folder + "/" + family), [volume])
    np.save(folder + f"/{family}.npy", result.heatmap.array)
    out[family] = result.method
with open(folder + "/report.json", "w") as handle:
    json.dump(out, handle)
"""


@pytest.mark.parametrize("family", ["slice_cnn", pytest.param("cnn_rnn", marks=pytest.mark.nightly)])
def test_gradcam_on_jax_matches_tensorflow(bundles: dict[str, Path], tmp_path: Path, family: str) -> None:
    """A child process on the JAX backend explains a TensorFlow-written bundle with jax.grad; same heatmap. (The
    cnn_rnn case runs nightly: JAX runs its recurrent loop op by op, about 30 s here.)"""
    import importlib.util
    import shutil

    from MedAnalysisLib.inference.explain import explain

    if importlib.util.find_spec("jax") is None:
        pytest.skip("JAX is not installed (pip install 'jax[cpu]', part of the test extra)")
    volume, _ = _box_volume(seed=2, shape=(4, 16, 16))
    np.savez(tmp_path / "input.npz", array=volume.array)
    shutil.copytree(bundles[family], tmp_path / family)
    env = {**os.environ, "KERAS_BACKEND": "jax", "TF_CPP_MIN_LOG_LEVEL": "2", "JAX_PLATFORMS": "cpu"}
    env.pop("XLA_FLAGS", None)
    completed = subprocess.run([sys.executable, "-c", _JAX_CHILD, str(tmp_path), family], env=env,
                               capture_output=True, text=True, timeout=300, cwd=Path(__file__).resolve().parents[1])
    assert completed.returncode == 0, completed.stderr[-3000:]
    report = json.loads((tmp_path / "report.json").read_text())
    assert report == {"backend": "jax", family: "gradcam"}
    here = explain(_load(bundles[family]), [volume]).heatmap.array
    np.testing.assert_allclose(np.load(tmp_path / f"{family}.npy"), here, atol=2e-4)
