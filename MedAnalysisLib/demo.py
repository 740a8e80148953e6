"""The MedAnalysis demo: the whole pipeline on built-in phantom scans (``medanalysis demo``).

The demo is a script over the library's public functions, nothing more: it writes seeded phantoms
(:mod:`MedAnalysisLib.phantom`) as a Medical Segmentation Decathlon folder, measures a fingerprint and derives a
preprocessing plan, trains a small 3D U-Net, evaluates it on held-out phantoms, segments one scan, trains a CNN+RNN
slice-sequence classifier ("does this slice / this scan contain a lesion?"), evaluates and runs it, and writes the
results a user would look at:

.. code-block:: text

    OUT/
      summary.txt, summary.json          Dice, AUC, timings and where every file is
      data/train/, data/test/            the phantom datasets: MSD layout (dataset.json, imagesTr/, labelsTr/) plus
                                         lesion masks and classification.csv (see phantom.write_phantom_dataset)
      data/dicom/phantom_000/            the segmented held-out scan as a DICOM MR series
      plan.json, fingerprint.json        the preprocessing plan and the measurements it came from
      bundles/segmentation/              the trained 3D U-Net bundle (bundle.json, model.weights.h5, training log)
      bundles/classification/            the trained CNN+RNN bundle
      evaluation/segmentation/           per_case.csv, summary.json (bootstrap intervals), montage.png, curves
      evaluation/classification/         the same for the classifier, with roc.png
      prediction/                        phantom_000_label.nii.gz, phantom_000.seg.nrrd (Slicer), phantom_000_seg.dcm
                                         (DICOM SEG), phantom_000_table.csv (label volumes), phantom_000.json
                                         (provenance), phantom_000_lesion_slices.csv and _lesion_table.csv
                                         (per-slice and whole-scan lesion probabilities)
      figures/                           overlay.png, training_curves.png, slice_probabilities.png

The full run takes about six minutes on two CPU cores and reaches a held-out Dice above 0.9;
:meth:`DemoConfig.quick` is a smoke test of about a minute with low accuracy (held-out organ Dice about 0.7; the test
of the quick run checks that the model beats calling the whole phantom organ).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from MedAnalysisLib.io.atomic import write_text_atomic
from MedAnalysisLib.phantom import DEFAULT_SHAPE, DEFAULT_SPACING, MANIFEST_NAME
from MedAnalysisLib.progress import Reporter, StopFlag, format_duration

#: Seed offset of the held-out phantoms, so they never coincide with training phantoms of any demo seed below it.
TEST_SEED_OFFSET = 1_000_003


@dataclass(frozen=True)
class DemoConfig:
    """What the demo generates and how long it trains.

    Attributes:
        n_train: Phantom scans to train on (a fifth of them is the validation split inside training).
        n_test: Held-out phantom scans for evaluation (never seen in training).
        shape: Phantom grid (k, j, i) in voxels.
        spacing: Phantom voxel size (i, j, k) in mm.
        seed: Seed of the phantoms, the splits and the model initialisation.
        segmentation_epochs: Training epochs of the 3D U-Net.
        classification_epochs: Training epochs of the CNN+RNN classifier.
        segmentation_plan: Plan fields forced for the U-Net (``Plan.replace`` keys), e.g. a patch that covers
            the whole phantom.
        segmentation_hparams: Hyper-parameters of the ``unet3d`` family.
        classification_plan: Plan fields forced for the classifier, e.g. the slice size.
        classification_hparams: Hyper-parameters of the ``cnn_rnn`` family.
        segmentation_training: Extra keyword arguments of :func:`MedAnalysisLib.training.train` for the U-Net
            (steps per epoch, learning rate, ...).
        classification_training: The same for the classifier.
        bootstrap: Bootstrap resamples of the evaluation's confidence intervals.
        is_quick: Marks the smoke-test configuration (shown in the summary).
    """

    n_train: int = 32
    n_test: int = 8
    shape: tuple[int, int, int] = DEFAULT_SHAPE
    spacing: tuple[float, float, float] = DEFAULT_SPACING
    seed: int = 0
    segmentation_epochs: int = 16
    classification_epochs: int = 24
    segmentation_plan: dict[str, Any] = field(default_factory=dict)
    segmentation_hparams: dict[str, Any] = field(default_factory=lambda: {"base_filters": 8})
    classification_plan: dict[str, Any] = field(default_factory=lambda: {"slice_shape": "32,32"})
    classification_hparams: dict[str, Any] = field(
        # "Does this scan hold a lesion?" is "does one of its slices?": the multiple-instance scan head learns it from
        # 32 scans, where attention pooling stayed near chance (scan probabilities 0.59-0.62 for every held-out scan).
        default_factory=lambda: {"encoder_filters": [8, 16, 32], "rnn_units": 32, "scan_head": "slice_max"}
    )
    segmentation_training: dict[str, Any] = field(
        default_factory=lambda: {"steps_per_epoch": 20, "learning_rate": 3e-3}
    )
    classification_training: dict[str, Any] = field(
        default_factory=lambda: {"steps_per_epoch": 20, "learning_rate": 2e-3}
    )
    bootstrap: int = 500
    is_quick: bool = False

    def __post_init__(self) -> None:
        if self.n_train < 2 or self.n_test < 2:
            raise ValueError(f"expected at least 2 training and 2 test phantoms, got {self.n_train} and {self.n_test}")
        if self.segmentation_epochs < 1 or self.classification_epochs < 1:
            raise ValueError(
                f"expected at least one epoch per model, got {self.segmentation_epochs} and {self.classification_epochs}"
            )

    @classmethod
    def full(cls) -> DemoConfig:
        """The configuration of ``medanalysis demo``: about six minutes on two CPU cores, Dice >= 0.9."""
        return cls()

    @classmethod
    def quick(cls) -> DemoConfig:
        """The configuration of ``medanalysis demo --quick``: about a minute, for smoke tests (low accuracy)."""
        return cls(
            n_train=6,
            n_test=2,
            shape=(24, 32, 32),
            spacing=(2.0, 2.0, 2.5),
            # Enough U-Net steps that the organ is found (held-out organ Dice about 0.6-0.8, against 0.2 for calling
            # the whole phantom organ), so that the smoke test can tell a model that learnt from one that did not.
            segmentation_epochs=6,
            classification_epochs=1,
            segmentation_training={"steps_per_epoch": 15, "learning_rate": 3e-3},
            classification_training={"steps_per_epoch": 6, "learning_rate": 2e-3},
            classification_plan={"slice_shape": "16,16"},
            bootstrap=50,
            is_quick=True,
        )

    def replace(self, **changes: Any) -> DemoConfig:
        return dataclasses.replace(self, **changes)

    def with_cases(self, n_cases: int) -> DemoConfig:
        """Split ``n_cases`` phantoms into training (80 %) and held-out test (20 %, at least 2) scans."""
        n_test = max(2, int(round(0.2 * n_cases)))
        return self.replace(n_train=int(n_cases) - n_test, n_test=n_test)


@dataclass
class DemoSummary:
    """What the demo reached and where it wrote it.

    Attributes:
        dice: Mean Dice over the foreground labels and the held-out phantoms.
        dice_per_label: Mean held-out Dice of each label name.
        auc: Held-out area under the ROC curve of the whole-scan "contains a lesion" prediction.
        slice_auc: Area under the ROC curve of the per-slice "contains the lesion" probabilities over every slice of
            the held-out phantoms.
        accuracy: Held-out whole-scan accuracy at probability 0.5.
        n_train: Training phantoms. n_test: held-out phantoms.
        elapsed_s: Wall time of the whole demo, seconds.
        stage_seconds: Wall time of each stage.
        files: Output name -> path.
        quick: Whether this was the smoke-test configuration.
    """

    dice: float
    dice_per_label: dict[str, float]
    auc: float | None
    slice_auc: float | None
    accuracy: float | None
    n_train: int
    n_test: int
    elapsed_s: float
    stage_seconds: dict[str, float]
    files: dict[str, str]
    quick: bool = False

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def format_text(self) -> str:
        """The short summary printed at the end of ``medanalysis demo``."""

        def number(value: float | None) -> str:
            return "n/a" if value is None or not math.isfinite(value) else f"{value:.3f}"

        per_label = ", ".join(f"{name} {number(value)}" for name, value in self.dice_per_label.items())
        lines = [
            f"MedAnalysis demo{' (quick)' if self.quick else ''}: {self.n_train} training and {self.n_test} held-out "
            f"phantom scans, {format_duration(self.elapsed_s)} in all",
            f"Segmentation (3D U-Net), held-out Dice: {number(self.dice)} ({per_label})",
            f"Lesion classification (CNN+RNN), held-out scan AUC: {number(self.auc)}, accuracy: "
            f"{number(self.accuracy)}; per-slice AUC: {number(self.slice_auc)}",
            "Files:",
        ]
        width = max(len(name) for name in self.files)
        lines += [f"  {name:<{width}}  {path}" for name, path in self.files.items()]
        return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ the pipeline
STAGES = (
    "phantoms",
    "plan",
    "train segmentation",
    "evaluate segmentation",
    "segment one scan",
    "train classifier",
    "evaluate classifier",
    "classify one scan",
    "figures",
)


def run_demo(
    out: str | Path,
    config: DemoConfig | None = None,
    *,
    reporter: Reporter | None = None,
    stop_flag: StopFlag | None = None,
) -> DemoSummary:
    """Run the whole demo and write its outputs under ``out`` (see the module docstring for the layout).

    Args:
        out: Output folder, created if missing; files of an earlier demo there are replaced.
        config: What to generate and how long to train; default :meth:`DemoConfig.full`.
        reporter: Progress sink (default: plain log lines on stderr).
        stop_flag: Polled between stages and by training; when set, the demo stops with
            :class:`~MedAnalysisLib.errors.CancelledError`.

    Returns:
        The :class:`DemoSummary`, also written to ``out/summary.json`` and ``out/summary.txt``.
    """
    # Heavy modules (TensorFlow behind training and inference) are imported when the demo runs, not on import.
    from MedAnalysisLib.bundles import LabelInfo, load_bundle
    from MedAnalysisLib.data.datasets import load_dataset
    from MedAnalysisLib.evaluation import figures
    from MedAnalysisLib.evaluation.metrics import dice as dice_score
    from MedAnalysisLib.evaluation.metrics import roc_auc
    from MedAnalysisLib.evaluation.report import EvaluationOptions, evaluate_bundle
    from MedAnalysisLib.inference.predict import predict
    from MedAnalysisLib.inference.writers import write_prediction
    from MedAnalysisLib.io import load_volume
    from MedAnalysisLib.io.files import read_volume
    from MedAnalysisLib.phantom import phantom_targets, write_phantom_dataset, write_phantom_dicom
    from MedAnalysisLib.preprocessing.fingerprint import fingerprint_dataset
    from MedAnalysisLib.preprocessing.plan import make_plan
    from MedAnalysisLib.training import train

    config = config or DemoConfig.full()
    reporter = reporter or Reporter("log")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    clock = _StageClock(reporter, stop_flag)
    files: dict[str, str] = {}
    phantom_grid = {"shape": config.shape, "spacing": config.spacing}

    # 1. Data: seeded phantoms, training and held-out sets from different seeds.
    with clock.stage("phantoms", f"{config.n_train} training and {config.n_test} held-out phantom scans"):
        train_dir = write_phantom_dataset(out / "data" / "train", config.n_train, config.seed, **phantom_grid)
        test_dir = write_phantom_dataset(
            out / "data" / "test", config.n_test, config.seed + TEST_SEED_OFFSET, **phantom_grid
        )
        files["training data"] = str(train_dir)
        files["held-out data"] = str(test_dir)

    # 2. Fingerprint and plan, as `medanalysis plan` does.
    with clock.stage("plan", "fingerprint the training set and derive the preprocessing plan"):
        segmentation_data = load_dataset(train_dir)
        fingerprint = fingerprint_dataset(segmentation_data, workers=2, reporter=reporter, stop_flag=stop_flag)
        plan = make_plan(fingerprint, overrides=config.segmentation_plan or None)
        files["plan"] = str(_write_text(out / "plan.json", plan.to_json() + "\n"))
        files["fingerprint"] = str(_write_json(out / "fingerprint.json", fingerprint.to_dict()))
        for line in fingerprint.summary_lines():
            reporter.log(line)

    # 3. Train the 3D U-Net (the library's training loop, callbacks and bundle writer).
    with clock.stage("train segmentation", f"3D U-Net, {config.segmentation_epochs} epochs"):
        segmentation = train(
            segmentation_data,
            task="segmentation",
            family="unet3d",
            out=out / "bundles" / "segmentation",
            epochs=config.segmentation_epochs,
            plan=plan,
            hparams=config.segmentation_hparams or None,
            seed=config.seed,
            resume=False,
            name="phantom-unet3d",
            reporter=reporter,
            stop_flag=stop_flag,
            **config.segmentation_training,
        )
        files["segmentation bundle"] = str(segmentation.bundle_path)

    # 4. Evaluate it on the held-out phantoms (per-case CSV, summary with confidence intervals, figures).
    with clock.stage("evaluate segmentation", f"{config.n_test} held-out phantom scans"):
        segmentation_report = evaluate_bundle(
            segmentation.bundle_path,
            test_dir,
            out / "evaluation" / "segmentation",
            EvaluationOptions(bootstrap=config.bootstrap, seed=config.seed),
            reporter=reporter,
            stop_flag=stop_flag,
        )
        files["segmentation evaluation"] = str(out / "evaluation" / "segmentation")
        dice, dice_per_label = _segmentation_dice(segmentation_report)

    # 5. Segment one held-out scan from DICOM, as `medanalysis predict --format nifti --format dicom-seg` does.
    case = load_dataset(test_dir).cases[0]
    with clock.stage("segment one scan", f"{case.case_id} as a DICOM series: label map, DICOM SEG, volume table"):
        dicom_dir = write_phantom_dicom(
            read_volume(case.images[0]), out / "data" / "dicom" / case.case_id, seed=config.seed,
            series_description=f"{case.case_id} (held out)",
        )
        files["DICOM series"] = str(dicom_dir)
        image = load_volume(dicom_dir)
        truth = read_volume(case.label, kind="label")
        segmentation_bundle = load_bundle(segmentation.bundle_path)
        prediction = predict(segmentation_bundle, image, reporter=reporter, stop_flag=stop_flag)
        written = write_prediction(
            prediction, out / "prediction", case.case_id, input_volume=image, labels=segmentation_bundle.labels,
            formats=("nifti", "seg.nrrd", "dicom-seg"),
        )
        for kind, title in (("label_nifti", "label map"), ("label_seg.nrrd", "Slicer segmentation"),
                            ("label_dicom-seg", "DICOM SEG"), ("table_csv", "volume table")):
            files[title] = str(out / "prediction" / written[kind])
        styles = figures.label_styles(segmentation_bundle.labels)
        case_dice = {info.name: dice_score(prediction.label.array, truth.array, info.value)
                     for info in segmentation_bundle.labels if info.value != 0}
        files["overlay figure"] = str(
            figures.overlay_slices(
                image, truth.array, prediction.label.array, out / "figures" / "overlay.png", styles,
                title=f"{case.case_id} (held out): truth (solid) and 3D U-Net prediction (dashed)",
                label_scores=case_dice,
            )
        )

    # 6. Train the CNN+RNN slice-sequence classifier on the same training phantoms ("contains a lesion").
    with clock.stage("train classifier", f"CNN+RNN, {config.classification_epochs} epochs"):
        # The manifest path, as `medanalysis train .../classification.csv --model cnn_rnn` gets it: the lesion masks
        # give the per-slice targets and the kept epoch is the one with the best per-slice validation AUC.
        classification = train(
            train_dir / MANIFEST_NAME,
            task="classification",
            family="cnn_rnn",
            out=out / "bundles" / "classification",
            epochs=config.classification_epochs,
            plan_overrides=config.classification_plan or None,
            hparams=config.classification_hparams or None,
            seed=config.seed,
            resume=False,
            name="phantom-lesion-cnn-rnn",
            labels=(LabelInfo(0, "no lesion", (128, 174, 128)), LabelInfo(1, "lesion", (241, 214, 145))),
            reporter=reporter,
            stop_flag=stop_flag,
            **config.classification_training,
        )
        files["classifier bundle"] = str(classification.bundle_path)

    # 7. Evaluate the classifier on the held-out phantoms (AUC, accuracy, ROC curve).
    with clock.stage("evaluate classifier", f"{config.n_test} held-out phantom scans"):
        classification_report = evaluate_bundle(
            classification.bundle_path,
            test_dir / MANIFEST_NAME,
            out / "evaluation" / "classification",
            EvaluationOptions(bootstrap=config.bootstrap, seed=config.seed),
            reporter=reporter,
            stop_flag=stop_flag,
        )
        files["classifier evaluation"] = str(out / "evaluation" / "classification")
        auc, accuracy = _classification_scores(classification_report)

    # 8. Classify the same scan slice by slice.
    with clock.stage("classify one scan", f"{case.case_id}: per-slice and whole-scan lesion probabilities"):
        classifier = load_bundle(classification.bundle_path)
        scan_prediction = predict(classifier, image, reporter=reporter, stop_flag=stop_flag)
        written = write_prediction(
            scan_prediction, out / "prediction", f"{case.case_id}_lesion", input_volume=image,
            labels=classifier.labels,
        )
        files["scan probabilities"] = str(out / "prediction" / written["table_csv"])
        slice_rows = scan_prediction.per_slice or []
        files["slice probabilities"] = str(out / "prediction" / written["slices_csv"])  # written with the prediction
        positive = classifier.labels[-1].name
        slice_probabilities = [float(row[f"p_{positive}"]) for row in slice_rows]
        scan_probability = float(scan_prediction.scan["probabilities"][positive]) if scan_prediction.scan else None
        files["slice probability figure"] = str(
            figures.slice_probabilities(
                slice_probabilities,
                phantom_targets(truth.array)["slice_target"],
                out / "figures" / "slice_probabilities.png",
                class_name=positive,
                scan_probability=scan_probability,
                positions=figures.slice_positions(image.direction, image.origin, image.spacing, image.array.shape),
                title=f"{case.case_id}: CNN+RNN probability per slice",
            )
        )
        # Per-slice AUC over every held-out scan: does the slice head find the slices that hold the lesion?
        slice_scores: list[float] = []
        slice_truth: list[int] = []
        for held_out in load_dataset(test_dir / MANIFEST_NAME, task="classification").cases:
            rows = predict(classifier, read_volume(held_out.images[0]), stop_flag=stop_flag).per_slice or []
            lesion = read_volume(held_out.label, kind="label").array  # type: ignore[arg-type]
            slice_scores += [float(row[f"p_{positive}"]) for row in rows]
            slice_truth += [int(lesion[int(row["slice"])].any()) for row in rows]
        slice_auc = roc_auc(slice_truth, slice_scores) if 0 < sum(slice_truth) < len(slice_truth) else float("nan")

    # 9. Training curves of both models, from the logs their bundles carry.
    with clock.stage("figures", "training curves"):
        files["training curves"] = str(
            figures.training_curves(
                {"3D U-Net (segmentation)": segmentation.history, "CNN+RNN (lesion classifier)": classification.history},
                out / "figures" / "training_curves.png",
                label_names={"3D U-Net (segmentation)": segmentation_bundle.config.label_names()},
            )
        )

    summary = DemoSummary(
        dice=dice,
        dice_per_label=dice_per_label,
        auc=auc,
        slice_auc=slice_auc if math.isfinite(slice_auc) else None,
        accuracy=accuracy,
        n_train=config.n_train,
        n_test=config.n_test,
        elapsed_s=clock.total(),
        stage_seconds=clock.seconds,
        files=files,
        quick=config.is_quick,
    )
    summary.files["summary"] = str(out / "summary.json")
    _write_json(out / "summary.json", summary.to_dict())
    _write_text(out / "summary.txt", summary.format_text() + "\n")
    return summary


class _StageClock:
    """Times the demo's stages, reports them as progress of the ``demo`` stage and honours the stop flag."""

    def __init__(self, reporter: Reporter, stop_flag: StopFlag | None) -> None:
        self.reporter = reporter
        self.stop_flag = stop_flag
        self.seconds: dict[str, float] = {}
        self._start = time.monotonic()

    @contextlib.contextmanager
    def stage(self, name: str, message: str) -> Iterator[None]:
        if self.stop_flag is not None:
            self.stop_flag.raise_if_set()
        done = len(self.seconds)
        self.reporter.progress("demo", done, len(STAGES), f"{name}: {message}")
        self.reporter.log(f"demo step {done + 1}/{len(STAGES)}: {name} ({message})")
        start = time.monotonic()
        yield
        self.seconds[name] = round(time.monotonic() - start, 2)
        self.reporter.progress("demo", done + 1, len(STAGES), f"{name} done in {format_duration(self.seconds[name])}")

    def total(self) -> float:
        return round(time.monotonic() - self._start, 2)


# ------------------------------------------------------------------------------------------------ small helpers
def _segmentation_dice(report: dict[str, Any]) -> tuple[float, dict[str, float]]:
    """Mean foreground Dice and Dice per label name from the headline of ``evaluate_bundle``."""
    per_label = {
        key.removeprefix("dice_"): float("nan") if value is None else float(value)
        for key, value in report.get("headline", {}).items()
        if key.startswith("dice_") and key != "dice_background"
    }
    finite = [value for value in per_label.values() if math.isfinite(value)]
    return (float(np.mean(finite)) if finite else float("nan")), per_label


def _classification_scores(report: dict[str, Any]) -> tuple[float | None, float | None]:
    """Held-out AUC and accuracy from the headline of ``evaluate_bundle`` (None where undefined)."""
    headline = report.get("headline", {})

    def number(key: str) -> float | None:
        value = headline.get(key)
        return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None

    return number("auc"), number("accuracy")


def _write_text(path: Path, text: str) -> Path:
    write_text_atomic(path, text)
    return path


def _write_json(path: Path, payload: Any) -> Path:
    return _write_text(path, json.dumps(payload, indent=1, default=str) + "\n")
