"""The model card every bundle carries: fields checked like the rest of bundle.json, filled by train, completed by
configure (--card, --evaluation), combined by ensemble, shown by info; and bundles of schema 1 still load.

Every hostile card is built inside the test, tiny, in ``tmp_path``.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers_inference import cube_volume, train_classifier_bundle, write_cube_msd

from MedAnalysisLib.bundles import (
    NOT_FOR_CLINICAL_USE,
    NOT_STATED,
    BundleConfig,
    LabelInfo,
    card_sections,
    check_card,
    load_bundle,
    make_ensemble,
    read_bundle_config,
)
from MedAnalysisLib.cli import main
from MedAnalysisLib.errors import BundleError

FULL_CARD: dict[str, Any] = {
    "clinical_use": "research only; not cleared by any regulator",
    "authors": ["A. Author", "B. Author"],
    "version": "1.2.0",
    "changelog": [{"version": "1.0.0", "date": "2025-01-02", "changes": "trained"},
                  {"version": "1.2.0", "date": "2025-03-04", "changes": "longer training"}],
    "license": "CC-BY-4.0",
    "citation": "Author A, Author B. Cubes. 2025.",
    "intended_use": "finding bright cubes in noise\nresearch scans only",
    "out_of_scope_use": "any patient",
    "training_data": {"name": "Cubes", "license": "CC0", "reference": "doi:10.0/cubes", "n_cases": 12,
                      "description": "noise with one box"},
    "evaluation": {"data": "held-out cubes", "n_cases": 8,
                   "metrics": [{"name": "dice_cube", "value": 0.91, "ci_low": 0.88, "ci_high": 0.94, "level": 0.95,
                                "n": 8},
                               {"name": "hd95_mm_cube", "value": 1.5, "ci_low": None, "ci_high": None, "level": None,
                                "n": 8}]},
    "limitations": ["boxes only", "1.5 mm voxels only"],
    "references": ["Mitchell et al. 2019, Model Cards for Model Reporting"],
}


def _config(**changes: Any) -> BundleConfig:
    """A valid segmentation configuration (no weights are ever needed to read it)."""
    from helpers_inference import make_cube_plan

    settings: dict[str, Any] = dict(
        name="cube-finder", task="segmentation", family="unet3d",
        hparams={"n_classes": 2, "in_channels": 1, "patch_size": [16, 16, 16], "filters": [4, 8], "norm": "batch"},
        plan=make_cube_plan(), labels=(LabelInfo(0, "background", (0, 0, 0)), LabelInfo(1, "cube", (230, 80, 60))),
        input={"channels": [{"name": "image", "modality": "MR"}]},
        weights={"file": "model.weights.h5", "sha256": "0" * 64},
    )
    settings.update(changes)
    return BundleConfig(**settings)


def _bundle_json(folder: Path, data: dict[str, Any]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "bundle.json").write_text(json.dumps(data))
    return folder


def _snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


# ------------------------------------------------------------------------------------------- fields and checks
def test_card_round_trips_and_defaults_to_not_for_clinical_use(tmp_path: Path) -> None:
    config = _config(card=FULL_CARD)
    again = BundleConfig.from_json(config.to_json())
    assert again.card == FULL_CARD and again.schema_version == 2
    assert json.loads(config.to_json())["card"] == FULL_CARD
    folder = _bundle_json(tmp_path / "b", json.loads(config.to_json()))
    assert read_bundle_config(folder).card == FULL_CARD
    # A card that leaves clinical_use out (or no card at all) is "not for clinical use", the rest not stated.
    for data in ({**json.loads(config.to_json()), "card": {"authors": ["X"]}},
                 {k: v for k, v in json.loads(config.to_json()).items() if k != "card"}):
        card = BundleConfig.from_dict(data).card
        assert card["clinical_use"] == NOT_FOR_CLINICAL_USE == "not for clinical use"
        assert card["evaluation"] == {"data": "", "n_cases": None, "metrics": []}
    sections = card_sections(_config())
    assert sections[0] == ("Use", [("Clinical use", "not for clinical use"), ("Intended use", "not stated"),
                                   ("Out of scope", "not stated")])
    assert all(value == "not stated" for _, rows in sections[1:] for _, value in rows)


def _metric(**changes: Any) -> dict[str, Any]:
    return {"evaluation": {"metrics": [{"name": "dice", "value": 0.9, "ci_low": 0.8, "ci_high": 0.95, "level": 0.95,
                                        "n": 5, **changes}]}}


HOSTILE_CARDS: dict[str, tuple[Any, str]] = {
    "unknown key": ({"run": "rm -rf"}, "got unknown ['run']"),
    "unknown nested key": ({"training_data": {"script": "x"}}, "in card.training_data, got unknown ['script']"),
    "unknown metric key": (_metric(p_value=0.01), "got unknown ['p_value']"),
    "card not an object": (["authors"], "expected card to be a JSON object, got list"),
    "NaN value": (_metric(value=float("nan")), "expected card.evaluation.metrics[0].value to be a finite number"),
    "infinite interval": (_metric(ci_high=float("inf")), "ci_high to be a finite number or null, got inf"),
    "huge integer": (_metric(value=10**400), "value to be a finite number, got 1000"),
    "one end of an interval": (_metric(ci_high=None), "expected both ends of"),
    "reversed interval": (_metric(ci_low=0.99), "expected card.evaluation.metrics[0].ci_low <= ci_high"),
    "level as a percentage": (_metric(level=95), "level in (0, 1) or null, got 95"),
    "interval without level": (_metric(level=None), "level (e.g. 0.95) with its interval"),
    "10 MB of text": ({"intended_use": "x" * 10 * 1024**2},
                      "expected card.intended_use of at most 4000 characters, got 10485760"),
    "too many authors": ({"authors": ["a"] * 101}, "expected at most 100 items in card.authors, got 101"),
    "deep nesting": ({"authors": [[[[[[["deep"]]]]]]]}, "expected card.authors[0] to be text, got list"),
    "escape sequence": ({"authors": ["A\x1b[2J\x1b]0;owned\x07"]}, "printable text on one line, got control"),
    "bidi override": ({"license": "MIT\u202etxt.exe"}, "printable text on one line"),
    "zero-width": ({"version": "1.0\u200b"}, "printable text on one line"),
    "line break in a short field": ({"version": "1.0\nerror: forged"}, "printable text on one line"),
    "carriage return in a long field": ({"intended_use": "ok\rerror: forged"}, "(line breaks allowed), got control"),
    "authors as text": ({"authors": "A. Author"}, "expected card.authors to be a list of texts, got str"),
    "cases as float": ({"training_data": {"n_cases": 1.5}}, "n_cases to be an integer from 0 to"),
    "cases as bool": ({"training_data": {"n_cases": True}}, "got True"),
    "negative cases": ({"evaluation": {"n_cases": -1}}, "n_cases to be an integer from 0 to"),
    "metric without name": (_metric(name=" "), "to name the metric, got an empty text"),
    "value as text": (_metric(value="0.9"), "value to be a finite number, got '0.9'"),
    "empty clinical use": ({"clinical_use": ""}, "to state the clinical use"),
    "clinical use null": ({"clinical_use": None}, "expected card.clinical_use to be text, got null"),
    "bad changelog date": ({"changelog": [{"version": "1", "date": "yesterday", "changes": "x"}]},
                           "date as YYYY-MM-DD, got 'yesterday'"),
    "changelog entry missing keys": ({"changelog": [{"version": "1"}]}, "to have the keys ['changes', 'date']"),
    # values that contradict each other or the calendar
    "value below its interval": (_metric(value=0.9, ci_low=0.95, ci_high=0.99),
                                 "expected card.evaluation.metrics[0].value within its interval [0.95, 0.99], got 0.9"),
    "value above its interval": (_metric(value=1.5), "value within its interval [0.8, 0.95], got 1.5"),
    "negative value under a positive interval": (_metric(value=-0.9), "within its interval [0.8, 0.95], got -0.9"),
    "february 30": ({"changelog": [{"version": "1", "date": "2026-02-30", "changes": "x"}]},
                    "expected card.changelog[0].date to be a real calendar date (YYYY-MM-DD), got '2026-02-30'"),
    "month 13": ({"changelog": [{"version": "1", "date": "2026-13-01", "changes": "x"}]}, "real calendar date"),
    "day 00": ({"changelog": [{"version": "1", "date": "2026-01-00", "changes": "x"}]}, "real calendar date"),
    "february 29 of a common year": ({"changelog": [{"version": "1", "date": "2025-02-29", "changes": "x"}]},
                                     "got '2025-02-29'"),
    "non-ASCII digits in a date": ({"changelog": [{"version": "1", "date": "2026-0\u0661-01", "changes": "x"}]},
                                   "date as YYYY-MM-DD"),
    "changelog out of order": ({"changelog": [{"version": "2", "date": "2026-03-01", "changes": "b"},
                                              {"version": "1", "date": "2026-01-01", "changes": "a"}]},
                               "expected the changelog oldest first (card.changelog[1].date on or after 2026-03-01), "
                               "got 2026-01-01"),
    "three metrics of one name": ({"evaluation": {"metrics": [{"name": "dice", "value": 0.9}] * 3}},
                                  "expected unique metric names in card.evaluation, got 'dice' at metrics[0] and "
                                  "metrics[1]"),
    "metric names differing in case and spaces": (
        {"evaluation": {"metrics": [{"name": "Dice", "value": 0.9}, {"name": " dice ", "value": 0.5}]}},
        "expected unique metric names"),
    "empty author": ({"authors": [""]}, "expected card.authors[0] to be a non-empty text, got ''"),
    "blank author after a real one": ({"authors": ["A. Author", "   "]}, "expected card.authors[1] to be a non-empty"),
    "empty limitation": ({"limitations": [""]}, "expected card.limitations[0] to be a non-empty text"),
    "line breaks only as a reference": ({"references": ["\n\n"]}, "expected card.references[0] to be a non-empty"),
    "a Dice above 1": (_metric(value=1.7, ci_low=1.6, ci_high=1.8), "('dice', a fraction) and its interval within"),
    "an AUC interval reaching past 1": ({"evaluation": {"metrics": [{"name": "AUC", "value": 0.9, "ci_low": 0.8,
                                                                     "ci_high": 1.2, "level": 0.95}]}},
                                        "within [0, 1], got 0.9 [0.8, 1.2]"),
    "a negative sensitivity": ({"evaluation": {"metrics": [{"name": "sensitivity_lesion", "value": -0.1}]}},
                               "a fraction) and its interval within [0, 1]"),
    "a metric on more cases than the evaluation had": (
        {"evaluation": {"n_cases": 40, "metrics": [{"name": "dice", "value": 0.9, "n": 4000}]}},
        "expected each metric's n at most card.evaluation.n_cases (40), got n=4000 for 'dice'"),
    "metrics on no cases": ({"evaluation": {"n_cases": 0, "metrics": [{"name": "hd95", "value": 1.5}]}},
                            "expected card.evaluation.n_cases above 0 with metrics, got 0 and 1 metric(s)"),
}


@pytest.mark.parametrize("name", sorted(HOSTILE_CARDS), ids=lambda name: name.replace(" ", "-"))
def test_hostile_cards_are_refused_with_what_was_expected(name: str) -> None:
    card, message = HOSTILE_CARDS[name]
    with pytest.raises(BundleError) as caught:
        _config(card=card)
    assert message in str(caught.value)
    assert "\x1b" not in str(caught.value) and "\u202e" not in str(caught.value)  # never echoed raw


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (b'"card": {"evaluation": {"metrics": [{"name": "d", "value": NaN}]}}', "got NaN"),
        (b'"card": ' + b"[" * 100_000, "expected bundle.json to hold valid JSON"),
        (b'"card": {"authors": ["' + b"x" * 5 * 1024**2 + b'"]}', "expected bundle.json of at most 4194304 bytes"),
    ],
    ids=["nan", "deep-nesting", "oversized"],
)
def test_hostile_card_json_in_a_bundle_is_refused(tmp_path: Path, text: bytes, message: str) -> None:
    base = _config().to_json().rstrip().rstrip("}").rstrip() + ", "
    folder = tmp_path / "b"
    folder.mkdir()
    (folder / "bundle.json").write_bytes(base.encode() + text + b"}")
    with pytest.raises(BundleError) as caught:
        read_bundle_config(folder)
    assert message in str(caught.value)


def test_schema_1_bundle_json_has_no_card_and_schema_3_is_refused(tmp_path: Path) -> None:
    data = json.loads(_config(card=FULL_CARD).to_json())
    with pytest.raises(BundleError, match=r"got unknown \['card'\]"):
        BundleConfig.from_dict({**data, "schema_version": 1})
    with pytest.raises(BundleError, match="expected bundle schema version 1 or 2, got 3"):
        BundleConfig.from_dict({**data, "schema_version": 3})


# ------------------------------------------------------------------------------------------------------ info
def test_info_prints_every_field_and_escapes_what_it_shows(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    card = {**FULL_CARD, "limitations": ["boxes only", "error: forged line?\nsecond line"]}
    folder = _bundle_json(tmp_path / "b", json.loads(_config(card=card).to_json()))
    assert main(["info", str(folder)]) == 0
    out = capsys.readouterr().out
    card_part = out[out.index("Model card:"):].splitlines()
    assert card_part[1:3] == ["  Use", "    Clinical use:  research only; not cleared by any regulator"]
    for text in ("A. Author; B. Author", "1.2.0", "CC-BY-4.0", "Author A, Author B. Cubes. 2025.",
                 "finding bright cubes in noise", "any patient", "Cubes", "CC0", "doi:10.0/cubes", "12",
                 "noise with one box", "held-out cubes", "0.91 (95% CI 0.88 to 0.94, n=8)",
                 "1.5 (no interval computed, n=8)", "boxes only", "Mitchell et al. 2019",
                 "1.0.0, 2025-01-02: trained", "1.2.0, 2025-03-04: longer training"):
        assert text in out, text
    # A long field's line breaks become indented continuation lines: no value starts a line of its own.
    assert "\n                   research scans only" in out
    assert "\n                   second line" in out
    assert not any(line.startswith("error:") for line in out.splitlines())
    assert main(["info", str(folder), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["card"] == card


# ----------------------------------------------------------------------------------------------------- train
def _hostile_msd(root: Path) -> Path:
    msd = write_cube_msd(root, n=4)
    meta = json.loads((msd / "dataset.json").read_text())
    meta.update(name="Cubes\x1b[31m\u202e", licence="CC-BY-SA 4.0", reference="Doe J. Cubes. 2024.",
                description="boxes in noise\r\nsecond line\u2028third")
    (msd / "dataset.json").write_text(json.dumps(meta))
    return msd


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One real ``medanalysis train`` run (one tiny epoch) on an MSD folder whose dataset.json names itself with an
    escape sequence and a bidi override, with a --card file and card options; the other tests reuse its bundle."""
    root = tmp_path_factory.mktemp("train")
    msd = _hostile_msd(root / "Task01")
    card_file = root / "card.json"
    card_file.write_text(json.dumps({"license": "from the file", "version": "2.0.0", "authors": ["File Author"],
                                     "limitations": ["synthetic data only"],
                                     "training_data": {"description": "the author's description"}}))
    out = root / "model"
    argv = ["train", str(msd), "--task", "segmentation", "--model", "unet3d", "--out", str(out), "--epochs", "1",
            "--steps-per-epoch", "2", "--set", "patch_size=16,16,16", "--set", "batch_size=2", "--hparam",
            "filters=[4,8]", "--no-cache", "--val-fraction", "0.5", "--progress", "none", "--card", str(card_file),
            "--license", "MIT", "--author", "CLI Author", "--author", "Second Author"]
    assert main(argv) == 0
    return out


def test_train_writes_the_card_with_the_dataset_and_the_run_and_options_win(
        trained: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = trained
    config = read_bundle_config(out)
    card, training = config.card, config.training
    assert card["clinical_use"] == "not for clinical use"
    assert card["license"] == "MIT"  # the option over the file
    assert card["authors"] == ["CLI Author", "Second Author"]
    assert card["version"] == "2.0.0"  # the file over what train infers (1.0.0)
    assert card["limitations"] == ["synthetic data only"]
    assert card["changelog"] == [{"version": "2.0.0", "date": time.strftime("%Y-%m-%d", time.gmtime()),
                                  "changes": "trained"}]
    data = card["training_data"]
    assert data == {"name": "Cubes\\x1b[31m\\u202e", "license": "CC-BY-SA 4.0", "reference": "Doe J. Cubes. 2024.",
                    "n_cases": training["n_train"], "description": "the author's description"}
    evaluation = card["evaluation"]
    assert evaluation["n_cases"] == training["n_val"] == 2
    assert "no confidence interval was computed" in evaluation["data"]
    metrics = {m["name"]: m for m in evaluation["metrics"]}
    assert set(metrics) == {k[len("val_"):] for k in training["final_metrics"]
                            if k.startswith("val_") and not k.endswith("loss")}
    assert metrics["mean_dice"] == {"name": "mean_dice", "value": training["final_metrics"]["val_mean_dice"],
                                    "ci_low": None, "ci_high": None, "level": None, "n": 2}
    capsys.readouterr()
    assert main(["info", str(out)]) == 0
    shown = capsys.readouterr().out
    assert "Name:          Cubes\\x1b[31m\\u202e" in shown and "\x1b" not in shown and "\u202e" not in shown
    assert "mean_dice:" in shown and "(no interval computed, n=2)" in shown


def test_dataset_json_text_is_bounded_and_made_printable(tmp_path: Path) -> None:
    from MedAnalysisLib.data.datasets import load_dataset

    msd = _hostile_msd(tmp_path / "Task02")
    meta = json.loads((msd / "dataset.json").read_text())
    meta.update(reference="r" * 50_000, licence=["not", "text"])
    (msd / "dataset.json").write_text(json.dumps(meta))
    about = load_dataset(msd).about
    assert about["name"] == "Cubes\\x1b[31m\\u202e"
    assert about["description"] == "boxes in noise\nsecond line\\u2028third"
    assert about["reference"] == "r" * 973 + "... (49027 more characters)"  # 1000 characters in all
    assert "license" not in about  # a list is not a licence: not stated, never its repr
    check_card({"training_data": {k: v for k, v in about.items()}})  # what train stores passes the card's checks


# ------------------------------------------------------------------------------- schema 1, configure, ensemble
def test_a_schema_1_bundle_loads_with_the_default_card_and_predicts_unchanged(trained: Path, tmp_path: Path) -> None:
    from MedAnalysisLib.inference.predict import predict
    from MedAnalysisLib.volume import Volume

    current = trained
    old = tmp_path / "old"
    shutil.copytree(current, old)
    data = json.loads((old / "bundle.json").read_text())
    del data["card"]
    data["schema_version"] = 1
    (old / "bundle.json").write_text(json.dumps(data))
    loaded = load_bundle(old)
    assert loaded.config.card == check_card({}) and loaded.config.card["clinical_use"] == "not for clinical use"
    image, _ = cube_volume((12, 14, 16), np.random.default_rng(3))
    volume = Volume(image, spacing=(1.5, 1.5, 1.5))
    old_result, new_result = (predict(bundle, volume, return_probabilities=True) for bundle in (loaded, current))
    np.testing.assert_array_equal(old_result.label.array, new_result.label.array)
    np.testing.assert_array_equal(old_result.probabilities.array, new_result.probabilities.array)
    assert float(np.ptp(new_result.probabilities.array)) > 0  # a real output, not a constant both sides share


def test_configure_adds_card_fields_and_an_evaluation_weights_byte_for_byte(
        trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from MedAnalysisLib.evaluation.report import EvaluationOptions, evaluate_bundle

    source = trained
    before = _snapshot(source)
    msd = write_cube_msd(tmp_path / "held-out", n=4, seed=11)
    evaluate_bundle(source, msd, tmp_path / "eval", EvaluationOptions(figures=False, bootstrap=200))
    summary = json.loads((tmp_path / "eval" / "summary.json").read_text())
    # A metric without a value (a label absent from every case gives no HD95) is left out, and named.
    summary["headline_ci"]["hd95_mm_absent"] = {"mean": None, "ci_low": None, "ci_high": None, "n": 0}
    (tmp_path / "eval" / "summary.json").write_text(json.dumps(summary))
    card_file = tmp_path / "card.json"
    card_file.write_text(json.dumps({"intended_use": "finding cubes", "limitations": ["cubes only"]}))
    new = tmp_path / "new"
    assert main(["configure", str(source), "--out", str(new), "--card", str(card_file), "--evaluation",
                 str(tmp_path / "eval" / "summary.json"), "--model-version", "1.1.0"]) == 0
    assert (new / "model.weights.h5").read_bytes() == (source / "model.weights.h5").read_bytes()
    assert _snapshot(source) == before
    old_card, card = read_bundle_config(source).card, read_bundle_config(new).card
    assert card["intended_use"] == "finding cubes" and card["limitations"] == ["cubes only"]
    assert card["version"] == "1.1.0" and card["clinical_use"] == "not for clinical use"
    assert card["changelog"][:-1] == old_card["changelog"]
    assert card["changelog"][-1]["version"] == "1.1.0"
    assert "evaluation from a medanalysis evaluate summary" in card["changelog"][-1]["changes"]
    assert "intended_use, limitations, version" in card["changelog"][-1]["changes"]
    evaluation = card["evaluation"]
    assert evaluation["n_cases"] == summary["cases"] == 4
    found = {m["name"]: m for m in evaluation["metrics"]}
    valued = {name: stats for name, stats in summary["headline_ci"].items() if stats["mean"] is not None}
    assert set(found) == set(valued) and "dice_cube" in found
    for name, stats in valued.items():
        assert (found[name]["value"], found[name]["ci_low"], found[name]["ci_high"], found[name]["n"]) == \
            (stats["mean"], stats["ci_low"], stats["ci_high"], stats["n"])
        assert found[name]["level"] == (0.95 if stats["ci_low"] is not None else None)
        assert math.isfinite(found[name]["value"])
    assert "200 resamples" in evaluation["data"] and "hd95_mm_absent" in evaluation["data"].split("left out")[1]
    # The summary of another bundle (another weights hash) is refused: exit 2, one line, nothing written.
    summary["bundle"]["weights_sha256"] = "f" * 64
    other = tmp_path / "other-summary.json"
    other.write_text(json.dumps(summary))
    capsys.readouterr()
    assert main(["configure", str(source), "--out", str(tmp_path / "refused"), "--evaluation", str(other)]) == 2
    err = capsys.readouterr().err
    assert "expected the summary of this bundle (weights sha256" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "refused").exists() and _snapshot(source) == before


HOSTILE_FILES: dict[str, tuple[bytes, str]] = {
    "unknown field": (b'{"licence": "MIT"}', "got unknown ['licence']"),
    "NaN": (b'{"evaluation": {"metrics": [{"name": "d", "value": NaN}]}}', "does not parse as standard JSON"),
    "deep nesting": (b'{"authors": ' + b"[" * 40 + b"]" * 40 + b"}", "nested deeper than 32 levels"),
    "10 MB text": (b'{"citation": "' + b"c" * 10 * 1024**2 + b'"}', "card.citation of at most 1000 characters"),
    "not an object": (b'["MIT"]', "expected a JSON object in the --card file, got list"),
    "escape sequence": (b'{"license": "MIT\\u001b[2J"}', "printable text on one line"),
    "file of 17 MiB": (b" " * (17 * 1024**2) + b"{}", "of at most 16 MiB"),
}


def test_consistent_edge_values_are_kept() -> None:
    """What the new checks must not refuse: a value on an interval's end, a leap day, entries of one day, the
    same metric name in training data and evaluation, an interval a rounding step from its mean."""
    card = check_card({"changelog": [{"version": "1", "date": "2024-02-29", "changes": "a"},
                                     {"version": "", "date": "2024-02-29", "changes": "b"}],
                       "evaluation": {"metrics": [{"name": "dice", "value": 0.8, "ci_low": 0.8, "ci_high": 0.95,
                                                   "level": 0.95},
                                                  {"name": "hd95", "value": 0.1 + 0.2, "ci_low": 0.3,
                                                   "ci_high": 0.3, "level": 0.95}]}})
    assert [e["date"] for e in card["changelog"]] == ["2024-02-29"] * 2
    assert [m["name"] for m in card["evaluation"]["metrics"]] == ["dice", "hd95"]
    # unbounded metrics may exceed 1, a fraction may sit on 0 or 1, and n may equal the cases
    kept = check_card({"evaluation": {"n_cases": 3, "metrics": [{"name": "hd95_mm", "value": 12.5, "n": 3},
                                                                {"name": "dice_liver", "value": 1.0, "n": 3},
                                                                {"name": "loss", "value": -2.0}]}})
    assert [m["value"] for m in kept["evaluation"]["metrics"]] == [12.5, 1.0, -2.0]


def test_a_blank_text_reads_as_not_stated() -> None:
    """A licence of spaces shows as "not stated", as an empty one does, never as a blank line."""
    sections = dict(card_sections({**check_card({}), "license": "   "}))  # as a hand-edited bundle.json holds it
    assert ("License", NOT_STATED) in sections["Model"]


@pytest.mark.parametrize("author", ["", "   "], ids=["empty", "spaces"])
def test_an_empty_author_option_ends_in_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                               author: str) -> None:
    folder = _bundle_json(tmp_path / "b", json.loads(_config().to_json()))
    before = _snapshot(folder)
    capsys.readouterr()
    assert main(["configure", str(folder), "--out", str(tmp_path / "new"), "--author", "A. Author",
                 "--author", author]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: expected card.authors[1] to be a non-empty text, got ") and len(err.splitlines()) == 1
    assert not (tmp_path / "new").exists() and _snapshot(folder) == before


@pytest.mark.parametrize("name", sorted(HOSTILE_FILES), ids=lambda name: name.replace(" ", "-"))
def test_hostile_card_files_end_in_exit_2_before_any_work(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                           name: str) -> None:
    text, message = HOSTILE_FILES[name]
    folder = _bundle_json(tmp_path / "b", json.loads(_config().to_json()))
    card_file = tmp_path / "card.json"
    card_file.write_bytes(text)
    capsys.readouterr()
    assert main(["configure", str(folder), "--out", str(tmp_path / "new"), "--card", str(card_file)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: expected") and message in err and len(err.strip().splitlines()) == 1
    assert "\x1b" not in err and not (tmp_path / "new").exists()


def test_an_ensemble_card_keeps_what_its_members_agree_on(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    members = []
    for seed, n_cases in ((0, 10), (1, 12)):
        path = train_classifier_bundle(tmp_path / f"m{seed}", "cnn3d", seed=seed)
        config = read_bundle_config(path)
        data = {**config.card["training_data"], "name": "Boxes", "license": "CC0", "n_cases": n_cases}
        (path / "bundle.json").write_text(config.replace(card={**config.card, "training_data": data}).to_json())
        members.append(path)
    ensemble = make_ensemble(members, tmp_path / "ensemble", card={"authors": ["E. Author"]})
    card = read_bundle_config(ensemble).card
    assert card["training_data"]["name"] == "Boxes" and card["training_data"]["license"] == "CC0"
    assert card["training_data"]["n_cases"] is None  # the members differ: not stated
    assert card["evaluation"] == {"data": "", "n_cases": None, "metrics": []}
    assert card["clinical_use"] == "not for clinical use" and card["authors"] == ["E. Author"]
    assert card["version"] == "1.0.0" and len(card["changelog"]) == 1
    # An ensemble.json of schema 1 (no card) still reads, with the default card.
    data = json.loads((ensemble / "ensemble.json").read_text())
    del data["card"]
    data["schema_version"] = 1
    (ensemble / "ensemble.json").write_text(json.dumps(data))
    assert read_bundle_config(ensemble).card == check_card({})
    # The command line's card options reach the ensemble, and a bad one is refused before any work.
    assert main(["ensemble", *map(str, members), "--out", str(tmp_path / "e2"), "--license", "MIT",
                 "--intended-use", "box finding"]) == 0
    card = read_bundle_config(tmp_path / "e2").card
    assert (card["license"], card["intended_use"]) == ("MIT", "box finding")
    capsys.readouterr()
    assert main(["ensemble", *map(str, members), "--out", str(tmp_path / "e3"), "--license", "MIT\u202e"]) == 2
    assert "printable text on one line" in capsys.readouterr().err and not (tmp_path / "e3").exists()
