#!/usr/bin/env python3
"""Draw the documentation's pictures of uncertainty maps from the files ``medanalysis predict`` wrote.

Nothing is computed here but the picture: the image, the label map and the uncertainty map are read as written by
``medanalysis predict ... --uncertainty`` (and the reference segmentation, when given, from the dataset), and shown
on the axial slice that holds the most predicted foreground::

    .venv/bin/python bench/docs_figures.py uncertainty IMAGE PREDICTION_FOLDER CASE --truth LABEL --out PNG
    .venv/bin/python bench/docs_figures.py review PREDICTION_FOLDER EVALUATION_FOLDER --out PNG

``review`` sets each case's foreground entropy (``batch_summary.json`` of ``predict --uncertainty``) beside its Dice
(``per_case.csv`` of ``medanalysis evaluate`` with the same settings) and prints their rank correlation: whether the
cases the uncertainty would put first are the ones the model got wrong.

The left panel is the image with the predicted labels (filled) and the reference (contours); the right one the
entropy map (0: every pass sure of one class; 1: the classes equally likely) over the image, with the same contours.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _read(path: Path) -> np.ndarray:
    import SimpleITK as sitk

    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def _sidecar(folder: Path, case: str) -> dict:
    return json.loads((folder / f"{case}.json").read_text())


def uncertainty_figure(image_path: Path, folder: Path, case: str, truth: Path | None, out: Path) -> dict:
    """Draw the figure; return what it shows (slice, foreground entropy, the files read)."""
    import matplotlib

    matplotlib.use("Agg")
    matplotlib.rcParams["text.usetex"] = False
    import matplotlib.pyplot as plt

    sidecar = _sidecar(folder, case)
    outputs = sidecar["outputs"]
    label_file = next(name for key, name in outputs.items() if key.startswith("label") and name.endswith(".nii.gz"))
    image = _read(image_path).astype(np.float32)
    labels = _read(folder / label_file)
    entropy = _read(folder / outputs["uncertainty_entropy"])
    reference = _read(truth) if truth is not None else None
    k = int(np.argmax((labels > 0).sum(axis=(1, 2))))
    low, high = np.percentile(image[k], [1, 99])
    figure, axes = plt.subplots(1, 2, figsize=(8, 4.4), dpi=110)
    for axis in axes:
        axis.imshow(image[k], cmap="gray", vmin=low, vmax=high, interpolation="nearest")
        axis.set_axis_off()
    masked = np.ma.masked_equal(labels[k], 0)
    axes[0].imshow(masked, cmap="tab10", vmin=0, vmax=9, alpha=0.45, interpolation="nearest")
    shown = axes[1].imshow(entropy[k], cmap="inferno", vmin=0.0, vmax=1.0, alpha=0.75, interpolation="nearest")
    for axis in axes:
        if reference is not None:
            for value, colour in ((1, "cyan"), (2, "lime")):
                if (reference[k] == value).any():
                    axis.contour(reference[k] == value, levels=[0.5], colors=colour, linewidths=0.9)
    axes[0].set_title("prediction (filled) and reference (lines):\nanterior orange / cyan, posterior green / lime",
                      fontsize=9)
    axes[1].set_title("entropy of the mean over the TTA flips", fontsize=9)
    figure.colorbar(shown, ax=axes[1], fraction=0.046, pad=0.02)
    figure.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out)
    plt.close(figure)
    record = sidecar.get("uncertainty", {})
    return {"slice_k": k, "foreground_entropy": record.get("foreground_entropy"), "passes": record.get("passes"),
            "label_file": label_file, "uncertainty_file": outputs["uncertainty_entropy"], "out": str(out)}


def _ranks(values: np.ndarray) -> np.ndarray:
    order = np.argsort(values, kind="stable")
    ranks = np.empty(len(values))
    ranks[order] = np.arange(len(values))
    return ranks


def review_figure(folder: Path, evaluation: Path, out: Path) -> dict:
    """Foreground entropy against mean Dice over labels, per case; Spearman's rank correlation (no ties expected)."""
    import csv

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = json.loads((folder / "batch_summary.json").read_text())
    with (evaluation / "per_case.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    cases, entropy, dice = [], [], []
    for row in rows:
        record = summary["uncertainty"].get(row["case_id"])
        if record is None:
            continue
        scores = [float(v) for k, v in row.items() if k.startswith("dice_") and v not in ("", "nan")]
        cases.append(row["case_id"])
        entropy.append(float(record["foreground_entropy"]))
        dice.append(float(np.mean(scores)))
    entropy_a, dice_a = np.asarray(entropy), np.asarray(dice)
    rho = float(np.corrcoef(_ranks(entropy_a), _ranks(dice_a))[0, 1])
    worst = np.argsort(dice_a)[:5]
    first = np.argsort(-entropy_a)[:5]
    figure, axis = plt.subplots(figsize=(5, 3.6), dpi=110)
    axis.scatter(entropy_a, dice_a, s=14)
    axis.set_xlabel("foreground entropy (batch_summary.json)")
    axis.set_ylabel("mean Dice over labels")
    axis.set_title(f"{len(cases)} held-out cases, Spearman rho {rho:.2f}", fontsize=9)
    figure.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out)
    plt.close(figure)
    return {"cases": len(cases), "spearman_rho": round(rho, 3),
            "entropy_range": [round(float(entropy_a.min()), 3), round(float(entropy_a.max()), 3)],
            "dice_range": [round(float(dice_a.min()), 3), round(float(dice_a.max()), 3)],
            "flagged": summary.get("review_first", []),
            "five_most_uncertain": [[cases[i], round(entropy[i], 3), round(dice[i], 3)] for i in first],
            "five_lowest_dice": [[cases[i], round(entropy[i], 3), round(dice[i], 3)] for i in worst],
            "lowest_dice_among_five_most_uncertain": int(len(set(first) & set(worst))), "out": str(out)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="figure", required=True)
    figure = sub.add_parser("uncertainty", help="image, labels and entropy map of one predicted case")
    figure.add_argument("image", type=Path)
    figure.add_argument("folder", type=Path, help="the --out folder of medanalysis predict --uncertainty")
    figure.add_argument("case", help="the case name (its sidecar is CASE.json in the folder)")
    figure.add_argument("--truth", type=Path, default=None, help="reference label map, drawn as contours")
    figure.add_argument("--out", type=Path, required=True)
    review = sub.add_parser("review", help="foreground entropy against Dice, per case")
    review.add_argument("folder", type=Path, help="the --out folder of medanalysis predict --uncertainty")
    review.add_argument("evaluation", type=Path, help="the --out folder of medanalysis evaluate, same settings")
    review.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    if args.figure == "review":
        print(json.dumps(review_figure(args.folder, args.evaluation, args.out), indent=1))
    else:
        print(json.dumps(uncertainty_figure(args.image, args.folder, args.case, args.truth, args.out), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
