"""``medanalysis train DATA --task segmentation|classification --model NAME --out BUNDLE``.

DATA is any input form the other commands accept (:func:`MedAnalysisLib.data.sources.resolve_source`): a Medical
Segmentation Decathlon folder or its ``dataset.json`` (``imagesTr/``, ``labelsTr/``), a CSV manifest, DICOM folders
or files, image files or a folder of them (unlabelled forms can only train what needs no labels). Label names come
from ``dataset.json``; ``--labels labels.json`` gives names, colours and standard codes (see
:func:`MedAnalysisLib.terminology.read_labels_file`), and names the built-in table knows get their codes anyway.
The run writes a
model bundle (folder, or .zip when BUNDLE ends in .zip) and keeps a resume checkpoint beside it until it finishes,
so running the same command again after a crash or a cancel continues from the last completed epoch.

A stop request stops at the next batch boundary, saves the checkpoint and exits with code 3: the line ``stop`` on
stdin when the parent set ``MEDANALYSIS_STOP_ON_STDIN=1``, or the creation of the file named by
``MEDANALYSIS_STOP_FILE`` (the Slicer panel's Cancel sends both, on every platform; the file also reaches a child
started through a launcher that does not forward stdin, such as ``PythonSlicer``), or SIGTERM/Ctrl+C (a scheduler
such as Slurm, a terminal).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from MedAnalysisLib.errors import InputError
from MedAnalysisLib.progress import Reporter, StopFlag


def _key_value(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected key=value, got {text!r}")
    key, value = text.split("=", 1)
    try:
        parsed: Any = json.loads(value)
    except json.JSONDecodeError:
        parsed = value
    return key.strip(), parsed


def register(subparsers: Any, parents: list[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "train",
        parents=parents,
        help="train a model on a dataset and write a model bundle",
        description="Train a segmentation or classification model and save it as a bundle. Re-running the same "
        "command resumes an interrupted run.",
    )
    parser.add_argument("data", help="MSD folder or its dataset.json, CSV manifest, DICOM folder or file, image file "
                        "or folder of image files")
    parser.add_argument("--task", choices=("segmentation", "classification"), required=True)
    parser.add_argument("--model", required=True, metavar="NAME",
                        help="model family: unet3d, unet2d, slice_cnn, cnn3d or cnn_rnn")
    parser.add_argument("--out", required=True, help="bundle to write (folder, or a path ending in .zip)")
    parser.add_argument("--epochs", type=int, default=50, help="maximum number of epochs (default 50)")
    parser.add_argument("--plan", default=None, help="preprocessing plan JSON (default: planned from the data)")
    parser.add_argument("--set", dest="plan_overrides", type=_key_value, action="append", default=[],
                        metavar="KEY=VALUE", help="override a plan field, e.g. --set patch_size=32,32,32")
    parser.add_argument("--hparam", dest="hparams", type=_key_value, action="append", default=[],
                        metavar="KEY=VALUE", help="model hyper-parameter, e.g. --hparam base_filters=16 "
                        "--hparam preset=residual (values parsed as JSON when they can be)")
    parser.add_argument("--augment", dest="augment", type=_key_value, action="append", default=[],
                        metavar="KEY=VALUE", help="change one augmentation setting, e.g. --augment p_gamma=0 "
                        "--augment p_brightness=0 (fields of MedAnalysisLib.preprocessing.augment.AugmentConfig)")
    parser.add_argument("--no-augment", action="store_true", help="train without augmentation")
    parser.add_argument("--val-fraction", type=float, default=0.2, help="share of cases (or groups) for validation")
    parser.add_argument("--folds", type=int, default=None, help="k-fold cross-validation: number of folds")
    parser.add_argument("--fold", type=int, default=0, help="which fold to train when --folds is given (0-based)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the split, sampling and initialisation")
    parser.add_argument("--batch-size", type=int, default=None, help="batch size (default: from the plan)")
    parser.add_argument("--steps-per-epoch", type=int, default=None, help="training batches per epoch")
    parser.add_argument("--learning-rate", type=float, default=None, help="initial learning rate")
    parser.add_argument("--monitor", default=None, metavar="METRIC",
                        help="validation metric that picks the epoch to keep, e.g. val_loss or val_auc, or 'last' "
                        "for the final epoch (default: mean Dice for segmentation, AUC for binary classification; "
                        "the final epoch with --val-fraction 0)")
    parser.add_argument("--patience", type=int, default=None, help="early-stopping patience in epochs")
    parser.add_argument("--workers", type=int, default=2, help="data-loading workers (threads)")
    parser.add_argument("--mixed-precision", choices=("auto", "on", "off"), default="auto",
                        help="mixed precision (auto: on for GPUs that support it)")
    parser.add_argument("--tensorboard", default=None, metavar="DIR", help="also write TensorBoard logs to DIR")
    parser.add_argument("--no-resume", action="store_true", help="ignore an existing checkpoint and start over")
    parser.add_argument("--name", default=None, help="model name stored in the bundle")
    parser.add_argument("--labels", default=None, metavar="LABELS.json",
                        help="label names, colours and standard codes per label value, e.g. "
                        '[{"value": 1, "name": "liver"}, {"value": 2, "name": "tumour", "color": [255, 0, 200]}] '
                        "(codes of names the built-in table knows are filled in; see docs/outputs.md)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace, reporter: Reporter) -> int:
    from MedAnalysisLib.data.sources import resolve_source
    from MedAnalysisLib.training import train

    if args.epochs < 1:
        raise InputError(f"expected --epochs >= 1, got {args.epochs}")
    labels = None
    if args.labels:
        from MedAnalysisLib.terminology import read_labels_file

        labels = read_labels_file(args.labels)
    dataset = resolve_source(args.data)  # checked now; train() loads it with the task the model family needs
    plan = None
    if args.plan:
        from MedAnalysisLib.preprocessing.plan import Plan

        plan = Plan.from_json(Path(args.plan).read_text(encoding="utf-8"))
    if args.no_augment and args.augment:
        raise InputError("expected either --no-augment or --augment KEY=VALUE, got both")
    augment: bool | dict[str, Any] = False if args.no_augment else (dict(args.augment) or True)
    stop_flag = StopFlag().install()
    result = train(
        dataset.path,
        task=args.task,
        family=args.model,
        out=args.out,
        epochs=args.epochs,
        plan=plan,
        plan_overrides=dict(args.plan_overrides) or None,
        hparams=dict(args.hparams) or None,
        val_fraction=args.val_fraction,
        folds=args.folds,
        fold=args.fold,
        seed=args.seed,
        batch_size=args.batch_size,
        steps_per_epoch=args.steps_per_epoch,
        learning_rate=args.learning_rate,
        patience=args.patience,
        augment=augment,
        monitor=args.monitor,
        workers=args.workers,
        mixed_precision=args.mixed_precision,
        tensorboard_dir=args.tensorboard,
        resume=not args.no_resume,
        name=args.name,
        labels=labels,
        reporter=reporter,
        stop_flag=stop_flag,
    )
    reporter.result(bundle=str(result.bundle_path), metrics=result.metrics, epochs=len(result.history.get("loss", [])))
    if reporter.mode != "jsonl":
        print(f"bundle written to {result.bundle_path}")
    return 0
