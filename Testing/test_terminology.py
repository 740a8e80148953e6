"""Standard codes for label names (issue 19.2): the built-in table against pydicom's DICOM concept dictionary, name
lookup as datasets spell names, the labels file, training's labels, the model card, and a DICOM SEG written from a
trained bundle read back by highdicom with the bundle's codes and colours."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from MedAnalysisLib.bundles import LabelInfo
from MedAnalysisLib.errors import InputError
from MedAnalysisLib.terminology import ENTRIES, coded_label, describe_terminology, lookup, read_labels_file


def _known_concepts() -> set[tuple[str, str]]:
    from pydicom.sr._concepts_dict import concepts  # pydicom's copy of the DICOM (PS3.16) concept dictionary

    return {(scheme, code) for scheme, groups in concepts.items() for group in groups.values() for code in group}


def test_every_built_in_code_is_a_concept_dicom_knows() -> None:
    known = _known_concepts()
    codes = {(e.category[0], e.category[1]) for e in ENTRIES} | {(e.type[0], e.type[1]) for e in ENTRIES}
    codes |= {("SCT", "7771000"), ("SCT", "24028007")}  # Left, Right
    assert sorted(codes - known) == []
    names = [name for entry in ENTRIES for name in entry.names]
    assert len(names) == len(set(names))  # one meaning per name
    assert all(c is None or (len(c) == 3 and all(0 <= v <= 255 for v in c)) for c in (e.color for e in ENTRIES))


@pytest.mark.parametrize(("name", "category", "type_code", "extra"), [
    ("liver", "123037004", "10200004", {}),
    ("Spleen", "123037004", "78961009", {}),
    ("kidney_left", "123037004", "64033007", {"type_modifier": "7771000"}),
    ("Right Kidney", "123037004", "64033007", {"type_modifier": "24028007"}),
    ("left atrium", "123037004", "82471001", {}),  # MSD Task02 (not "atrium" with a side)
    ("Hippocampus", "123037004", "5366008", {}),
    ("edema", "49755003", "79654002", {}),  # MSD Task01
    ("non-enhancing tumor", "49755003", "C81175", {}),
    ("enhancing tumour", "49755003", "C113842", {}),
    ("liver tumour", "49755003", "108369006", {"anatomic_region": "10200004"}),
    ("kidney_cyst_left", "49755003", "367643001", {"anatomic_region": "64033007",
                                                    "anatomic_region_modifier": "7771000"}),
    ("vessel", "85756007", "59820001", {}),  # MSD Task08 and the demo
    ("PZ", "123037004", "279706003", {}),  # MSD Task05
])
def test_lookup_codes_names_as_datasets_spell_them(name: str, category: str, type_code: str,
                                                   extra: dict[str, str]) -> None:
    found = lookup(name)
    assert found is not None, name
    terminology, _ = found
    assert terminology["category"]["code"] == category and terminology["type"]["code"] == type_code
    assert {k: v["code"] for k, v in terminology.items() if k not in ("category", "type")} == extra


@pytest.mark.parametrize("name", ["Anterior", "posterior", "label 3", "foo tumour", "left tumour", "left liver",
                                  "background", ""])
def test_names_without_a_standard_code_get_none(name: str) -> None:
    assert lookup(name) is None


def test_labels_file_forms_and_refusals(tmp_path: Path) -> None:
    path = tmp_path / "labels.json"
    path.write_text(json.dumps({"labels": [
        {"value": 0, "name": "background"},
        {"value": 1, "name": "liver"},
        {"value": 2, "name": "lesion A", "terminology": "neoplasm", "color": [255, 0, 200]},
        {"value": 3, "name": "anterior", "terminology": {"category": ["SCT", "123037004", "Anatomical Structure"],
                                                         "type": "SCT^5366008^Hippocampus"}},
        {"value": 4, "name": "liver 2", "terminology": None},
    ]}))
    labels = read_labels_file(path)
    assert [label.value for label in labels] == [0, 1, 2, 3, 4]
    assert labels[0].terminology is None and labels[0].color == (0, 0, 0)
    assert labels[1].terminology["type"]["code"] == "10200004" and labels[1].color == (40, 140, 40)
    assert labels[2].terminology["type"]["code"] == "108369006" and labels[2].color == (255, 0, 200)
    assert labels[3].terminology == {"category": {"scheme": "SCT", "code": "123037004", "meaning": "Anatomical Structure"},
                                     "type": {"scheme": "SCT", "code": "5366008", "meaning": "Hippocampus"}}
    assert labels[4].terminology is None
    path.write_text(json.dumps({"1": "spleen", "2": {"name": "thing", "color": [1, 2, 3]}}))
    assert [(label.name, label.color) for label in read_labels_file(path)] == [("spleen", (50, 170, 60)),
                                                                                ("thing", (1, 2, 3))]
    for bad, message in (
        ([{"value": 1, "name": "a", "colour": [1, 2, 3]}], "only the keys"),
        ([{"value": 1, "name": "a", "color": [300, 0, 0]}], "three integers 0-255"),
        ([{"value": 1, "name": "a|b"}], "without '|'"),
        ([{"value": 1, "name": "a", "terminology": {"type": "SCT^1^x"}}], "'category' and a 'type'"),
        ([{"value": 1, "name": "a", "terminology": {"category": "SCT^1", "type": "SCT^1^x"}}], "scheme"),
        ([{"value": 1, "name": "a", "terminology": "no such organ"}], "built-in table"),
        ([{"value": 1, "name": "a"}, {"value": 1, "name": "b"}], "once"),
        ([], "non-empty list"),
    ):
        path.write_text(json.dumps(bad))
        with pytest.raises(InputError, match=message):
            read_labels_file(path)
    path.write_text("{not json")
    with pytest.raises(InputError, match="readable JSON"):
        read_labels_file(path)


def test_training_labels_take_dataset_names_codes_and_a_labels_file() -> None:
    """MSD dataset.json names are coded where the table knows them; --labels entries win for their values; a labels
    entry for a value the data does not hold is refused."""
    from helpers_models import tiny_plan

    from MedAnalysisLib.data.datasets import Dataset
    from MedAnalysisLib.training.pipeline import _labels_for

    dataset = Dataset([], "segmentation", {0: "background", 1: "Liver", 2: "Anterior", 3: "liver tumour"})
    plan = tiny_plan(label_values=(0, 1, 2, 3))
    labels = _labels_for(dataset, plan, "segmentation", "unet3d")
    assert [label.name for label in labels] == ["background", "Liver", "Anterior", "liver tumour"]
    assert [describe_terminology(label.terminology) for label in labels[1:]] == [
        "SCT 10200004 Liver", "no standard code", "SCT 108369006 Neoplasm (Liver)"]
    assert labels[1].color == (40, 140, 40)
    given = (LabelInfo(2, "anterior hippocampus", (1, 2, 3), lookup("hippocampus")[0]),)
    labels = _labels_for(dataset, plan, "segmentation", "unet3d", given)
    assert labels[2] == given[0] and labels[1].name == "Liver"
    with pytest.raises(InputError, match=r"labels among the values in the data \[0, 1, 2, 3\], got labels for \[7\]"):
        _labels_for(dataset, plan, "segmentation", "unet3d", (LabelInfo(7, "x"),))


def test_model_card_says_which_labels_have_no_standard_code() -> None:
    from helpers_models import tiny_plan

    from MedAnalysisLib.bundles import BundleConfig, bundle_summary

    config = BundleConfig(
        name="m", task="segmentation", family="unet3d", hparams={"n_classes": 3}, plan=tiny_plan(label_values=(0, 1, 2)),
        labels=(LabelInfo(0, "background"), coded_label(1, "spleen", (1, 1, 1)), LabelInfo(2, "posterior")),
        input={"channels": [{"name": "T1", "modality": "MRI"}]},
    )
    card = bundle_summary(config)
    assert "Codes:        1 spleen: SCT 78961009 Spleen; 2 posterior: no standard code" in card
    assert "no standard code for posterior: DICOM SEG codes it as SCT Tissue" in card


@pytest.mark.slow
def test_a_bundle_trained_from_dataset_json_writes_a_seg_with_its_codes_and_colours(tmp_path: Path) -> None:
    """The issue's 'done when': train from an MSD dataset.json with a labels file (through the command line), predict
    a DICOM series as DICOM SEG, read the SEG back with highdicom: every segment has the bundle's code and colour."""
    import highdicom as hd

    from MedAnalysisLib.bundles import read_bundle_config
    from MedAnalysisLib.cli import main
    from MedAnalysisLib.io import read_volume
    from MedAnalysisLib.phantom import write_phantom_dataset, write_phantom_dicom

    data = write_phantom_dataset(tmp_path / "data", 3, seed=1, shape=(16, 20, 20))
    assert json.loads((data / "dataset.json").read_text())["labels"] == {"0": "background", "1": "organ",
                                                                           "2": "vessel", "3": "lesion"}
    labels_file = tmp_path / "labels.json"
    labels_file.write_text(json.dumps([{"value": 3, "name": "lesion", "terminology": "mass", "color": [10, 200, 30]}]))
    bundle = tmp_path / "bundle"
    assert main(["train", str(data / "dataset.json"), "--task", "segmentation", "--model", "unet3d", "--out",
                 str(bundle), "--epochs", "1", "--steps-per-epoch", "1", "--workers", "1", "--val-fraction", "0",
                 "--set", "patch_size=16,16,16", "--set", "batch_size=2", "--hparam", "filters=[4,8]",
                 "--labels", str(labels_file), "--progress", "none"]) == 0
    config = read_bundle_config(bundle)
    expected = {label.name: label for label in config.labels if label.value}
    assert expected["organ"].terminology["type"]["code"] == "113343008"
    assert expected["vessel"].terminology["type"]["code"] == "59820001"
    assert expected["lesion"].terminology["type"]["code"] == "4147007" and expected["lesion"].color == (10, 200, 30)
    series = write_phantom_dicom(read_volume(data / "imagesTr" / "phantom_000.nii.gz"), tmp_path / "dicom", seed=1)
    out = tmp_path / "out"
    assert main(["predict", str(bundle), str(series), "--out", str(out), "--format", "dicom-seg",
                 "--progress", "none"]) == 0
    seg = hd.seg.segread(next(out.glob("*_seg.dcm")))
    assert seg.number_of_segments == 3
    for number in range(1, 4):
        description = seg.get_segment_description(number)
        label = expected[description.segment_label]
        assert description.segmented_property_type.value == label.terminology["type"]["code"]
        assert description.segmented_property_category.value == label.terminology["category"]["code"]
        lab = tuple(int(v) for v in seg.SegmentSequence[number - 1].RecommendedDisplayCIELabValue)
        assert np.abs(np.subtract(hd.color.CIELabColor.from_dicom_value(lab).to_rgb(), label.color)).max() <= 2


def test_a_classifier_may_name_class_0_but_a_label_map_may_not() -> None:
    """Class 0 of a classifier is a class like the others ("no contrast"); value 0 of a label map is the background,
    so a labels file calling it anything else is refused there."""
    from MedAnalysisLib.errors import InputError
    from MedAnalysisLib.terminology import parse_labels

    classes = parse_labels({"0": "no contrast", "1": "contrast"}, "labels.json", classification=True)
    assert [(label.value, label.name) for label in classes] == [(0, "no contrast"), (1, "contrast")]
    with pytest.raises(InputError, match="expected value 0 in labels.json to be named 'background'"):
        parse_labels({"0": "no contrast", "1": "contrast"}, "labels.json")
    with pytest.raises(InputError, match="only for value 0"):
        parse_labels({"0": "none", "1": "background"}, "labels.json", classification=True)
