"""Evaluate a bundle on labelled data: per-case metrics, a summary with bootstrap intervals, and figures.

Outputs in ``out_dir``:

* ``per_case.csv``: segmentation: Dice, HD95 (mm), predicted/true volume and their difference (mL) per label;
  classification: target, probability per class, predicted class. Failed cases are listed with their error.
* ``summary.json``: per metric mean with a 95% bootstrap CI, median, std, min, max, n; for classifiers the AUC with
  its CI, accuracy, sensitivity, specificity and the confusion matrix; the bundle name and weights hash.
* ``montage.png`` (best and worst cases, segmentation), ``training_curves.png`` (when the bundle has a
  ``training_log.csv``), ``roc.png`` (binary classifiers).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from MedAnalysisLib.errors import CancelledError, InputError, MedAnalysisError
from MedAnalysisLib.evaluation import figures, metrics
from MedAnalysisLib.io.atomic import write_text_atomic

MONTAGE_CASES = 3


@dataclass
class EvaluationOptions:
    """How an evaluation runs (the ``medanalysis evaluate`` options)."""

    overlap: float | None = None
    tta: bool | None = None
    postprocess: tuple[str, ...] | None = None  # label-map post-processing; None: the bundle's
    batch_size: int | None = None
    precision: str = "float32"
    memory_budget_mb: float | None = None
    bootstrap: int = 1000
    seed: int = 0
    max_cases: int | None = None
    shard: tuple[int, int] = (1, 1)
    figures: bool = True
    threshold: float = 0.5


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"cannot serialise {type(value).__name__}")


def _clean(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else ("inf" if value > 0 else "-inf")
    return value


def evaluate_bundle(
    bundle: Any,
    data: str | Path,
    out_dir: str | Path,
    options: EvaluationOptions | None = None,
    *,
    reporter: Any = None,
    stop_flag: Any = None,
) -> dict[str, Any]:
    """Run ``bundle`` on every labelled case of ``data`` and write the report (see the module docstring).

    Args:
        bundle: Bundle path or :class:`~MedAnalysisLib.bundle.LoadedBundle`.
        data: Anything :func:`~MedAnalysisLib.data.datasets.load_dataset` reads (MSD folder, CSV manifest).
        out_dir: Output folder.
        options: :class:`EvaluationOptions`.
        reporter: Progress sink.
        stop_flag: Checked between cases.

    Returns:
        The headline summary (also in ``summary.json``) with the paths of the written files.

    Raises:
        InputError: No labelled case, or a label on another grid than its image.
    """
    from MedAnalysisLib.bundle import LoadedBundle, load_bundle
    from MedAnalysisLib.data.datasets import load_dataset
    from MedAnalysisLib.inference.batch import CaseInput, select_shard
    from MedAnalysisLib.inference.writers import rows_to_csv

    options = options or EvaluationOptions()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    loaded = bundle if isinstance(bundle, LoadedBundle) else load_bundle(Path(bundle))
    config = loaded.config
    dataset = load_dataset(Path(data), task=config.task)  # a CSV with labels and targets serves either task
    task = config.task
    labelled = [c for c in dataset.cases if (c.label if task == "segmentation" else c.target) is not None]
    if not labelled:
        what = "label maps" if task == "segmentation" else "targets"
        raise InputError(f"expected cases with {what} to evaluate a {task} bundle, got none in {Path(data).name!r}")
    by_id = {c.case_id: c for c in labelled}
    chosen = select_shard([CaseInput(c.case_id, tuple(c.images)) for c in labelled], options.shard)
    if options.max_cases is not None:
        chosen = chosen[: max(0, options.max_cases)]
    log = reporter.log if reporter is not None else (lambda message, level="info": None)
    log(f"evaluating {config.name} on {len(chosen)} case(s)")

    rows: list[dict[str, Any]] = []
    failed: list[dict[str, str]] = []
    panels: list[figures.MontageCase] = []
    inference: dict[str, Any] = {}  # the settings predict() resolved (options, else the bundle's defaults)
    for number, entry in enumerate(chosen):
        if stop_flag is not None and stop_flag.is_set():
            raise CancelledError(f"evaluation stopped after {number} of {len(chosen)} case(s)")
        if reporter is not None:
            reporter.progress("evaluate", number, len(chosen), entry.case_id)
        case = by_id[entry.case_id]
        try:
            row, panel, inference = _evaluate_case(loaded, case, options)
        except CancelledError:
            raise
        except (MedAnalysisError, OSError, ValueError, RuntimeError) as error:
            failed.append({"case_id": case.case_id, "error_type": type(error).__name__, "message": str(error)})
            log(f"{case.case_id}: failed ({type(error).__name__}: {error}); continuing", "warning")
            continue
        rows.append(row)
        if panel is not None:
            panels.append(panel)
    if reporter is not None:
        reporter.progress("evaluate", len(chosen), len(chosen), "done")
    if not rows:
        raise InputError(f"expected at least one case to evaluate successfully, got {len(failed)} failure(s): "
                         f"{failed[0]['error_type']}: {failed[0]['message']}")

    write_text_atomic(out / "per_case.csv", rows_to_csv([_clean(r) for r in rows]))
    summary: dict[str, Any] = {
        "bundle": {"name": config.name, "weights_sha256": loaded.weights_sha256, "task": task, "family": config.family},
        "data": Path(data).name,
        "cases": len(rows),
        "failed": failed,
        "bootstrap": {"resamples": options.bootstrap, "seed": options.seed, "level": 0.95},
        "inference": inference,
    }
    files = {"per_case": "per_case.csv", "summary": "summary.json"}
    if task == "segmentation":
        numeric = [k for k in rows[0] if k not in ("case_id",)]
        summary["metrics"] = {k: metrics.summarize([r.get(k, float("nan")) for r in rows],
                                                   n_resamples=options.bootstrap, seed=options.seed) for k in numeric}
        dice_keys = [k for k in numeric if k.startswith("dice_")]
        summary["headline"] = {k: summary["metrics"][k]["mean"] for k in dice_keys}
        if options.figures and panels:
            ranked = sorted(panels, key=lambda p: (-p.score if math.isfinite(p.score) else math.inf))
            best = ranked[:MONTAGE_CASES]
            worst = [p for p in reversed(ranked) if p not in best][:MONTAGE_CASES]
            figures.overlay_montage(best, worst, out / "montage.png", title=f"{config.name}: best and worst cases")
            files["montage"] = "montage.png"
    else:
        summary.update(_classification_summary(rows, config, options, out, files))
    log_path = Path(loaded.directory) / "training_log.csv"
    if options.figures and log_path.is_file():
        try:
            figures.training_curves(log_path, out / "training_curves.png", title=f"{config.name}: training")
            files["training_curves"] = "training_curves.png"
        except ValueError as error:
            log(f"training curves not drawn: {error}", "warning")
    summary["files"] = files
    write_text_atomic(out / "summary.json", json.dumps(_clean(summary), indent=2, default=_json_default) + "\n")
    return _clean({"out_dir": str(out), **{k: summary[k] for k in ("cases", "files", "headline") if k in summary},
                   "failed": len(failed)})


def _evaluate_case(loaded: Any, case: Any, options: EvaluationOptions) -> tuple[dict[str, Any], Any, dict[str, Any]]:
    """One case's metrics row, its montage panel (or None) and the inference settings predict() used."""
    from MedAnalysisLib.inference.predict import predict
    from MedAnalysisLib.io import load_volume
    from MedAnalysisLib.volume import require_same_geometry

    config = loaded.config
    # Single slices load as one-slice volumes, as in training (slice classifiers of 2D DICOM files).
    volumes = [load_volume(p, series=case.series, allow_2d=True) if case.series else load_volume(p, allow_2d=True)
               for p in case.images]
    prediction = predict(loaded, volumes, overlap=options.overlap, tta=options.tta, postprocess=options.postprocess,
                         batch_size=options.batch_size, precision=options.precision, memory_budget_mb=options.memory_budget_mb)
    used = {key: prediction.details[key] for key in ("overlap", "tta", "postprocess", "ensemble")
            if key in prediction.details}
    if config.task == "segmentation":
        truth = load_volume(case.label, kind="label")
        require_same_geometry(volumes[0], truth, what="label map")
        assert prediction.label is not None
        row: dict[str, Any] = {"case_id": case.case_id}
        row.update(metrics.segmentation_metrics(prediction.label.array, truth.array, volumes[0].spacing,
                                                config.label_names()))
        dice_values = [v for k, v in row.items() if k.startswith("dice_") and math.isfinite(v)]
        score = float(np.mean(dice_values)) if dice_values else float("nan")
        panel = figures.pick_slice(volumes[0].array, truth.array, prediction.label.array, volumes[0].spacing,
                                   case.case_id, score) if options.figures else None
        return row, panel, used
    names = config.label_names()
    values = sorted(names)
    if prediction.scan is not None:
        probabilities = [prediction.scan["probabilities"][names[v]] for v in values]
    else:  # slice classifier: the case's probability is the mean over its slices
        slices = prediction.per_slice or []
        probabilities = [float(np.mean([row[f"p_{names[v]}"] for row in slices])) for v in values]
    target = case.target
    if isinstance(target, float) and target.is_integer():
        target = int(target)
    if target not in values:
        raise InputError(f"expected a target among the bundle's class values {values}, got {case.target!r}")
    row = {"case_id": case.case_id, "target": int(target)}
    row.update({f"p_{names[v]}": float(p) for v, p in zip(values, probabilities, strict=True)})
    if len(values) == 2:
        row["predicted"] = int(values[1] if probabilities[1] >= options.threshold else values[0])
    else:
        row["predicted"] = int(values[int(np.argmax(probabilities))])
    return row, None, used


def _classification_summary(rows: list[dict[str, Any]], config: Any, options: EvaluationOptions, out: Path,
                            files: dict[str, str]) -> dict[str, Any]:
    names = config.label_names()
    values = sorted(names)
    index = {v: n for n, v in enumerate(values)}
    targets = np.array([index[r["target"]] for r in rows])
    probabilities = np.array([[r[f"p_{names[v]}"] for v in values] for r in rows], dtype=np.float64)
    binary = len(values) == 2
    result = metrics.classification_metrics(targets, probabilities[:, 1] if binary else probabilities,
                                            threshold=options.threshold)
    correct = (np.array([index[r["predicted"]] for r in rows]) == targets).astype(float)
    summary: dict[str, Any] = {"classification": result, "class_names": [names[v] for v in values],
                               "accuracy_ci": metrics.bootstrap_ci(correct, n_resamples=options.bootstrap,
                                                                   seed=options.seed).to_dict()}
    headline = {"accuracy": result["accuracy"]}
    if binary:
        pairs = np.c_[targets, probabilities[:, 1]]
        auc = metrics.bootstrap_ci(pairs, metrics.auc_statistic, n_resamples=options.bootstrap, seed=options.seed)
        summary["auc_ci"] = auc.to_dict()
        headline["auc"] = result["auc"]
        if options.figures and len(set(targets.tolist())) == 2:
            fpr, tpr, _ = metrics.roc_curve(targets, probabilities[:, 1])
            figures.roc_figure(fpr, tpr, float(result["auc"]), out / "roc.png", title=f"{config.name}: ROC",
                               ci=(auc.low, auc.high))
            files["roc"] = "roc.png"
    summary["headline"] = headline
    return summary
