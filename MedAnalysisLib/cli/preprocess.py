"""``medanalysis preprocess DATA --plan plan.json --out CACHE``: prepare every case once into a cache on disk.

The cache (:mod:`MedAnalysisLib.data.cache`) holds each case's prepared image and label as numpy ``.npy`` arrays
that training memory-maps, the inverse record inference needs, and foreground locations for class-balanced
sampling. ``medanalysis train CACHE ...`` then trains from it without reading the source files again (and without
SimpleITK). 2D and slice-sequence families (unet2d, slice_cnn, cnn_rnn) train on axial slices resized to the plan's
slice_shape: name the family with ``--family`` so the cache holds those slices (default: volumes, for unet3d and
cnn3d).

An existing CACHE is resumed, not refused: cases already prepared with the same plan (its fields that change
prepared arrays) from unchanged source files (path, size, modification time) are kept, the others prepared again,
so an interrupted run continues where it stopped and a changed file or plan costs only what changed.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from MedAnalysisLib.cli._manifest_options import add_manifest_options
from MedAnalysisLib.errors import InputError
from MedAnalysisLib.progress import Reporter, StopFlag
from MedAnalysisLib.sanitize import terminal_field

#: Most worker processes --workers may ask for.
MAX_WORKERS = 256

EPILOG = ("Existing output: CACHE is created when missing; an earlier cache is resumed (cases prepared with the same "
          "plan from unchanged files are kept, the others prepared again); a folder holding anything else, a file or "
          "a symbolic link at CACHE is refused (exit code 2), so nothing the command did not write is replaced.")


def register(subparsers: Any, parents: list[argparse.ArgumentParser]) -> None:
    """Add the ``preprocess`` sub-command to the ``medanalysis`` parser."""
    from MedAnalysisLib.cli._validate import model_family

    parser = subparsers.add_parser(
        "preprocess",
        parents=parents,
        help="prepare every case once into a cache folder that train reads lazily",
        description="Apply a preprocessing plan to every case of DATA (an MSD folder or its dataset.json, a CSV "
        "manifest, DICOM folders or files, image files or a folder of them) and write the prepared arrays to a "
        "cache folder, in worker processes, with progress and ETA. Train from it with medanalysis train CACHE.",
        epilog=EPILOG,
    )
    parser.add_argument("data", type=Path, metavar="DATA",
                        help="MSD folder or its dataset.json, CSV manifest, DICOM folder or file, image file or folder "
                        "of image files")
    parser.add_argument("--plan", required=True, type=Path, metavar="PLAN.json",
                        help="preprocessing plan JSON (from medanalysis plan)")
    parser.add_argument("--out", required=True, type=Path, metavar="CACHE", help="cache folder to write or resume")
    parser.add_argument("--family", default=None, type=model_family, metavar="NAME",
                        help="model family the cache is for: unet2d, slice_cnn and cnn_rnn get axial slices resized "
                        "to the plan's slice_shape (default: volumes, for unet3d and cnn3d)")
    parser.add_argument("--workers", type=int, default=2, help="worker processes preparing cases (default: 2)")
    add_manifest_options(parser)
    parser.set_defaults(func=run, validate=validate)


def read_plan(path: Path) -> Any:
    """The plan in a JSON file.

    Raises:
        InputError: The file cannot be read; PlanError: it is not a plan.
    """
    from MedAnalysisLib.preprocessing.plan import Plan

    return Plan.from_file(path, "a readable plan JSON file (--plan)")  # a regular file of bounded size only


def validate(args: argparse.Namespace) -> None:
    """Before any case is read: --workers in range, a readable plan, DATA of a known form, and a CACHE that is new,
    empty or an earlier cache, apart from the inputs."""
    from MedAnalysisLib.cli._validate import check_not_an_input, check_output_location
    from MedAnalysisLib.data.cache import check_cache_folder
    from MedAnalysisLib.data.sources import resolve_source
    from MedAnalysisLib.io.atomic import absolute_target

    if not 1 <= args.workers <= MAX_WORKERS:
        raise InputError(f"expected --workers from 1 to {MAX_WORKERS}, got {args.workers}")
    read_plan(args.plan)
    resolve_source(args.data)
    check_output_location(args.out, "--out")
    check_not_an_input(args.out, (args.data, args.plan), "--out")
    check_cache_folder(absolute_target(args.out))


def run(args: argparse.Namespace, reporter: Reporter) -> int:
    from MedAnalysisLib.data.cache import SLICE_FAMILIES, build_cache
    from MedAnalysisLib.data.datasets import read_case
    from MedAnalysisLib.data.sources import load_source
    from MedAnalysisLib.preprocessing.transforms import apply_plan

    plan = read_plan(args.plan)
    dataset = load_source(args.data, modality=args.modality, image_columns=args.image_column,
                          label_column=args.label_column, target_column=args.target_column,
                          group_column=args.group_column)
    if plan.n_channels != dataset.n_channels:
        raise InputError(f"expected a plan for {dataset.n_channels} channel(s), got one for {plan.n_channels}")
    slice_shape = tuple(plan.slice_shape) if args.family in SLICE_FAMILIES else None
    stop_flag = StopFlag().install()
    summary = build_cache(dataset, plan, args.out, prepare=apply_plan, read=read_case, slice_shape=slice_shape,
                          workers=args.workers, reporter=reporter, stop_flag=stop_flag)
    reporter.result(cache=str(summary.root), prepared=summary.prepared, reused=summary.reused,
                    cases=summary.prepared + summary.reused)
    if reporter.mode != "jsonl":
        print(f"cache {terminal_field(summary.root)}: {summary.prepared} case(s) prepared, {summary.reused} already "
              "prepared")
    return 0
