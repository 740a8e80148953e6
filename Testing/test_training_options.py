"""TrainingOptions: one validated object for the command line, the worker and Python; hostile values by class."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import pytest
from helpers_models import tiny_plan

from MedAnalysisLib.cli import build_parser
from MedAnalysisLib.cli.train import training_options
from MedAnalysisLib.errors import InputError
from MedAnalysisLib.labels import LabelInfo
from MedAnalysisLib.preprocessing.augment import AugmentConfig
from MedAnalysisLib.training import TrainingOptions
from MedAnalysisLib.training.options import LOSS_NAMES


def _options(**changes: object) -> TrainingOptions:
    return TrainingOptions.from_mapping({"family": "unet3d", "out": "model.zip", **changes})


def test_defaults_are_filled_in_and_normalised() -> None:
    options = _options(labels=["background", "liver"], augment={"p_gamma": 0}, hparams=None)
    assert options.task == "segmentation" and options.out == Path("model.zip")
    assert options.epochs == 50 and options.learning_rate == 1e-3 and options.hparams == {}
    assert options.augment == dataclasses.replace(AugmentConfig(), p_gamma=0.0)
    assert options.labels is not None and options.labels[1] == LabelInfo(1, "liver", (216, 101, 79))
    assert _options(augment=False).augment is None and _options(augment=True).augment == AugmentConfig()
    assert _options(labels={0: "bg", 2: "tumour"}).labels[1].value == 2  # type: ignore[index]
    assert _options(family="cnn_rnn").task == "classification"
    assert _options(learning_rate=None).learning_rate == 1e-3


@pytest.mark.parametrize(("changes", "message"), [
    ({"task": "classification"}, "expected a segmentation task for model 'unet3d', got 'classification'"),
    ({"family": "unet"}, "expected a model family among"),
    ({"out": ""}, "expected out to be a bundle folder or .zip path"),
    ({"out": "model.keras"}, "expected a folder or .zip bundle path as out, got 'model.keras'"),
    ({"epochs": 0}, "expected epochs to be an integer >= 1, got 0"),
    ({"epochs": 2.5}, "expected epochs to be an integer >= 1, got 2.5"),
    ({"epochs": True}, "expected epochs to be an integer >= 1, got True"),
    ({"val_fraction": 1.0}, r"expected val_fraction in \[0, 1\), got 1.0"),
    ({"folds": 1}, "expected folds to be an integer >= 2 or None, got 1"),
    ({"folds": 5, "fold": 5}, r"expected fold in \[0, 5\), got 5"),
    ({"fold": 2}, "expected fold 0 without folds"),
    ({"seed": -1}, "expected seed to be an integer >= 0, got -1"),
    ({"batch_size": 0}, "expected batch_size to be an integer >= 1 or None, got 0"),
    ({"learning_rate": 0}, "expected learning_rate > 0, got 0"),
    ({"loss": "dice"}, "expected loss among"),
    ({"monitor": "loss"}, "expected a validation metric to monitor"),
    ({"augment": {"p_gama": 0}}, r"unknown \['p_gama'\]"),
    ({"augment": "strong"}, "expected augment as True, False, a mapping"),
    ({"mixed_precision": "yes"}, "expected mixed_precision among"),
    ({"strategy": "tpu"}, "expected strategy among"),
    ({"threads": 0}, "expected threads to be an integer >= 1 or None, got 0"),
    ({"deterministic": "yes"}, "expected deterministic true or false, got 'yes'"),
    ({"hparams": {"filters": float("nan")}}, "expected hparams with plain JSON values"),
    ({"hparams": ["filters"]}, "expected hparams to be a mapping with string keys"),
    ({"labels": [LabelInfo(1, "a"), LabelInfo(1, "b")]}, r"expected each label value once, got \[1, 1\]"),
    ({"labels": [{"value": 1}]}, r"expected a label to have the keys \['name'\]"),
    ({"plan": "plan.json"}, "expected plan to be a Plan, its dict, or None, got str"),
    ({"bogus": 1}, r"expected training options among \[.*\], got unknown \['bogus'\]"),
])
def test_bad_options_are_refused_on_construction_naming_what_was_expected(changes: dict, message: str) -> None:
    with pytest.raises(InputError, match=message):
        _options(**changes)


def test_a_mapping_must_name_the_family_and_the_output() -> None:
    with pytest.raises(InputError, match=r"expected training options to name \['out'\]"):
        TrainingOptions.from_mapping({"family": "unet3d"})
    with pytest.raises(InputError, match="expected training options as a mapping, got list"):
        TrainingOptions.from_mapping(["family"])  # type: ignore[arg-type]


def test_options_are_frozen_round_trip_through_plain_json_and_replace_validates() -> None:
    options = _options(plan=tiny_plan(), labels=["background", "cube"], folds=3, fold=2, threads=2,
                       deterministic=True, hparams={"filters": [4, 8]}, plan_overrides={"patch_size": "8,8,8"})
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.epochs = 3  # type: ignore[misc]
    assert TrainingOptions.from_mapping(options.to_dict()) == options
    assert options.replace(epochs=3).epochs == 3 and options.epochs == 50
    with pytest.raises(InputError, match="expected epochs"):
        options.replace(epochs=-3)
    with pytest.raises(InputError, match=r"got unknown \['epoch'\]"):
        options.replace(epoch=3)
    assert TrainingOptions.build(options, seed=4).seed == 4
    assert TrainingOptions.build(None, family="cnn3d", out="b") == TrainingOptions(family="cnn3d", out=Path("b"))


def test_every_loss_name_is_one_the_loss_factory_knows() -> None:
    from MedAnalysisLib.losses import get_loss

    for name in LOSS_NAMES:
        assert get_loss(name, n_classes=3) is not None


def _parse(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(["train", "data", "--task", "segmentation", "--model", "unet3d", "--out",
                                      "model.zip", *argv])


def test_the_command_line_builds_the_same_options_as_python(tmp_path: Path) -> None:
    labels_file = tmp_path / "labels.json"
    labels_file.write_text('[{"value": 0, "name": "background"}, {"value": 1, "name": "liver"}]')
    plan_file = tmp_path / "plan.json"
    plan_file.write_text(tiny_plan().to_json())
    args = _parse("--epochs", "3", "--plan", str(plan_file), "--set", "patch_size=8,8,8", "--hparam", "filters=[4, 8]",
                  "--augment", "p_gamma=0", "--val-fraction", "0.25", "--folds", "4", "--fold", "1", "--seed", "7",
                  "--batch-size", "2", "--steps-per-epoch", "5", "--learning-rate", "0.01", "--monitor", "val_loss",
                  "--patience", "3", "--workers", "1", "--mixed-precision", "off", "--tensorboard", str(tmp_path),
                  "--no-resume", "--name", "liver", "--labels", str(labels_file), "--threads", "2", "--deterministic",
                  "--author", "A. Author")
    from MedAnalysisLib.terminology import read_labels_file

    expected = TrainingOptions(
        task="segmentation", family="unet3d", out=Path("model.zip"), epochs=3, plan=tiny_plan(),
        plan_overrides={"patch_size": "8,8,8"}, hparams={"filters": [4, 8]}, augment={"p_gamma": 0},
        val_fraction=0.25, folds=4, fold=1, seed=7, batch_size=2, steps_per_epoch=5, learning_rate=0.01,
        monitor="val_loss", patience=3, workers=1, mixed_precision="off", tensorboard_dir=str(tmp_path), resume=False,
        name="liver", labels=read_labels_file(labels_file), threads=2, deterministic=True,
        card={"authors": ["A. Author"]})
    assert training_options(args) == expected
    # Every field the command line can set is set above (a new option must be wired into training_options).
    defaults = training_options(_parse())
    assert {f.name for f in dataclasses.fields(TrainingOptions)
            if getattr(expected, f.name) == getattr(defaults, f.name)} == {"task", "family", "out", "val_batches",
                                                                           "loss", "strategy"}
    assert defaults == TrainingOptions(task="segmentation", family="unet3d", out=Path("model.zip"))
    assert training_options(_parse("--no-augment")).augment is None


def test_the_command_line_refuses_contradictions_before_tensorflow(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="either --no-augment or --augment"):
        training_options(_parse("--no-augment", "--augment", "p_gamma=0"))
    with pytest.raises(InputError, match="expected threads to be an integer >= 1"):
        training_options(_parse("--threads", "0"))
    with pytest.raises(InputError, match="expected a readable plan JSON file"):
        training_options(_parse("--plan", str(tmp_path / "missing.json")))


def test_building_options_imports_no_tensorflow() -> None:
    import subprocess

    code = ("import sys; from MedAnalysisLib.training import TrainingOptions; "
            "TrainingOptions(family='unet3d', out='m', labels=['a', 'b'], augment={'p_gamma': 0}); "
            "print('tensorflow' in sys.modules, 'keras' in sys.modules)")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         cwd=Path(__file__).resolve().parents[1])
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["False", "False"]


def test_training_on_arrays_refuses_options_about_scans(tmp_path: Path) -> None:
    import numpy as np

    from MedAnalysisLib.training import train_on_arrays

    x, y = np.zeros((2, 16, 16, 16, 1), np.float32), np.zeros((2, 16, 16, 16), np.int32)
    with pytest.raises(InputError, match=r"expected no \['folds', 'fold', 'steps_per_epoch'\] when training on "
                                         r"prepared arrays"):
        train_on_arrays(x, y, family="unet3d", out=tmp_path / "b", plan=tiny_plan(), labels=["a", "b"], folds=3,
                        fold=1, steps_per_epoch=4)
    with pytest.raises(InputError, match="expected the plan the arrays were prepared with and the labels"):
        train_on_arrays(x, y, family="unet3d", out=tmp_path / "b", labels=["a", "b"])
