"""Which truth label each bundle label is scored against: by name, by value, by an explicit map; mismatches refused."""

from __future__ import annotations

import pytest

from MedAnalysisLib.errors import InputError
from MedAnalysisLib.evaluation.labels import (
    dataset_names_labels,
    match_labels,
    parse_label_map,
    unscored_truth_labels,
)

PHANTOM = {0: "background", 1: "organ", 2: "vessel", 3: "lesion"}
HIPPOCAMPUS = {0: "background", 1: "anterior", 2: "posterior"}


def pairs(matches: list) -> list[tuple[str, int | None, str]]:
    return [(m.name, m.truth_value, m.matched_by) for m in matches]


def test_labels_are_matched_by_name_whatever_their_values() -> None:
    bundle = {0: "background", 1: "Anterior", 2: "posterior_hippocampus"}
    data = {0: "background", 1: "posterior hippocampus", 2: "anterior"}  # other order, case and separators
    assert pairs(match_labels(bundle, data)) == [("Anterior", 2, "name"), ("posterior_hippocampus", 1, "name")]


def test_a_bundle_label_the_data_does_not_name_is_refused() -> None:
    """The phantom bundle on hippocampus data: no silent scoring of 'organ' against 'anterior'."""
    with pytest.raises(InputError) as caught:
        match_labels(PHANTOM, HIPPOCAMPUS, data_name="'hippocampus'")
    message = str(caught.value)
    assert message.startswith("expected the labels of 'hippocampus' to include the bundle's labels "
                              "['organ', 'vessel', 'lesion'] by name, got anterior (1), posterior (2)")
    assert "--label-map organ=anterior" in message


def test_an_explicit_label_map_pairs_labels_and_can_leave_one_unscored() -> None:
    label_map = parse_label_map(["organ=anterior", "vessel=2,lesion=none"])
    assert label_map == {"organ": "anterior", "vessel": "2", "lesion": "none"}
    matches = match_labels(PHANTOM, HIPPOCAMPUS, label_map)
    assert pairs(matches) == [("organ", 1, "label-map"), ("vessel", 2, "label-map"), ("lesion", None, "label-map")]
    assert matches[0].describe() == "organ (1) -> anterior (1), by label-map"
    assert unscored_truth_labels(matches, HIPPOCAMPUS) == {}
    only_organ = match_labels(PHANTOM, HIPPOCAMPUS, {"organ": "anterior", "2": "none", "lesion": "none"})
    assert unscored_truth_labels(only_organ, HIPPOCAMPUS) == {2: "posterior"}


@pytest.mark.parametrize(
    ("label_map", "message"),
    [
        ({"liver": "anterior"}, "expected a label of the bundle (organ (1), vessel (2), lesion (3)) on the left"),
        ({"organ": "amygdala", "vessel": "none", "lesion": "none"},
         "expected a label of 'data' (anterior (1), posterior (2)) or 'none' on the right of --label-map organ=..."),
        ({"organ": "anterior", "vessel": "anterior", "lesion": "none"},
         "expected each label of 'data' to be scored against one bundle label, got 'organ' and 'vessel'"),
        ({"organ": "none", "vessel": "none", "lesion": "none"}, "expected at least one bundle label to score"),
    ],
)
def test_bad_label_maps_are_refused(label_map: dict[str, str], message: str) -> None:
    with pytest.raises(InputError, match=message.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")):
        match_labels(PHANTOM, HIPPOCAMPUS, label_map, data_name="'data'")


@pytest.mark.parametrize("item", ["organ", "=anterior", "organ="])
def test_label_map_syntax(item: str) -> None:
    with pytest.raises(InputError, match="expected --label-map BUNDLE_LABEL=DATA_LABEL"):
        parse_label_map([item])
    with pytest.raises(InputError, match="twice"):
        parse_label_map(["organ=1", "organ=2"])


def test_data_without_names_is_matched_by_value() -> None:
    """A CSV manifest's label maps carry values only; class-value tables ('0', '1') are not names either."""
    assert not dataset_names_labels({})
    assert not dataset_names_labels({0: "0", 1: "1"})
    assert dataset_names_labels(HIPPOCAMPUS)
    assert pairs(match_labels(PHANTOM, {})) == [("organ", 1, "value"), ("vessel", 2, "value"), ("lesion", 3, "value")]
    assert pairs(match_labels(PHANTOM, {}, {"lesion": "7"})) == [
        ("organ", 1, "value"), ("vessel", 2, "value"), ("lesion", 7, "label-map")]
    with pytest.raises(InputError, match="a label value: the data names no labels"):
        match_labels(PHANTOM, {}, {"organ": "anterior"})


def test_labels_the_data_does_not_annotate_are_left_unscored_not_guessed() -> None:
    """A liver and tumour bundle on liver-only data: liver is scored, tumour is not (and says why). On data of liver
    and cancer the leftovers 'tumour' and 'cancer' may be the same structure: refused, with the pairing to use."""
    bundle = {0: "background", 1: "liver", 2: "tumour"}
    matches = match_labels(bundle, {0: "background", 1: "liver"})
    assert pairs(matches) == [("liver", 1, "name"), ("tumour", None, "absent from the data")]
    assert matches[1].describe() == "tumour (2) not scored (absent from the data)"
    with pytest.raises(InputError, match=r"no label named 'tumour' and the data's 'cancer' match no bundle label\. "
                                         r"Pair them explicitly .*--label-map tumour=cancer"):
        match_labels(bundle, {0: "background", 1: "liver", 2: "cancer"})
    assert pairs(match_labels(bundle, {0: "background", 1: "liver", 2: "cancer"}, {"tumour": "cancer"})) == [
        ("liver", 1, "name"), ("tumour", 2, "label-map")]
