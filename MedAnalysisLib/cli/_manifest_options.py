"""The CSV manifest options shared by the commands that read datasets (``plan``, ``evaluate``)."""

from __future__ import annotations


def add_manifest_options(parser: object, *, modality: bool = True) -> None:
    """Add the CSV manifest options (``--image-column``, ``--label-column``, ``--target-column``, ``--group-column``
    and, with ``modality``, ``--modality``) to an argparse parser, as one group."""
    group = parser.add_argument_group("CSV manifests")  # type: ignore[attr-defined]
    group.add_argument("--image-column", action="append", default=None, metavar="NAME",
                       help="column with image paths (repeat for more channels; default image, image2, ...)")
    group.add_argument("--label-column", default="label", help="column with label-map paths (default label)")
    group.add_argument("--target-column", default="target", help="column with class values (default target)")
    group.add_argument("--group-column", default=None, metavar="NAME",
                       help="column grouping cases, e.g. patient_id (default: group, else patient_id when the "
                       "manifest has it)")
    if modality:
        group.add_argument("--modality", default=None,
                           help="modality when the data does not say (CT, MRI, ...; default: the data's)")
