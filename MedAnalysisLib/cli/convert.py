"""``medanalysis convert IN OUT``: convert a DICOM series or an image file to NIfTI, NRRD or MetaImage.

Geometry is kept exactly; DICOM tags are never copied into the output header (no patient data in outputs). The
output is written to a temporary name, read back (payload size, shape, spacing, origin, direction) and only then
renamed into place: a short write (a full disk, a file size limit) is exit code 2 and leaves nothing under OUT.
"""

from __future__ import annotations

import argparse
from typing import Any

from MedAnalysisLib.cli._validate import OVERWRITE_POLICY, add_overwrite_option, check_file_output
from MedAnalysisLib.progress import Reporter
from MedAnalysisLib.sanitize import terminal_field


def register(subparsers: Any, parents: list[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "convert",
        parents=parents,
        help="convert a DICOM series or an image file to .nii/.nii.gz/.nrrd/.nhdr/.mha/.mhd",
        description="Convert a DICOM folder (one series, chosen with --series when there are several) or an image "
        "file to another format. The format follows OUT's extension.",
        epilog="Existing output: an existing OUT file is refused (exit code 2) unless --overwrite is given; a folder "
        "at OUT is always refused. OUT is written under a temporary name and read back before it is renamed into "
        "place; a short write (full disk) is exit code 2 and leaves nothing under OUT. " + OVERWRITE_POLICY,
    )
    parser.add_argument("input", help="DICOM folder or .dcm file, or a .nii/.nii.gz/.nrrd/.nhdr/.mha/.mhd file")
    parser.add_argument("output", help="output file: .nii, .nii.gz, .nrrd, .seg.nrrd, .nhdr, .mha or .mhd")
    parser.add_argument(
        "--series", default=None,
        help="SeriesInstanceUID or index from 'medanalysis dicom ls' (DICOM input only; default: the only series)",
    )
    parser.add_argument(
        "--kind",
        choices=("image", "label"),
        default="image",
        help="'label' checks that voxel values are integers and stores them as integers (default: image)",
    )
    add_overwrite_option(parser, "an OUT file")
    parser.add_argument(
        "--allow-2d", action="store_true", help="accept a 2D image and store it as a one-slice volume"
    )
    parser.add_argument(
        "--resample-tilt",
        action="store_true",
        help="resample a gantry-tilted DICOM series onto an orthogonal grid (linear interpolation) instead of refusing it",
    )
    parser.set_defaults(func=run, validate=validate)


def validate(args: argparse.Namespace) -> None:
    """OUT follows the overwrite policy (see the epilog) and is not the input (links resolved) nor inside an input
    folder; checked before the input is read."""
    from MedAnalysisLib.io.files import check_output_suffix

    check_output_suffix(args.output)  # a lower-case suffix the writers know, before the input is read
    check_file_output(args.output, args.overwrite, inputs=(args.input,))


def run(args: argparse.Namespace, reporter: Reporter) -> int:
    from MedAnalysisLib.io import load_volume, write_volume

    reporter.progress("convert", 0, 2, "reading")
    volume = load_volume(
        args.input, series=args.series, kind=args.kind, allow_2d=args.allow_2d, resample_tilt=args.resample_tilt
    )
    reporter.progress("convert", 1, 2, "writing")
    path = write_volume(volume, args.output, overwrite=args.overwrite)  # a .mhd/.nhdr data file is part of OUTPUT
    reporter.progress("convert", 2, 2, "done")
    reporter.result(
        output=str(path),
        shape_kji=list(volume.shape),
        spacing=list(volume.spacing),
        orientation=volume.orientation_code(),
        dtype=str(volume.array.dtype),
    )
    if reporter.mode != "jsonl":
        print(f"wrote {terminal_field(path)} ({volume.describe_geometry()}, {volume.array.dtype})")
    return 0
