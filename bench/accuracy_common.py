"""Helpers shared by the accuracy benchmarks (``bench/accuracy_*``).

The benchmarks drive MedAnalysis through its command line exactly as a user would (``medanalysis train``,
``medanalysis evaluate``, ``medanalysis predict``); this module only writes the split manifests, runs the commands
with their wall time, reads the JSON-lines results back and prints tables.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
OUTPUT = REPO / "bench" / "output"


def medanalysis_command() -> list[str]:
    """The ``medanalysis`` entry point of the Python running this script (``python -m MedAnalysisLib``)."""
    return [sys.executable, "-m", "MedAnalysisLib"]


def load_average() -> str:
    """The 1/5/15-minute load averages (how busy the machine was), or ``"n/a"``."""
    try:
        return " ".join(f"{v:.1f}" for v in os.getloadavg())
    except OSError:
        return "n/a"


def run_cli(args: Sequence[str], log_path: Path, *, echo: bool = True) -> tuple[dict[str, Any], float]:
    """Run ``medanalysis ARGS --progress jsonl``, log every line to ``log_path`` and return (result, seconds).

    Raises:
        RuntimeError: The command exited with a non-zero status (its last log lines are in the message).
    """
    command = [*medanalysis_command(), *args, "--progress", "jsonl"]
    log_path.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2")}
    if echo:
        print("$ medanalysis " + " ".join(shlex.quote(a) for a in args), flush=True)
    started = time.monotonic()
    result: dict[str, Any] = {}
    tail: list[str] = []
    with log_path.open("w", encoding="utf-8") as log, subprocess.Popen(
        command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
    ) as child:
        assert child.stdout is not None
        for line in child.stdout:
            log.write(line)
            log.flush()
            tail = (tail + [line.rstrip()])[-20:]
            try:
                message = json.loads(line)
            except json.JSONDecodeError:
                continue
            if not isinstance(message, dict):
                continue
            kind = message.get("type")
            if kind == "result":
                result = message
            elif echo and kind == "metrics":
                shown = {k: round(v, 4) for k, v in (message.get("metrics") or {}).items()
                         if isinstance(v, float) and ("dice" in k or "loss" == k or "auc" in k or k == "val_loss")}
                print(f"  epoch {message.get('epoch')}: {shown}  [{time.monotonic() - started:.0f} s, "
                      f"load {load_average()}]", flush=True)
            elif echo and kind == "log":
                print(f"  {message.get('message')}", flush=True)
    seconds = time.monotonic() - started
    if child.returncode != 0:
        raise RuntimeError(f"medanalysis {args[0]} failed with exit code {child.returncode}:\n" + "\n".join(tail))
    return result, seconds


def write_msd_subset(source: Path, case_ids: Sequence[str], out_dir: Path, *, description: str) -> Path:
    """Write an MSD folder at ``out_dir`` holding copies of the ``case_ids`` images and labels of ``source``.

    ``medanalysis`` reads a ``dataset.json`` only when its entries stay inside its own folder (links included: a
    downloaded description must not name files elsewhere), so the subset copies the files (16 MB for all 208
    hippocampus cases) and keeps the label names, modality and description fields of the original. Files already
    there are kept, so a re-run copies nothing.
    """
    import shutil

    meta = json.loads((source / "dataset.json").read_text(encoding="utf-8"))
    wanted = set(case_ids)
    entries = []
    for entry in meta["training"]:
        if Path(entry["image"]).name.split(".nii")[0] not in wanted:
            continue
        for key in ("image", "label"):
            target = out_dir / entry[key]
            if not target.is_file():
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(source / entry[key], target)
        entries.append({"image": entry["image"], "label": entry["label"]})
    if len(entries) != len(wanted):
        raise ValueError(f"expected {len(wanted)} cases in {source}, found {len(entries)}")
    subset = {k: v for k, v in meta.items() if k not in ("training", "test", "numTraining", "numTest")}
    subset.update({"description": description, "numTraining": len(entries), "numTest": 0, "training": entries,
                   "test": []})
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "dataset.json").write_text(json.dumps(subset, indent=1) + "\n", encoding="utf-8")
    return out_dir


def hippocampus_split(n_test: int, seed: int, max_train: int | None = None) -> tuple[list[str], list[str]]:
    """Seeded case-level split of the 208 hippocampus cases into (train ids, test ids), both sorted."""
    import numpy as np

    from MedAnalysisLib.data.datasets import load_dataset

    cases = sorted(c.case_id for c in load_dataset(DATA / "hippocampus").cases)
    order = np.random.default_rng(seed).permutation(len(cases))
    test = sorted(cases[n] for n in order[:n_test])
    train = sorted(cases[n] for n in order[n_test:])
    if max_train is not None:
        train = train[:max_train]
    if set(train) & set(test):
        raise AssertionError("train and test overlap")
    return train, test


def cluster_bootstrap(groups: Any, statistic: Any, *arrays: Any, n: int = 2000, seed: int = 0) -> tuple[float, float]:
    """95% percentile interval of ``statistic(*arrays)`` resampling whole groups (patients, scans) with replacement.

    The library's patient-level bootstrap (``medanalysis evaluate`` uses it whenever the data has groups), with the
    arrays as columns; resamples where the statistic is undefined (NaN, e.g. an AUC with one class only) are skipped.
    """
    import numpy as np

    from MedAnalysisLib.evaluation.metrics import bootstrap_ci

    columns = np.column_stack([np.asarray(a, dtype=np.float64) for a in arrays])
    interval = bootstrap_ci(columns, lambda rows: statistic(*(rows[:, c] for c in range(rows.shape[1]))),
                            groups=list(groups), n_resamples=n, seed=seed)
    return interval.low, interval.high


def fmt_ci(summary: dict[str, Any]) -> str:
    """``0.891 [0.880, 0.900]`` from a metrics summary with mean and ci_low/ci_high (or low/high)."""
    low = summary.get("ci_low", summary.get("low"))
    high = summary.get("ci_high", summary.get("high"))
    value = summary.get("mean", summary.get("value"))
    if low is None or high is None:
        return f"{value:.3f}"
    return f"{value:.3f} [{low:.3f}, {high:.3f}]"
