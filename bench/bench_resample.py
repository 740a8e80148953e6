"""Benchmark: resample a 512x512x300 CT-like int16 volume from 0.7x0.7x2.5 mm to 1.5 mm isotropic.

Compares, in the same run and on the same array:

* MedAnalysis ``resample_to_spacing`` (SimpleITK, linear, float32 out),
* ``scipy.ndimage.zoom(order=1)``,
* MONAI ``Spacing(pixdim=1.5, mode="bilinear")``.

scipy, torch and MONAI are not MedAnalysis dependencies: they live in their own environment
(``bench/.venv-monai``: ``python -m venv bench/.venv-monai && bench/.venv-monai/bin/pip install torch monai scipy
SimpleITK numpy && bench/.venv-monai/bin/pip install -e . --no-deps``). Run from the repository root::

    nice .venv/bin/python bench/bench_resample.py [--repeats 3] [--peer-python bench/.venv-monai/bin/python]

The peers run in a child process of that environment; each method's best wall time of ``--repeats`` runs is
printed, with ratios to MedAnalysis.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

SHAPE_KJI = (300, 512, 512)
SPACING_IJK = (0.7, 0.7, 2.5)
TARGET = 1.5


def make_volume() -> np.ndarray:
    """A deterministic CT-like int16 volume: air, a body ellipse of soft tissue with noise, and bright 'bones'."""
    rng = np.random.default_rng(0)
    k, j, i = SHAPE_KJI
    jj, ii = np.ogrid[:j, :i]
    body = ((jj - j / 2) / (0.42 * j)) ** 2 + ((ii - i / 2) / (0.45 * i)) ** 2 < 1
    bone = ((jj - j / 2) / (0.08 * j)) ** 2 + ((ii - i / 2 + 60) / (0.06 * i)) ** 2 < 1
    slice_ = np.where(body, 40, -1000).astype(np.int16)
    slice_[bone] = 900
    volume = np.repeat(slice_[None], k, axis=0)
    volume += rng.integers(-20, 21, size=volume.shape, dtype=np.int16)
    return volume


def best_of(repeats: int, function) -> tuple[float, object]:  # type: ignore[no-untyped-def]
    best, result = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        result = function()
        best = min(best, time.perf_counter() - start)
    return best, result


def run_medanalysis(repeats: int) -> dict[str, object]:
    from MedAnalysisLib.preprocessing.transforms import resample_to_spacing
    from MedAnalysisLib.volume import Volume

    volume = Volume(make_volume(), spacing=SPACING_IJK)
    seconds, out = best_of(repeats, lambda: resample_to_spacing(volume, (TARGET,) * 3))
    return {"seconds": seconds, "shape": list(out.shape), "dtype": str(out.array.dtype)}  # type: ignore[union-attr]


def run_peers(repeats: int) -> dict[str, dict[str, object]]:
    import scipy
    import scipy.ndimage
    import torch
    from monai.data import MetaTensor
    from monai.transforms import Spacing

    torch.set_num_threads(os.cpu_count() or 1)
    array = make_volume()
    results: dict[str, dict[str, object]] = {}
    factors = [s / TARGET for s in SPACING_IJK[::-1]]  # array order (k, j, i)
    seconds, out = best_of(repeats, lambda: scipy.ndimage.zoom(array, factors, order=1))
    results["scipy.ndimage.zoom(order=1)"] = {"seconds": seconds, "shape": list(out.shape), "dtype": str(out.dtype),
                                              "version": scipy.__version__}

    import monai

    xyz = torch.from_numpy(np.ascontiguousarray(array.transpose(2, 1, 0)))[None]  # (C, x, y, z) channel first
    tensor = MetaTensor(xyz, affine=torch.diag(torch.tensor([*SPACING_IJK, 1.0], dtype=torch.float64)))
    spacing = Spacing(pixdim=(TARGET,) * 3, mode="bilinear")
    seconds, out = best_of(repeats, lambda: spacing(tensor))
    results["MONAI Spacing(bilinear)"] = {"seconds": seconds, "shape": list(out.shape[1:][::-1]), "dtype": str(out.dtype),
                                          "version": f"monai {monai.__version__}, torch {torch.__version__}"}
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--peer-python", default=str(Path(__file__).parent / ".venv-monai" / "bin" / "python"))
    parser.add_argument("--peers-json", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.peers_json:
        print(json.dumps(run_peers(args.repeats)))
        return 0

    print(f"volume {SHAPE_KJI[::-1]} (i, j, k) int16, spacing {SPACING_IJK} mm -> {TARGET} mm isotropic; "
          f"best of {args.repeats}; {os.cpu_count()} CPU cores")
    results = {"MedAnalysis resample_to_spacing (SimpleITK linear)": run_medanalysis(args.repeats)}
    if Path(args.peer_python).exists():
        child = subprocess.run(
            [args.peer_python, __file__, "--peers-json", "--repeats", str(args.repeats)],
            capture_output=True, text=True, check=False,
        )
        if child.returncode != 0:
            print(f"peers failed:\n{child.stderr[-2000:]}")
        else:
            results.update(json.loads(child.stdout.strip().splitlines()[-1]))
    else:
        print(f"peer environment {args.peer_python} not found: only MedAnalysis is measured")
    ours = results["MedAnalysis resample_to_spacing (SimpleITK linear)"]["seconds"]
    for name, result in results.items():
        ratio = float(result["seconds"]) / float(ours)  # type: ignore[arg-type]
        extra = f"  [{result['version']}]" if "version" in result else ""
        print(f"{name:<52} {float(result['seconds']):7.3f} s  x{ratio:5.2f} of MedAnalysis  "  # type: ignore[arg-type]
              f"out {tuple(result['shape'])} {result['dtype']}{extra}")  # type: ignore[arg-type]
    return 0


if __name__ == "__main__":
    sys.exit(main())
