"""Ensembles of bundles: members copied and pinned, probabilities averaged on the input grid, refusals by name, and
the same ensemble through the command line, ``configure``, ``info`` and a .zip."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from helpers_inference import cube_volume, shared_cube_bundle, train_classifier_bundle, train_cube_bundle

from MedAnalysisLib.bundles import ENSEMBLE_FILE, LoadedEnsemble, load_bundle, make_ensemble, read_bundle_config
from MedAnalysisLib.cli import main as cli_main
from MedAnalysisLib.errors import BundleError
from MedAnalysisLib.inference.predict import predict
from MedAnalysisLib.io import write_volume
from MedAnalysisLib.volume import Volume


def tree_digest(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def members(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    second = train_cube_bundle(tmp_path_factory.mktemp("m") / "cube-seed1", steps=80, seed=1, name="cube-seed1")
    return shared_cube_bundle(), second


@pytest.fixture(scope="module")
def ensemble(members: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_ensemble(members, tmp_path_factory.mktemp("e") / "cube-ensemble", name="cube ensemble",
                         postprocess="largest_component")


def oblique_case(seed: int) -> tuple[Volume, np.ndarray]:
    image, label = cube_volume((20, 22, 18), np.random.default_rng(seed))
    angle = np.deg2rad(20)
    direction = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    return Volume(image, spacing=(1.1, 1.3, 1.7), origin=(-12.0, 40.5, 7.25), direction=direction), label


def test_ensemble_averages_member_probabilities_on_the_input_grid(members, ensemble) -> None:  # noqa: ANN001
    from MedAnalysisLib.inference.postprocess import postprocess_labels

    volume, truth = oblique_case(5)
    singles = [predict(m, volume, postprocess="none", return_probabilities=True) for m in members]
    combined = predict(ensemble, volume, return_probabilities=True)
    mean = (singles[0].probabilities.array + singles[1].probabilities.array) / 2
    np.testing.assert_allclose(combined.probabilities.array, mean, atol=1e-6)
    expected = postprocess_labels(np.argmax(mean, axis=-1).astype(np.uint8), "largest_component")
    np.testing.assert_array_equal(combined.label.array, expected)
    # the two members disagree somewhere, so the mean is not simply one of them
    assert not np.allclose(singles[0].probabilities.array, singles[1].probabilities.array)
    for result in (combined.label, combined.probabilities):
        assert result.shape == volume.shape
        np.testing.assert_allclose(result.spacing, volume.spacing)
        np.testing.assert_allclose(result.origin, volume.origin)
        np.testing.assert_allclose(result.direction, volume.direction)
    assert combined.details["postprocess"] == ["largest_component"]
    assert combined.details["ensemble"]["members"] == 2
    assert combined.details["ensemble"]["member_weights_sha256"] == [s.bundle_sha256 for s in singles]
    assert combined.bundle_name == "cube ensemble"
    dice = 2 * np.sum((combined.label.array == 1) & (truth == 1)) / (np.sum(combined.label.array == 1) + truth.sum())
    assert dice > 0.7
    assert [row["name"] for row in combined.table] == ["cube"]


def test_members_are_copied_byte_for_byte_and_left_untouched(members, ensemble, tmp_path: Path) -> None:  # noqa: ANN001
    before = [tree_digest(m) for m in members]
    make_ensemble(members, tmp_path / "again")
    assert [tree_digest(m) for m in members] == before
    for number, member in enumerate(members):
        copied = tree_digest(ensemble / f"member-{number}")
        assert copied == before[number]
    data = json.loads((ensemble / ENSEMBLE_FILE).read_text())
    assert [m["folder"] for m in data["members"]] == ["member-0", "member-1"]
    assert data["inference"]["postprocess"] == "largest_component"


def test_model_card_info_and_zip(members, ensemble, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:  # noqa: ANN001
    card = read_bundle_config(ensemble)
    assert card.name == "cube ensemble" and card.task == "segmentation"
    assert [m["name"] for m in card.training["ensemble"]["members"]] == ["cube-finder", "cube-seed1"]
    assert card.inference["postprocess"] == "largest_component"
    assert cli_main(["info", str(ensemble)]) == 0
    text = capsys.readouterr().out
    assert "Ensemble:     2 members" in text and "member-1:   cube-seed1" in text

    archive = make_ensemble(members, tmp_path / "cube-ensemble.zip", postprocess="largest_component")
    assert read_bundle_config(archive).training["ensemble"]["members"] == card.training["ensemble"]["members"]
    loaded = load_bundle(archive)
    assert isinstance(loaded, LoadedEnsemble) and len(loaded.members) == 2
    volume, _ = oblique_case(6)
    np.testing.assert_array_equal(predict(loaded, volume).label.array, predict(ensemble, volume).label.array)
    extracted = loaded.directory
    loaded.cleanup()
    assert not extracted.exists()


def test_tampered_or_mismatched_ensembles_are_refused(members, ensemble, tmp_path: Path) -> None:  # noqa: ANN001
    changed = tmp_path / "changed"
    shutil.copytree(ensemble, changed)
    weights = changed / "member-1" / "model.weights.h5"
    data = bytearray(weights.read_bytes())
    data[-100] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="sha256"):
        load_bundle(changed)

    repinned = tmp_path / "repinned"
    shutil.copytree(ensemble, repinned)
    config = json.loads((repinned / ENSEMBLE_FILE).read_text())
    config["members"][0]["weights_sha256"] = "0" * 64
    (repinned / ENSEMBLE_FILE).write_text(json.dumps(config))
    with pytest.raises(BundleError, match="as ensemble.json records"):
        read_bundle_config(repinned)
    with pytest.raises(BundleError, match="as ensemble.json records"):
        load_bundle(repinned)

    escaping = tmp_path / "escaping"
    shutil.copytree(ensemble, escaping)
    config = json.loads((escaping / ENSEMBLE_FILE).read_text())
    config["members"][0]["folder"] = "../cube-finder"
    (escaping / ENSEMBLE_FILE).write_text(json.dumps(config))
    with pytest.raises(BundleError, match="member-N"):
        load_bundle(escaping)

    missing = tmp_path / "missing"
    shutil.copytree(ensemble, missing)
    shutil.rmtree(missing / "member-1")
    with pytest.raises(BundleError, match="member-1"):
        load_bundle(missing)


def test_members_that_cannot_be_averaged_are_refused_by_name(members, ensemble, tmp_path: Path) -> None:  # noqa: ANN001
    classifier = train_classifier_bundle(tmp_path / "box-cnn3d", "cnn3d")
    with pytest.raises(BundleError, match=r"task .*'box-cnn3d'"):
        make_ensemble([members[0], classifier], tmp_path / "mixed")
    with pytest.raises(BundleError, match="2 to 16"):
        make_ensemble([members[0]], tmp_path / "one")
    with pytest.raises(BundleError, match="single bundles"):
        make_ensemble([members[0], ensemble], tmp_path / "nested")
    with pytest.raises(BundleError, match="never changed in place"):
        make_ensemble([members[0], members[1]], members[1])
    with pytest.raises(BundleError, match="inference settings"):
        make_ensemble(members, tmp_path / "unknown", threshold=0.3)
    with pytest.raises(BundleError, match="overlap"):
        make_ensemble(members, tmp_path / "bad-overlap", overlap=1.5)
    assert not any((tmp_path / name).exists() for name in ("mixed", "one", "nested", "unknown", "bad-overlap"))


@pytest.mark.parametrize("family", ["slice_cnn", "cnn3d"])
def test_classifier_ensembles_average_slice_and_scan_probabilities(family: str, tmp_path: Path) -> None:
    paths = [train_classifier_bundle(tmp_path / f"{family}-{seed}", family, seed=seed) for seed in (0, 1)]
    ensemble = make_ensemble(paths, tmp_path / "ensemble")
    image = Volume(np.random.default_rng(2).normal(0, 1, (6, 16, 16)).astype(np.float32) * 20 + 40)
    singles = [predict(p, image) for p in paths]
    combined = predict(ensemble, image)
    class_names = ["no box", "box"]
    if family == "slice_cnn":
        assert len(combined.per_slice) == 6
        for index, row in enumerate(combined.per_slice):
            for name in class_names:
                expected = np.mean([s.per_slice[index][f"p_{name}"] for s in singles])
                assert row[f"p_{name}"] == pytest.approx(expected, abs=1e-6)
            assert row["predicted"] == class_names[int(row["p_box"] > row["p_no box"])]
            assert row["slice"] == singles[0].per_slice[index]["slice"]
        assert combined.table == combined.per_slice
    else:
        for name in class_names:
            expected = np.mean([s.scan["probabilities"][name] for s in singles])
            assert combined.scan["probabilities"][name] == pytest.approx(expected, abs=1e-6)
        assert [row["name"] for row in combined.table] == class_names


def test_command_line_ensemble_configure_and_evaluate(members, tmp_path: Path) -> None:  # noqa: ANN001
    out = tmp_path / "cli-ensemble"
    assert cli_main(["ensemble", *map(str, members), "--out", str(out), "--name", "cli ensemble",
                     "--progress", "none"]) == 0
    assert read_bundle_config(out).name == "cli ensemble"
    configured = tmp_path / "configured"
    assert cli_main(["configure", str(out), "--out", str(configured), "--tta", "on", "--progress", "none"]) == 0
    card = read_bundle_config(configured)
    assert card.inference["tta"] is True and read_bundle_config(out).inference["tta"] is False
    assert json.loads((configured / ENSEMBLE_FILE).read_text())["provenance"]["inference_defaults_changed"] == {
        "tta": [False, True]}
    for member in ("member-0", "member-1"):
        assert tree_digest(configured / member) == tree_digest(out / member)

    rows = ["case_id,image,label"]
    for number in range(3):
        volume, truth = oblique_case(20 + number)
        image = write_volume(volume, tmp_path / "data" / f"c{number}.nii.gz")
        label = write_volume(volume.with_array(truth), tmp_path / "data" / f"c{number}_label.nii.gz")
        rows.append(f"c{number},{image.relative_to(tmp_path)},{label.relative_to(tmp_path)}")
    (tmp_path / "cases.csv").write_text("\n".join(rows) + "\n")
    report = tmp_path / "report"
    assert cli_main(["evaluate", str(configured), str(tmp_path / "cases.csv"), "--out", str(report),
                     "--bootstrap", "0", "--no-figures", "--progress", "none"]) == 0
    summary = json.loads((report / "summary.json").read_text())
    assert summary["cases"] == 3 and summary["bundle"]["name"] == "cli ensemble"
    assert summary["inference"]["tta"] is True and summary["inference"]["ensemble"]["members"] == 2
    assert summary["metrics"]["dice_cube"]["mean"] > 0.7
