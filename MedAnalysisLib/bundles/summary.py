"""The plain-text model card of a bundle or an ensemble (``medanalysis info``); reads the configuration only."""

from __future__ import annotations

import json

from MedAnalysisLib.bundles.config import BundleConfig
from MedAnalysisLib.terminology import describe_terminology


def bundle_summary(config: BundleConfig) -> str:
    """A plain-text model card (used by ``medanalysis info``)."""
    plan = config.plan
    plan_dict = plan.to_dict()
    training = config.training
    lines = [
        f"Model:        {config.name}",
        f"Task:         {config.task} ({config.family})",
        "Labels:       " + ", ".join(f"{label.value} {label.name}" for label in config.labels),
    ]
    if config.task == "segmentation":
        coded = [(label, describe_terminology(label.terminology)) for label in config.labels if label.value != 0]
        lines.append("Codes:        " + "; ".join(f"{label.value} {label.name}: {text}" for label, text in coded))
        missing = [label.name for label, text in coded if text.startswith("no standard code")]
        if missing:
            lines.append(f"              no standard code for {', '.join(missing)}: DICOM SEG codes "
                         f"{'it' if len(missing) == 1 else 'them'} as SCT Tissue; give codes with train --labels")
    lines += [
        f"Modality:     {plan_dict.get('modality', '?')}; channels: "
        + ", ".join(f"{c['name']} ({c['modality']})" for c in config.input["channels"]),
    ]
    spacing = plan_dict.get("target_spacing")
    lines.append(f"Spacing:      {'native' if spacing is None else ' x '.join(f'{s:g}' for s in spacing) + ' mm (i, j, k)'}")
    if plan_dict.get("patch_size") and config.family in ("unet3d", "cnn3d"):
        lines.append(f"Patch:        {' x '.join(str(p) for p in plan_dict['patch_size'])} voxels (k, j, i)")
    if plan_dict.get("slice_shape") and config.family in ("unet2d", "slice_cnn", "cnn_rnn"):
        lines.append(f"Slice shape:  {' x '.join(str(p) for p in plan_dict['slice_shape'])} pixels (j, i)")
    normalization = plan_dict.get("normalization")
    if normalization:
        lines.append(f"Intensities:  {json.dumps(normalization, sort_keys=True)}")
    metrics = training.get("final_metrics") or {}
    if metrics:
        lines.append("Metrics:      " + ", ".join(f"{k}={v:.4g}" if isinstance(v, (int, float)) else f"{k}={v}"
                                                  for k, v in metrics.items()))
    how = []
    for key in ("epochs", "epochs_completed", "n_train", "n_val", "seed", "intra_op_threads", "deterministic",
                "strategy", "device", "trained_at"):
        if key in training:
            how.append(f"{key}={training[key]}")
    if how:
        lines.append("Training:     " + ", ".join(how))
    versions = training.get("library_versions")
    if versions:
        lines.append("Versions:     " + ", ".join(f"{k} {v}" for k, v in versions.items()))
    lines.append(f"Inference:    overlap {config.inference['overlap']}, tta {config.inference['tta']}, "
                 f"postprocess {config.inference['postprocess']}")
    ensemble = training.get("ensemble")
    if isinstance(ensemble, dict):
        members = ensemble.get("members", [])
        lines.append(f"Ensemble:     {len(members)} members, probabilities combined by {ensemble.get('combine')}")
        for number, member in enumerate(members):
            lines.append(f"  member-{number}:   {member.get('name')} ({member.get('family')}) weights sha256 "
                         f"{member.get('weights_sha256')}")
    else:
        lines.append(f"Weights:      {config.weights['file']} sha256 {config.weights['sha256']}")
    if config.description:
        lines.append(f"Description:  {config.description}")
    return "\n".join(lines)
