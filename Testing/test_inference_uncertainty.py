"""Uncertainty of predictions: the measures, their accumulation in sliding windows, the maps in the input's geometry,
ensembles, classification columns, and ``medanalysis predict --uncertainty`` (files, columns, summary, resume)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from helpers_inference import cube_volume, shared_cube_bundle, train_classifier_bundle, train_cube_bundle

from MedAnalysisLib.cli import main
from MedAnalysisLib.errors import MemoryBudgetError
from MedAnalysisLib.inference.sliding_window import (
    estimate_memory_bytes,
    importance_map,
    make_grid,
    sliding_window_predict,
    tta_flip_sets,
)
from MedAnalysisLib.inference.uncertainty import PassStats, label_means, normalised_entropy
from MedAnalysisLib.io import read_volume, write_volume
from MedAnalysisLib.volume import Volume


# ------------------------------------------------------------------------------------------------ the measures
def test_entropy_is_one_for_uniform_and_zero_for_one_hot() -> None:
    assert normalised_entropy(np.full(4, 0.25)) == pytest.approx(1.0, abs=1e-6)
    assert normalised_entropy(np.array([0.0, 1.0, 0.0])) == pytest.approx(0.0, abs=1e-6)
    assert normalised_entropy(np.array([0.5])) == pytest.approx(1.0, abs=1e-6)  # one sigmoid output: two classes


def test_passes_that_agree_have_no_disagreement_and_passes_that_contradict_have_some() -> None:
    agree = PassStats.of(np.array([[0.9, 0.1], [0.9, 0.1]])).measures()
    assert agree["disagreement"] == pytest.approx(0.0, abs=1e-6)
    assert agree["spread"] == pytest.approx(0.0, abs=1e-6)
    contradict = PassStats.of(np.array([[1.0, 0.0], [0.0, 1.0]])).measures()
    # each pass is certain (entropy 0), their mean is uniform (entropy 1): all of it is disagreement
    assert contradict["entropy"] == pytest.approx(1.0, abs=1e-6)
    assert contradict["disagreement"] == pytest.approx(1.0, abs=1e-6)
    assert contradict["spread"] == pytest.approx(0.5, abs=1e-6)
    one = PassStats.of(np.array([[0.5, 0.5]])).measures()
    assert set(one) == {"entropy"}  # one pass: no spread, no disagreement
    merged = PassStats.of(np.array([[0.8, 0.2]])).merged(PassStats.of(np.array([[0.4, 0.6]])))
    assert merged.passes == 2 and merged.measures()["spread"] == pytest.approx(0.2, abs=1e-6)


def test_label_means_average_each_label_and_leave_absent_labels_empty() -> None:
    label = np.array([[[0, 1, 1, 2]]])
    entropy = np.array([[[0.5, 0.2, 0.4, 0.9]]])
    means = label_means(label, {"entropy": entropy}, [1, 2, 3])
    assert means[1]["mean_entropy"] == pytest.approx(0.3) and means[2]["mean_entropy"] == pytest.approx(0.9)
    assert means[3]["mean_entropy"] is None


# ------------------------------------------------------------------------------------------------ sliding windows
def window_model(x: np.ndarray) -> np.ndarray:
    """Three classes that depend on the voxel, its place in the window (so flips disagree) and the window's mean
    (so overlapping windows disagree)."""
    place = np.linspace(-1.5, 1.5, x.shape[3])[None, None, None, :]
    window_mean = x.mean(axis=(1, 2, 3, 4), keepdims=True)[..., 0]
    voxel = x[..., 0]
    logits = np.stack([1.5 * voxel, place + 3 * window_mean + 0 * voxel, 0.5 * place - voxel], axis=-1)
    e = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return (e / e.sum(axis=-1, keepdims=True)).astype(np.float32)


def entropy_oracle(image: np.ndarray, patch: tuple[int, int, int], overlap: float) -> tuple[np.ndarray, ...]:
    """Brute force, window by window and flip by flip: the Gaussian-weighted mean probabilities and the weighted
    mean of each pass's entropy, normalised."""
    grid = make_grid(image.shape[:3], patch, overlap)
    weight = importance_map(patch)
    flips = tta_flip_sets(True)
    total = np.zeros((*image.shape[:3], 3))
    total_h = np.zeros(image.shape[:3])
    norm = np.zeros(image.shape[:3])
    for window in grid.slices():
        p_sum, h_sum = 0.0, 0.0
        for axes in flips:
            spatial = tuple(a + 1 for a in axes)
            x = np.flip(image[window][None], spatial)
            y = np.flip(window_model(np.ascontiguousarray(x)), spatial)[0].astype(np.float64)
            p_sum = p_sum + y
            h_sum = h_sum - np.sum(y * np.log(np.maximum(y, 1e-12)), axis=-1)
        total[window] += p_sum / len(flips) * weight[..., None]
        total_h[window] += h_sum / len(flips) * weight
        norm[window] += weight
    mean = total / norm[..., None]
    entropy = -np.sum(mean * np.log(np.maximum(mean, 1e-12)), axis=-1) / np.log(3)
    return mean, entropy, total_h / norm / np.log(3)


@pytest.mark.parametrize("output", ["probabilities", "labels"])
def test_window_entropy_accumulation_matches_a_brute_force_oracle(output: str) -> None:
    image = np.random.default_rng(2).normal(0, 1, (12, 10, 14, 1)).astype(np.float32)
    patch = (8, 6, 8)
    mean, entropy, mean_entropy = entropy_oracle(image, patch, 0.5)
    result, maps = sliding_window_predict(window_model, image, patch, n_classes=3, overlap=0.5, batch_size=3,
                                          tta_flips=True, output=output, uncertainty=True)
    assert sorted(maps) == ["entropy", "mean_entropy"]
    np.testing.assert_allclose(maps["entropy"], entropy, atol=2e-5)
    np.testing.assert_allclose(maps["mean_entropy"], mean_entropy, atol=2e-5)
    assert (maps["entropy"] - maps["mean_entropy"]).max() > 0.05  # flips and windows really disagree here
    if output == "probabilities":
        np.testing.assert_allclose(result, mean, atol=2e-5)
    plain, one_pass = sliding_window_predict(window_model, image, patch, n_classes=3, overlap=0.5,
                                             output=output, uncertainty=True)
    assert sorted(one_pass) == ["entropy"]  # one flip: no mean per-pass entropy is accumulated


def test_memory_budget_counts_the_uncertainty_maps() -> None:
    image = np.random.default_rng(0).normal(0, 1, (16, 32, 32, 1)).astype(np.float32)
    patch = (16, 16, 16)
    without = estimate_memory_bytes((16, 32, 32), patch, n_channels=1, n_classes=3, batch_size=1)
    with_maps = estimate_memory_bytes((16, 32, 32), patch, n_channels=1, n_classes=3, batch_size=1,
                                      uncertainty_maps=2)
    assert with_maps["uncertainty_maps"] == 16 * 32 * 32 * 2 * 4
    assert with_maps["rolling_buffer"] == without["rolling_buffer"] * 4 // 3  # one more accumulated channel
    budget = (without["total"] + 1024) / 2**20
    sliding_window_predict(window_model, image, patch, n_classes=3, memory_budget_mb=budget, tta_flips=True)
    with pytest.raises(MemoryBudgetError, match="uncertainty_maps 0.1 MB"):
        sliding_window_predict(window_model, image, patch, n_classes=3, memory_budget_mb=budget, tta_flips=True,
                               uncertainty=True)


# ------------------------------------------------------------------------------------------------ predict
@pytest.fixture(scope="module")
def cube():  # noqa: ANN201
    from MedAnalysisLib.bundles import load_bundle

    return load_bundle(shared_cube_bundle())


def test_uncertainty_maps_have_the_exact_geometry_of_an_oblique_input(cube, oblique_volume_factory) -> None:  # noqa: ANN001
    from MedAnalysisLib.inference.predict import predict

    volume = oblique_volume_factory(shape=(18, 20, 16), spacing=(1.2, 1.4, 1.9))
    volume.array[5:11, 6:13, 4:10] = 100.0
    result = predict(cube, volume, tta=True, uncertainty=True)
    assert sorted(result.uncertainty) == ["disagreement", "entropy"]
    for measure, map_volume in result.uncertainty.items():
        assert map_volume.array.dtype == np.float32, measure
        assert map_volume.shape == volume.shape and map_volume.spacing == volume.spacing
        assert map_volume.origin == volume.origin and np.array_equal(map_volume.direction, volume.direction)
        assert 0.0 <= map_volume.array.min() and map_volume.array.max() <= 1.0
    entropy, disagreement = result.uncertainty["entropy"].array, result.uncertainty["disagreement"].array
    assert (disagreement <= entropy + 1e-6).all()  # the disagreement is a part of the total uncertainty
    row = result.table[0]
    assert list(row)[-2:] == ["mean_entropy", "mean_disagreement"]  # new columns come last
    found = result.label.array == row["value"]
    assert row["mean_entropy"] == pytest.approx(float(entropy[found].mean()), abs=1e-5)
    assert result.details["uncertainty"]["passes"] == 8
    assert result.details["uncertainty"]["foreground_entropy"] == pytest.approx(row["mean_entropy"], abs=1e-5)
    plain = predict(cube, volume, tta=True)
    np.testing.assert_array_equal(plain.label.array, result.label.array)  # asking for uncertainty changes nothing
    assert plain.uncertainty is None and "mean_entropy" not in plain.table[0]


def test_one_pass_has_entropy_only_and_says_why(cube) -> None:  # noqa: ANN001
    from MedAnalysisLib.inference.predict import predict

    image, _ = cube_volume((14, 16, 18), np.random.default_rng(5))
    result = predict(cube, Volume(image, spacing=(1.5, 1.5, 1.5)), tta=False, uncertainty=True)
    assert sorted(result.uncertainty) == ["entropy"]
    assert "mean_disagreement" not in result.table[0]
    assert result.details["uncertainty"]["passes"] == 1 and "one pass" in result.details["uncertainty"]["note"]


def test_an_ensemble_disagrees_where_its_members_do(cube, tmp_path: Path) -> None:  # noqa: ANN001
    from MedAnalysisLib.bundles import load_bundle, make_ensemble
    from MedAnalysisLib.inference.predict import predict

    second = train_cube_bundle(tmp_path / "second", steps=15, seed=3, name="cube-second")
    ensemble = load_bundle(make_ensemble([shared_cube_bundle(), second], tmp_path / "ensemble", name="pair"))
    image, _ = cube_volume((14, 16, 18), np.random.default_rng(6))
    volume = Volume(image, spacing=(1.5, 1.5, 1.5))
    result = predict(ensemble, volume, tta=False, uncertainty=True)
    assert result.details["uncertainty"]["passes"] == 2 and sorted(result.uncertainty) == ["disagreement", "entropy"]
    members = [predict(member, volume, tta=False, return_probabilities=True) for member in ensemble.members]
    p = [m.probabilities.array for m in members]
    mean = (p[0] + p[1]) / 2
    expected_entropy = normalised_entropy(mean)
    expected_disagreement = expected_entropy - (normalised_entropy(p[0]) + normalised_entropy(p[1])) / 2
    np.testing.assert_allclose(result.uncertainty["entropy"].array, expected_entropy, atol=1e-4)
    np.testing.assert_allclose(result.uncertainty["disagreement"].array, expected_disagreement, atol=1e-4)
    assert result.uncertainty["disagreement"].array.max() > 0.01
    with_tta = predict(ensemble, volume, tta=True, uncertainty=True)
    assert with_tta.details["uncertainty"]["passes"] == 16


# ------------------------------------------------------------------------------------------------ classification
def test_classification_columns_with_and_without_test_time_flips(tmp_path: Path) -> None:
    from MedAnalysisLib.inference.predict import predict

    bundle = train_classifier_bundle(tmp_path / "slices", "slice_cnn", seed=1)
    image = np.random.default_rng(1).normal(0, 1, (5, 16, 16)).astype(np.float32)
    image[1:3, 4:10, 5:11] = 100.0
    volume = Volume(image, spacing=(1.5, 1.5, 1.5))
    result = predict(bundle, volume, tta=True, uncertainty=True)
    plain = predict(bundle, volume, tta=True)
    for row, before in zip(result.per_slice, plain.per_slice, strict=True):
        assert list(row)[: len(before)] == list(before) and list(row)[len(before):] == ["entropy", "spread",
                                                                                        "disagreement"]
        assert 0.0 <= row["disagreement"] <= row["entropy"] <= 1.0 and 0.0 <= row["spread"] <= 0.5
    assert result.details["uncertainty"]["passes"] == 4
    one = predict(bundle, volume, tta=False, uncertainty=True)
    assert list(one.per_slice[0])[-1] == "entropy" and "spread" not in one.per_slice[0]


def test_whole_scan_rows_carry_the_spread_of_their_own_class(tmp_path: Path) -> None:
    from MedAnalysisLib.inference.predict import predict

    bundle = train_classifier_bundle(tmp_path / "volume", "cnn3d", seed=2)
    image = np.random.default_rng(2).normal(0, 1, (16, 16, 16)).astype(np.float32)
    result = predict(bundle, Volume(image, spacing=(1.5, 1.5, 1.5)), tta=True, uncertainty=True)
    assert {"entropy", "spread", "disagreement"} <= set(result.scan)
    no_box, box = result.table
    assert no_box["spread"] == pytest.approx(box["spread"], abs=1e-6)  # two classes: p0 = 1 - p1
    assert no_box["entropy"] == box["entropy"] == result.scan["entropy"]


def test_a_classifier_ensemble_spread_is_half_the_members_gap(tmp_path: Path) -> None:
    from MedAnalysisLib.bundles import load_bundle, make_ensemble
    from MedAnalysisLib.inference.predict import predict

    members = [train_classifier_bundle(tmp_path / f"m{seed}", "cnn3d", seed=seed) for seed in (3, 4)]
    ensemble = load_bundle(make_ensemble(members, tmp_path / "ensemble", name="pair"))
    volume = Volume(np.random.default_rng(4).normal(0, 1, (16, 16, 16)).astype(np.float32), spacing=(1.5,) * 3)
    result = predict(ensemble, volume, tta=False, uncertainty=True)
    alone = [predict(member, volume, tta=False).scan["probabilities"] for member in ensemble.members]
    predicted = result.scan["predicted"]
    assert result.scan["spread"] == pytest.approx(abs(alone[0][predicted] - alone[1][predicted]) / 2, abs=1e-5)
    assert result.details["uncertainty"]["passes"] == 2


# ------------------------------------------------------------------------------------------------ command line
def write_cases(folder: Path, n: int, *, faint: int | None = None) -> None:
    rng = np.random.default_rng(8)
    for m in range(n):
        image, label = cube_volume((12, 14, 16), rng)
        if m == faint:
            image[label > 0] = 2.0  # a barely visible box: the model is unsure of it
        write_volume(Volume(image, spacing=(1.5, 1.5, 1.5)), folder / f"case{m:02d}.nii.gz")


def predict_cli(*argv: str) -> int:
    return main(["predict", str(shared_cube_bundle()), *argv, "--progress", "none"])


def test_cli_writes_uncertainty_files_columns_and_summary_flags(tmp_path: Path) -> None:
    write_cases(tmp_path / "cases", 3, faint=1)
    out = tmp_path / "out"
    argv = (str(tmp_path / "cases"), "--out", str(out), "--tta", "on", "--uncertainty")
    assert predict_cli(*argv, "--uncertainty-threshold", "0.25") == 0
    sidecar = json.loads((out / "case00.json").read_text())
    assert sidecar["outputs"]["uncertainty_entropy"] == "case00_uncertainty.nii.gz"
    assert sidecar["outputs"]["uncertainty_disagreement"] == "case00_disagreement.nii.gz"
    assert sidecar["uncertainty"]["passes"] == 8 and "uncertainty" not in sidecar["inference"]
    image = read_volume(tmp_path / "cases" / "case00.nii.gz")
    entropy = read_volume(out / "case00_uncertainty.nii.gz")
    assert entropy.array.dtype == np.float32 and entropy.shape == image.shape
    assert np.allclose(entropy.origin, image.origin) and np.allclose(entropy.spacing, image.spacing)
    header = (out / "case00_table.csv").read_text().splitlines()[0]
    assert header == "value,name,voxels,volume_mm3,volume_ml,mean_entropy,mean_disagreement"
    summary = json.loads((out / "batch_summary.json").read_text())
    values = {case: entry["foreground_entropy"] for case, entry in summary["uncertainty"].items()}
    assert sorted(values) == ["case00", "case01", "case02"]
    flagged = [case for case, value in values.items() if value > 0.25]
    assert summary["review_first"] == sorted(flagged, key=lambda c: -values[c])
    assert "case01" in summary["review_first"]  # the faint box
    assert all(entry["high"] == (entry["foreground_entropy"] > 0.25) for entry in summary["uncertainty"].values())
    # a re-run skips every case and still reports each one's uncertainty, from its sidecar
    assert predict_cli(*argv, "--uncertainty-threshold", "0") == 0
    again = json.loads((out / "batch_summary.json").read_text())
    assert again["skipped"] == ["case00", "case01", "case02"]
    assert again["review_first"] == sorted(values, key=lambda c: -values[c])


def test_resume_compares_the_uncertainty_option(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_cases(tmp_path / "cases", 1)
    out = tmp_path / "out"
    assert predict_cli(str(tmp_path / "cases"), "--out", str(out), "--uncertainty") == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert "case00_uncertainty.nii.gz" in before and "case00_disagreement.nii.gz" not in before  # one pass
    capsys.readouterr()
    assert predict_cli(str(tmp_path / "cases"), "--out", str(out)) == 2
    assert "made with --uncertainty, now without --uncertainty" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # nothing touched
    (out / "case00_uncertainty.nii.gz").unlink()  # a listed output is gone: the case is done again
    assert predict_cli(str(tmp_path / "cases"), "--out", str(out), "--uncertainty") == 0
    assert (out / "case00_uncertainty.nii.gz").is_file()


def test_a_file_of_someone_else_under_an_uncertainty_name_is_refused(tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    write_cases(tmp_path / "cases", 1)
    out = tmp_path / "out"
    out.mkdir()
    for name in ("case00_uncertainty.nii.gz", "case00_disagreement.nii.gz"):
        (out / name).write_bytes(b"mine")
        assert predict_cli(str(tmp_path / "cases"), "--out", str(out), "--uncertainty", "--tta", "on") == 2
        assert name in capsys.readouterr().err
        assert (out / name).read_bytes() == b"mine"
        (out / name).unlink()
    (out / "case00_disagreement.nii.gz").write_bytes(b"mine")  # one pass writes no disagreement: not in the way
    assert predict_cli(str(tmp_path / "cases"), "--out", str(out), "--uncertainty", "--tta", "off") == 0
    assert (out / "case00_disagreement.nii.gz").read_bytes() == b"mine"


@pytest.mark.parametrize(("extra", "expected"), [
    (["--uncertainty", "--uncertainty-threshold", "1.5"], "expected --uncertainty-threshold in [0, 1], got 1.5"),
    (["--uncertainty", "--uncertainty-threshold", "nan"], "expected --uncertainty-threshold in [0, 1], got nan"),
    (["--uncertainty", "--uncertainty-threshold", "-0.1"], "expected --uncertainty-threshold in [0, 1], got -0.1"),
    (["--uncertainty-threshold", "0.5"], "expected --uncertainty with --uncertainty-threshold"),
    (["--explain-class", "box"], "expected --explain with --explain-class"),
    (["--explain"], "expected a classification bundle for explanations, got a segmentation bundle"),
])
def test_bad_uncertainty_and_explain_options_exit_2_before_any_work(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], expected: str) -> None:
    write_cases(tmp_path / "cases", 1)
    out = tmp_path / "out"
    assert predict_cli(str(tmp_path / "cases"), "--out", str(out), *extra) == 2
    err = capsys.readouterr().err
    assert expected in err
    assert [line for line in err.splitlines() if line.startswith("error")] == [err.splitlines()[-1]]
    assert not out.exists()


def test_explain_for_a_segmentation_bundle_is_refused_before_tensorflow(tmp_path: Path) -> None:
    from helpers_cli import run_cli

    write_cases(tmp_path / "cases", 1)
    completed, imported = run_cli(tmp_path, "predict", str(shared_cube_bundle()), str(tmp_path / "cases"), "--out",
                                  str(tmp_path / "out"), "--explain")
    assert completed.returncode == 2
    assert completed.stderr.strip().splitlines() == [
        completed.stderr.strip().splitlines()[-1]] and completed.stderr.startswith("error: expected a classification")
    assert imported == []
    assert not (tmp_path / "out").exists()


def test_cli_classification_tables_carry_the_uncertainty_columns(tmp_path: Path) -> None:
    bundle = train_classifier_bundle(tmp_path / "slices", "slice_cnn", seed=1)
    image = np.random.default_rng(3).normal(0, 1, (4, 16, 16)).astype(np.float32)
    write_volume(Volume(image, spacing=(1.5, 1.5, 1.5)), tmp_path / "cases" / "scan.nii.gz")
    out = tmp_path / "out"
    assert main(["predict", str(bundle), str(tmp_path / "cases"), "--out", str(out), "--tta", "on",
                 "--uncertainty", "--progress", "none"]) == 0
    header = (out / "scan_table.csv").read_text().splitlines()[0].split(",")
    assert header[-3:] == ["entropy", "spread", "disagreement"]
    summary = json.loads((out / "batch_summary.json").read_text())
    rows = json.loads((out / "scan_table.json").read_text())
    assert summary["uncertainty"]["scan"]["entropy"] == pytest.approx(np.mean([r["entropy"] for r in rows]),
                                                                       abs=1e-5)


# ------------------------------------------------------------------------------------------------ hostile
def test_a_stopped_run_leaves_uncertainty_files_that_the_next_run_replaces_as_its_own(tmp_path: Path) -> None:
    from MedAnalysisLib.bundles import read_bundle_config
    from MedAnalysisLib.inference.batch import BatchOptions, case_output_names, note_written, pending_name

    write_cases(tmp_path / "cases", 1)
    out = tmp_path / "out"
    out.mkdir()
    names = case_output_names(read_bundle_config(shared_cube_bundle()), "case00",
                              BatchOptions(uncertainty=True, tta=True))
    assert "case00_uncertainty.nii.gz" in names and "case00_disagreement.nii.gz" in names
    (out / "case00_disagreement.nii.gz").write_bytes(b"half-written by the stopped run")
    note_written(out, "case00", "case00_disagreement.nii.gz")  # what the stopped run recorded as it landed
    assert predict_cli(str(tmp_path / "cases"), "--out", str(out), "--uncertainty", "--tta", "on") == 0
    assert read_volume(out / "case00_disagreement.nii.gz").array.dtype == np.float32
    assert not (out / pending_name("case00")).exists()


@pytest.mark.parametrize("suffix", [["--uncertainty", "--tta", "on"], ["--uncertainty"]])
def test_uncertainty_names_longer_than_the_file_system_allows_are_refused_before_any_work(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], suffix: list[str]) -> None:
    stem = "c" * 238  # <stem>.pending is 252 bytes, <stem>_uncertainty.nii.gz 257, <stem>_disagreement.nii.gz 258
    image, _ = cube_volume((12, 14, 16), np.random.default_rng(1))
    write_volume(Volume(image, spacing=(1.5, 1.5, 1.5)), tmp_path / "cases" / f"{stem}.nii.gz")
    out = tmp_path / "out"
    assert predict_cli(str(tmp_path / "cases"), "--out", str(out), *suffix) == 2
    assert "expected output names of at most 255 bytes" in capsys.readouterr().err
    assert not out.exists()


FORGED = ["0.5", True, float("nan"), float("inf"), 2.0, -0.1, {"x": 1}, None, [0.2]]


def test_a_forged_uncertainty_value_in_a_finished_sidecar_never_reaches_the_summary(tmp_path: Path) -> None:
    from MedAnalysisLib.inference.batch import BatchOptions, BatchSummary, _record_uncertainty

    summary = BatchSummary((1, 1), 1)
    for forged in FORGED:  # every kind of value a hand-edited sidecar may hold
        for record in ({"task": "segmentation", "uncertainty": {"foreground_entropy": forged}},
                       {"task": "classification", "uncertainty": {"entropy": forged}},
                       {"task": "segmentation", "uncertainty": forged}, {"task": forged, "uncertainty": {}}):
            _record_uncertainty(summary, "case", record, BatchOptions(uncertainty=True))
    assert summary.uncertainty == {}
    write_cases(tmp_path / "cases", 1)  # and through the command line, with a sidecar the resume trusts
    out = tmp_path / "out"
    argv = (str(tmp_path / "cases"), "--out", str(out), "--uncertainty")
    assert predict_cli(*argv) == 0
    record = json.loads((out / "case00.json").read_text())
    record["uncertainty"]["foreground_entropy"] = float("nan")
    (out / "case00.json").write_text(json.dumps(record))
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert predict_cli(*argv) == 2  # refused before any case runs (the overwrite policy), nothing written
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_a_map_off_the_input_grid_is_never_written(tmp_path: Path) -> None:
    from MedAnalysisLib.errors import GeometryError
    from MedAnalysisLib.inference.predict import Prediction
    from MedAnalysisLib.inference.writers import write_prediction

    grid = Volume(np.zeros((4, 5, 6), np.float32), spacing=(1.0, 1.0, 2.0), origin=(3.0, 0.0, 0.0))
    label = grid.with_array(np.zeros((4, 5, 6), np.uint8))
    for bad in (Volume(np.zeros((4, 5, 7), np.float32), spacing=(1.0, 1.0, 2.0), origin=(3.0, 0.0, 0.0)),
                Volume(np.zeros((4, 5, 6), np.float32), spacing=(1.0, 1.0, 2.0), origin=(3.5, 0.0, 0.0)),
                Volume(np.zeros((4, 5, 6), np.float32), spacing=(1.0, 1.0, 2.5), origin=(3.0, 0.0, 0.0))):
        prediction = Prediction("segmentation", label, None, [{"value": 1, "name": "x", "voxels": 0}], None, None,
                                {}, "b", "0" * 64, uncertainty={"entropy": bad})
        out = tmp_path / f"out{len(list(tmp_path.iterdir()))}"
        with pytest.raises(GeometryError, match="expected a scalar map on the input grid"):
            write_prediction(prediction, out, "case", input_volume=grid, labels=[])
        assert not (out / "case.json").exists() and not (out / "case_uncertainty.nii.gz").exists()
        assert (out / "case_label.nii.gz").is_file()  # the other outputs are still written
