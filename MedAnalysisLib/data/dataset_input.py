"""The ``DATA`` argument of ``medanalysis plan`` and ``medanalysis evaluate``: every form the other commands take.

What a path is (an MSD folder or its ``dataset.json``, a CSV manifest, a DICOM folder or file, image files) is
decided in one place for every command, :func:`MedAnalysisLib.data.sources.resolve_source`; this module adds what
``plan`` and ``evaluate`` need on top: the CSV manifest options (the same ones for both commands), and a group
column named for data that is not a CSV manifest is an error rather than an option silently ignored. Unlabelled
forms (DICOM, image files) can be planned; evaluation refuses them with a message saying that they hold no labels.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from MedAnalysisLib.data.datasets import Dataset
from MedAnalysisLib.errors import InputError


def load_dataset_input(
    path: str | os.PathLike[str],
    *,
    task: str | None = None,
    modality: str | None = None,
    image_columns: Sequence[str] | None = None,
    label_column: str = "label",
    target_column: str = "target",
    group_column: str | None = None,
) -> Dataset:
    """Load a dataset given in any input form (see the module docstring).

    Args:
        path: The dataset: an MSD folder or its ``dataset.json``, a CSV manifest, a DICOM folder or file, an image file
            or a folder of image files.
        task: Force the task (see :func:`~MedAnalysisLib.data.datasets.load_dataset`).
        modality: Modality when the data does not say.
        image_columns: CSV columns holding the channel paths.
        label_column: CSV column with label-map paths.
        target_column: CSV column with class values.
        group_column: CSV column grouping cases (default: ``group``, else ``patient_id`` when present).

    Raises:
        InputError: The path is none of these forms, or ``group_column`` is given for data that is not a CSV
            manifest.
    """
    from MedAnalysisLib.data.sources import load_source, resolve_source

    source = resolve_source(path)
    if group_column is not None and source.kind != "csv":
        raise InputError(
            f"expected a CSV manifest for a group column ({group_column!r}), got {str(Path(path))!r}; MSD folders, "
            "DICOM and image files have no group column (list the cases with a group column in a CSV manifest)"
        )
    dataset: Dataset = load_source(source, task=task, modality=modality, image_columns=image_columns,
                                   label_column=label_column, target_column=target_column, group_column=group_column)
    return dataset


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
