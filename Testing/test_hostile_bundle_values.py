"""Values read from a bundle that would break arithmetic: label values that wrap, labels the plan does not know,
hyper-parameters that ask for huge or impossible models, overlaps that mean millions of windows, NaN weights and
model outputs. Each is refused with a typed "expected ..., got ..." error before any model is built or run.

Every hostile bundle is built inside the test from a tiny valid one (a 3D U-Net with 4-8 filters on 16^3 patches).
"""

from __future__ import annotations

import copy
import io
import json
import math
from contextlib import redirect_stdout
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from MedAnalysisLib.bundles import CONFIG_FILE, WEIGHTS_FILE, BundleConfig, LabelInfo, load_bundle, read_bundle_config
from MedAnalysisLib.bundles.ensemble import EnsembleConfig
from MedAnalysisLib.errors import BundleError, InputError, MemoryBudgetError
from MedAnalysisLib.inference.sliding_window import MAX_WINDOW_PASSES, sliding_window_predict, tta_flip_sets

HPARAMS = {"n_classes": 2, "in_channels": 1, "patch_size": [16, 16, 16], "filters": [4, 8], "norm": "batch"}


def _config(labels: tuple[tuple[int, str], ...] = ((0, "background"), (1, "organ")), **plan: Any) -> BundleConfig:
    from helpers_inference import make_cube_plan

    values = tuple(value for value, _ in labels)
    return BundleConfig(
        name="tiny", task="segmentation", family="unet3d", hparams=dict(HPARAMS),
        plan=make_cube_plan(label_values=values, **plan),
        labels=tuple(LabelInfo(value, name, (0, 0, 0) if value == 0 else (200, 80, 60)) for value, name in labels),
        input={"channels": [{"name": "image", "modality": "MR"}]},
        weights={"file": WEIGHTS_FILE, "sha256": "0" * 64},
    )


def _document() -> dict[str, Any]:
    return json.loads(_config().to_json())


def _write(folder: Path, document: dict[str, Any]) -> Path:
    folder.mkdir(exist_ok=True)
    (folder / CONFIG_FILE).write_text(json.dumps(document))
    return folder


def _set(document: dict[str, Any], path: tuple[Any, ...], value: Any) -> dict[str, Any]:
    target = document
    for step in path[:-1]:
        target = target[step]
    target[path[-1]] = value
    return document


#: name -> (path in bundle.json, hostile value, the refusal's message)
VALUE_EDITS: dict[str, tuple[tuple[Any, ...], Any, str]] = {
    "label value beyond uint16": (("labels", 1, "value"), 65536, "expected a label value of at most 65535"),
    "label value 2**40": (("labels", 1, "value"), 2**40, "expected a label value of at most 65535"),
    "label unknown to the plan": (("labels", 1, "value"), 5,
                                  r"expected the plan's label values to be the bundle's labels in output order "
                                  r"\[0, 5\], got \[0, 1\]"),
    "plan labels in another order": (("plan", "label_values"), [1, 0], r"in output order \[0, 1\], got \[1, 0\]"),
    "plan labels beyond uint16": (("plan", "label_values"), [0, 70000],
                                  r"distinct plan.label_values in \[0, 65535\], got \[0, 70000\]"),
    "label name with a newline": (("labels", 1, "name"), "organ\nrm -rf",
                                  "expected a label name of at most 128 printable"),
    "label name of a kilobyte": (("labels", 1, "name"), "x" * 1000, "expected a label name of at most 128 printable"),
    "colour as a string": (("labels", 1, "color"), "red", "expected an RGB list for label colour"),
    "colour of four values": (("labels", 1, "color"), [1, 2, 3, 4], "expected an RGB colour of three integers 0-255"),
    "colour as fractions": (("labels", 1, "color"), [0.5, 0.2, 0.1], "expected an RGB colour of three integers"),
    "n_classes beyond the labels": (("hparams", "n_classes"), 3,
                                    r"expected hparams.n_classes to be 2 \(one output per label\), got 3"),
    "n_classes huge": (("hparams", "n_classes"), 10**9, r"expected n_classes to be an integer in \[2, 1024\]"),
    "in_channels beyond the channels": (("hparams", "in_channels"), 2,
                                        r"expected a model taking 1 input channel\(s\), got one taking 2"),
    "plan channels beyond the input": (("plan", "n_channels"), 2, "expected a valid preprocessing plan"),
    "channel name not text": (("input", "channels", 0, "name"), 7, "expected an input channel's name and modality"),
    "filters huge": (("hparams", "filters"), [4, 100000],
                     r"expected filters to be a list of 2 to 6 integers in \[1, 4096\]"),
    "filters negative": (("hparams", "filters"), [4, -8], "expected filters to be a list of 2 to 6 integers"),
    "filters as floats": (("hparams", "filters"), [4.0, 8.5], "expected filters to be a list of 2 to 6 integers"),
    "too many stages for the patch": (("hparams", "filters"), [4, 8, 16, 32], "which allows 3"),
    "n_stages of a billion": (("hparams", "n_stages"), 10**9, r"expected n_stages to be an integer in \[2, 6\]"),
    "width as true": (("hparams", "base_filters"), True, r"expected base_filters to be an integer in \[1, 4096\]"),
    "negative slope beyond 1": (("hparams", "negative_slope"), 1e30, r"expected negative_slope to be a finite number"),
    "unknown hyper-parameter": (("hparams", "kernel_initializer"), "os.system",
                                r"expected hyper-parameters that build a 'unet3d' model; .* got unknown"),
    "norm unknown": (("hparams", "norm"), "weird", "expected norm to be one of"),
    "deep supervision deeper than the net": (("hparams", "deep_supervision_levels"), 7,
                                             r"expected deep_supervision_levels to be an integer in \[0, 6\]"),
    "patch not divisible by the stride": (("plan", "patch_size"), [16, 16, 17],
                                          r"divisible by the U-Net's total stride \[2, 2, 2\]"),
    "patch of a billion voxels": (("plan", "patch_size"), [1024, 1024, 1024], "expected a plan.patch_size of at most"),
    "patch axis beyond bounds": (("plan", "patch_size"), [16, 16, 4096],
                                 r"expected plan.patch_size within \[1, 1024\]"),
    "batch of a million": (("plan", "batch_size"), 10**6, r"expected plan.batch_size within \[1, 256\]"),
    "sequence of a million": (("plan", "sequence_length"), 10**6, r"expected plan.sequence_length within"),
    "slices of a gigapixel": (("plan", "slice_shape"), [40000, 40000], r"expected plan.slice_shape within"),
    "spacing of a micrometre": (("plan", "target_spacing"), [1e-6, 1.5, 1.5], r"expected plan.target_spacing within"),
    "overlap near 1": (("inference", "overlap"), 0.999, r"expected inference.overlap in \[0, 0.9\], got 0.999"),
    "overlap negative": (("inference", "overlap"), -0.5, r"expected inference.overlap in \[0, 0.9\]"),
    "overlap as true": (("inference", "overlap"), True, r"expected inference.overlap in \[0, 0.9\], got True"),
    "family of the other task": (("family",), "cnn3d", "expected a segmentation model family, got 'cnn3d'"),
    "classification plan for segmentation": (("plan", "task"), "classification",
                                             "expected a segmentation preprocessing plan"),
}


@pytest.mark.parametrize("edit", sorted(VALUE_EDITS), ids=lambda name: name.replace(" ", "-"))
def test_bundle_values_are_checked_against_bounds_and_each_other(tmp_path: Path, edit: str) -> None:
    path, value, message = VALUE_EDITS[edit]
    document = _set(_document(), path, value)
    if edit == "plan channels beyond the input":
        document["plan"]["channel_names"] = ["a", "b"]
        message = r"expected the plan to prepare 1 channel\(s\) as input.channels lists, got 2"
    folder = _write(tmp_path / "bundle", document)
    with pytest.raises(BundleError, match=message) as raised:
        read_bundle_config(folder)
    assert "expected" in str(raised.value) and len(str(raised.value)) < 600


def test_the_base_document_is_accepted(tmp_path: Path) -> None:
    """Every refusal above is caused by its one hostile value."""
    assert read_bundle_config(_write(tmp_path / "bundle", _document())).n_classes == 2


@pytest.mark.parametrize(("path", "value"), [(("hparams", "negative_slope"), math.nan),
                                             (("hparams", "negative_slope"), math.inf),
                                             (("inference", "overlap"), math.nan),
                                             (("plan", "target_spacing"), [math.nan, 1.0, 1.0]),
                                             (("labels", 1, "color"), [math.inf, 0, 0])])
def test_non_finite_values_from_python_are_refused(path: tuple[Any, ...], value: Any) -> None:
    """NaN and infinity cannot pass through bundle.json (the parser refuses them), but can through the Python API."""
    with pytest.raises(BundleError, match="expected"):
        BundleConfig.from_dict(_set(_document(), path, value))


def test_more_labels_than_any_model_has_are_refused() -> None:
    labels = tuple((value, f"label {value}") for value in range(1025))
    with pytest.raises(BundleError, match="expected at most 1024 labels, got 1025"):
        _config(labels)


def test_a_model_of_billions_of_parameters_is_refused_before_it_is_built(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    import MedAnalysisLib.models as models

    document = _document()
    document["hparams"]["filters"] = [4096] * 6
    document["hparams"]["patch_size"] = [128, 128, 128]
    document["plan"]["patch_size"] = [128, 128, 128]
    folder = _write(tmp_path / "bundle", document)
    (folder / WEIGHTS_FILE).write_bytes(b"\x89HDF\r\n\x1a\n")
    monkeypatch.setattr(models, "build_model", lambda *a, **k: pytest.fail("a model was built"))
    with pytest.raises(BundleError, match=r"expected a model of at most 250,000,000 parameters, got .* about "):
        load_bundle(folder)
    with pytest.raises(ValueError, match="expected a model of at most 250,000,000 parameters"):
        models.build_training_model("unet3d", **document["hparams"])


def test_ensemble_defaults_are_checked_like_a_bundles() -> None:
    members = ({"folder": "member-0", "weights_sha256": "0" * 64}, {"folder": "member-1", "weights_sha256": "1" * 64})
    with pytest.raises(BundleError, match=r"expected inference.overlap in \[0, 0.9\], got 0.99"):
        EnsembleConfig(name="e", members=members, inference={"overlap": 0.99})
    with pytest.raises(BundleError, match="expected inference.tta true or false, got 1"):
        EnsembleConfig(name="e", members=members, inference={"tta": 1})


def test_the_command_line_refuses_a_hostile_value_with_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from MedAnalysisLib.cli import main

    folder = _write(tmp_path / "bundle", _set(_document(), ("labels", 1, "value"), 65536))
    with redirect_stdout(io.StringIO()):
        code = main(["info", str(folder), "--progress", "none"])
    error = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(error) == 1 and error[0].startswith("error: ") and "expected a label value of at most 65535" in error[0]


@pytest.mark.parametrize("value", ["65536", "-1", "99999999999999999999"])
def test_a_label_map_pairing_with_a_value_no_label_map_holds_is_refused(value: str) -> None:
    from MedAnalysisLib.evaluation.labels import match_labels

    with pytest.raises(InputError, match=rf"expected a label value in \[0, 65535\] on the right of --label-map "
                                         rf"organ=..., got {value}"):
        match_labels({0: "background", 1: "organ"}, {}, {"organ": value})


# ------------------------------------------------------------------------------------------ sliding window
def test_an_overlap_near_1_is_refused_before_the_first_window() -> None:
    calls: list[int] = []

    def model(batch: np.ndarray) -> np.ndarray:
        calls.append(len(batch))
        return np.ones((*batch.shape[:4], 2), np.float32) / 2

    image = np.zeros((64, 64, 64), np.float32)
    with pytest.raises(InputError, match=rf"expected at most {MAX_WINDOW_PASSES} window passes .* got 185193"):
        sliding_window_predict(model, image, (8, 8, 8), n_classes=2, overlap=0.999)
    with pytest.raises(InputError, match=r"got 24389 windows x 8 = 195112"):  # TTA multiplies the work
        sliding_window_predict(model, image, (8, 8, 8), n_classes=2, overlap=0.75, tta_flips=True)
    assert calls == []
    assert tta_flip_sets([(0,), (0,), (1, 0), (0, 1)]) == [(), (0,), (0, 1)]


def test_a_probability_volume_beyond_the_machines_memory_is_refused_before_allocating() -> None:
    def model(batch: np.ndarray) -> np.ndarray:  # pragma: no cover - never called
        raise AssertionError("the model ran")

    with pytest.raises(MemoryBudgetError, match="expected sliding-window inference to fit"):
        sliding_window_predict(model, np.zeros((8, 8, 8), np.float32), (8, 8, 8), n_classes=10**9)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_model_outputs_are_refused_not_turned_into_background(bad: float) -> None:
    def model(batch: np.ndarray) -> np.ndarray:
        out = np.full((*batch.shape[:4], 2), 0.5, np.float32)
        out[0, 1, 2, 3, 1] = bad
        return out

    with pytest.raises(BundleError, match=r"expected finite probabilities from the model, got 1 NaN/Inf value"):
        sliding_window_predict(model, np.zeros((8, 8, 8), np.float32), (8, 8, 8), n_classes=2, output="labels")


# ------------------------------------------------------------------------- weights and models (TensorFlow)
def _saved(tmp_path: Path, config: BundleConfig, edit: Any = None) -> Path:
    from MedAnalysisLib.bundles import save_bundle
    from MedAnalysisLib.models import build_model

    model = build_model("unet3d", **HPARAMS)
    if edit is not None:
        edit(model)
    return save_bundle(tmp_path / "bundle", model, config)


def _fill(layer: str, weight: str, value: float) -> Any:
    def edit(model: Any) -> None:
        variable = getattr(model.get_layer(layer), weight)
        variable.assign(np.full(tuple(variable.shape), value, np.float32))

    return edit


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_weights_are_refused_naming_the_layer(tmp_path: Path, bad: float) -> None:
    folder = _saved(tmp_path, _config(), _fill("enc1_b_conv", "kernel", bad))
    with pytest.raises(BundleError,
                       match=r"expected finite weights, got 1728 NaN/Inf value\(s\) in 'enc1_b_conv/kernel'"):
        load_bundle(folder)


def _volume(shape: tuple[int, int, int] = (16, 16, 16)) -> Any:
    from MedAnalysisLib.volume import Volume

    return Volume(np.random.default_rng(0).normal(0, 1, shape).astype(np.float32), spacing=(1.5, 1.5, 1.5))


def test_weights_that_overflow_give_an_error_not_an_all_background_map(tmp_path: Path) -> None:
    from MedAnalysisLib.inference.predict import predict

    folder = _saved(tmp_path, _config(), _fill("enc0_a_conv", "kernel", 3e38))
    loaded = load_bundle(folder)  # finite weights: accepted
    with pytest.raises(BundleError, match="expected finite probabilities from the model, got .* NaN/Inf"):
        predict(loaded, _volume())


def test_a_label_value_beyond_uint8_is_written_as_it_is_and_counted(tmp_path: Path) -> None:
    from MedAnalysisLib.inference.predict import predict

    config = _config(((0, "background"), (300, "lesion")))
    def lesion_everywhere(model: Any) -> None:
        model.get_layer("seg0_logits").bias.assign(np.array([0.0, 50.0], np.float32))

    result = predict(load_bundle(_saved(tmp_path, config, lesion_everywhere)), _volume())
    assert result.label.array.dtype == np.uint16
    assert np.unique(result.label.array).tolist() == [300]
    assert [(row["value"], row["name"], row["voxels"]) for row in result.table] == [(300, "lesion", 16**3)]


def test_a_model_beyond_the_machines_memory_is_refused_before_it_is_built(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    import MedAnalysisLib.io.validate as validate
    import MedAnalysisLib.models as models

    folder = _saved(tmp_path, _config())
    monkeypatch.setattr(validate, "physical_memory_bytes", lambda: 64 * 1024)
    monkeypatch.setattr(models, "build_model", lambda *a, **k: pytest.fail("a model was built"))
    with pytest.raises(MemoryBudgetError, match=r"expected the model to fit this machine's 64.0 KiB of memory, got an "
                                                r"estimate of .* \([0-9,]+ parameters and"):
        load_bundle(folder)


def test_a_small_weights_file_claiming_a_large_model_is_refused_before_it_is_built(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import MedAnalysisLib.models as models

    folder = _saved(tmp_path, _config())
    document = json.loads((folder / CONFIG_FILE).read_text())  # the weights and their sha256 stay as they are
    document["hparams"]["filters"] = [4, 512]
    _write(folder, document)
    monkeypatch.setattr(models, "build_model", lambda *a, **k: pytest.fail("a model was built"))
    with pytest.raises(BundleError, match=r"expected a weights file of at least [0-9]+ bytes for a model of about "
                                          r"[0-9,]+ parameters, got [0-9]+ bytes"):
        load_bundle(folder)


ESTIMATED = [
    ("unet3d", {"n_classes": 3, "in_channels": 2, "patch_size": [16, 32, 32], "base_filters": 8, "norm": "batch",
                "residual": True, "deep_supervision": True}),
    ("unet2d", {"n_classes": 4, "patch_size": [64, 64], "base_filters": 8, "norm": "none"}),
    ("cnn3d", {"n_classes": 3, "filters": [4, 8, 16]}),
    ("slice_cnn", {"preset": "basic", "input_shape": [32, 40]}),
    ("slice_cnn", {"n_classes": 3, "preset": "residual", "base_filters": 4, "n_blocks": 3, "pooling": "avgmax"}),
    ("cnn_rnn", {"n_classes": 3, "encoder_filters": [4, 8], "rnn": "lstm", "rnn_units": 8, "attention_units": 4}),
]


def test_the_parameter_estimate_bounds_the_built_model_closely() -> None:
    """The size check counts what would be built: never less than the real count, at most a few percent more."""
    from MedAnalysisLib.models import build_model
    from MedAnalysisLib.models.hparams import estimate_parameters

    for family, hparams in ESTIMATED:
        actual = build_model(family, **copy.deepcopy(hparams)).count_params()
        estimate = estimate_parameters(family, hparams)
        assert estimate is not None and actual <= estimate <= 1.05 * actual, (family, actual, estimate)
