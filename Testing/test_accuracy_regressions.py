"""Regressions found while measuring accuracy on the real data with ``medanalysis`` (train, evaluate, predict)."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers_inference import train_classifier_bundle


def _ct_manifest(shared_data: Path, folder: Path, n: int, *, both_classes: bool = False) -> Path:
    """A CSV manifest of ``n`` single-slice CT DICOM files of ct_contrast (image, target, patient_id): the first
    ``n`` rows, or with ``both_classes`` the first ``n // 2`` of each class."""
    with (shared_data / "ct_contrast" / "labels.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    if both_classes:
        rows = [r for r in rows if r["contrast"] == "0"][: n // 2] + [r for r in rows if r["contrast"] == "1"][: n // 2]
    rows = rows[:n]
    lines = ["image,target,patient_id"]
    for row in rows:
        lines.append(f"{shared_data / 'ct_contrast' / row['file']},{row['contrast']},{row['patient_id']}")
    manifest = folder / "ct.csv"
    manifest.write_text("\n".join(lines) + "\n")
    return manifest


def test_evaluate_reads_single_slice_dicom_files(shared_data: Path, tmp_path: Path) -> None:
    """Training reads one-slice DICOM files as one-slice volumes; evaluation must read them the same way."""
    from MedAnalysisLib.evaluation.report import EvaluationOptions, evaluate_bundle

    bundle = train_classifier_bundle(tmp_path / "slice_cnn", "slice_cnn")
    manifest = _ct_manifest(shared_data, tmp_path, 3)
    result = evaluate_bundle(bundle, manifest, tmp_path / "report", EvaluationOptions(bootstrap=0, figures=False))
    assert result["failed"] == 0 and result["cases"] == 3
    summary = json.loads((tmp_path / "report" / "summary.json").read_text())
    assert summary["classification"]["n"] == 3


def test_predict_reads_single_slice_dicom_files(shared_data: Path, tmp_path: Path) -> None:
    from MedAnalysisLib.inference.batch import BatchOptions, run_batch

    bundle = train_classifier_bundle(tmp_path / "slice_cnn", "slice_cnn")
    dicom = shared_data / "ct_contrast" / "dicom" / "ID_0000_AGE_0060_CONTRAST_1_CT.dcm"
    # The toy bundle is an MR model; only the reading of single-slice files is under test here.
    summary = run_batch(bundle, [dicom], tmp_path / "out", BatchOptions(allow_modality_mismatch=True))
    assert not summary.failed, summary.failed
    assert len(summary.done) == 1


def test_bundle_of_a_compiled_model_holds_weights_only_and_loads(tmp_path: Path) -> None:
    """``medanalysis train`` saves compiled classifiers (the training and inference model are one); the optimizer
    state must stay out of the bundle, which then loads with identical predictions."""
    import h5py
    import keras
    import numpy as np

    from MedAnalysisLib.bundles import BundleConfig, LabelInfo, load_bundle, save_bundle
    from MedAnalysisLib.models import build_model
    from MedAnalysisLib.preprocessing.plan import Plan

    hparams = {"n_classes": 2, "preset": "global_pool", "in_channels": 1, "base_filters": 4, "n_blocks": 1}
    model = build_model("slice_cnn", **hparams)
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="binary_crossentropy", jit_compile=False)
    x = np.random.default_rng(0).normal(size=(4, 16, 16, 1)).astype("float32")
    model.train_on_batch(x, np.array([[0], [1], [0], [1]], "float32"))
    plan = Plan(task="classification", modality="CT", channel_names=("image",), slice_shape=(16, 16),
                recommended_model="slice_cnn")
    config = BundleConfig(name="compiled", task="classification", family="slice_cnn", hparams=hparams, plan=plan,
                          labels=(LabelInfo(0, "no", (0, 0, 0)), LabelInfo(1, "yes", (255, 0, 0))),
                          input={"channels": [{"name": "image", "modality": "CT"}]})
    path = save_bundle(tmp_path / "bundle", model, config)
    with h5py.File(path / config.weights["file"], "r") as handle:
        assert "optimizer" not in handle and "layers" in handle
    loaded = load_bundle(path)
    np.testing.assert_allclose(loaded.model.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-5, atol=1e-6)


def _box_msd(root: Path, n_cases: int = 6) -> Path:
    """An MSD folder of tiny scans (10 x 16 x 16) with a bright labelled box in some slices."""
    import numpy as np

    from MedAnalysisLib.io import write_volume
    from MedAnalysisLib.volume import Volume

    rng = np.random.default_rng(0)
    entries = []
    for n in range(n_cases):
        image = rng.normal(0, 1, (10, 16, 16)).astype("float32") + 5.0
        label = np.zeros((10, 16, 16), np.uint8)
        first = 2 + n % 3
        label[first:first + 4, 4:10, 5:11] = 1
        image[label > 0] += 6.0
        write_volume(Volume(image), root / "imagesTr" / f"box_{n:03d}.nii.gz")
        write_volume(Volume(label), root / "labelsTr" / f"box_{n:03d}.nii.gz")
        entries.append({"image": f"./imagesTr/box_{n:03d}.nii.gz", "label": f"./labelsTr/box_{n:03d}.nii.gz"})
    meta = {"name": "boxes", "modality": {"0": "MRI"}, "labels": {"0": "background", "1": "box"},
            "numTraining": n_cases, "training": entries}
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


def test_slice_cnn_learns_per_slice_foreground_targets_from_label_maps(tmp_path: Path) -> None:
    """A slice classifier trained on a segmentation dataset (label maps, no class targets) predicts, per slice,
    whether the slice holds foreground: classes "absent"/"present", validation on every slice of the held-out
    cases with its own per-slice target."""
    from MedAnalysisLib.bundles import load_bundle
    from MedAnalysisLib.inference.predict import predict
    from MedAnalysisLib.io import load_volume
    from MedAnalysisLib.training import train

    root = _box_msd(tmp_path / "boxes")
    # 80 steps: enough for calibrated probabilities on all of seeds 0-2 (6 steps ranked the slices by brightness
    # alone, which an untrained network or one trained on random targets also does)
    result = train(root, task="classification", family="slice_cnn", out=tmp_path / "bundle", epochs=8,
                   steps_per_epoch=10, batch_size=8, val_fraction=0.34, workers=1, learning_rate=1e-2,
                   hparams={"preset": "global_pool", "base_filters": 4, "n_blocks": 1, "pooling": "avgmax",
                            "norm": "batch"},
                   augment={"p_gamma": 0, "p_brightness": 0}, monitor="val_loss",
                   plan_overrides={"slice_shape": [16, 16]})
    loaded = load_bundle(result.bundle_path)
    assert [label.name for label in loaded.labels] == ["absent", "present"]
    assert loaded.config.hparams["pooling"] == "avgmax"
    augment = loaded.config.training["augment"]  # the augmentation actually used is part of the provenance
    assert augment["p_gamma"] == 0 and augment["p_brightness"] == 0 and augment["p_rotate"] > 0
    assert loaded.config.training["monitor"] == "val_loss"  # the epoch kept is the one of lowest validation loss
    losses = result.history["val_loss"]
    assert loaded.config.training["best_epoch"] == 1 + int(np.argmin(losses))
    # Validation slices of both classes: the AUC is defined (it is NaN when every target is the same).
    assert all(np.isfinite(v) for v in result.history["val_auc"])
    image = load_volume(root / "imagesTr" / "box_000.nii.gz")
    prediction = predict(loaded, image)
    assert prediction.per_slice is not None and len(prediction.per_slice) == 10
    assert all(0.0 <= row["p_present"] <= 1.0 for row in prediction.per_slice)
    # It learnt: on every held-out slice with the box P(present) >= 0.9 and below 0.5 on every slice without it.
    # Seeds 0-2 give 0.993-1.0 and at most 0.46. Ranking alone would not tell: trained on random targets the network
    # still scores bright slices higher (AUC 0.99, but P 0.50-0.71 with the box), and an untrained one does too.
    val_ids = loaded.config.training["val_case_ids"]
    assert val_ids
    with_box, without_box = [], []
    for case_id in val_ids:
        rows = predict(loaded, load_volume(root / "imagesTr" / f"{case_id}.nii.gz")).per_slice or []
        truth = load_volume(root / "labelsTr" / f"{case_id}.nii.gz", kind="label").array
        for row in rows:
            (with_box if truth[int(row["slice"])].any() else without_box).append(row["p_present"])
    assert with_box and without_box
    assert min(with_box) >= 0.9 and max(without_box) < 0.5, (with_box, without_box)


def test_predict_writes_per_slice_rows_of_sequence_models(tmp_path: Path) -> None:
    """``medanalysis predict`` with a cnn_rnn bundle writes the scan table and, beside it, one row per slice."""
    from MedAnalysisLib.inference.batch import run_batch
    from MedAnalysisLib.io import write_volume
    from MedAnalysisLib.volume import Volume

    bundle = train_classifier_bundle(tmp_path / "cnn_rnn", "cnn_rnn")
    image = np.random.default_rng(1).normal(size=(7, 20, 24)).astype("float32")
    path = write_volume(Volume(image, spacing=(0.8, 0.8, 3.0)), tmp_path / "scan.nii.gz")
    summary = run_batch(bundle, [path], tmp_path / "out")
    assert summary.done == ["scan"], summary.failed
    with (tmp_path / "out" / "scan_slices.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [int(row["slice"]) for row in rows] == list(range(7))
    assert all(abs(float(row["p_no box"]) + float(row["p_box"]) - 1.0) < 1e-5 for row in rows)
    with (tmp_path / "out" / "scan_table.csv").open(newline="") as handle:
        assert len(list(csv.DictReader(handle))) == 2  # the scan's class probabilities


def test_sequence_model_on_label_maps_selects_epochs_on_per_slice_loss(tmp_path: Path) -> None:
    """cnn_rnn trained on label maps: every scan holds foreground, so the scan AUC is undefined (Keras reports 0
    and the first epoch would always be kept); the best epoch is chosen on the per-slice validation loss (the
    per-slice AUC saturates early, before the probabilities are calibrated)."""
    from MedAnalysisLib.bundles import read_bundle_config
    from MedAnalysisLib.training import train

    root = _box_msd(tmp_path / "boxes")
    result = train(root, task="classification", family="cnn_rnn", out=tmp_path / "bundle", epochs=2,
                   steps_per_epoch=1, batch_size=2, val_fraction=0.34, workers=1,
                   hparams={"encoder_filters": [4], "rnn_units": 4, "attention_units": 4},
                   plan_overrides={"slice_shape": [16, 16]})
    config = read_bundle_config(result.bundle_path)
    assert config.training["monitor"] == "val_slices_loss"
    losses = result.history["val_slices_loss"]
    assert config.training["best_epoch"] == 1 + int(np.argmin(losses))


def _checkpoint_callback(tmp_path: Path, monitor: str, mode: str, patience: int | None = 2) -> tuple[Any, Any]:
    """A :class:`CheckpointCallback` on a one-layer model, for feeding epoch logs by hand."""
    import keras

    from MedAnalysisLib.progress import Reporter
    from MedAnalysisLib.training.callbacks import CheckpointCallback, ProgressCallback

    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1, activation="sigmoid")])
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="binary_crossentropy", jit_compile=False)
    model.train_on_batch(np.zeros((2, 2), "float32"), np.zeros((2, 1), "float32"))
    progress = ProgressCallback(Reporter("none"), None, epochs=5, steps=1)
    callback = CheckpointCallback(tmp_path / "checkpoint", model, monitor=monitor, mode=mode, patience=patience,
                                  progress=progress, signature="test")
    callback.set_model(model)
    return callback, model


def test_ties_of_the_monitored_metric_go_to_the_lower_validation_loss(tmp_path: Path) -> None:
    """A small validation set reaches AUC 1.0 early; later epochs at the same AUC with a lower validation loss
    replace it as the best epoch (a higher loss at the same AUC does not)."""
    callback, _ = _checkpoint_callback(tmp_path, "val_auc", "max", patience=None)
    logs = [(0.9, 0.60), (1.0, 0.50), (1.0, 0.30), (1.0, 0.40), (0.95, 0.10)]
    for epoch, (auc, loss) in enumerate(logs):
        callback.on_epoch_end(epoch, {"val_auc": auc, "val_loss": loss, "loss": loss})
    assert callback.state["best_epoch"] == 3 and callback.state["best_value"] == 1.0
    assert (tmp_path / "checkpoint" / "best.weights.h5").is_file()


def test_monitor_last_and_runs_without_validation_keep_the_final_epoch(tmp_path: Path) -> None:
    """``monitor="last"`` keeps the final epoch although validation peaked earlier (and patience never stops the
    run); a run whose logs carry no validation metric keeps its final epoch too, not the epoch of lowest training
    loss, and the kept weights are the final ones."""
    import keras

    from MedAnalysisLib.training.pipeline import monitor_setting

    assert monitor_setting("last") == ("last", "last")
    callback, _ = _checkpoint_callback(tmp_path / "last", "last", "last")
    for epoch, auc in enumerate([0.7, 0.99, 0.8, 0.75, 0.72]):
        callback.on_epoch_end(epoch, {"val_auc": auc, "val_loss": 1.0 - auc, "loss": 0.5})
    assert callback.state["best_epoch"] == 5 and callback.state["monitor"] == "last"
    assert not callback.state["early_stopped"]  # five epochs without a better AUC, patience 2

    callback, model = _checkpoint_callback(tmp_path / "no-val", "val_auc", "max")
    for epoch, loss in enumerate([0.9, 0.2, 0.5, 0.4]):
        model.layers[0].kernel.assign(np.full((2, 1), float(epoch), "float32"))
        callback.on_epoch_end(epoch, {"loss": loss})
    assert callback.state["best_epoch"] == 4 and callback.state["monitor"] == "last"
    kept = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1, activation="sigmoid")])
    kept.load_weights(str(tmp_path / "no-val" / "checkpoint" / "best.weights.h5"))
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(kept.layers[0].kernel), np.full((2, 1), 3.0))


def test_training_on_every_case_keeps_the_final_epoch(tmp_path: Path) -> None:
    """``val_fraction=0`` trains on every case; with nothing to choose an epoch on, the bundle holds the final epoch
    and says so in its provenance."""
    from MedAnalysisLib.bundles import read_bundle_config
    from MedAnalysisLib.training import train

    root = _box_msd(tmp_path / "boxes")
    result = train(root, task="classification", family="slice_cnn", out=tmp_path / "bundle", epochs=3,
                   steps_per_epoch=2, batch_size=8, val_fraction=0.0, workers=1,
                   hparams={"preset": "global_pool", "base_filters": 4, "n_blocks": 1},
                   plan_overrides={"slice_shape": [16, 16]})
    training = read_bundle_config(result.bundle_path).training
    assert training["n_train"] == 6 and training["n_val"] == 0 and training["val_case_ids"] == []
    assert training["monitor"] == "last" and training["best_epoch"] == 3 == training["epochs_completed"]
    assert not any(key.startswith("val_") for key in result.history)


def test_train_command_refuses_bad_augmentation_or_monitor_before_training(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """``medanalysis train --augment/--monitor``: a misspelt field, a contradiction with ``--no-augment`` or a
    monitored name that is not a validation metric ends with exit code 2 and a message naming the problem, and no bundle or checkpoint is written."""
    from MedAnalysisLib.cli import main

    root = _box_msd(tmp_path / "boxes")
    common = ["train", str(root), "--task", "classification", "--model", "slice_cnn", "--out", str(tmp_path / "b"),
              "--epochs", "1", "--progress", "log"]
    assert main([*common, "--augment", "p_gama=0"]) == 2
    assert "unknown ['p_gama']" in capsys.readouterr().err
    assert main([*common, "--augment", "p_gamma=0", "--no-augment"]) == 2
    assert "expected either --no-augment or --augment KEY=VALUE, got both" in capsys.readouterr().err
    assert main([*common, "--monitor", "auc"]) == 2
    assert "expected a validation metric to monitor (a name starting with 'val_'" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["boxes"]


def test_ct_bundle_crops_to_the_body_in_training_and_in_prediction(shared_data: Path, tmp_path: Path) -> None:
    """``medanalysis train`` on real CT slices plans the body crop, the bundle carries it, and prediction applies it
    (the prepared slice shows the patient, not the air and table of the whole field of view)."""
    from MedAnalysisLib.bundles import load_bundle
    from MedAnalysisLib.cli import main
    from MedAnalysisLib.inference.predict import predict
    from MedAnalysisLib.io import load_volume
    from MedAnalysisLib.preprocessing.transforms import apply_plan, prepare_slices

    manifest = _ct_manifest(shared_data, tmp_path, 8, both_classes=True)
    out = tmp_path / "ct-bundle"
    assert main(["train", str(manifest), "--task", "classification", "--model", "slice_cnn", "--out", str(out),
                 "--epochs", "1", "--batch-size", "4", "--val-fraction", "0.25", "--set", "slice_shape=32,32",
                 "--hparam", "base_filters=4", "--progress", "log"]) == 0
    bundle = load_bundle(out)
    plan = bundle.config.plan
    assert plan.modality == "CT" and plan.body_threshold == -500.0 and plan.slice_keep_aspect
    image = shared_data / "ct_contrast" / "dicom" / "ID_0000_AGE_0060_CONTRAST_1_CT.dcm"
    volume = load_volume(image, allow_2d=True)
    prepared = apply_plan(plan, volume, slice_shape=tuple(plan.slice_shape))
    (_, _), (j0, j1), (i0, i1) = prepared.inverse.crop_box
    assert (j1 - j0) < 512 and (i1 - i0) < 512  # the air and the table are not in the model's input
    result = predict(bundle, volume)
    assert result.per_slice is not None and len(result.per_slice) == 1
    assert abs(sum(v for k, v in result.per_slice[0].items() if k.startswith("p_")) - 1.0) < 1e-5

    # prediction saw the body crop: its probability is the model's on the body-cropped slice, not on the whole field
    def p_contrast(slice_plan: object) -> float:
        return float(np.asarray(bundle.model(prepare_slices(slice_plan, volume)[0], training=False))[0, -1])

    whole_field = plan.replace(body_threshold=None, slice_keep_aspect=False)
    assert result.per_slice[0]["p_1"] == pytest.approx(p_contrast(plan), abs=1e-5)
    assert abs(p_contrast(whole_field) - p_contrast(plan)) > 1e-4


if __name__ == "__main__":  # pragma: no cover
    pytest.main([__file__, "-q"])
