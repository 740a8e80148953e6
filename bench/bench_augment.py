"""Benchmark: augmented 96^3 training patches per second on the CPU worker threads.

Measures :class:`~MedAnalysisLib.data.samplers.PatchSampler` with an :class:`Augmenter` (patch extraction with
foreground oversampling + augmentation), batch size 2, for the default configuration and for every transform
switched on (rotation, scaling and elastic deformation on every patch), on 1 and 2 threads. Run from the
repository root::

    nice .venv/bin/python bench/bench_augment.py [--batches 12]

A GPU training step of a 3D U-Net on two 96^3 patches takes roughly 0.1-0.3 s, so about 7-20 patches per second
keep one GPU busy.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

from MedAnalysisLib.data.samplers import PatchSampler
from MedAnalysisLib.preprocessing.augment import Augmenter
from MedAnalysisLib.preprocessing.transforms import PreparedCase


def make_cases(n: int = 4, shape: tuple[int, int, int] = (128, 160, 160)) -> list[PreparedCase]:
    rng = np.random.default_rng(0)
    cases = []
    for index in range(n):
        image = rng.normal(size=(*shape, 1)).astype(np.float32)
        label = np.zeros(shape, np.uint8)
        k, j, i = rng.integers(20, 100, size=3)
        label[k : k + 20, j : j + 25, i : i + 15] = 1
        label[k + 20 : k + 30, j : j + 10, i : i + 10] = 2
        image[..., 0] += label
        cases.append(PreparedCase(image, label, inverse=None, case_id=f"synthetic{index}"))  # type: ignore[arg-type]
    return cases


def measure(sampler: PatchSampler, batches: int, workers: int) -> float:
    stream = sampler.batches(batches + 1, seed=1, workers=workers)
    next(stream)  # warm-up (thread start, first allocation)
    start = time.perf_counter()
    count = 0
    for x, _y in stream:
        count += x.shape[0]
    return count / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batches", type=int, default=12)
    args = parser.parse_args(argv)
    cases = make_cases()
    configs = {
        "no augmentation (patch extraction only)": None,
        "default augmentation": Augmenter(seed=0),
        "all transforms, rotation+scaling+elastic on every patch": Augmenter(
            {"p_rotate": 1.0, "p_scale": 1.0, "p_elastic": 1.0, "p_rot90": 0.5, "p_gamma": 1.0, "p_noise": 1.0,
             "p_blur": 1.0, "p_brightness": 1.0, "p_contrast": 1.0},
            seed=0,
        ),
    }
    print(f"96^3 patches, batch 2, {args.batches} batches per measurement; {os.cpu_count()} CPU cores (shared)")
    for name, augmenter in configs.items():
        sampler = PatchSampler(cases, (96, 96, 96), 2, foreground_fraction=0.33, augmenter=augmenter, seed=0)
        rates = [measure(sampler, args.batches, workers) for workers in (1, 2)]
        print(f"{name:<58} 1 thread {rates[0]:6.1f} patches/s   2 threads {rates[1]:6.1f} patches/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
