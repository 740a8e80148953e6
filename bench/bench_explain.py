#!/usr/bin/env python3
"""Where does the CT contrast model look? Share of the Grad-CAM (and occlusion) heat inside the body.

The ``slice_cnn`` recipe of ``bench/accuracy_ct_contrast`` (preset ``global_pool``, 128x128 slices, base filters
16, batch norm, global max pooling, no intensity augmentation, batch 16, Adam 1e-3, final epoch kept) is trained with
``medanalysis train`` on the patients of 4 of the 5 patient-grouped folds (the same ``kfold_splits`` call, seed 0);
``--epochs`` may be fewer than the recipe's 50 to fit the time at hand. ``--bundle`` skips training and explains an
existing bundle instead.

For each slice of the held-out fold and for all 83 slices, :func:`MedAnalysisLib.inference.explain.explain` gives a
heatmap on the slice's grid (target: the contrast class); a body mask is made from the input's Hounsfield units
(above ``--body-hu``, the largest connected component, holes filled, per slice), and the share of heat inside the
body is ``sum(heat * body) / sum(heat)``. Reported: mean, median and minimum over slices, for Grad-CAM on both sets and
for occlusion on the held-out slices; a few PNG overlays (scan in grey, heat in colour, body outline) are written to
``--out``.

Example (the figures in docs/explanations.md)::

    bench/bench_explain.py --data DATA/ct_contrast --epochs 15
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from accuracy_common import OUTPUT, load_average, run_cli  # noqa: E402


def body_mask(hu: np.ndarray, threshold: float) -> np.ndarray:
    """Per slice: voxels above ``threshold`` HU, the largest connected component, holes filled."""
    from scipy import ndimage

    mask = np.zeros(hu.shape, bool)
    for k, plane in enumerate(hu):
        labels, count = ndimage.label(plane > threshold)
        if count == 0:
            continue
        sizes = np.bincount(labels.ravel())
        sizes[0] = 0
        mask[k] = ndimage.binary_fill_holes(labels == int(np.argmax(sizes)))
    return mask


def body_share(heat: np.ndarray, body: np.ndarray) -> float:
    """Share of the heat mass inside the body (NaN for an all-zero map)."""
    total = float(heat.sum())
    return float((heat * body).sum()) / total if total > 0 else float("nan")


def summary(shares: list[float]) -> dict[str, Any]:
    values = np.asarray([s for s in shares if np.isfinite(s)])
    return {"n": len(shares), "zero_maps": int(len(shares) - len(values)), "mean": float(values.mean()),
            "median": float(np.median(values)), "min": float(values.min())}


def write_split(rows: list[dict[str, str]], data: Path, out: Path, fold: int, folds: int, seed: int
                ) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """The training manifest of ``fold`` (patients of the other folds) and the held-out rows, as the accuracy
    benchmark splits them."""
    from MedAnalysisLib.data.datasets import Case, kfold_splits

    by_id = {Path(r["file"]).stem: r for r in rows}
    cases = [Case(stem, (r["file"],), target=int(r["contrast"]), group=r["patient_id"]) for stem, r in by_id.items()]
    train, test = kfold_splits(cases, folds, seed)[fold]
    assert not {c.group for c in train} & {c.group for c in test}, "patient in both train and test"
    out.mkdir(parents=True, exist_ok=True)
    with (out / "train.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["case_id", "image", "target", "patient_id"])
        for case in train:
            row = by_id[case.case_id]
            writer.writerow([case.case_id, str((data / row["file"]).resolve()), row["contrast"], row["patient_id"]])
    return [by_id[c.case_id] for c in train], [by_id[c.case_id] for c in test]


def train(args: argparse.Namespace, out: Path) -> tuple[Path, float]:
    """``medanalysis train`` of the recipe on ``out/train.csv`` (skipped when the bundle exists)."""
    bundle = out / "slice_cnn-global_pool"
    if (bundle / "bundle.json").is_file():
        training = json.loads((bundle / "bundle.json").read_text(encoding="utf-8")).get("training", {})
        return bundle, float(training.get("train_seconds_this_session", float("nan")))
    command = ["train", str(out / "train.csv"), "--task", "classification", "--model", "slice_cnn",
               "--out", str(bundle), "--epochs", str(args.epochs), "--batch-size", "16", "--learning-rate", "1e-3",
               "--val-fraction", "0", "--seed", str(args.seed), "--set", "slice_shape=128,128",
               "--hparam", "preset=global_pool", "--hparam", "base_filters=16", "--hparam", "norm=batch",
               "--hparam", "pooling=max", "--augment", "p_gamma=0", "--augment", "p_brightness=0",
               "--augment", "p_contrast=0", "--name", f"ct-contrast-explain-fold{args.fold}"]
    _, seconds = run_cli(command, out / "train.log", echo=True)
    return bundle, seconds


def overlay(path: Path, hu: np.ndarray, heat: np.ndarray, body: np.ndarray, title: str) -> None:
    """PNG: the slice in a soft-tissue window (grey), the heat in colour where above 0.05, the body outline."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(5, 5), dpi=100)
    axis.imshow(np.clip(hu, -400, 400), cmap="gray")
    axis.imshow(np.ma.masked_less(heat, 0.05), cmap="jet", alpha=0.45, vmin=0, vmax=1)
    axis.contour(body.astype(float), levels=[0.5], colors="lime", linewidths=0.8)
    axis.set_title(title, fontsize=9)
    axis.axis("off")
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def explain_rows(loaded: Any, rows: list[dict[str, str]], data: Path, method: str, threshold: float,
                 figures: Path | None = None, n_figures: int = 0) -> tuple[list[float], list[float], float]:
    """Body shares of ``method``'s heatmaps over ``rows``, the body's share of each slice's area (what a uniform
    heatmap would score) and the seconds per slice."""
    from MedAnalysisLib.inference.explain import explain
    from MedAnalysisLib.io import load_volume

    shares, areas = [], []
    started = time.perf_counter()
    for number, row in enumerate(rows):
        volume = load_volume(data / row["file"], allow_2d=True)
        result = explain(loaded, [volume], target=1, method=method)
        hu = np.asarray(volume.array, np.float32)
        body = body_mask(hu, threshold)
        heat = np.asarray(result.heatmap.array)
        shares.append(body_share(heat, body))
        areas.append(float(body.mean()))
        if figures is not None and number < n_figures:
            overlay(figures / f"{method}-{number:02d}-contrast{row['contrast']}.png", hu[0], heat[0], body[0],
                    f"{method}, contrast={row['contrast']}, body share {shares[-1]:.2f}")
    return shares, areas, (time.perf_counter() - started) / max(1, len(rows))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="the ct_contrast folder (labels.csv, dicom/)")
    parser.add_argument("--out", type=Path, default=OUTPUT / "explain_ct", help="output folder")
    parser.add_argument("--bundle", type=Path, default=None, help="explain this bundle instead of training one")
    parser.add_argument("--epochs", type=int, default=15, help="training epochs (the accuracy recipe: 50)")
    parser.add_argument("--fold", type=int, default=0, help="held-out fold (0-4)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--body-hu", type=float, default=-500.0, help="body threshold in HU")
    parser.add_argument("--figures", type=int, default=3, help="PNG overlays per method")
    args = parser.parse_args()
    labels = args.data / "labels.csv"
    if not labels.is_file():
        parser.error(f"expected the ct_contrast folder holding labels.csv, got {args.data}")
    with labels.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    out: Path = args.out
    _, held_out = write_split(rows, args.data, out, args.fold, 5, args.seed)
    print(f"{len(rows)} slices; held-out fold {args.fold}: {len(held_out)} slices; {os.cpu_count()} CPUs, load "
          f"{load_average()}", flush=True)
    bundle, train_seconds = (args.bundle, 0.0) if args.bundle else train(args, out)
    from MedAnalysisLib.bundles import load_bundle

    loaded = load_bundle(bundle)
    figures = out / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {"epochs": args.epochs if not args.bundle else None, "train_seconds": train_seconds,
                               "held_out_slices": len(held_out), "body_hu": args.body_hu}
    for name, subset, method, n_fig in (("gradcam_held_out", held_out, "gradcam", args.figures),
                                        ("occlusion_held_out", held_out, "occlusion", args.figures),
                                        ("gradcam_all", rows, "gradcam", 0)):
        shares, areas, per_slice = explain_rows(loaded, subset, args.data, method, args.body_hu, figures, n_fig)
        results[name] = {**summary(shares), "uniform_mean": float(np.mean(areas)), "seconds_per_slice": per_slice}
        r = results[name]
        print(f"{name:<20} slices {r['n']:>3}  body share mean {r['mean']:.3f}  median {r['median']:.3f}  "
              f"min {r['min']:.3f}  (a uniform map: {r['uniform_mean']:.3f}; all-zero maps {r['zero_maps']}; "
              f"{per_slice:.2f} s/slice)", flush=True)
    (out / "result.json").write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    print(f"training {train_seconds / 60:.1f} min ({args.epochs} epochs); figures in {figures}; load {load_average()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
