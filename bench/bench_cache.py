"""Benchmark: training from the preprocessed cache as the data grows, against preparing every case in memory.

For each size (1x, 4x, 16x ``--cases`` phantom scans of ``--shape`` voxels), the script writes a phantom MSD dataset
(:func:`MedAnalysisLib.phantom.write_phantom_dataset`), prepares it with ``medanalysis preprocess`` (one plan,
measured on the 1x dataset, for every size), then runs ``medanalysis train CACHE`` for ``--steps`` steps under
``/usr/bin/time -v`` (or, where that is missing, reads the child's own resource usage with ``os.wait4``) and prints
the peak RSS and the median training step time. Peak memory should stay flat while the data grows.

``--direct`` also trains the largest dataset from its scans (``train DATA``: the cache is prepared inside the
measured command, as a user's first run does). ``--dataset PATH`` compares instead, on a real dataset, the step time from the cache with the in-memory path (the two
alternate ``--repeats`` times), for example on the hippocampus benchmark's configuration::

    .venv/bin/python bench/bench_cache.py --dataset ../shared/data/hippocampus --batch 4 --steps 25 \\
        --base-filters 16 --hparam max_filters=128 --hparam deep_supervision=true --repeats 2

``--compare`` also trains the 1x dataset with ``--no-cache`` (every case prepared in memory, as before the cache)
and prints both step times. ``--loader`` measures how many patches per second one loader thread draws from the
cache (:class:`~MedAnalysisLib.data.samplers.PatchSampler`, with augmentation) next to the patches per second the
training steps consume, to show whether loading or the model is the bottleneck.

Run from the repository root; the defaults are tiny (a check that the script works, about a minute on 2 cores)::

    .venv/bin/python bench/bench_cache.py --cases 2 --shape 24,32,32 --sizes 1,2 --steps 4 --compare --loader

The issue's configuration (200 cases of 128x160x160 at 16x; about 2.6 GB of float32 prepared images) is::

    .venv/bin/python bench/bench_cache.py --cases 13 --shape 128,160,160 --sizes 1,4,16 --steps 20 \\
        --compare --loader --work /scratch/bench-cache
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TIME = Path("/usr/bin/time")


def medanalysis(*argv: str) -> list[str]:
    """The command line of ``medanalysis argv`` with this interpreter."""
    return [sys.executable, "-m", "MedAnalysisLib", *argv]


def write_dataset(folder: Path, cases: int, shape: tuple[int, int, int]) -> Path:
    """A phantom MSD dataset of ``cases`` scans (reused when it is already there)."""
    from MedAnalysisLib.phantom import write_phantom_dataset

    if not (folder / "dataset.json").is_file():
        write_phantom_dataset(folder, cases, seed=0, shape=shape)
    return folder


def make_plan(data: Path, out: Path, patch: str, batch: int) -> Path:
    """The plan measured on ``data``, with the given patch and batch size."""
    if not out.is_file():
        subprocess.run(medanalysis("plan", str(data), "--out", str(out), "--set", f"patch_size={patch}",
                                   "--set", f"batch_size={batch}", "--progress", "none"),
                       check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    return out


def run_measured(argv: list[str]) -> tuple[float, list[float], int]:
    """Run ``argv`` (a ``medanalysis ... --progress jsonl`` command); return its peak RSS in MB, the seconds between
    consecutive training steps, and its exit code. Peak RSS comes from ``/usr/bin/time -v`` when it exists, else
    from the child's own resource usage (``os.wait4``)."""
    with tempfile.NamedTemporaryFile("r", suffix=".time") as report:
        wrapped = [str(TIME), "-v", "-o", report.name, *argv] if TIME.exists() else argv
        child = subprocess.Popen(wrapped, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        stamps = []
        for line in child.stdout:  # type: ignore[union-attr]
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if event.get("type") == "progress" and event.get("stage") == "train":
                stamps.append(time.perf_counter())
        _, status, usage = os.wait4(child.pid, 0)
        child.returncode = os.waitstatus_to_exitcode(status)
        if TIME.exists():
            found = re.search(r"Maximum resident set size \(kbytes\): (\d+)", Path(report.name).read_text())
            peak_kb = int(found.group(1)) if found else 0
        else:
            peak_kb = usage.ru_maxrss
    steps = [b - a for a, b in zip(stamps, stamps[1:], strict=False)][1:]  # the first step includes compilation
    return peak_kb / 1024, steps, child.returncode


def train_argv(data: Path, out: Path, args: argparse.Namespace, *extra: str) -> list[str]:
    return medanalysis("train", str(data), "--task", "segmentation", "--model", "unet3d", "--out", str(out),
                       "--epochs", "1", "--steps-per-epoch", str(args.steps), "--val-fraction", "0",
                       "--hparam", f"base_filters={args.base_filters}", "--workers", str(args.workers),
                       "--progress", "jsonl", "--overwrite", "--no-resume", *extra)


def loader_rate(cache: Path, plan: Path, seconds: float) -> float:
    """Patches per second one thread draws from ``cache`` (PatchSampler with the default augmentation)."""
    from MedAnalysisLib.data.cache import open_cache
    from MedAnalysisLib.data.samplers import PatchSampler
    from MedAnalysisLib.preprocessing.augment import AugmentConfig, Augmenter
    from MedAnalysisLib.preprocessing.plan import Plan

    settings = Plan.from_json(plan.read_text())
    opened = open_cache(cache)
    cases = [opened.case(e.case_id) for e in opened.entries]
    sampler = PatchSampler(cases, settings.patch_size, settings.batch_size, augmenter=Augmenter(AugmentConfig()),
                           foreground_fraction=settings.foreground_fraction)
    count, start, seed = 0, time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
        sampler.batch(seed)
        count, seed = count + settings.batch_size, seed + 1
    return count / (time.perf_counter() - start)


def median_ms(steps: list[float]) -> str:
    return f"{1000 * statistics.median(steps):.0f}" if steps else "n/a"


def compare_on(dataset: Path, work: Path, args: argparse.Namespace) -> None:
    """Step time training from the cache against the in-memory path on a real dataset (``--dataset``), the two
    alternating ``--repeats`` times so that a busy machine slows both alike; prints each run and the medians."""
    plan = work / "dataset-plan.json"
    if not plan.is_file():
        subprocess.run(medanalysis("plan", str(dataset), "--out", str(plan), "--set", f"batch_size={args.batch}",
                                   "--progress", "none"), check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    cache = work / "dataset-cache"
    subprocess.run(medanalysis("preprocess", str(dataset), "--plan", str(plan), "--out", str(cache), "--workers",
                               str(args.workers), "--progress", "none"), check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    extra = [arg for value in args.hparam for arg in ("--hparam", value)]
    times: dict[str, list[float]] = {"cache": [], "in memory (--no-cache)": []}
    peaks: dict[str, list[float]] = {key: [] for key in times}
    for repeat in range(args.repeats):
        for path, data, more in (("cache", cache, []), ("in memory (--no-cache)", dataset, ["--no-cache", "--plan",
                                                                                            str(plan)])):
            peak, steps, code = run_measured(train_argv(data, work / "dataset-model", args, *extra, *more))
            times[path] += steps
            peaks[path].append(peak)
            print(f"{dataset.name} run {repeat + 1}: {path}: median step {median_ms(steps)} ms over {len(steps)} steps, "
                  f"peak RSS {peak:.0f} MB" + ("" if code == 0 else f" (exit code {code})"), flush=True)
    cached, memory = (statistics.median(times[key]) for key in times)
    print(f"{dataset.name}: median step {1000 * cached:.0f} ms from the cache, {1000 * memory:.0f} ms in memory "
          f"({100 * (cached / memory - 1):+.1f}%); peak RSS {max(peaks['cache']):.0f} MB against "
          f"{max(peaks['in memory (--no-cache)']):.0f} MB", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=2, help="scans in the 1x dataset (default: 2)")
    parser.add_argument("--shape", default="24,32,32", help="k,j,i voxels of each scan (default: 24,32,32)")
    parser.add_argument("--sizes", default="1,4,16", help="dataset sizes as multiples of --cases (default: 1,4,16)")
    parser.add_argument("--steps", type=int, default=6, help="training steps per run (default: 6)")
    parser.add_argument("--patch", default="16,16,16", help="patch size k,j,i (default: 16,16,16)")
    parser.add_argument("--batch", type=int, default=2, help="batch size (default: 2)")
    parser.add_argument("--base-filters", type=int, default=8, help="U-Net base filters (default: 8)")
    parser.add_argument("--workers", type=int, default=2, help="loader threads and preprocessing processes")
    parser.add_argument("--compare", action="store_true", help="also train 1x in memory (--no-cache)")
    parser.add_argument("--loader", action="store_true", help="also measure loader patches/s per thread")
    parser.add_argument("--direct", action="store_true",
                        help="also train the largest dataset from its scans (train DATA: the cache is prepared "
                        "inside the measured command, as a user's first run does)")
    parser.add_argument("--dataset", type=Path, default=None,
                        help="instead of phantoms: compare cache and in-memory step times on this dataset")
    parser.add_argument("--hparam", action="append", default=[], help="extra --hparam for --dataset runs")
    parser.add_argument("--repeats", type=int, default=2, help="alternating runs per path with --dataset")
    parser.add_argument("--work", type=Path, default=None, help="working folder (default: a temporary one)")
    parser.add_argument("--keep", action="store_true", help="keep the working folder")
    args = parser.parse_args(argv)
    shape = tuple(int(s) for s in args.shape.split(","))
    sizes = [int(s) for s in args.sizes.split(",")]
    work = args.work or Path(tempfile.mkdtemp(prefix="bench-cache-"))
    work.mkdir(parents=True, exist_ok=True)
    if args.dataset is not None:
        try:
            compare_on(args.dataset, work, args)
        finally:
            if args.work is None and not args.keep:
                shutil.rmtree(work, ignore_errors=True)
        return 0
    print(f"{'size':>5} {'cases':>6} {'prepared MB':>12} {'peak RSS MB':>12} {'step ms':>8}  path")
    plan = None
    try:
        for size in sizes:
            data = write_dataset(work / f"data-{size}x", args.cases * size, shape)  # type: ignore[arg-type]
            plan = plan or make_plan(data, work / "plan.json", args.patch, args.batch)
            cache = work / f"cache-{size}x"
            subprocess.run(medanalysis("preprocess", str(data), "--plan", str(plan), "--out", str(cache),
                                       "--workers", str(args.workers), "--progress", "none"),
                           check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
            prepared = sum(p.stat().st_size for p in cache.rglob("image.npy")) / 2**20
            peak, steps, code = run_measured(train_argv(cache, work / f"model-{size}x", args))
            print(f"{size:>4}x {args.cases * size:>6} {prepared:>12.1f} {peak:>12.0f} {median_ms(steps):>8}  cache"
                  + ("" if code == 0 else f"  (exit code {code})"), flush=True)
            if size == sizes[0] and args.compare:
                peak_m, steps_m, code_m = run_measured(train_argv(data, work / "model-memory", args, "--no-cache",
                                                                  "--plan", str(plan)))
                print(f"{size:>4}x {args.cases * size:>6} {prepared:>12.1f} {peak_m:>12.0f} {median_ms(steps_m):>8}"
                      "  in memory (--no-cache)" + ("" if code_m == 0 else f"  (exit code {code_m})"), flush=True)
            if size == sizes[0] and args.loader:
                rate = loader_rate(cache, plan, seconds=5.0)
                consumed = args.batch / statistics.median(steps) if steps else float("nan")
                print(f"loader: {rate:.1f} patches/s per thread; training consumes {consumed:.1f} patches/s "
                      f"({'loading' if rate * args.workers < consumed else 'the model'} is the bottleneck with "
                      f"{args.workers} loader thread(s))", flush=True)
        if args.direct and plan is not None:
            size = sizes[-1]
            data = work / f"data-{size}x"
            shutil.rmtree(work / f"model-direct-{size}x.cache", ignore_errors=True)
            peak, steps, code = run_measured(train_argv(data, work / f"model-direct-{size}x", args, "--plan",
                                                        str(plan)))
            print(f"{size:>4}x {args.cases * size:>6} {'':>12} {peak:>12.0f} {median_ms(steps):>8}  train DATA "
                  "(preprocessing included)" + ("" if code == 0 else f"  (exit code {code})"), flush=True)
    finally:
        if args.work is None and not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
