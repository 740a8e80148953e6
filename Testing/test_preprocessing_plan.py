"""Fingerprint -> plan: planning rules, strict JSON, overrides, and the real hippocampus dataset."""

from __future__ import annotations

import argparse
import dataclasses
import io
import json

import numpy as np
import pytest

from MedAnalysisLib.cli import common_parent
from MedAnalysisLib.cli import plan as plan_cli
from MedAnalysisLib.data.datasets import Case, load_dataset
from MedAnalysisLib.errors import GeometryError, PlanError
from MedAnalysisLib.preprocessing.fingerprint import Fingerprint, fingerprint_dataset
from MedAnalysisLib.preprocessing.plan import (
    PLAN_SCHEMA_VERSION,
    Normalization,
    Plan,
    make_plan,
    target_spacing_from,
)
from MedAnalysisLib.progress import Reporter
from MedAnalysisLib.volume import Volume


def make_fingerprint(**changes: object) -> Fingerprint:
    n = 20
    base = dict(
        schema_version=1,
        task="segmentation",
        modality="CT",
        channel_names=("CT",),
        case_ids=tuple(f"case{n}" for n in range(n)),
        spacings=tuple((0.8, 0.8, 1.0) for _ in range(n)),
        shapes=tuple((200, 256, 256) for _ in range(n)),
        shapes_after_crop=tuple((180, 240, 250) for _ in range(n)),
        orientations={"LPS": n},
        label_values=(0, 1),
        class_voxel_fraction={"0": 0.99, "1": 0.01},
        class_case_fraction={"0": 1.0, "1": 1.0},
        target_counts={},
        foreground_intensity={
            "mean": 80.0, "std": 60.0, "median": 75.0, "min": -900.0, "max": 2500.0,
            "percentile_00_5": -50.0, "percentile_99_5": 300.0, "mean_clipped": 78.0, "std_clipped": 55.0,
        },
        foreground_intensity_per_channel=(),
        dtypes={"int16": n},
    )
    base.update(changes)
    return Fingerprint(**base)  # type: ignore[arg-type]


def test_median_spacing_and_the_anisotropy_rule():
    spacings = np.array([(0.7, 0.7, s) for s in (5.0, 5.0, 5.0, 5.0, 2.5, 3.0, 5.0, 5.0, 5.0, 5.0)])
    shapes = np.array([(30, 512, 512)] * 10)
    target, note = target_spacing_from(spacings, shapes)
    assert target[:2] == (0.7, 0.7)
    assert target[2] == pytest.approx(np.percentile(spacings[:, 2], 10))  # not the median 5.0
    assert "anisotropic" in note
    # many slices: thick but well sampled -> the median is kept
    target, _ = target_spacing_from(spacings, np.array([(400, 512, 512)] * 10))
    assert target[2] == 5.0
    target, _ = target_spacing_from(np.array([(1.0, 1.0, 1.2)] * 3), np.array([(40, 50, 35)] * 3))
    assert target == (1.0, 1.0, 1.2)


def test_ct_plan_uses_dataset_statistics_and_fits_the_budget():
    plan = make_plan(make_fingerprint(), memory_budget_mb=1024)
    assert plan.normalization == Normalization("ct", -50.0, 300.0, 78.0, 55.0)
    assert plan.target_spacing == (0.8, 0.8, 1.0)
    assert all(p % 2**plan.pooling_levels == 0 for p in plan.patch_size)
    assert np.prod(plan.patch_size) * plan.batch_size * 2400 <= 1024 * 2**20
    assert plan.recommended_model == "unet3d"
    big = make_plan(make_fingerprint(), memory_budget_mb=24000)
    assert np.prod(big.patch_size) > np.prod(plan.patch_size)
    assert big.median_shape == (180, 240, 250)
    # CT crops to the body (air is -1000 HU, not zero); new plans keep the slice aspect when resizing slices
    assert plan.crop_to_nonzero and plan.body_threshold == -500.0 and plan.slice_keep_aspect
    assert any("body" in note for note in plan.notes)
    mri = make_plan(make_fingerprint(modality="MRI"))
    assert mri.body_threshold is None and mri.normalization.scheme == "zscore_nonzero"
    thick = make_plan(make_fingerprint(spacings=tuple((0.7, 0.7, 6.0) for _ in range(20)),
                                       shapes_after_crop=tuple((12, 256, 256) for _ in range(20))))
    assert thick.recommended_model == "unet2d"


def test_plan_json_round_trip_and_strictness():
    plan = make_plan(make_fingerprint())
    text = plan.to_json()
    assert Plan.from_json(text) == plan
    assert Plan.from_json(text).to_json() == text
    data = json.loads(text)
    for bad, pattern in [
        ({**data, "surprise": 1}, "unknown key"),
        ({**data, "schema_version": PLAN_SCHEMA_VERSION + 1}, "schema_version"),
        ({**data, "patch_size": [64, 64]}, "3 values"),
        ({**data, "patch_size": [64, "64", 64]}, "integer"),
        ({**data, "batch_size": 2.5}, "integer"),
        ({**data, "batch_size": True}, "integer"),
        ({**data, "crop_to_nonzero": "yes"}, "true or false"),
        ({**data, "normalization": {**data["normalization"], "scheme": "minmax"}}, "normalization.scheme"),
        ({**data, "normalization": {**data["normalization"], "extra": 1}}, "unknown key"),
        ({**data, "orientation": "LLS"}, "orientation"),
        ({**data, "target_spacing": [1, 1, -1]}, "target_spacing"),
    ]:
        with pytest.raises(PlanError, match=pattern):
            Plan.from_dict(bad)
    with pytest.raises(PlanError, match="does not parse"):
        Plan.from_json("{not json")
    with pytest.raises(PlanError, match="body_threshold"):
        Plan.from_dict({**data, "body_threshold": "air"})
    # a plan stored before body cropping and aspect keeping existed loads as it was made: neither applies
    older = {k: v for k, v in data.items() if k not in ("body_threshold", "slice_keep_aspect")}
    loaded = Plan.from_dict(older)
    assert loaded.body_threshold is None and loaded.slice_keep_aspect is False


def test_overrides_from_text_and_values():
    plan = make_plan(make_fingerprint(), overrides={"patch_size": "32,32,32", "normalization.scheme": "zscore"})
    assert plan.patch_size == (32, 32, 32)
    assert plan.normalization.scheme == "zscore"
    assert "overridden by the user" in plan.notes[-1]
    assert plan.replace(target_spacing="none").target_spacing is None
    assert plan.replace(patch_size=48).patch_size == (48, 48, 48)
    assert plan.replace(batch_size="4", orientation="RAS").batch_size == 4
    assert plan.replace(crop_to_nonzero="false").crop_to_nonzero is False
    with pytest.raises(PlanError, match="expected a plan field"):
        plan.replace(patchsize="32")
    with pytest.raises(PlanError, match="integer"):
        plan.replace(batch_size="many")
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.batch_size = 3  # type: ignore[misc]


def test_fingerprint_dict_round_trip_refuses_unknown_keys():
    fingerprint = make_fingerprint()
    assert Fingerprint.from_dict(fingerprint.to_dict()) == fingerprint
    with pytest.raises(PlanError, match="unknown"):
        Fingerprint.from_dict({**fingerprint.to_dict(), "x": 1})


def test_hippocampus_fingerprint_and_plan_are_sane_and_reproducible(shared_data):
    dataset = load_dataset(shared_data / "hippocampus")
    stream = io.StringIO()
    first = fingerprint_dataset(dataset, workers=2, reporter=Reporter("jsonl", stream=stream))
    assert first.n_cases == 208 and first.label_values == (0, 1, 2)
    progress = [json.loads(line) for line in stream.getvalue().splitlines() if '"progress"' in line]
    assert progress[-1]["fraction"] == 1.0 and len(progress) == 209
    plan = make_plan(first)
    assert plan.target_spacing == pytest.approx((1.0, 1.0, 1.0), abs=0.05)
    assert plan.normalization.scheme == "zscore_nonzero"
    assert plan.median_shape is not None
    assert all(p >= m for p, m in zip(plan.patch_size, plan.median_shape, strict=True))
    assert plan.recommended_model == "unet3d" and plan.label_values == (0, 1, 2)

    second = fingerprint_dataset(dataset, workers=1)
    assert json.dumps(second.to_dict()) == json.dumps(first.to_dict())
    assert make_plan(second).to_json() == plan.to_json()


def test_plan_command_writes_the_same_plan(shared_data, tmp_path, capsys):
    parser = argparse.ArgumentParser()
    plan_cli.register(parser.add_subparsers(), [common_parent()])
    hippocampus = shared_data / "hippocampus"
    rows = [f"{hippocampus}/imagesTr/{p.name},{p},{n // 2}" for n, p in enumerate(sorted((hippocampus / "labelsTr").glob("*.nii.gz"))[:12])]
    manifest = tmp_path / "cases.csv"
    manifest.write_text("image,label,group\n" + "\n".join(rows) + "\n")
    out = tmp_path / "plan.json"
    args = parser.parse_args(["plan", str(manifest), "--modality", "MRI", "--out", str(out), "--set", "batch_size=3",
                              "--set", "patch_size=32,48,32", "--progress", "none"])
    assert args.func(args, Reporter("none")) == 0
    written = Plan.from_json(out.read_text())
    assert written.batch_size == 3 and written.patch_size == (32, 48, 32)
    assert written.modality == "MRI" and written.normalization.scheme == "zscore_nonzero"
    assert Plan.from_json(capsys.readouterr().out) == written
    bad = parser.parse_args(["plan", str(manifest), "--set", "nonsense"])
    with pytest.raises(PlanError, match="KEY=VALUE"):
        bad.func(bad, Reporter("none"))


def test_fingerprint_refuses_a_label_off_the_image_grid(tmp_path):
    import SimpleITK as sitk

    image = Volume(np.ones((4, 5, 6), np.float32), spacing=(1, 1, 1))
    label = Volume(np.zeros((4, 5, 6), np.uint8), spacing=(1, 1, 2))
    sitk.WriteImage(image.to_sitk(), str(tmp_path / "image.nii.gz"))
    sitk.WriteImage(label.to_sitk(), str(tmp_path / "label.nii.gz"))
    case = Case("c0", (str(tmp_path / "image.nii.gz"),), str(tmp_path / "label.nii.gz"))
    with pytest.raises(GeometryError, match="spacing"):
        fingerprint_dataset([case])


def test_single_slice_ct_classification_plan(shared_data):
    from MedAnalysisLib.data.datasets import read_case
    from MedAnalysisLib.preprocessing.transforms import apply_plan

    dataset = load_dataset(shared_data / "ct_contrast" / "labels.csv", image_columns=["file"], target_column="contrast")
    assert dataset.task == "classification" and all(c.group for c in dataset.cases)  # grouped by patient_id
    fingerprint = fingerprint_dataset(dataset)
    plan = make_plan(fingerprint)
    # the modality comes from the DICOM tags; unlabelled CT is measured inside the body, not air or padding
    assert plan.modality == "CT" and plan.normalization.scheme == "ct"
    assert -1000 < plan.normalization.clip_low < 0 < plan.normalization.clip_high < 3000
    assert plan.recommended_model == "slice_cnn" and plan.median_shape[0] == 1 and plan.patch_size[0] == 1
    assert plan.label_values == (0, 1)
    images, _ = read_case(dataset.cases[0])
    prepared = apply_plan(plan, images, pad_to_patch=False)
    assert prepared.image.shape[0] == 1  # one slice stays one slice
    # the crop is the body: the air and table around the patient are gone, the box is inside the 512x512 slice
    assert plan.body_threshold == -500.0 and fingerprint.crop_fraction_median < 0.9
    (_, _), (j0, j1), (i0, i1) = prepared.inverse.crop_box
    assert 0 < (j1 - j0) * (i1 - i0) < 512 * 512
    body = np.asarray(images[0].array)[0, j0:j1, i0:i1] > -500
    assert body[0].any() and body[-1].any() and body[:, 0].any() and body[:, -1].any()  # tight on every side
    assert (np.asarray(images[0].array)[0] > -500).sum() * 0.9 < body.sum()  # and nearly all of the patient
