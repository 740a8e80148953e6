"""Datasets: MSD folders, CSV manifests, DICOM folders; seeded grouped splits and k-fold."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from MedAnalysisLib.data.datasets import Case, kfold_splits, load_dataset, read_case, split_cases
from MedAnalysisLib.errors import ImageValidationError, InputError


def write_image(path: Path, array: np.ndarray, spacing=(1.0, 1.0, 2.0)) -> str:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    sitk.WriteImage(image, str(path))
    return path.name


def test_msd_hippocampus(shared_data):
    dataset = load_dataset(shared_data / "hippocampus")
    assert len(dataset.cases) == 208
    assert dataset.task == "segmentation" and dataset.modality == "MRI"
    assert dataset.labels == {0: "background", 1: "anterior", 2: "posterior"}
    case = dataset.cases[0]
    assert case.case_id == "hippocampus_001" and case.label is not None
    images, label = read_case(case)
    assert images[0].shape == label.shape and np.issubdtype(label.array.dtype, np.integer)
    assert set(np.unique(label.array)) <= {0, 1, 2}


def test_csv_manifest_segmentation_and_classification(tmp_path):
    rng = np.random.default_rng(0)
    rows = ["image,image2,label,patient_id"]
    for n in range(6):
        a = write_image(tmp_path / f"t1_{n}.nii.gz", rng.normal(size=(3, 4, 5)).astype(np.float32))
        b = write_image(tmp_path / f"t2_{n}.nii.gz", rng.normal(size=(3, 4, 5)).astype(np.float32))
        lab = write_image(tmp_path / f"lab_{n}.nii.gz", (rng.random((3, 4, 5)) > 0.5).astype(np.uint8))
        rows.append(f"{a},{b},{lab},P{n // 2}")
    (tmp_path / "seg.csv").write_text("\n".join(rows) + "\n")
    dataset = load_dataset(tmp_path / "seg.csv", modality="MRI")
    assert dataset.task == "segmentation" and dataset.channel_names == ["image", "image2"]
    assert [c.group for c in dataset.cases] == ["P0", "P0", "P1", "P1", "P2", "P2"]
    images, label = read_case(dataset.cases[1])
    assert len(images) == 2 and label is not None and images[0].spacing == (1.0, 1.0, 2.0)

    (tmp_path / "cls.csv").write_text("case_id,image,target\na,t1_0.nii.gz,0\nb,t1_1.nii.gz,1\nc,t1_2.nii.gz,1\n")
    classes = load_dataset(tmp_path / "cls.csv")
    assert classes.task == "classification" and [c.target for c in classes.cases] == [0, 1, 1]
    assert classes.labels == {0: "0", 1: "1"} and classes.cases[0].case_id == "a"

    (tmp_path / "both.csv").write_text("image,label,target\nt1_0.nii.gz,lab_0.nii.gz,1\nt1_1.nii.gz,lab_1.nii.gz,0\n")
    both = load_dataset(tmp_path / "both.csv")
    assert both.task == "segmentation" and [c.target for c in both.cases] == [1, 0] and both.cases[0].label

    (tmp_path / "bad.csv").write_text("image,target\nmissing.nii.gz,1\n")
    with pytest.raises(InputError, match="missing.nii.gz"):
        load_dataset(tmp_path / "bad.csv")
    (tmp_path / "nocol.csv").write_text("file,target\nt1_0.nii.gz,1\n")
    with pytest.raises(InputError, match="image column"):
        load_dataset(tmp_path / "nocol.csv")
    assert len(load_dataset(tmp_path / "nocol.csv", image_columns=["file"]).cases) == 1
    (tmp_path / "nan.csv").write_text("image,target\nt1_0.nii.gz,yes\n")
    with pytest.raises(InputError, match="numeric target"):
        load_dataset(tmp_path / "nan.csv")


def test_float_label_with_fractions_is_refused(tmp_path):
    write_image(tmp_path / "img.nii.gz", np.ones((2, 3, 4), np.float32))
    write_image(tmp_path / "lab.nii.gz", np.full((2, 3, 4), 0.5, np.float32))
    case = Case("c", (str(tmp_path / "img.nii.gz"),), str(tmp_path / "lab.nii.gz"))
    with pytest.raises(ImageValidationError):
        read_case(case)


def test_folder_of_dicom_series(shared_data):
    single = load_dataset(shared_data / "dicom" / "ct_head_slicer_64x64")
    assert len(single.cases) == 1 and single.modality == "CT" and single.cases[0].label is None
    images, _ = read_case(single.cases[0])
    assert images[0].shape == (93, 64, 64)
    multi = load_dataset(shared_data / "dicom" / "mr_brain_tumor_progression_PGBM-003")
    assert len(multi.cases) >= 4 and len({c.series for c in multi.cases}) == len(multi.cases)
    with pytest.raises(InputError):
        load_dataset(shared_data / "no-such-folder")


def test_split_by_group_is_seeded_and_never_splits_a_group():
    cases = [Case(f"c{n}", (f"{n}.nii",), group=f"patient{n // 3}") for n in range(30)]
    train, val = split_cases(cases, 0.2, seed=1)
    assert len(train) + len(val) == 30 and 4 <= len(val) <= 9
    assert not {c.group for c in train} & {c.group for c in val}
    assert split_cases(cases, 0.2, seed=1) == (train, val)
    assert split_cases(cases, 0.2, seed=2) != (train, val)
    ungrouped = [Case(f"c{n}", (f"{n}.nii",)) for n in range(10)]
    train, val = split_cases(ungrouped, 0.3, seed=0)
    assert len(val) == 3
    one_group = [Case(f"c{n}", (f"{n}.nii",), group="same") for n in range(4)] + [Case("x", ("x.nii",))]
    train, val = split_cases(one_group, 0.5, seed=0)
    assert train and val
    with pytest.raises(InputError):
        split_cases(cases, 1.0)


def test_kfold_covers_every_case_once_and_keeps_groups():
    cases = [Case(f"c{n}", (f"{n}.nii",), group=f"g{n % 7}") for n in range(40)]
    folds = kfold_splits(cases, 5, seed=3)
    assert len(folds) == 5
    seen = [c.case_id for _, val in folds for c in val]
    assert sorted(seen) == sorted(c.case_id for c in cases)
    for train, val in folds:
        assert not {c.group for c in train} & {c.group for c in val}
        assert len(train) + len(val) == 40
    assert kfold_splits(cases, 5, seed=3) == folds
    with pytest.raises(InputError):
        kfold_splits(cases, 8)


def skewed_patients(seed: int = 0) -> list[Case]:
    """44 patients, 83 cases as in the CT contrast set: patients with several slices are mostly of one class."""
    rng = np.random.default_rng(seed)
    cases = []
    for patient in range(44):
        n = 1 if patient < 20 else int(rng.integers(1, 4))
        target = int(patient % 2) if patient < 20 else int(rng.random() < 0.7)
        cases += [Case(f"p{patient}s{s}", (f"p{patient}s{s}.dcm",), target=target, group=f"p{patient}")
                  for s in range(n)]
    return cases


def test_classification_splits_keep_the_class_proportions_in_every_validation_side():
    cases = skewed_patients()
    share = np.mean([c.target for c in cases])
    for seed in range(20):
        train, val = split_cases(cases, 0.2, seed=seed)
        assert not {c.group for c in train} & {c.group for c in val}
        assert abs(len(val) - 0.2 * len(cases)) <= 3
        assert abs(np.mean([c.target for c in val]) - share) < 0.15, seed
        assert {c.target for c in val} == {0, 1}
    for seed in range(5):
        folds = kfold_splits(cases, 5, seed=seed)
        assert sorted(c.case_id for _, val in folds for c in val) == sorted(c.case_id for c in cases)
        for train, val in folds:
            assert not {c.group for c in train} & {c.group for c in val}
            assert abs(np.mean([c.target for c in val]) - share) < 0.2
            assert 0.6 * len(cases) / 5 <= len(val) <= 1.4 * len(cases) / 5


def test_unstratified_grouped_split_can_give_a_one_class_validation_side():
    """Why splits are stratified: with targets hidden, some seeds put (nearly) one class in validation."""
    cases = skewed_patients()
    hidden = [Case(c.case_id, c.images, group=c.group) for c in cases]
    targets = {c.case_id: c.target for c in cases}
    shares = []
    for seed in range(20):
        _, val = split_cases(hidden, 0.2, seed=seed)
        shares.append(np.mean([targets[c.case_id] for c in val]))
    stratified = [np.mean([c.target for c in split_cases(cases, 0.2, seed=seed)[1]]) for seed in range(20)]
    assert np.ptp(shares) > 2 * np.ptp(stratified)


def test_regression_like_or_missing_targets_fall_back_to_the_grouped_split():
    floats = [Case(f"c{n}", (f"{n}.nii",), target=n * 0.37, group=f"g{n // 2}") for n in range(20)]
    train, val = split_cases(floats, 0.2, seed=0)
    assert len(val) == 4 and len(train) == 16
    one_class = [Case(f"c{n}", (f"{n}.nii",), target=1) for n in range(10)]
    assert len(split_cases(one_class, 0.3, seed=0)[1]) == 3


@pytest.mark.parametrize(("name", "family"), [
    ("MR", "MR"), ("mri", "MR"), ("MRA", "MR"), ("MR T1", "MR"), ("t2-weighted", "MR"), ("MR-T2 FLAIR", "MR"),
    ("CT", "CT"), ("CT abdomen", "CT"), ("cect", "CT"), ("PET", "PT"),
    ("PET/CT", None), ("CT/MR", None), ("", None), (None, None), ("unknown", None), ("Doe^Jane", None),
])
def test_modality_names_of_several_words_have_the_family_their_known_words_agree_on(name, family):
    """A modality as catalogs, dataset.json files and plans write it: one family when the known words agree, none
    when they name two (a PET/CT must not pass as either) or none."""
    from MedAnalysisLib.data.datasets import modality_family

    assert modality_family(name) == family
