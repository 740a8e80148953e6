"""``medanalysis predict BUNDLE INPUT... --out DIR``: run a trained bundle on scans.

INPUT may be image files (NIfTI, NRRD, MetaImage), a folder of them, DICOM folders (one series, or every series of
a study) or files, an MSD folder or its dataset.json, or a CSV manifest: the same forms plan, train and evaluate
accept. Each case gets a label map (or a classification table), optional probability maps (one file per class)
and a JSON sidecar with provenance, and ``--shard i/n`` splits the cases deterministically between parallel jobs
(Slurm arrays, Kubernetes jobs). The bundle, the inputs and what each --format needs are checked before TensorFlow
is imported and before any case runs; a format a case's input cannot give (DICOM SEG without DICOM input or without
a FrameOfReferenceUID) is reported at once, the other outputs are still written, and the exit code is 1; a format
that no case can give is refused (exit code 2).

Existing outputs: a re-run resumes. A case whose sidecar shows it was made by this MedAnalysis version, the same
bundle (weights sha256 and the bundle.json settings that shape outputs) and the same options (formats,
probabilities, overlap, TTA, post-processing, precision, series) is skipped, unless one of the outputs it lists is
gone (the case is done again); a case made otherwise, or whose sidecar is corrupt, truncated or from another
version, is refused (exit code 2, before any case runs) unless --overwrite, which recomputes every case of the shard.
Outputs of a case that has no sidecar yet (a run stopped in the middle of it) are recomputed. A file under an
output name that MedAnalysis did not write (no sidecar or record of a stopped run lists it, or a batch_summary.json
of someone else's) is refused before any work unless --overwrite; a link or folder there, an --out that is, holds or
lies inside an input (the bundle, an input file or folder, a file a dataset.json or manifest lists), and output
names longer than the file system allows (255 bytes) are refused even then. A finished case's sidecar whose values
the summary takes (its uncertainty, its explanation, the outputs it lists) are damaged is refused too, unless
--overwrite. With --overwrite and other options, the files a case's earlier sidecar listed that this run does not
write again (maps, probability maps, label maps of other formats) are removed once its new outputs are in place;
nothing else in the folder is touched.

Uncertainty and explanations: --uncertainty adds, per segmented case, <case>_uncertainty.nii.gz (entropy of the
mean probabilities) and, with test-time augmentation or an ensemble, <case>_disagreement.nii.gz (how much the
passes disagree), mean_entropy/mean_disagreement columns per label, and in batch_summary.json each case's
uncertainty with a "high" flag above --uncertainty-threshold and review_first (the flagged cases, most uncertain
first); classifiers get entropy (and spread, disagreement) columns. --explain writes <case>_explanation.nii.gz, a
heatmap of what drove a classifier's answer (refused for segmentation bundles).

Bad cases: whatever goes wrong with one case (an unreadable or truncated file, a geometry that cannot be resampled,
a FIFO or folder named like an image, an error of the model) is that case's failure, listed with its type and
message in batch_summary.json and on stderr (also with --progress none, which turns off progress only); the other
cases run, a closing line says how many failed, and the exit code is 1.

Modality: a bundle is made for the modality its plan was measured on. An input whose DICOM Modality or MSD
dataset.json states another one (CT against MR, ...) is refused (exit code 2, before any case runs) unless
--allow-modality-mismatch, which runs it with a warning (also a JSON-lines log message) and lists it under
modality_mismatch in batch_summary.json. Inputs of unknown modality (NIfTI, NRRD, MetaImage files) are not judged.
"""

from __future__ import annotations

import argparse
from typing import Any

from MedAnalysisLib.errors import InputError
from MedAnalysisLib.sanitize import terminal_field


def parse_shard(text: str) -> tuple[int, int]:
    """Parse ``"i/n"`` (1-based shard i of n) into ``(i, n)``; an argparse type."""
    try:
        index_text, count_text = text.split("/")
        index, count = int(index_text), int(count_text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a shard as i/n with integers, e.g. 2/8, got "
                                         f"'{terminal_field(text, 60)}'") from None
    if count < 1 or not 1 <= index <= count:
        raise argparse.ArgumentTypeError(f"expected 1 <= i <= n in shard i/n, got '{terminal_field(text, 60)}'")
    return index, count


def overlap_fraction(text: str) -> float:
    """An argparse type for a window overlap in [0, 1) (NaN refused; the number of windows is bounded separately,
    before the first window)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1), got '{terminal_field(text, 60)}'") from None
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"expected an overlap in [0, 1), got {value}")
    return value


def stored_overlap_fraction(text: str) -> float:
    """An argparse type for an overlap stored in a bundle: in [0, MAX_OVERLAP], the bound every bundle is checked
    against when it loads (:data:`MedAnalysisLib.bundles.config.MAX_OVERLAP`)."""
    from MedAnalysisLib.bundles.config import MAX_OVERLAP

    value = overlap_fraction(text)
    if value > MAX_OVERLAP:
        raise argparse.ArgumentTypeError(f"expected an overlap in [0, {MAX_OVERLAP}] to store in a bundle, got {value}")
    return value


def add_inference_options(parser: argparse.ArgumentParser) -> None:
    """Options shared by ``predict`` and ``evaluate``."""
    parser.add_argument("--overlap", type=overlap_fraction, default=None,
                        help="sliding-window overlap in [0, 1) (default: the bundle's, usually 0.5)")
    parser.add_argument("--tta", choices=("on", "off"), default=None,
                        help="test-time augmentation by flips (default: the bundle's)")
    parser.add_argument("--batch-size", type=int, default=None, help="windows per model call (default: automatic)")
    parser.add_argument("--precision", choices=("auto", "float32", "bfloat16"), default="float32",
                        help="compute precision; bfloat16 is faster on CPUs with AVX-512 BF16 (default: float32)")
    parser.add_argument("--memory-budget-mb", type=int, default=None,
                        help="cap on the memory of the accumulation buffers; batches shrink and the volume is "
                        "processed in slabs to stay under it (default: no cap)")


def register(subparsers: Any, parents: list[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "predict",
        parents=parents,
        help="run a trained model bundle on scans (image files, DICOM, MSD folders, CSV manifests)",
        description=__doc__.replace("``", ""),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("bundle", help="model bundle folder or .zip")
    p.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="image files or folders of them, DICOM folders or files, MSD folders (or dataset.json), CSV "
                   "manifests")
    p.add_argument("--out", required=True, help="output folder (created if missing)")
    p.add_argument("--format", dest="formats", action="append",
                   choices=("nifti", "nrrd", "seg.nrrd", "dicom-seg"),
                   help="label map format(s); repeat for several (default: nifti; dicom-seg needs DICOM input)")
    p.add_argument("--probabilities", action="store_true",
                   help="also write probability maps: one float32 NIfTI per foreground class, "
                   "<case>_probability_<value>_<name>.nii.gz")
    p.add_argument("--postprocess", action="append", choices=("largest-component", "fill-holes"),
                   help="post-processing of label maps; repeat for both (default: the bundle's)")
    p.add_argument("--series", default=None,
                   help="SeriesInstanceUID or index when a DICOM folder has several (default: every series)")
    p.add_argument("--shard", type=parse_shard, default=(1, 1), metavar="I/N",
                   help="process only shard I of N of the cases (deterministic, 1-based; default: 1/1, every case)")
    p.add_argument("--overwrite", action="store_true",
                   help="recompute every case of the shard, also those whose outputs exist (default: skip the cases "
                   "the same bundle and options made, refuse the others)")
    p.add_argument("--allow-modality-mismatch", action="store_true",
                   help="run inputs whose modality (DICOM Modality, MSD dataset.json) is not the bundle's, with a "
                   "warning (default: refuse them, exit code 2)")
    add_uncertainty_options(p)
    add_inference_options(p)
    p.set_defaults(func=run, validate=validate)


def add_uncertainty_options(parser: argparse.ArgumentParser) -> None:
    """``--uncertainty``, ``--uncertainty-threshold``, ``--explain`` and ``--explain-class``."""
    from MedAnalysisLib.inference.uncertainty import DEFAULT_UNCERTAINTY_THRESHOLD

    parser.add_argument("--uncertainty", action="store_true",
                        help="also write <case>_uncertainty.nii.gz (entropy in [0, 1]), with TTA or an ensemble "
                        "<case>_disagreement.nii.gz, and entropy/spread/disagreement table columns")
    parser.add_argument("--uncertainty-threshold", type=float, default=None, metavar="F",
                        help="flag a case 'high' in batch_summary.json when its entropy (segmentation: mean over "
                        f"the foreground) is above F, in [0, 1] (default: {DEFAULT_UNCERTAINTY_THRESHOLD})")
    parser.add_argument("--explain", action="store_true",
                        help="classifiers: also write <case>_explanation.nii.gz, a [0, 1] heatmap of the regions "
                        "that drove the answer")
    parser.add_argument("--explain-class", default=None, metavar="NAME_OR_VALUE",
                        help="the class --explain explains, by label name or value (default: the second class of a two-class model, else the predicted one)")


def validate(args: argparse.Namespace) -> None:
    """Numbers out of range, options that need another (--uncertainty-threshold without --uncertainty, --explain-class
    without --explain), and an --out that is, holds or lies inside an input (the bundle, an input file or
    folder, a file a dataset.json or CSV manifest lists); the bundle, inputs, formats and existing outputs are
    checked by :func:`~MedAnalysisLib.inference.batch.run_batch` before it imports TensorFlow."""
    from MedAnalysisLib.cli._validate import check_not_an_input

    if args.batch_size is not None and args.batch_size < 1:
        raise InputError(f"expected --batch-size >= 1, got {args.batch_size}")
    if args.memory_budget_mb is not None and args.memory_budget_mb < 1:
        raise InputError(f"expected --memory-budget-mb >= 1, got {args.memory_budget_mb}")
    threshold = args.uncertainty_threshold
    if threshold is not None and not 0.0 <= threshold <= 1.0:  # NaN fails this too
        raise InputError(f"expected --uncertainty-threshold in [0, 1], got {threshold:g}")
    if args.uncertainty_threshold is not None and not args.uncertainty:
        raise InputError(f"expected --uncertainty with --uncertainty-threshold, got --uncertainty-threshold "
                         f"{args.uncertainty_threshold:g} alone")
    if args.explain_class is not None and not args.explain:
        raise InputError("expected --explain with --explain-class, got --explain-class alone")
    check_not_an_input(args.out, (args.bundle, *args.inputs), "--out")


def run(args: argparse.Namespace, reporter: Any) -> int:
    from MedAnalysisLib.inference.batch import BatchOptions, run_batch
    from MedAnalysisLib.progress import StopFlag

    options = BatchOptions(
        formats=tuple(args.formats or ("nifti",)),
        write_probabilities=args.probabilities,
        postprocess=tuple(args.postprocess) if args.postprocess else None,
        overlap=args.overlap,
        tta=None if args.tta is None else args.tta == "on",
        batch_size=args.batch_size,
        precision=args.precision,
        memory_budget_mb=args.memory_budget_mb,
        series=args.series,
        shard=args.shard,
        overwrite=args.overwrite,
        allow_modality_mismatch=args.allow_modality_mismatch,
        uncertainty=args.uncertainty,
        explain=args.explain,
        explain_class=args.explain_class,
    )
    if args.uncertainty_threshold is not None:
        options.uncertainty_threshold = args.uncertainty_threshold
    summary = run_batch(args.bundle, args.inputs, args.out, options, reporter=reporter, stop_flag=StopFlag().install())
    code = _final_line(summary, reporter)
    reporter.result(**summary.to_dict())  # the last message of the JSON lines protocol
    return code


def _final_line(summary: Any, reporter: Any) -> int:
    """The exit code (1 when a case failed or lacks a requested output, else 0), with one closing line on stderr
    that says so whatever --progress is (``none`` included): each case's reason was logged as it happened."""
    from MedAnalysisLib.inference.batch import summary_name

    cases = len(summary.done) + len(summary.skipped) + len(summary.failed)
    where = summary_name(tuple(summary.shard))
    lacking = sorted({entry["case_id"] for entry in summary.not_written})
    if summary.failed:
        reporter.log(f"{len(summary.failed)} of {cases} case{'' if cases == 1 else 's'} failed, see {where}", "error")
    if lacking:
        reporter.log(f"{len(lacking)} of {cases} case(s) lack an output they were asked for, see not_written in "
                     f"{where}", "warning")
    return 1 if summary.failed or lacking else 0
