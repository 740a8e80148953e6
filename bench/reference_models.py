#!/usr/bin/env python3
"""Build the two reference models shipped with MedAnalysis's default model catalog, from public data.

Everything runs through the library's own command line (``medanalysis train|evaluate|configure|info|predict``), as
a user would type it; this script only writes the split manifests, chooses nothing on test data, and collects what
the commands measured into model cards and catalog entries.

1. ``hippocampus-unet-small``: a small 3D U-Net (``base_filters=8``, ``max_filters=64``, about 0.35 M parameters) on
   the Medical Segmentation Decathlon Task04 hippocampus crops. The 40 test cases are the seed-0 split of
   ``bench/accuracy_hippocampus`` (the same code: a seeded permutation of the sorted case ids); training uses the
   other 168 (10% of them held out to pick the epoch and the post-processing) with a reduced budget, then
   ``medanalysis evaluate`` scores the 40 test cases (Dice per label with bootstrap CIs, HD95).
2. ``ct-contrast-slice-cnn``: the ``slice_cnn`` global-pool recipe of ``bench/accuracy_ct_contrast`` on the 83 chest
   CT slices. A reduced evaluation (``--ct-folds`` patient-grouped, class-stratified folds, ``--ct-epochs`` epochs,
   final epoch kept, one seed) gives out-of-fold probabilities from each fold's ``medanalysis evaluate``; they are
   pooled and get AUC / accuracy with patient-bootstrap 95% CIs (the library's bootstrap). The shipped model is then
   trained with the same recipe on all 83 slices.
3. A model card per model (``cards/*.card.json``) holding only figures measured here; the hippocampus card's
   evaluation is made from the test ``summary.json`` by the library's own function (the one behind ``medanalysis
   configure --evaluation``), with a sentence saying what the test cases are.
4. Each final bundle as a zip with its card (``medanalysis configure BUNDLE --out X.zip --card CARD``), checked with
   ``medanalysis info`` and ``medanalysis predict`` on one case; its size and sha256, task and labels go into
   ``catalog_entries.json`` (the default catalog's schema; checked with the catalog's own entry and bundle checks).
   ``--install`` copies the zips into ``MedAnalysisLib/catalog/models/`` when each is at most ``--max-zip-mb``.

Every step whose output exists is skipped, so re-running the same command resumes (``--fresh`` starts over).

Example (the shipped models; run it under ``nice`` on a shared machine)::

    nice -n 10 .venv/bin/python bench/reference_models.py --data-root ../shared/data --install
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from accuracy_common import (  # noqa: E402
    OUTPUT,
    REPO,
    cluster_bootstrap,
    fmt_ci,
    load_average,
    medanalysis_command,
    run_cli,
    write_msd_subset,
)

VERSION = "1.0.0"
HIPPO_ID = "hippocampus-unet-small"
CT_ID = "ct-contrast-slice-cnn"
CATALOG_MODELS = REPO / "MedAnalysisLib" / "catalog" / "models"
AUTHORS = "MedAnalysis developers"
INTENDED_USE = "demonstration and research; trying MedAnalysis on your own scans"
CLINICAL_USE = "not for clinical use"
HIPPO_DATA = {
    "name": "Medical Segmentation Decathlon Task04 Hippocampus",
    "license": "CC BY-SA 4.0",
    "reference": "Simpson et al. 2019, A large annotated medical image dataset for the development and evaluation "
                 "of segmentation algorithms, arXiv:1902.09063",
}
CT_DATA = {
    "name": "Chest CT slices with and without intravenous contrast, from The Cancer Imaging Archive (TCIA) TCGA "
            "collections",
    "license": "CC BY 3.0",
    "reference": "Data from The Cancer Imaging Archive (TCIA, Clark et al. 2013, J Digit Imaging 26:1045-1057) and "
                 "The Cancer Genome Atlas (TCGA) Research Network",
}
CT_RECIPE = ["--hparam", "preset=global_pool", "--hparam", "base_filters=16", "--hparam", "norm=batch",
             "--hparam", "pooling=max", "--augment", "p_gamma=0", "--augment", "p_brightness=0",
             "--augment", "p_contrast=0", "--set", "slice_shape=128,128", "--batch-size", "16",
             "--learning-rate", "0.001", "--val-fraction", "0", "--monitor", "last"]


def read_json(path: Path) -> Any:
    """A JSON file written by this script or by ``medanalysis``."""
    return json.loads(path.read_text(encoding="utf-8"))


def write_json(path: Path, value: Any) -> None:
    """Write ``value`` as indented JSON under a temporary name, then rename it into place (an interrupted run never
    leaves a half file that a later run would take as done)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(value, indent=1) + "\n", encoding="utf-8")
    partial.replace(path)


def sha256_of(path: Path) -> str:
    """Hex sha256 of a file."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def machine() -> str:
    """The CPU model and core count, for the card's training record."""
    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{name}, {os.cpu_count()} CPU cores, no GPU"


def cli(args: list[str], log: Path) -> float:
    """Run ``medanalysis ARGS`` (JSON-lines progress logged to ``log``) and return its wall time in seconds."""
    return run_cli(args, log)[1]


def bundle_train_seconds(bundle: Path) -> float:
    """The training wall time a bundle recorded."""
    training = read_json(bundle / "bundle.json").get("training", {})
    return float(training.get("train_seconds_this_session", float("nan")))


# --- hippocampus -------------------------------------------------------------------------------------------------

def hippocampus_split(source: Path, n_test: int, seed: int) -> tuple[list[str], list[str]]:
    """(train ids, test ids) of the 208 cases: the split of ``bench/accuracy_hippocampus`` (same seed, same code)."""
    import numpy as np

    from MedAnalysisLib.data.datasets import load_dataset

    cases = sorted(c.case_id for c in load_dataset(source).cases)
    order = np.random.default_rng(seed).permutation(len(cases))
    test = sorted(cases[n] for n in order[:n_test])
    train = sorted(cases[n] for n in order[n_test:])
    if set(train) & set(test):
        raise AssertionError("train and test overlap")
    return train, test


def hippocampus_train_args(args: argparse.Namespace, out: Path) -> list[str]:
    """The ``medanalysis train`` command of the hippocampus model."""
    return ["train", str(out / "train"), "--task", "segmentation", "--model", "unet3d",
            "--out", str(out / "trained"), "--epochs", str(args.hippo_epochs),
            "--steps-per-epoch", str(args.hippo_steps), "--batch-size", "4", "--learning-rate", "0.003",
            "--val-fraction", "0.1", "--seed", str(args.seed), "--hparam", "base_filters=8",
            "--hparam", "max_filters=64", "--hparam", "deep_supervision=true", "--name", HIPPO_ID]


def choose_postprocess(bundle: Path, val_dir: Path, out: Path) -> dict[str, float]:
    """Mean validation Dice without and with largest-component post-processing (validation cases only)."""
    scores = {}
    for steps in ("none", "largest-component"):
        folder = out / f"validation-pp-{steps}"
        if not (folder / "summary.json").is_file():
            cli(["evaluate", str(bundle), str(val_dir), "--out", str(folder), "--postprocess", steps, "--tta", "off",
                 "--bootstrap", "0", "--no-figures"], out / f"validation-pp-{steps}.log")
        metrics = read_json(folder / "summary.json")["metrics"]
        dice = [v["mean"] for k, v in metrics.items() if k.startswith("dice_")]
        scores[steps] = sum(dice) / len(dice)
    return scores


def build_hippocampus(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    """Train, choose the post-processing on validation cases, evaluate on the 40 test cases; returns the record."""
    record_path = out / "record.json"
    if record_path.is_file():
        return read_json(record_path)
    source = args.data_root / "hippocampus"
    train_ids, test_ids = hippocampus_split(source, args.n_test, args.seed)
    write_msd_subset(source, train_ids, out / "train", description=f"Task04 hippocampus, training cases (seed {args.seed})")
    write_msd_subset(source, test_ids, out / "test", description=f"Task04 hippocampus, test cases (seed {args.seed})")
    write_json(out / "split.json", {"seed": args.seed, "train": train_ids, "test": test_ids})
    if args.only == "split":  # the held-out cases alone, for checking the shipped model on them
        return {}
    trained = out / "trained"
    train_command = hippocampus_train_args(args, out)
    if not (trained / "bundle.json").is_file():
        cli(train_command, out / "train.log")
    config = read_json(trained / "bundle.json")
    val_ids = list(config.get("training", {}).get("val_case_ids", []))
    write_msd_subset(source, val_ids, out / "val", description="Task04 hippocampus, validation cases")
    validation = choose_postprocess(trained, out / "val", out)
    postprocess = max(validation, key=lambda k: (validation[k], k == "none"))
    chosen = out / f"trained-pp-{postprocess}"
    if not (chosen / "bundle.json").is_file():
        cli(["configure", str(trained), "--out", str(chosen), "--postprocess", postprocess], out / "configure.log")
    evaluation = out / "evaluation-test"
    eval_command = ["evaluate", str(chosen), str(out / "test"), "--out", str(evaluation), "--seed", str(args.seed),
                    "--bootstrap", "1000", "--no-figures"]
    if not (evaluation / "summary.json").is_file():
        cli(eval_command, out / "evaluate-test.log")
    summary = read_json(evaluation / "summary.json")
    training = config.get("training", {})
    record = {
        "bundle": str(chosen), "train_cases": len(train_ids) - len(val_ids), "val_cases": len(val_ids),
        "test_cases": summary.get("cases"), "postprocess": postprocess, "validation_mean_dice": validation,
        "train_seconds": bundle_train_seconds(trained), "epochs": training.get("epochs_completed"),
        "best_epoch": training.get("best_epoch"), "metrics": summary["metrics"],
        "command_train": "medanalysis " + " ".join(train_command),
        "command_evaluate": "medanalysis " + " ".join(eval_command), "machine": machine(),
        "load_after": load_average(),
    }
    write_json(record_path, record)
    return record


# --- CT contrast -------------------------------------------------------------------------------------------------

def write_ct_manifest(data: Path, rows: list[dict[str, str]], path: Path) -> None:
    """A CSV manifest: case_id, image (relative to the CSV), target, patient_id (split and bootstrap group)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["case_id", "image", "target", "patient_id"])
        for row in rows:
            image = os.path.relpath((data / row["file"]).resolve(), path.parent.resolve())
            writer.writerow([Path(row["file"]).stem, image, row["contrast"], row["patient_id"]])


#: The CT classes by name, for the shipped model's labels (what the panel and the tables show).
CT_CLASSES = {"0": "no contrast", "1": "contrast"}


def ct_train_args(manifest: Path, bundle: Path, epochs: int, seed: int, name: str,
                  labels: Path | None = None) -> list[str]:
    """The ``medanalysis train`` command of the CT recipe (that of ``bench/accuracy_ct_contrast``), with the class
    names of ``labels`` when given."""
    named = ["--labels", str(labels)] if labels is not None else []
    return ["train", str(manifest), "--task", "classification", "--model", "slice_cnn", "--out", str(bundle),
            "--epochs", str(epochs), "--seed", str(seed), *CT_RECIPE, "--name", name, *named]


def ct_cross_validation(args: argparse.Namespace, out: Path, rows: list[dict[str, str]]) -> dict[str, Any]:
    """Out-of-fold probabilities of a patient-grouped k-fold run, pooled, with patient-bootstrap CIs."""
    import numpy as np

    from MedAnalysisLib.data.datasets import Case, kfold_splits
    from MedAnalysisLib.evaluation.metrics import roc_auc

    data = args.data_root / "ct_contrast"
    by_id = {Path(r["file"]).stem: r for r in rows}
    cases = [Case(k, (r["file"],), target=int(r["contrast"]), group=r["patient_id"]) for k, r in by_id.items()]
    oof: list[dict[str, Any]] = []
    fold_auc, train_seconds = [], 0.0
    splits = kfold_splits(cases, args.ct_folds, args.seed)
    for fold, (train, test) in enumerate(splits[: args.ct_max_folds]):
        if {c.group for c in train} & {c.group for c in test}:
            raise AssertionError("a patient is on both sides of a fold")
        folder = out / f"fold{fold}"
        write_ct_manifest(data, [by_id[c.case_id] for c in train], folder / "train.csv")
        write_ct_manifest(data, [by_id[c.case_id] for c in test], folder / "test.csv")
        bundle = folder / "model"
        if not (bundle / "bundle.json").is_file():
            cli(ct_train_args(folder / "train.csv", bundle, args.ct_epochs, args.seed, f"{CT_ID}-fold{fold}"),
                folder / "train.log")
        train_seconds += bundle_train_seconds(bundle)
        evaluation = folder / "evaluation"
        if not (evaluation / "per_case.csv").is_file():
            cli(["evaluate", str(bundle), str(folder / "test.csv"), "--out", str(evaluation), "--bootstrap", "0",
                 "--no-figures"], folder / "evaluate.log")
        with (evaluation / "per_case.csv").open(newline="", encoding="utf-8") as handle:
            fold_rows = list(csv.DictReader(handle))
        targets = [int(r["target"]) for r in fold_rows]
        scores = [float(r["p_1"]) for r in fold_rows]
        fold_auc.append(roc_auc(targets, scores))
        oof += [{"case_id": r["case_id"], "fold": fold, "target": int(r["target"]), "p_1": float(r["p_1"]),
                 "group": by_id[r["case_id"]]["patient_id"]} for r in fold_rows]
    targets = np.array([r["target"] for r in oof])
    scores = np.array([r["p_1"] for r in oof])
    groups = [r["group"] for r in oof]

    def accuracy(t: np.ndarray, s: np.ndarray) -> float:
        return float(np.mean((s >= 0.5) == t))

    return {
        "slices": len(oof), "patients": len(set(groups)), "folds": args.ct_folds,
        "folds_run": len(splits[: args.ct_max_folds]), "epochs": args.ct_epochs,
        "auc": roc_auc(targets, scores), "auc_ci": cluster_bootstrap(groups, roc_auc, targets, scores, n=2000,
                                                                     seed=args.seed),
        "accuracy": accuracy(targets, scores),
        "accuracy_ci": cluster_bootstrap(groups, accuracy, targets, scores, n=2000, seed=args.seed),
        "fold_auc": fold_auc, "train_seconds": train_seconds,
    }


def train_ct_final(args: argparse.Namespace, out: Path, rows: list[dict[str, str]]) -> list[str]:
    """Train the shipped CT model with the recipe on all slices (skipped when it exists); returns its command."""
    write_ct_manifest(args.data_root / "ct_contrast", rows, out / "all.csv")
    write_json(out / "classes.json", CT_CLASSES)
    command = ct_train_args(out / "all.csv", out / "trained", args.ct_epochs, args.seed, CT_ID, out / "classes.json")
    if not (out / "trained" / "bundle.json").is_file():
        cli(command, out / "train.log")
    return command


def build_ct(args: argparse.Namespace, out: Path, final_only: bool = False) -> dict[str, Any]:
    """Cross-validate the recipe, then train the shipped model on all slices; returns the record."""
    record_path = out / "record.json"
    if record_path.is_file():
        return read_json(record_path)
    with (args.data_root / "ct_contrast" / "labels.csv").open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    if final_only:
        train_ct_final(args, out, rows)
        return {}
    cv_path = out / "cross_validation.json"
    if not cv_path.is_file():
        write_json(cv_path, ct_cross_validation(args, out / "cv", rows))
    train_command = train_ct_final(args, out, rows)
    final = out / "trained"
    record = {
        "bundle": str(final), "slices": len(rows), "patients": len({r["patient_id"] for r in rows}),
        "positives": sum(r["contrast"] == "1" for r in rows), "cross_validation": read_json(cv_path),
        "train_seconds": bundle_train_seconds(final), "epochs": args.ct_epochs,
        "command_train": "medanalysis " + " ".join(train_command), "machine": machine(),
        "load_after": load_average(),
    }
    write_json(record_path, record)
    return record


# --- cards, zips, catalog entries -------------------------------------------------------------------------------

def common_card(license_text: str) -> dict[str, Any]:
    """The card fields both reference models share."""
    return {"clinical_use": CLINICAL_USE, "authors": [AUTHORS], "version": VERSION, "license": license_text,
            "intended_use": INTENDED_USE}


def hippocampus_card(record: dict[str, Any]) -> dict[str, Any]:
    """The model card of the hippocampus model, without its evaluation (:func:`evaluation_of` adds it from the test
    ``summary.json``); only figures this script measured."""
    minutes = record["train_seconds"] / 60
    n_cases = record["train_cases"] + record["val_cases"]
    return {
        **common_card("CC BY-SA 4.0 (the model is trained on CC BY-SA 4.0 data and is shared alike; attribute the "
                      "Medical Segmentation Decathlon, Simpson et al. 2019)"),
        "citation": HIPPO_DATA["reference"],
        "out_of_scope_use": "Clinical decisions or diagnosis of any kind; volumetry for patient care. Whole-head MRI "
                            "(the model expects a crop around one hippocampus, as in its training data). Other MRI "
                            "sequences than T1-weighted, CT or any other modality. Other structures or body parts.",
        "training_data": {**HIPPO_DATA, "n_cases": n_cases,
                          "description": f"{record['train_cases']} training and {record['val_cases']} validation "
                                         "cases (the validation cases chose the kept epoch and the post-processing) "
                                         f"of the 208 labelled crops; {record['test_cases']} other cases (seed-0 "
                                         "split) were held out for the evaluation and never used in training or "
                                         "model selection. Labels: 1 anterior (head), 2 posterior (body and tail)."},
        "limitations": [
            f"Small 3D U-Net (base_filters 8, max_filters 64, about 0.35 M parameters) trained with a reduced budget: "
            f"{record['epochs']} epochs of 25 batches of 4 patches, {minutes:.0f} minutes on a shared 2-core CPU "
            f"(kept epoch {record['best_epoch']}). The larger configuration of docs/accuracy.md trains longer and "
            "scores higher.",
            f"Trained on {n_cases} crops of one public collection whose scanners and patients are not described; "
            "accuracy on other scanners, field strengths or patient groups (atrophy, surgery, children) is unknown.",
            "Expects a crop around one hippocampus at about 1 mm spacing; it does not locate the hippocampus in a "
            "whole head, and on such input its output is meaningless.",
            "The evaluation cases come from the same collection as the training cases (the Decathlon's own test "
            "labels are not public).",
        ],
        "references": [HIPPO_DATA["reference"]],
    }


def folds_text(cv: dict[str, Any]) -> str:
    """``5 folds`` or ``the first 3 test folds of 5``: how much of the cross-validation ran."""
    run = cv.get("folds_run", cv["folds"])
    return f"{cv['folds']} folds" if run == cv["folds"] else f"the first {run} test folds of {cv['folds']}"


def ct_card(record: dict[str, Any]) -> dict[str, Any]:
    """The model card of the CT contrast classifier: only figures this script measured."""
    cv = record["cross_validation"]
    minutes = record["train_seconds"] / 60

    def metric(name: str, key: str) -> dict[str, Any]:
        return {"name": name, "value": round(cv[key], 4), "ci_low": round(cv[key + "_ci"][0], 4),
                "ci_high": round(cv[key + "_ci"][1], 4), "level": 0.95, "n": cv["slices"]}

    return {
        **common_card("CC BY 3.0 (trained on TCIA data under CC BY 3.0; attribute The Cancer Imaging Archive and "
                      "The Cancer Genome Atlas)"),
        "citation": CT_DATA["reference"],
        "out_of_scope_use": "Clinical decisions, protocol checks or quality control in patient care. MRI, "
                            "radiographs or any modality other than CT. Body parts other than chest and upper "
                            "abdomen. Telling contrast phases (arterial, portal venous, delayed) apart. A whole "
                            "series as one decision (it scores single slices).",
        "training_data": {**CT_DATA, "n_cases": record["slices"],
                          "description": f"{record['slices']} axial CT slices of {record['patients']} patients "
                                         f"({record['positives']} with intravenous contrast); the shipped model is "
                                         "trained on all of them. Only pixel values in Hounsfield units reach the "
                                         "model, never DICOM tags. Class 1: contrast, class 0: no contrast."},
        "evaluation": {
            "data": f"The same recipe ({cv['epochs']} epochs, final epoch kept, one seed) in {folds_text(cv)} "
                    "of a cross-validation grouped by patient and stratified by class: each fold's model trained "
                    "on the other folds' patients, medanalysis evaluate on its test fold, the out-of-fold "
                    f"probabilities of {cv['slices']} slices ({cv['patients']} patients) pooled; accuracy at "
                    "threshold 0.5; 95% intervals by percentile bootstrap over patients (2000 resamples). Per-fold "
                    "AUC: " + " ".join(f"{a:.2f}" for a in cv["fold_auc"]) + ". The shipped model, trained on all "
                    "slices, has no held-out test of its own.",
            "n_cases": cv["slices"],
            "metrics": [metric("auc", "auc"), metric("accuracy", "accuracy")],
        },
        "limitations": [
            f"Very small data: {record['slices']} slices of {record['patients']} patients; wide confidence intervals.",
            f"Reduced training: {record['epochs']} epochs on a shared 2-core CPU ({minutes:.1f} minutes for the "
            "shipped model), one seed, no ensemble; docs/accuracy.md reports the longer recipe and ensembles.",
            "In the error review of the longer 50-epoch recipe (docs/accuracy.md) the misses included slices at the "
            "shoulders and pelvis, where contrast shows only in small vessels, and some slices with a plainly "
            "enhanced aorta; this model has not been reviewed case by case.",
            "Scanners, protocols and contrast timing of the data are not controlled; accuracy on other data is "
            "unknown.",
        ],
        "references": [CT_DATA["reference"]],
    }


def evaluation_of(bundle: Path, summary: Path, about: str) -> dict[str, Any]:
    """The card's evaluation from a ``medanalysis evaluate`` summary of this bundle, as ``configure --evaluation``
    makes it (the library's function: the summary must be of these weights and this task), with ``about`` (what the
    cases are) in front of its text, which otherwise names only the data folder."""
    from MedAnalysisLib.bundles.card import evaluation_from_summary

    config = read_json(bundle / "bundle.json")
    evaluation = evaluation_from_summary(read_json(summary), config["weights"]["sha256"], config["task"])
    evaluation["data"] = f"{about}. Folder {evaluation['data']}"
    return evaluation


def package(bundle: Path, card: dict[str, Any], out: Path, model_id: str) -> Path:
    """Write the card file and the final zip: ``medanalysis configure BUNDLE --out ID-VERSION.zip --card CARD``."""
    card_path = out / "cards" / f"{model_id}.card.json"
    write_json(card_path, card)
    target = out / "zips" / f"{model_id}-{VERSION}.zip"
    if not target.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        cli(["configure", str(bundle), "--out", str(target), "--card", str(card_path)],
            out / "logs" / f"zip-{model_id}.log")
    return target


def check_zip(target: Path, case: Path, out: Path, model_id: str) -> str:
    """``medanalysis info`` and ``medanalysis predict`` on one case with the zipped bundle; returns info's text."""
    done = out / "checks" / f"{model_id}.info.txt"
    if done.is_file():
        return done.read_text(encoding="utf-8")
    info = subprocess.run([*medanalysis_command(), "info", str(target)], capture_output=True, text=True, cwd=REPO,
                          check=False)
    if info.returncode != 0:
        raise RuntimeError(f"medanalysis info {target.name} failed: {info.stdout[-400:]} {info.stderr[-400:]}")
    cli(["predict", str(target), str(case), "--out", str(out / "checks" / model_id), "--overwrite"],
        out / "logs" / f"predict-{model_id}.log")
    done.write_text(info.stdout, encoding="utf-8")
    return info.stdout


def zip_config(target: Path) -> dict[str, Any]:
    """The ``bundle.json`` inside a bundle zip (at its root or one folder down)."""
    import zipfile

    with zipfile.ZipFile(target) as archive:
        name = next(n for n in archive.namelist() if n.split("/")[-1] == "bundle.json" and n.count("/") <= 1)
        return json.loads(archive.read(name).decode("utf-8"))


def catalog_entry(model_id: str, target: Path, **fields: Any) -> dict[str, Any]:
    """One entry of the default catalog for a shipped zip: task and labels as the bundle states them (the catalog
    compares them after a pull), size and sha256 of the zip, and its path relative to the catalog file."""
    config = zip_config(target)
    labels = [{"value": int(label["value"]), "name": str(label["name"])} for label in config["labels"]]
    entry = {"id": model_id, "version": VERSION, **fields, "task": config["task"], "labels": labels,
             "size": target.stat().st_size, "sha256": sha256_of(target), "urls": [f"models/{target.name}"]}
    try:  # the catalog's own checks, where this version of the library has them
        from MedAnalysisLib.catalog.pull import check_bundle
        from MedAnalysisLib.catalog.schema import CatalogEntry
    except ImportError:
        return entry
    check_bundle(target, CatalogEntry.from_dict(entry))
    return entry


def hippocampus_entry(target: Path) -> dict[str, Any]:
    """The catalog entry of the hippocampus model."""
    return catalog_entry(
        HIPPO_ID, target, title="Hippocampus segmentation, small 3D U-Net (T1 MRI crops)", modality="MR",
        body_part="brain", license="CC BY-SA 4.0", citation=HIPPO_DATA["reference"], intended_use=INTENDED_USE,
        description="Segments the anterior (head) and posterior (body and tail) hippocampus on a T1-weighted MRI "
                    "crop around one hippocampus, as in the Medical Segmentation Decathlon Task04 data it was "
                    "trained on. A small reference model for trying MedAnalysis; not for clinical use.")


def ct_entry(target: Path) -> dict[str, Any]:
    """The catalog entry of the CT contrast classifier."""
    return catalog_entry(
        CT_ID, target, title="Chest CT contrast / no contrast, 2D slice classifier", modality="CT",
        body_part="chest", license="CC BY 3.0", citation=CT_DATA["reference"], intended_use=INTENDED_USE,
        description="Gives the probability that an axial chest CT slice was acquired with intravenous contrast "
                    "(classes 'contrast' and 'no contrast'), from its Hounsfield units only. Trained on 83 "
                    "slices from TCIA TCGA collections. A small reference model for trying MedAnalysis; not for "
                    "clinical use.")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-root", type=Path, required=True,
                        help="folder holding hippocampus/ (MSD Task04) and ct_contrast/ (labels.csv, dicom/)")
    parser.add_argument("--out", type=Path, default=OUTPUT / "reference_models", help="output folder")
    parser.add_argument("--seed", type=int, default=0, help="seed of the splits and of training")
    parser.add_argument("--n-test", type=int, default=40, help="hippocampus test cases (default 40 of 208)")
    parser.add_argument("--hippo-epochs", type=int, default=50)
    parser.add_argument("--hippo-steps", type=int, default=25, help="hippocampus steps per epoch (batch 4)")
    parser.add_argument("--ct-folds", type=int, default=5)
    parser.add_argument("--ct-epochs", type=int, default=25)
    parser.add_argument("--ct-max-folds", type=int, default=None,
                        help="train and test only the first N folds of the --ct-folds split (a shorter run; the "
                        "pooled figures then cover those N test folds)")
    parser.add_argument("--max-zip-mb", type=float, default=2.5, help="largest zip --install copies")
    parser.add_argument("--install", action="store_true",
                        help="copy the zips into MedAnalysisLib/catalog/models/ when each is small enough")
    parser.add_argument("--only", choices=("split", "hippocampus", "ct", "ct-final"), default=None,
                        help="one part only, so that separate processes can build the parts at once: split (the "
                        "hippocampus train/test folders, nothing trained), a model "
                        "(training and evaluation), or ct-final, the shipped CT model without its cross-validation; "
                        "a run without --only reuses what they wrote and packages both")
    parser.add_argument("--fresh", action="store_true", help="delete earlier outputs and start over")
    args = parser.parse_args()
    args.data_root = args.data_root.resolve()
    for needed in ("hippocampus/dataset.json", "ct_contrast/labels.csv"):
        if not (args.data_root / needed).is_file():
            parser.error(f"expected {needed} under --data-root, got none in {args.data_root}")
    out: Path = args.out.resolve()
    if args.fresh and out.exists():
        shutil.rmtree(out)
    started = time.monotonic()
    if args.only in ("split", "hippocampus"):
        build_hippocampus(args, out / "hippocampus")
        return 0
    if args.only in ("ct", "ct-final"):
        build_ct(args, out / "ct_contrast", final_only=args.only == "ct-final")
        return 0
    hippo = build_hippocampus(args, out / "hippocampus")
    ct = build_ct(args, out / "ct_contrast")
    hippo_card = hippocampus_card(hippo)
    hippo_card["evaluation"] = evaluation_of(
        Path(hippo["bundle"]), out / "hippocampus" / "evaluation-test" / "summary.json",
        f"{hippo['test_cases']} MSD Task04 cases held out by the seed-{args.seed} split of bench/accuracy_hippocampus, "
        "never used in training or model selection; post-processing as stored in the bundle")
    hippo_zip = package(Path(hippo["bundle"]), hippo_card, out, HIPPO_ID)
    ct_zip = package(Path(ct["bundle"]), ct_card(ct), out, CT_ID)
    split = read_json(out / "hippocampus" / "split.json")
    check_zip(hippo_zip, args.data_root / "hippocampus" / "imagesTr" / f"{split['test'][0]}.nii.gz", out, HIPPO_ID)
    with (args.data_root / "ct_contrast" / "labels.csv").open(newline="", encoding="utf-8") as handle:
        first_slice = next(csv.DictReader(handle))["file"]
    check_zip(ct_zip, args.data_root / "ct_contrast" / first_slice, out, CT_ID)
    entries = [hippocampus_entry(hippo_zip), ct_entry(ct_zip)]
    write_json(out / "catalog_entries.json", entries)
    print(json.dumps(entries, indent=1))
    print(f"hippocampus: Dice anterior {fmt_ci(hippo['metrics']['dice_anterior'])}, posterior "
          f"{fmt_ci(hippo['metrics']['dice_posterior'])}; training {hippo['train_seconds'] / 60:.1f} min")
    cv = ct["cross_validation"]
    print(f"ct contrast: pooled AUC {cv['auc']:.3f} [{cv['auc_ci'][0]:.3f}, {cv['auc_ci'][1]:.3f}], accuracy "
          f"{cv['accuracy']:.3f}; final training {ct['train_seconds'] / 60:.1f} min")
    for entry, path in ((entries[0], hippo_zip), (entries[1], ct_zip)):
        print(f"{path.name}: {entry['size'] / 1e6:.2f} MB, sha256 {entry['sha256']}")
        if args.install:
            if entry["size"] > args.max_zip_mb * 1e6:
                print(f"not installed: {path.name} is larger than {args.max_zip_mb} MB", flush=True)
                continue
            CATALOG_MODELS.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, CATALOG_MODELS / path.name)
    print(f"done in {(time.monotonic() - started) / 60:.1f} min (load {load_average()})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
