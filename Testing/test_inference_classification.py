"""Classification bundles: whole-scan (cnn3d), per-slice (slice_cnn) and per-slice + scan (cnn_rnn) results, and
their evaluation (AUC, confusion matrix, ROC figure)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from helpers_inference import box_or_not, train_classifier_bundle

from MedAnalysisLib.inference.predict import predict
from MedAnalysisLib.io import write_volume
from MedAnalysisLib.volume import Volume


@pytest.fixture(scope="module")
def cnn3d_bundle(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    from MedAnalysisLib.bundles import load_bundle

    return load_bundle(train_classifier_bundle(tmp_path_factory.mktemp("b") / "cnn3d", "cnn3d", steps=40))


def test_whole_scan_classifier_table_has_label_names(cnn3d_bundle) -> None:  # noqa: ANN001
    rng = np.random.default_rng(3)
    with_box = predict(cnn3d_bundle, Volume(box_or_not((18, 20, 22), rng, True), spacing=(0.9, 0.9, 2.0)))
    without = predict(cnn3d_bundle, Volume(box_or_not((18, 20, 22), rng, False), spacing=(0.9, 0.9, 2.0)))
    for result in (with_box, without):
        assert result.task == "classification" and result.label is None
        assert [row["name"] for row in result.table] == ["no box", "box"]
        assert sum(row["probability"] for row in result.table) == pytest.approx(1.0, abs=1e-5)
    assert with_box.scan["probabilities"]["box"] > without.scan["probabilities"]["box"]
    assert with_box.scan["predicted"] == "box" and without.scan["predicted"] == "no box"


def test_classifier_evaluation_with_roc(cnn3d_bundle, tmp_path: Path) -> None:  # noqa: ANN001
    from MedAnalysisLib.evaluation.report import EvaluationOptions, evaluate_bundle

    rng = np.random.default_rng(4)
    rows = ["case_id,image,target"]
    for m in range(10):
        target = m % 2
        path = write_volume(Volume(box_or_not((16, 18, 20), rng, bool(target))), tmp_path / "img" / f"c{m}.nii.gz")
        rows.append(f"c{m},{path.relative_to(tmp_path)},{target}")
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("\n".join(rows) + "\n")
    result = evaluate_bundle(cnn3d_bundle, manifest, tmp_path / "report", EvaluationOptions(bootstrap=100))
    summary = json.loads((tmp_path / "report" / "summary.json").read_text())
    classification = summary["classification"]
    assert classification["n"] == 10 and np.sum(classification["confusion_matrix"]) == 10
    assert classification["auc"] > 0.8 and result["headline"]["auc"] == classification["auc"]
    assert summary["auc_ci"]["ci_low"] <= classification["auc"] <= summary["auc_ci"]["ci_high"]
    assert (tmp_path / "report" / "roc.png").read_bytes()[:4] == b"\x89PNG"
    with open(tmp_path / "report" / "per_case.csv", newline="") as handle:
        first = next(csv.DictReader(handle))
    assert {"case_id", "target", "p_no box", "p_box", "predicted"} <= set(first)


@pytest.mark.parametrize("family", ["slice_cnn", "cnn_rnn"])
def test_slice_classifiers_give_one_row_per_input_slice(family: str, tmp_path: Path) -> None:
    bundle = train_classifier_bundle(tmp_path / family, family)
    volume = Volume(box_or_not((7, 20, 24), np.random.default_rng(5), True), spacing=(0.8, 0.8, 3.0),
                    origin=(10.0, -4.0, 30.0))
    result = predict(bundle, volume)
    assert result.per_slice is not None and len(result.per_slice) == 7
    assert [row["slice"] for row in result.per_slice] == list(range(7))
    for k, row in enumerate(result.per_slice):
        assert row["p_no box"] + row["p_box"] == pytest.approx(1.0, abs=1e-5)
        assert row["predicted"] in ("no box", "box")
        assert row["position_lps"][2] == pytest.approx(30.0 + 3.0 * k, abs=1e-3)
    if family == "cnn_rnn":
        assert set(result.scan["probabilities"]) == {"no box", "box"}
        assert [row["name"] for row in result.table] == ["no box", "box"]
    else:
        assert result.scan is None and result.table == result.per_slice


@pytest.mark.parametrize("family", ["slice_cnn", "cnn_rnn"])
def test_slice_classifier_tta_averages_the_flipped_slices(family: str, tmp_path: Path) -> None:
    """``tta=True`` on a slice or sequence classifier averages the model's scores over the four H/W flips of each
    prepared slice (class scores are not flipped back); ``tta=False`` is the model on the slices as they are."""
    import keras

    from MedAnalysisLib.bundles import load_bundle
    from MedAnalysisLib.preprocessing.transforms import prepare_slices

    loaded = load_bundle(train_classifier_bundle(tmp_path / family, family))
    # Random weights give near-constant scores; larger kernels make them depend on where the box is.
    for layer in loaded.model.layers:
        if isinstance(layer, keras.layers.Conv2D):
            layer.kernel.assign(np.random.default_rng(0).normal(0, 1, layer.kernel.shape).astype("float32"))
    volume = Volume(box_or_not((5, 20, 24), np.random.default_rng(6), True), spacing=(0.8, 0.8, 3.0))
    slices, _ = prepare_slices(loaded.config.plan, [volume])
    flips = [(), (1,), (2,), (1, 2)]
    if family == "slice_cnn":
        scores = [np.asarray(loaded.model(np.flip(slices, axes).copy()))[:, 0] for axes in flips]
    else:
        mask = np.ones((1, len(slices)), bool)
        scores = [np.asarray(loaded.model({"slices": np.flip(slices, axes).copy()[None], "mask": mask})["slices"])
                  [0, :, -1] for axes in flips]
    plain = [row["p_box"] for row in predict(loaded, volume, tta=False).per_slice]
    averaged = [row["p_box"] for row in predict(loaded, volume, tta=True).per_slice]
    np.testing.assert_allclose(plain, scores[0], atol=1e-5)
    np.testing.assert_allclose(averaged, np.mean(scores, axis=0), atol=1e-5)
    assert np.max(np.abs(np.asarray(averaged) - np.asarray(plain))) > 1e-4
