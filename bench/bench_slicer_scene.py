"""Benchmark: the Slicer side of MedAnalysis on slicer-core's real MRML scene.

Prints, for a 512x512x300 int16 CT-sized volume with an oblique direction:

* building a test scene with the application and module logics wired (what every Slicer test pays);
* volume node -> Volume (voxel copy + RAS->LPS geometry);
* label Volume -> segmentation node with 3 segments in one shared layer (names, colors, terminology);
* label Volume -> labelmap node with its color table;
* the per-label volume table node;
* how long a background ``medanalysis`` child takes from start to its first JSON line and to exit for a bad
  bundle (the fixed cost of every background job before any model work: interpreter + library imports).

Run from the repository root::

    nice .venv/bin/python bench/bench_slicer_scene.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "Testing"))

from slicer_scene import make_scene  # noqa: E402

from MedAnalysisLib import slicer_adapter as adapter  # noqa: E402
from MedAnalysisLib.inference.predict import label_volume_table  # noqa: E402
from MedAnalysisLib.volume import Volume, rotation_about_axis  # noqa: E402
from MedAnalysisLib.worker import WorkerJob  # noqa: E402

LABELS = [{"value": 1, "name": "liver", "color": (221, 130, 101),
           "terminology": {"category": "SCT^123037004^Anatomical Structure", "type": "SCT^10200004^Liver"}},
          {"value": 2, "name": "tumor", "color": (144, 238, 144), "terminology": None},
          {"value": 3, "name": "vessel", "color": (0, 151, 206), "terminology": None}]


def timed(function, repeats: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = function()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)

    seconds, _ = timed(lambda: make_scene().close(), 20)
    print(f"scene with application + module logics: {seconds * 1000:.1f} ms (median of 20)")

    built = make_scene()
    scene = built.scene
    shape = (300, 512, 512)
    rng = np.random.default_rng(0)
    ct = Volume(rng.integers(-1000, 1500, size=shape, dtype=np.int16), spacing=(0.7, 0.7, 1.25),
                origin=(-180.0, -200.0, -350.0), direction=rotation_about_axis("z", 12) @ rotation_about_axis("x", 5))
    node = adapter.scalar_volume_node_from_volume(scene, ct, "CT")
    labels = np.zeros(shape, np.uint8)
    labels[100:200, 150:350, 100:300] = 1
    labels[140:160, 200:240, 150:190] = 2
    labels[50:250, 250:260, 250:260] = 3
    label_volume = ct.with_array(labels)
    megabytes = ct.array.nbytes / 1e6
    print(f"volume: {shape} (k, j, i) int16, {megabytes:.0f} MB")

    seconds, _ = timed(lambda: adapter.volume_from_node(node), args.repeats)
    print(f"volume node -> Volume: {seconds:.3f} s ({megabytes / seconds:.0f} MB/s)")
    segmentation = None

    def to_segmentation():
        return adapter.segmentation_node_from_volume(scene, label_volume, LABELS, reference_node=node, node=segmentation)

    seconds, segmentation = timed(to_segmentation, args.repeats)
    print(f"label Volume -> segmentation node (3 segments, shared layer): {seconds:.3f} s")
    seconds, _ = timed(lambda: adapter.labelmap_node_from_volume(scene, label_volume, LABELS, reference_node=node),
                       args.repeats)
    print(f"label Volume -> labelmap node + color table: {seconds:.3f} s")
    names = {label["value"]: label["name"] for label in LABELS}
    seconds, _ = timed(lambda: adapter.table_node_from_rows(scene, label_volume_table(label_volume, names), "volumes",
                                                            reference_node=node), args.repeats)
    print(f"per-label volume table (bincount + table node): {seconds:.3f} s")
    built.close()

    with tempfile.TemporaryDirectory() as folder:
        (Path(folder) / "empty").mkdir()
        firsts, totals = [], []
        for _ in range(args.repeats):
            start = time.perf_counter()
            job = WorkerJob(["predict", str(Path(folder) / "empty"), str(Path(folder) / "none.nrrd"), "--out",
                             str(Path(folder) / "out")])
            first = None
            while job.running:
                if job.poll() and first is None:
                    first = time.perf_counter() - start
                time.sleep(0.005)
            job.poll()
            totals.append(time.perf_counter() - start)
            firsts.append(first if first is not None else totals[-1])
    print(f"background child: first JSON line after {statistics.median(firsts):.2f} s, exit after "
          f"{statistics.median(totals):.2f} s (bad bundle; median of {args.repeats})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
