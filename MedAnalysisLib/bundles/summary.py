"""The plain-text model card of a bundle or an ensemble (``medanalysis info``); reads the configuration only.

Every value taken from ``bundle.json`` (names, labels, codes, metrics, provenance, description, the model card's
fields) is written through :func:`~MedAnalysisLib.sanitize.terminal_field`: the card is printed on terminals, and a
bundle is a file someone else wrote, so an escape sequence or a line break in a label name must show as text, never
act or forge a line. The fields of the model card (:mod:`MedAnalysisLib.bundles.card`) follow the technical lines,
in the sections :func:`~MedAnalysisLib.bundles.card.card_sections` gives (the panel shows the same ones), the
clinical use first; the line breaks of long fields are kept as indented continuation lines.
"""

from __future__ import annotations

import json
from typing import Any

from MedAnalysisLib.bundles.card import card_sections
from MedAnalysisLib.bundles.config import BundleConfig
from MedAnalysisLib.sanitize import terminal_field
from MedAnalysisLib.terminology import describe_terminology

#: The longest value shown on a card line (a longer one ends with how many characters were left out).
FIELD_LIMIT = 200

#: The longest description shown.
DESCRIPTION_LIMIT = 4000

#: Where the values of the card start (continuation lines of the description are indented to it).
VALUE_COLUMN = 14


def _f(value: Any) -> str:
    """One value of the bundle, shown safely on one line."""
    return terminal_field(value, FIELD_LIMIT)


def _description(text: str, column: int = VALUE_COLUMN) -> str:
    """The description, its own line breaks kept, every line made safe and indented under the values."""
    if len(text) > DESCRIPTION_LIMIT:
        text = f"{text[:DESCRIPTION_LIMIT]}... ({len(text) - DESCRIPTION_LIMIT} more characters)"
    lines = [terminal_field(line) for line in text.replace("\r\n", "\n").split("\n")]
    return ("\n" + " " * column).join(lines)


#: Where the values of the model card's rows start (labels are indented by two spaces under their heading).
CARD_COLUMN = 19


def card_lines(config: BundleConfig) -> list[str]:
    """The model card's sections as terminal lines: a heading, then ``  Label:  value`` rows; every value made safe
    (:func:`~MedAnalysisLib.sanitize.terminal_field`, line breaks kept as indented continuation lines)."""
    lines = ["Model card:"]
    for heading, rows in card_sections(config):
        lines.append(f"  {terminal_field(heading)}")
        for label, value in rows:
            shown = f"{terminal_field(label)}:" if label else ""
            lines.append(f"    {shown:<{CARD_COLUMN - 5}} {_description(value, CARD_COLUMN)}")
    return lines


def bundle_summary(config: BundleConfig) -> str:
    """A plain-text model card (used by ``medanalysis info``); every value from the bundle is made safe for a
    terminal (see the module docstring)."""
    plan = config.plan
    plan_dict = plan.to_dict()
    training = config.training
    lines = [
        f"Model:        {_f(config.name)}",
        f"Task:         {_f(config.task)} ({_f(config.family)})",
        "Labels:       " + ", ".join(f"{_f(label.value)} {_f(label.name)}" for label in config.labels),
    ]
    if config.task == "segmentation":
        coded = [(label, describe_terminology(label.terminology)) for label in config.labels if label.value != 0]
        lines.append("Codes:        " + "; ".join(f"{_f(label.value)} {_f(label.name)}: {_f(text)}" for label, text in coded))
        missing = [_f(label.name) for label, text in coded if text.startswith("no standard code")]
        if missing:
            lines.append(f"              no standard code for {', '.join(missing)}: DICOM SEG codes "
                         f"{'it' if len(missing) == 1 else 'them'} as SCT Tissue; give codes with train --labels")
    lines += [
        f"Modality:     {_f(plan_dict.get('modality', '?'))}; channels: "
        + ", ".join(f"{_f(c['name'])} ({_f(c['modality'])})" for c in config.input["channels"]),
    ]
    spacing = plan_dict.get("target_spacing")
    lines.append(f"Spacing:      {'native' if spacing is None else ' x '.join(_f(f'{s:g}') for s in spacing) + ' mm (i, j, k)'}")
    if plan_dict.get("patch_size") and config.family in ("unet3d", "cnn3d"):
        lines.append(f"Patch:        {' x '.join(_f(p) for p in plan_dict['patch_size'])} voxels (k, j, i)")
    if plan_dict.get("slice_shape") and config.family in ("unet2d", "slice_cnn", "cnn_rnn"):
        lines.append(f"Slice shape:  {' x '.join(_f(p) for p in plan_dict['slice_shape'])} pixels (j, i)")
    normalization = plan_dict.get("normalization")
    if normalization:
        lines.append(f"Intensities:  {_f(json.dumps(normalization, sort_keys=True))}")
    metrics = training.get("final_metrics") or {}
    if metrics:
        # The last epoch's figures: on the training batches (val_...: on the validation cases); a held-out
        # evaluation with intervals is the card's evaluation, below.
        lines.append("Last epoch:   " + ", ".join(f"{_f(k)}={v:.4g}" if isinstance(v, (int, float)) else f"{_f(k)}={_f(v)}"
                                                  for k, v in metrics.items())
                     + " (training batches; val_: validation cases)")
    how = []
    for key in ("epochs", "epochs_completed", "n_train", "n_val", "seed", "intra_op_threads", "deterministic",
                "strategy", "device", "trained_at"):
        if key in training:
            how.append(f"{key}={_f(training[key])}")
    if how:
        lines.append("Training:     " + ", ".join(how))
    versions = training.get("library_versions")
    if versions:
        lines.append("Versions:     " + ", ".join(f"{_f(k)} {_f(v)}" for k, v in versions.items()))
    lines.append(f"Inference:    overlap {_f(config.inference['overlap'])}, tta {_f(config.inference['tta'])}, "
                 f"postprocess {_f(config.inference['postprocess'])}")
    ensemble = training.get("ensemble")
    if isinstance(ensemble, dict):
        members = ensemble.get("members", [])
        lines.append(f"Ensemble:     {len(members)} members, probabilities combined by {_f(ensemble.get('combine'))}")
        for number, member in enumerate(members):
            lines.append(f"  member-{number}:   {_f(member.get('name'))} ({_f(member.get('family'))}) weights sha256 "
                         f"{_f(member.get('weights_sha256'))}")
    else:
        lines.append(f"Weights:      {_f(config.weights['file'])} sha256 {_f(config.weights['sha256'])}")
    if config.description:
        lines.append(f"Description:  {_description(str(config.description))}")
    lines += card_lines(config)
    return "\n".join(lines)
