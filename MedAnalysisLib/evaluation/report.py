"""Evaluate a bundle on labelled data: per-case metrics, a summary with bootstrap intervals, and figures.

Outputs in ``out_dir``:

* ``per_case.csv``: segmentation: Dice, HD95 (mm), predicted/true volume and their difference (mL) per label;
  classification: target, probability per class, predicted class. Failed cases are listed with their error.
* ``summary.json``: per metric mean with a 95% bootstrap CI, median, std, min, max, n; for classifiers the AUC with
  its CI, accuracy, sensitivity, specificity and the confusion matrix; the bundle name and weights hash; which truth
  label each bundle label was scored against (:mod:`~MedAnalysisLib.evaluation.labels`) and how the intervals were
  resampled (cases, or whole groups such as patients when the data has a group column).
* ``summary.txt``: the headline (means with their intervals) as ``medanalysis evaluate`` prints it.

Names in these files come from the bundle and the data (label names, case IDs from file names, error messages that
quote them): ``per_case.csv`` passes every header and text cell through :func:`~MedAnalysisLib.sanitize.csv_cell`
(a name starting with ``=`` is not run as a spreadsheet formula), and the summary text, printed on terminals and
shown by ``cat``, shows each name through :func:`~MedAnalysisLib.sanitize.terminal_field`.
* ``montage.png`` (best and worst cases, segmentation), ``training_curves.png`` (when the bundle has a
  ``training_log.csv``), ``roc.png`` (binary classifiers); see :mod:`~MedAnalysisLib.evaluation.figures`.
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
from MedAnalysisLib.evaluation.labels import LabelMatch, match_labels, unscored_truth_labels
from MedAnalysisLib.io.atomic import write_text_atomic
from MedAnalysisLib.sanitize import csv_cell, terminal_field

MONTAGE_CASES = 3

#: ``EvaluationOptions.group_column`` value that ignores the data's groups (intervals resample cases).
NO_GROUPS = "none"


class LabelValueError(InputError):
    """A truth label map holds a value that no bundle label is matched to (labels matched by value)."""


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
    label_map: dict[str, str] | None = None  # bundle label -> dataset label (names or values, or "none")
    group_column: str | None = None  # CSV column grouping cases; None: the manifest's default; "none": no groups
    image_columns: tuple[str, ...] | None = None  # CSV manifest columns, as for `medanalysis plan`
    label_column: str = "label"
    target_column: str = "target"


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
    data: Any,
    out_dir: str | Path,
    options: EvaluationOptions | None = None,
    *,
    reporter: Any = None,
    stop_flag: Any = None,
) -> dict[str, Any]:
    """Run ``bundle`` on every labelled case of ``data`` and write the report (see the module docstring).

    Args:
        bundle: Bundle path or :class:`~MedAnalysisLib.bundles.LoadedBundle`.
        data: A :class:`~MedAnalysisLib.data.datasets.Dataset`, or anything
            :func:`~MedAnalysisLib.data.sources.load_source` reads (labelled: an MSD folder or its
            ``dataset.json``, a CSV manifest).
        out_dir: Output folder.
        options: :class:`EvaluationOptions`.
        reporter: Progress sink.
        stop_flag: Checked between cases.

    Returns:
        The headline summary (also in ``summary.json``): ``headline`` (means), ``headline_ci`` (means with their
        intervals), ``text`` (what ``summary.txt`` holds), the paths of the written files and the failure count.

    Raises:
        InputError: No labelled case; the bundle's labels do not match the data's (see
            :mod:`~MedAnalysisLib.evaluation.labels`); a truth map with a value the bundle does not have; a label
            map on another grid than its image.
    """
    from MedAnalysisLib.bundles import LoadedBundle, load_bundle

    options = options or EvaluationOptions()
    out = Path(out_dir)
    loaded = bundle if isinstance(bundle, LoadedBundle) else load_bundle(Path(bundle))
    config = loaded.config
    log = reporter.log if reporter is not None else (lambda message, level="info": None)
    dataset, data_name = _evaluation_data(data, config.task, options)
    labelled = _labelled_cases(dataset, config.task, data_name)
    matches = _label_matches(config, dataset, options, data_name, log)
    out.mkdir(parents=True, exist_ok=True)
    run = _evaluate_cases(loaded, labelled, options, matches, reporter, stop_flag, log)
    use_groups = (options.group_column or "").casefold() != NO_GROUPS
    grouped = use_groups and any(not g.startswith("\0") for g in run.groups)
    groups = run.groups if grouped else None
    write_text_atomic(out / "per_case.csv", _rows_csv(run.rows))
    summary = _summary_header(loaded, data_name, run, options, grouped)
    files = {"per_case": "per_case.csv", "summary": "summary.json", "summary_text": "summary.txt"}
    if config.task == "segmentation":
        summary.update(_segmentation_summary(loaded, data_name, dataset, run, matches, options, out, files, groups))
    else:
        summary.update(_classification_summary(run.rows, config, options, out, files, groups))
    _training_curves(loaded, options, out, files, log)
    summary["files"] = files
    text = format_summary(summary)
    write_text_atomic(out / "summary.json", json.dumps(_clean(summary), indent=2, default=_json_default) + "\n")
    write_text_atomic(out / "summary.txt", text + "\n")
    return _clean({"out_dir": str(out),
                   **{k: summary[k] for k in ("cases", "files", "headline", "headline_ci") if k in summary},
                   "failed": len(run.failed), "text": text})


def _evaluation_data(data: Any, task: str, options: EvaluationOptions) -> tuple[Any, str]:
    """The dataset to evaluate on and the name the report gives it."""
    from MedAnalysisLib.data.datasets import Dataset
    from MedAnalysisLib.data.sources import load_source

    if isinstance(data, Dataset):
        return data, (data.root.name if data.root else "dataset")
    use_groups = (options.group_column or "").casefold() != NO_GROUPS
    # A CSV with labels and targets serves either task.
    dataset = load_source(
        data, task=task, image_columns=options.image_columns, label_column=options.label_column,
        target_column=options.target_column, group_column=options.group_column if use_groups else None)
    return dataset, Path(data).parent.name if Path(data).name.lower() == "dataset.json" else Path(data).name


def _labelled_cases(dataset: Any, task: str, data_name: str) -> list[Any]:
    """The cases with a label map (segmentation) or a target (classification); none is an error."""
    labelled = [c for c in dataset.cases if (c.label if task == "segmentation" else c.target) is not None]
    if not labelled:
        what = "label maps" if task == "segmentation" else "targets"
        found = f"{len(dataset.cases)} case(s) without {what}" if dataset.cases else "no case"
        unlabelled = all(c.label is None and c.target is None for c in dataset.cases)
        hint = (" (DICOM series and image files hold no labels: list them with their label maps or targets in a CSV "
                "manifest)" if unlabelled and dataset.cases else "")
        raise InputError(f"expected cases with {what} to evaluate a {task} bundle, got {found} in {data_name!r}"
                         + hint)
    return labelled


def _label_matches(config: Any, dataset: Any, options: EvaluationOptions, data_name: str,
                   log: Any) -> list[LabelMatch]:
    """Which label of the data each bundle label is scored against (segmentation; logged), or none."""
    if config.task != "segmentation":
        if options.label_map:
            raise InputError(f"expected --label-map only for segmentation bundles, got a {config.task} bundle "
                             f"({config.name!r}); its targets are class values")
        return []
    matches = match_labels(config.label_names(), dataset.labels, options.label_map, data_name=repr(data_name))
    for match in matches:
        log(f"label {match.describe()}", "warning" if match.matched_by == "absent from the data" else "info")
    unscored = unscored_truth_labels(matches, dataset.labels)
    if unscored:
        log("labels of the data that no bundle label is scored against: "
            + ", ".join(f"{n} ({v})" for v, n in unscored.items()), "warning")
    return matches


@dataclass
class _CaseResults:
    """What the per-case loop produced: one row per evaluated case (with its bootstrap group), the failures, the
    montage panels and the inference settings ``predict`` resolved."""

    rows: list[dict[str, Any]]
    groups: list[str]
    failed: list[dict[str, str]]
    panels: list[Any]
    inference: dict[str, Any]


def _evaluate_cases(loaded: Any, labelled: list[Any], options: EvaluationOptions, matches: list[LabelMatch],
                    reporter: Any, stop_flag: Any, log: Any) -> _CaseResults:
    """Predict and score the chosen cases (this shard, at most ``max_cases``); a failing case is recorded, not fatal."""
    from MedAnalysisLib.inference.batch import CaseInput, select_shard

    by_id = {c.case_id: c for c in labelled}
    chosen = select_shard([CaseInput(c.case_id, tuple(c.images)) for c in labelled], options.shard)
    if options.max_cases is not None:
        chosen = chosen[: max(0, options.max_cases)]
    log(f"evaluating {loaded.config.name} on {len(chosen)} case(s)")
    run = _CaseResults([], [], [], [], {})
    for number, entry in enumerate(chosen):
        if stop_flag is not None and stop_flag.is_set():
            raise CancelledError(f"evaluation stopped after {number} of {len(chosen)} case(s)")
        if reporter is not None:
            reporter.progress("evaluate", number, len(chosen), entry.case_id)
        case = by_id[entry.case_id]
        try:
            row, panel, run.inference = _evaluate_case(loaded, case, options, matches)
        except (CancelledError, LabelValueError):
            raise
        except (MedAnalysisError, OSError, ValueError, RuntimeError) as error:
            run.failed.append({"case_id": case.case_id, "error_type": type(error).__name__, "message": str(error)})
            log(f"{case.case_id}: failed ({type(error).__name__}: {error}); continuing", "warning")
            continue
        run.rows.append(row)
        run.groups.append(case.group if case.group is not None else f"\0{case.case_id}")
        if panel is not None:
            run.panels.append(panel)
    if reporter is not None:
        reporter.progress("evaluate", len(chosen), len(chosen), "done")
    if not run.rows:
        raise InputError(f"expected at least one case to evaluate successfully, got {len(run.failed)} failure(s): "
                         f"{run.failed[0]['error_type']}: {run.failed[0]['message']}")
    return run


def _rows_csv(rows: list[dict[str, Any]]) -> str:
    from MedAnalysisLib.inference.writers import rows_to_csv

    return rows_to_csv([{csv_cell(k): csv_cell(v) for k, v in _clean(r).items()} for r in rows])


def _summary_header(loaded: Any, data_name: str, run: _CaseResults, options: EvaluationOptions,
                    grouped: bool) -> dict[str, Any]:
    """What was evaluated on what, and how the intervals were drawn."""
    config = loaded.config
    return {
        "bundle": {"name": config.name, "weights_sha256": loaded.weights_sha256, "task": config.task,
                   "family": config.family},
        "data": data_name,
        "cases": len(run.rows),
        "failed": run.failed,
        "bootstrap": {"resamples": options.bootstrap, "seed": options.seed, "level": 0.95,
                      "unit": "group" if grouped else "case",
                      "group_column": (options.group_column if grouped and options.group_column else
                                       "the manifest's group column" if grouped else None),
                      "n_units": len(set(run.groups)) if grouped else len(run.rows)},
        "inference": run.inference,
    }


def _segmentation_summary(loaded: Any, data_name: str, dataset: Any, run: _CaseResults, matches: list[LabelMatch],
                          options: EvaluationOptions, out: Path, files: dict[str, str],
                          groups: list[str] | None) -> dict[str, Any]:
    """Per-metric means with bootstrap intervals, the Dice headline, and the best/worst montage."""
    config, rows = loaded.config, run.rows
    summary: dict[str, Any] = {
        "labels": [m.to_dict() for m in matches],
        "unscored_truth_labels": {str(v): n for v, n in unscored_truth_labels(matches, dataset.labels).items()},
    }
    numeric = [k for k in rows[0] if k not in ("case_id",)]
    summary["metrics"] = {k: metrics.summarize([r.get(k, float("nan")) for r in rows], groups=groups,
                                               n_resamples=options.bootstrap, seed=options.seed) for k in numeric}
    dice_keys = [k for k in numeric if k.startswith("dice_")]
    summary["headline"] = {k: summary["metrics"][k]["mean"] for k in dice_keys}
    summary["headline_ci"] = {k: {key: summary["metrics"][k][key] for key in ("mean", "ci_low", "ci_high", "n")}
                              for k in numeric if k.startswith(("dice_", "hd95_mm_"))}
    if options.figures and run.panels:
        ranked = sorted(run.panels, key=lambda p: (-p.score if math.isfinite(p.score) else math.inf))
        half = min(MONTAGE_CASES, (len(ranked) + 1) // 2)  # few cases: half of them in each row
        best = ranked[:half]
        worst = [p for p in reversed(ranked) if p not in best][:MONTAGE_CASES]
        figures.overlay_montage(best, worst, out / "montage.png", figures.label_styles(loaded.labels),
                                title=f"{config.name} on {data_name}: best and worst cases (mean Dice)")
        files["montage"] = "montage.png"
    return summary


def _training_curves(loaded: Any, options: EvaluationOptions, out: Path, files: dict[str, str], log: Any) -> None:
    """The bundle's training curves beside the report, when it has a training log and figures are wanted."""
    log_path = Path(loaded.directory) / "training_log.csv"
    if options.figures and log_path.is_file():
        try:
            figures.training_curves({loaded.config.name: figures.read_training_log(log_path)},
                                    out / "training_curves.png", label_names=loaded.config.label_names())
            files["training_curves"] = "training_curves.png"
        except ValueError as error:
            log(f"training curves not drawn: {error}", "warning")


def _interval_text(stats: dict[str, Any] | None, digits: int = 3) -> str:
    """``0.912 [0.880, 0.940]`` (or ``n/a``) from a dict with mean/value and ci_low/ci_high."""
    if not stats:
        return "n/a"
    value = stats.get("mean", stats.get("value"))
    if value is None or not math.isfinite(float(value)):
        return "n/a"
    text = f"{value:.{digits}f}"
    low, high = stats.get("ci_low"), stats.get("ci_high")
    if low is not None and high is not None and math.isfinite(float(low)) and math.isfinite(float(high)):
        text += f" [{low:.{digits}f}, {high:.{digits}f}]"
    return text


#: The longest name shown in the summary text (a longer one ends with how many characters were left out).
NAME_LIMIT = 120


def _field(value: Any) -> str:
    """A name from the bundle or the data, shown safely on one line of the summary text."""
    return terminal_field(value, NAME_LIMIT)


def format_summary(summary: dict[str, Any]) -> str:
    """The headline of an evaluation as text: what was evaluated, how the intervals were resampled, and the means
    with their 95% intervals (per label for segmentation; AUC and accuracy for classifiers)."""
    bundle = summary["bundle"]
    boot = summary["bootstrap"]
    f = _field
    failed = len(summary.get("failed") or [])
    lines = [f"{f(bundle['name'])} on {f(summary['data'])}: {summary['cases']} case(s) evaluated"
             + (f", {failed} failed (see summary.json)" if failed else "")]
    if boot["resamples"] <= 0:
        lines.append("no confidence intervals (--bootstrap 0)")
    elif boot["unit"] == "group":
        lines.append(f"95% CIs: percentile bootstrap over {boot['n_units']} groups of cases ({f(boot['group_column'])}), "
                     f"{boot['resamples']} resamples, seed {boot['seed']}")
    else:
        lines.append(f"95% CIs: percentile bootstrap over {boot['n_units']} cases, {boot['resamples']} resamples, "
                     f"seed {boot['seed']}")
    if bundle["task"] == "segmentation":
        stats = summary.get("metrics") or {}
        labels = summary.get("labels") or []
        rows = [("label", "scored against", "Dice [95% CI]", "HD95 mm [95% CI]", "n")]
        for label in labels:
            name = label["name"]
            if label["truth_value"] is None:
                rows.append((f(name), f"not scored ({f(label['matched_by'])})", "", "", ""))
                continue
            truth = (f"{f(label['truth_name'])} ({f(label['truth_value'])})" if label["truth_name"]
                     else f"value {f(label['truth_value'])}")
            hd = stats.get(f"hd95_mm_{name}") or {}
            n = f"{hd.get('n', '')}" if not hd.get("n_excluded") else f"{hd.get('n')} (+{hd['n_excluded']} n/a)"
            rows.append((f(name), f"{truth}, by {f(label['matched_by'])}", _interval_text(stats.get(f"dice_{name}")),
                         _interval_text(hd, 2), n))
        widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
        lines += ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
                  for row in rows]
        dice = [v for v in (summary.get("headline") or {}).values() if v is not None and math.isfinite(v)]
        if len(dice) > 1:
            lines.append(f"mean Dice over labels: {float(np.mean(dice)):.3f}")
        unscored = summary.get("unscored_truth_labels") or {}
        if unscored:
            lines.append("not scored (no bundle label matched): "
                         + ", ".join(f"{f(n)} ({f(v)})" for v, n in unscored.items()))
    else:
        result = summary.get("classification") or {}
        parts = []
        if "auc_ci" in summary:
            parts.append(f"AUC {_interval_text(summary['auc_ci'])}")
        parts.append(f"accuracy {_interval_text(summary.get('accuracy_ci'))}")
        for key in ("sensitivity", "specificity"):
            value = result.get(key)
            if isinstance(value, (int, float)) and math.isfinite(value):
                parts.append(f"{key} {value:.3f}")
        if "threshold" in result:
            parts.append(f"threshold {f(result['threshold'])}")
        lines.append("; ".join(parts))
        matrix = result.get("confusion_matrix")
        if matrix:
            lines.append(f"confusion matrix (rows truth, columns predicted; classes {f(summary.get('class_names'))}): "
                         f"{matrix}")
    return "\n".join(lines)


def _evaluate_case(loaded: Any, case: Any, options: EvaluationOptions,
                   matches: list[LabelMatch]) -> tuple[dict[str, Any], Any, dict[str, Any]]:
    """One case's metrics row, its montage panel (or None) and the inference settings predict() used."""
    from MedAnalysisLib.inference.predict import predict
    from MedAnalysisLib.io import load_volume
    from MedAnalysisLib.volume import require_same_geometry

    config = loaded.config
    # Single slices load as one-slice volumes, as in training (slice classifiers of 2D DICOM files).
    volumes = [load_volume(p, series=case.series, allow_2d=True) if case.series else load_volume(p, allow_2d=True)
               for p in case.images]
    truth = None
    if config.task == "segmentation":
        truth = load_volume(case.label, kind="label")
        require_same_geometry(volumes[0], truth, what="label map")
        _check_truth_values(truth.array, matches, case.case_id)
    prediction = predict(loaded, volumes, overlap=options.overlap, tta=options.tta, postprocess=options.postprocess,
                         batch_size=options.batch_size, precision=options.precision, memory_budget_mb=options.memory_budget_mb)
    used = {key: prediction.details[key] for key in ("overlap", "tta", "postprocess", "ensemble")
            if key in prediction.details}
    if truth is not None:
        assert prediction.label is not None
        scored = [m for m in matches if m.truth_value is not None]
        row: dict[str, Any] = {"case_id": case.case_id}
        row.update(metrics.segmentation_metrics(prediction.label.array, truth.array, volumes[0].spacing,
                                                {m.bundle_value: m.name for m in scored},
                                                {m.bundle_value: int(m.truth_value) for m in scored}))  # type: ignore[arg-type]
        label_scores = {m.name: float(row[f"dice_{m.name}"]) for m in scored}
        finite = [v for v in label_scores.values() if math.isfinite(v)]
        score = float(np.mean(finite)) if finite else float("nan")
        panel = None
        if options.figures:
            # The truth in the bundle's numbering, so both are drawn in the bundle's label colours.
            shown = np.zeros(truth.array.shape, np.int32)
            for match in scored:
                shown[truth.array == match.truth_value] = match.bundle_value
            panel = figures.pick_slice(volumes[0], shown, prediction.label.array, case.case_id, score, label_scores)
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


def _check_truth_values(truth: np.ndarray, matches: list[LabelMatch], case_id: str) -> None:
    """Labels matched by value: a truth value that no bundle label has means the numberings differ (refused)."""
    by_value = [m for m in matches if m.matched_by == "value"]
    if not by_value:
        return
    known = {0} | {int(m.truth_value) for m in matches if m.truth_value is not None}
    found = {int(v) for v in np.unique(truth)}
    extra = sorted(found - known)
    if extra:
        raise LabelValueError(
            f"expected truth values among the bundle's labels {sorted(known)} (matched by value: the data names no "
            f"labels), got {extra} in case {case_id!r}; pair labels explicitly with --label-map (e.g. "
            f"{by_value[0].name}={extra[0]}) or use data with the bundle's numbering")


def _classification_summary(rows: list[dict[str, Any]], config: Any, options: EvaluationOptions, out: Path,
                            files: dict[str, str], groups: list[str] | None) -> dict[str, Any]:
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
                               "accuracy_ci": metrics.bootstrap_ci(correct, groups=groups,
                                                                   n_resamples=options.bootstrap,
                                                                   seed=options.seed).to_dict()}
    headline = {"accuracy": result["accuracy"]}
    headline_ci = {"accuracy": summary["accuracy_ci"]}
    if binary:
        pairs = np.c_[targets, probabilities[:, 1]]
        auc = metrics.bootstrap_ci(pairs, metrics.auc_statistic, groups=groups, n_resamples=options.bootstrap,
                                   seed=options.seed)
        summary["auc_ci"] = auc.to_dict()
        headline["auc"] = result["auc"]
        headline_ci["auc"] = summary["auc_ci"]
        if options.figures and len(set(targets.tolist())) == 2:
            fpr, tpr, _ = metrics.roc_curve(targets, probabilities[:, 1])
            figures.roc_figure(fpr, tpr, float(result["auc"]), out / "roc.png",
                               title=f"{config.name}: ROC of P({names[values[1]]})", ci=(auc.low, auc.high))
            files["roc"] = "roc.png"
    summary["headline"] = headline
    summary["headline_ci"] = headline_ci
    return summary
