"""``medanalysis train DATA --task segmentation|classification --model NAME --out BUNDLE``.

DATA is any input form the other commands accept (:func:`MedAnalysisLib.data.sources.resolve_source`): a Medical
Segmentation Decathlon folder or its ``dataset.json`` (``imagesTr/``, ``labelsTr/``), a CSV manifest, DICOM folders
or files, image files or a folder of them (unlabelled forms can only train what needs no labels). Label names come
from ``dataset.json``; ``--labels labels.json`` gives names, colours and standard codes (see
:func:`MedAnalysisLib.terminology.read_labels_file`), and names the built-in table knows get their codes anyway.
DATA may also be a preprocessed cache folder (``medanalysis preprocess``): training then reads only the cache.
Otherwise the prepared cases are kept in a cache folder, ``OUT.cache`` beside OUT (OUT without .zip) or ``--cache
DIR``, which the run reports: a second run (or a resumed one) on the same data and plan prepares nothing, and
training reads patches lazily from it, so memory does not grow with the number of cases. ``--no-cache`` prepares
every case in memory instead (as earlier versions did). The run writes a
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
from pathlib import Path
from typing import TYPE_CHECKING, Any

from MedAnalysisLib.cli._validate import OVERWRITE_POLICY, add_overwrite_option, model_family
from MedAnalysisLib.errors import InputError
from MedAnalysisLib.progress import Reporter, StopFlag

if TYPE_CHECKING:
    from MedAnalysisLib.training.options import TrainingOptions


def _key_value(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected key=value, got {text!r}")
    key, value = text.split("=", 1)
    return key.strip(), _option_value(key.strip(), value)


def _option_value(key: str, value: str) -> Any:
    """A ``KEY=VALUE`` value parsed as JSON when it is JSON, else kept as text (``preset=residual``).

    JSON nested too deeply (or too long) is refused (exit code 2 with one line), never a traceback.
    """
    from MedAnalysisLib.io.small_files import parse_json_text

    try:
        return parse_json_text(value, f"a JSON value for {key}", allow_nan=True)  # numbers are checked by field
    except InputError as error:
        if "nested deeper" in str(error) or "characters, got" in str(error):
            raise argparse.ArgumentTypeError(str(error)) from None
        return value


#: Name added to OUT (without .zip) for the resume checkpoint folder
#: (:func:`MedAnalysisLib.training.runner.checkpoint_dir_for`).
CHECKPOINT_SUFFIX = ".checkpoint"

EPILOG = (
    "Existing output: when OUT already holds a finished bundle the command refuses (exit code 2) unless --overwrite "
    "is given, which trains again and replaces it; a run stopped before it finished (its checkpoint "
    "OUT.checkpoint beside OUT) is resumed, or started over with --no-resume. The preprocessed cache (OUT.cache "
    "beside OUT, or --cache DIR) is kept and reused by later runs; a folder of other files there is refused. "
    + OVERWRITE_POLICY
)


def register(subparsers: Any, parents: list[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "train",
        parents=parents,
        help="train a model on a dataset and write a model bundle",
        description="Train a segmentation or classification model and save it as a bundle. Re-running the same "
        "command resumes an interrupted run.",
        epilog=EPILOG,
    )
    parser.add_argument("data", help="MSD folder or its dataset.json, CSV manifest, DICOM folder or file, image file "
                        "or folder of image files, or a preprocessed cache folder (medanalysis preprocess)")
    parser.add_argument("--task", choices=("segmentation", "classification"), required=True)
    parser.add_argument("--model", required=True, metavar="NAME", type=model_family,
                        help="model family: unet3d, unet2d (segmentation), slice_cnn, cnn3d or cnn_rnn "
                        "(classification)")
    parser.add_argument("--out", required=True, help="bundle to write (folder, or a path ending in .zip)")
    parser.add_argument("--epochs", type=int, default=50, help="maximum number of epochs (default: 50)")
    parser.add_argument("--plan", default=None,
                        help="preprocessing plan JSON (default: planned from the training cases)")
    parser.add_argument("--set", dest="plan_overrides", type=_key_value, action="append", default=[],
                        metavar="KEY=VALUE", help="override a plan field, e.g. --set patch_size=32,32,32 (repeatable; "
                        "default: none)")
    parser.add_argument("--hparam", dest="hparams", type=_key_value, action="append", default=[],
                        metavar="KEY=VALUE", help="model hyper-parameter, e.g. --hparam base_filters=16 "
                        "--hparam preset=residual (values parsed as JSON when they can be; default: the family's)")
    parser.add_argument("--augment", dest="augment", type=_key_value, action="append", default=[],
                        metavar="KEY=VALUE", help="change one augmentation setting, e.g. --augment p_gamma=0 "
                        "--augment p_brightness=0 (fields of MedAnalysisLib.preprocessing.augment.AugmentConfig; "
                        "default: its defaults)")
    parser.add_argument("--no-augment", action="store_true", help="train without augmentation")
    parser.add_argument("--val-fraction", type=float, default=0.2,
                        help="share of cases (or groups) for validation")
    parser.add_argument("--folds", type=int, default=None,
                        help="k-fold cross-validation: number of folds (default: none, one split by --val-fraction)")
    parser.add_argument("--fold", type=int, default=0, help="which fold to train when --folds is given (0-based)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the split, sampling and initialisation")
    parser.add_argument("--batch-size", type=int, default=None, help="batch size (default: from the plan)")
    parser.add_argument("--steps-per-epoch", type=int, default=None,
                        help="training batches per epoch (default: about four passes over the training cases, at "
                        "most 250)")
    parser.add_argument("--learning-rate", type=float, default=None, help="initial learning rate (default: 1e-3)")
    parser.add_argument("--monitor", default=None, metavar="METRIC",
                        help="validation metric that picks the epoch to keep, e.g. val_loss or val_auc, or 'last' "
                        "for the final epoch (default: mean Dice for segmentation, AUC for binary classification; "
                        "the final epoch with --val-fraction 0)")
    parser.add_argument("--patience", type=int, default=None,
                        help="early-stopping patience in epochs (default: no early stopping)")
    parser.add_argument("--workers", type=int, default=2, help="data-loading workers (threads)")
    parser.add_argument("--threads", type=int, default=None, metavar="N",
                        help="TensorFlow intra-op threads (default: one per available core); the weights depend on "
                        "this count, not on the machine, and the bundle records it (training.intra_op_threads): "
                        "give the same N to reproduce a bundle bit for bit elsewhere")
    parser.add_argument("--deterministic", action="store_true",
                        help="TensorFlow op determinism: deterministic kernels, or an error for ops that have none; "
                        "slower on GPUs and for tf.data (on CPU runs at a fixed --threads are already repeatable); "
                        "see docs/reproducibility.md")
    parser.add_argument("--mixed-precision", choices=("auto", "on", "off"), default="auto",
                        help="mixed precision (auto: on for GPUs that support it)")
    parser.add_argument("--tensorboard", default=None, metavar="DIR",
                        help="also write TensorBoard logs to DIR (default: none)")
    parser.add_argument("--no-resume", action="store_true", help="ignore an existing checkpoint and start over")
    cache = parser.add_mutually_exclusive_group()
    cache.add_argument("--cache", default=None, metavar="DIR",
                       help="folder of the preprocessed cache to write or reuse (default: OUT.cache beside OUT; "
                       "unused when DATA is a cache)")
    cache.add_argument("--no-cache", action="store_true",
                       help="prepare every case in memory instead of through a cache (memory grows with the data)")
    add_overwrite_option(parser, "a finished bundle at --out")
    parser.add_argument("--name", default=None,
                        help="model name stored in the bundle (default: the data folder's name and the family)")
    parser.add_argument("--labels", default=None, metavar="LABELS.json",
                        help="label names, colours and standard codes per label value, e.g. "
                        '[{"value": 1, "name": "liver"}, {"value": 2, "name": "tumour", "color": [255, 0, 200]}] '
                        "(codes of names the built-in table knows are filled in; see docs/outputs.md; default: the "
                        "names in the data)")
    add_card_options(parser, "default: train fills the training data from dataset.json, the validation metrics "
                     "and version 1.0.0, clinical use 'not for clinical use', the rest not stated")
    parser.set_defaults(func=run, validate=validate)


def add_card_options(parser: argparse.ArgumentParser, defaults: str, *, copy: bool = False) -> None:
    """The model-card options shared by ``train``, ``ensemble`` and ``configure`` (``copy``: a copy of a bundle,
    whose card is unchanged by default): ``--card FILE`` and a few fields given directly, which win over the file
    (see docs/bundles.md)."""

    def default(new: str) -> str:
        return "(default: unchanged)" if copy else f"(default: {new})"

    group = parser.add_argument_group("model card", f"fields of the bundle's model card ({defaults}; options win over "
                                      "--card)")
    group.add_argument("--card", default=None, metavar="CARD.json",
                       help="a JSON object with any of the card's fields: authors, version, changelog, license, "
                       "citation, intended_use, out_of_scope_use, training_data, evaluation, limitations, "
                       f"clinical_use, references {default('none')}")
    group.add_argument("--author", dest="authors", action="append", default=None, metavar="NAME",
                       help=f"an author of the model (repeatable; replaces the file's authors) {default('none')}")
    group.add_argument("--model-version", default=None, metavar="VERSION",
                       help=f"the model's version, e.g. 1.1.0 {default('1.0.0')}")
    group.add_argument("--license", default=None, metavar="TEXT",
                       help=f"the licence of the model's weights, e.g. CC-BY-4.0 {default('not stated')}")
    group.add_argument("--intended-use", default=None, metavar="TEXT",
                       help=f"what the model is for: task, population, setting {default('not stated')}")


def card_from_args(args: argparse.Namespace) -> dict[str, Any] | None:
    """The card fields the options give (``--card`` read as a small JSON file, then the direct options over it),
    each checked, or None when none is given.

    Raises:
        InputError: An unreadable, oversized, deeply nested or non-JSON file; an unknown field; a value of the wrong
            type, too long, not printable or not finite.
    """
    from MedAnalysisLib.bundles.card import check_card_part
    from MedAnalysisLib.io.small_files import read_json_file

    card: dict[str, Any] = {}
    if args.card is not None:
        found = read_json_file(args.card, "a model card JSON file (--card)")
        if not isinstance(found, dict):
            raise InputError(f"expected a JSON object in the --card file, got {type(found).__name__}")
        card.update(found)
    direct = {"authors": args.authors, "version": args.model_version, "license": args.license,
              "intended_use": args.intended_use}
    card.update({key: value for key, value in direct.items() if value is not None})
    return check_card_part(card, InputError) if args.card is not None or card else None


def validate(args: argparse.Namespace) -> None:
    """Refuse what cannot train before TensorFlow is imported: every option as the Python API checks it
    (:func:`training_options`, which also reads --labels and --plan; numbers in range, hyper-parameters the model
    family accepts), data that is neither a dataset nor a finished cache, a cache folder holding anything but a
    cache, an --out the overwrite policy refuses (see :data:`EPILOG`), a
    checkpoint path holding anything but a checkpoint, and a --tensorboard that is not a writable folder.

    Raises:
        InputError: The first problem found, saying what was expected and what was found.
    """
    from MedAnalysisLib.cli._validate import check_bundle_output, check_folder_location, check_outputs_apart
    from MedAnalysisLib.data.cache import is_cache, open_cache
    from MedAnalysisLib.data.sources import resolve_source
    from MedAnalysisLib.training.runner import checkpoint_dir_for

    options = training_options(args)
    data_is_cache = is_cache(args.data)
    check_outputs_apart({"--out": args.out, "the checkpoint beside --out": checkpoint_dir_for(Path(args.out)),
                         "--cache": None if args.no_cache or data_is_cache else cache_dir(args),
                         "--tensorboard": args.tensorboard})
    if data_is_cache:
        open_cache(args.data)  # its manifest: a broken or unfinished cache is refused before TensorFlow starts
    else:
        resolve_source(args.data)
        if not args.no_cache:
            check_cache_location(cache_dir(args), (args.data, args.plan, args.labels))
    check_bundle_output(args.out, args.overwrite, inputs=(args.data, args.plan, args.labels, args.card))
    check_checkpoint_location(options.out)
    if args.tensorboard is not None:
        check_folder_location(args.tensorboard, "--tensorboard")


def cache_dir(args: argparse.Namespace) -> Path:
    """The cache folder of a run: --cache, else ``OUT.cache`` beside OUT."""
    from MedAnalysisLib.data.cache import default_cache_dir

    return Path(args.cache) if args.cache else default_cache_dir(args.out)


def check_cache_location(folder: Path, inputs: tuple[Any, ...]) -> None:
    """The cache folder must be new, empty or an earlier cache, apart from the inputs.

    Raises:
        OutputError: A file, a link, a folder of other files there, or an input.
    """
    from MedAnalysisLib.cli._validate import check_not_an_input, check_output_location
    from MedAnalysisLib.data.cache import check_cache_folder
    from MedAnalysisLib.io.atomic import absolute_target

    option = "--cache" if folder.name else "the cache beside --out"
    check_output_location(folder, option)
    check_not_an_input(folder, inputs, option)
    check_cache_folder(absolute_target(folder))


def check_checkpoint_location(out: Path) -> None:
    """The resume checkpoint beside OUT (``OUT.checkpoint``) must be absent, empty, or a training checkpoint: train
    replaces it after every epoch and removes it at the end, so a folder of other files, a file or a link there is
    refused.

    Raises:
        OutputError: Anything else at the checkpoint's path.
    """
    from MedAnalysisLib.cli._validate import check_output_location
    from MedAnalysisLib.errors import OutputError
    from MedAnalysisLib.io.atomic import absolute_target, is_own_output
    from MedAnalysisLib.sanitize import terminal_field

    out = absolute_target(out)
    base = out.with_suffix("") if out.suffix.lower() == ".zip" else out
    checkpoint = base.with_name(base.name + CHECKPOINT_SUFFIX)
    check_output_location(checkpoint, "the checkpoint beside --out")
    if not (checkpoint.exists() or checkpoint.is_symlink()):
        return
    names = {entry.name for entry in checkpoint.iterdir()} if checkpoint.is_dir() and not checkpoint.is_symlink() \
        else None
    if names is not None and (not names or is_own_output(checkpoint)):  # checkpoint files alone, as the runner checks
        return
    raise OutputError(f"expected {terminal_field(checkpoint)} (where train keeps its resume checkpoint) to be absent "
                      "or an earlier checkpoint, got something else there; it would be replaced, so it is refused "
                      "even with --overwrite: move it, or choose another --out")


def training_options(args: argparse.Namespace) -> TrainingOptions:
    """The :class:`~MedAnalysisLib.training.options.TrainingOptions` of parsed ``train`` arguments (no TensorFlow).

    Reads the ``--labels`` and ``--plan`` files; every value is checked as the Python API checks it.

    Raises:
        InputError: An option out of range or contradicting another, or an unreadable labels or plan file.
    """
    from MedAnalysisLib.training.options import TrainingOptions

    if args.no_augment and args.augment:
        raise InputError("expected either --no-augment or --augment KEY=VALUE, got both")
    labels = None
    if args.labels:
        from MedAnalysisLib.terminology import read_labels_file

        labels = read_labels_file(args.labels, classification=args.task == "classification")
    plan = None
    if args.plan:
        from MedAnalysisLib.io.small_files import read_small_text
        from MedAnalysisLib.preprocessing.plan import Plan

        plan = Plan.from_json(read_small_text(args.plan, "a readable plan JSON file (--plan)"))
    given = {"learning_rate": args.learning_rate}  # None: the options' default
    return TrainingOptions(
        task=args.task, family=args.model, out=args.out, epochs=args.epochs, plan=plan,
        plan_overrides=dict(args.plan_overrides), hparams=dict(args.hparams), val_fraction=args.val_fraction,
        folds=args.folds, fold=args.fold, seed=args.seed, batch_size=args.batch_size,
        steps_per_epoch=args.steps_per_epoch, patience=args.patience, monitor=args.monitor,
        augment=False if args.no_augment else (dict(args.augment) or True), workers=args.workers,
        mixed_precision=args.mixed_precision, tensorboard_dir=args.tensorboard, resume=not args.no_resume,
        name=args.name, labels=labels, deterministic=args.deterministic, threads=args.threads,
        card=card_from_args(args),
        **{k: v for k, v in given.items() if v is not None},
    )


def run(args: argparse.Namespace, reporter: Reporter) -> int:
    from MedAnalysisLib.data.cache import is_cache
    from MedAnalysisLib.data.sources import resolve_source
    from MedAnalysisLib.training import train

    options = training_options(args)
    stop_flag = StopFlag().install()
    if is_cache(args.data):
        source: Any = args.data
    else:  # checked now; train() loads it with the task the model family needs
        source = resolve_source(args.data).path
    cache = False if args.no_cache else cache_dir(args)
    result = train(source, options, reporter=reporter, stop_flag=stop_flag, cache=cache)
    reporter.result(bundle=str(result.bundle_path), metrics=result.metrics, epochs=len(result.history.get("loss", [])))
    if reporter.mode != "jsonl":
        from MedAnalysisLib.sanitize import terminal_field

        print(f"bundle written to {terminal_field(result.bundle_path)}")
    return 0
