"""The command line's entrance (issue 20, item 6 and the small defects of item 7): mistakes are refused before
TensorFlow is imported, TensorFlow's start-up lines stay off stderr, every ``--help`` shows the defaults, a closed
stdout ends a command quietly, and the progress bar fits the terminal.

Whether TensorFlow was imported is observed in the child itself: the command runs through a tiny wrapper that calls
the real ``MedAnalysisLib.cli.main`` and, at exit, writes the TensorFlow and Keras modules in ``sys.modules`` to a
file. The time the refusal takes is not asserted (it depends on the machine); the absence of the import is.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers_cli import ROOT, WRAPPER, run_cli
from helpers_inference import cube_volume, shared_cube_bundle, write_cube_msd
from helpers_io import write_dicom_series

from MedAnalysisLib.io import write_volume
from MedAnalysisLib.volume import Volume

#: What TensorFlow prints while it starts (absl/glog records, the absl notice, the CPU-feature notice).
TF_NOISE = re.compile(r"^[IWEF]\d{4} |absl|InitializeLog|oneDNN|cuda|cuInit|TensorFlow binary|rebuild TensorFlow",
                      re.IGNORECASE)

# ------------------------------------------------------------------------------------------- early and quiet
def test_a_model_typo_is_refused_before_tensorflow_is_imported(tmp_path: Path) -> None:
    msd = write_cube_msd(tmp_path / "Task01")
    completed, heavy = run_cli(tmp_path, "train", str(msd), "--task", "segmentation", "--model", "unet3dd",
                               "--out", str(tmp_path / "bundle"))
    assert completed.returncode == 2, completed.stderr[-2000:]
    assert re.search(r"expected a model family among .*unet3d.*, got 'unet3dd'", completed.stderr)
    assert heavy == [], f"TensorFlow/Keras imported before the typo was refused: {heavy[:5]}"
    assert not (tmp_path / "bundle").exists()
    # a family that does not fit the task is refused just as early
    completed, heavy = run_cli(tmp_path, "train", str(msd), "--task", "classification", "--model", "unet3d",
                               "--out", str(tmp_path / "bundle"))
    assert completed.returncode == 2 and "expected a segmentation task for model 'unet3d'" in completed.stderr
    assert heavy == []


def test_missing_inputs_and_impossible_formats_are_refused_before_tensorflow_is_imported(tmp_path: Path) -> None:
    bundle = shared_cube_bundle()
    image, _ = cube_volume((12, 14, 16), np.random.default_rng(0))
    write_volume(Volume(image, spacing=(1.5, 1.5, 1.5)), tmp_path / "cases" / "case00.nii.gz")
    missing = str(tmp_path / "no-such-scan.nii.gz")
    commands = {
        "train, missing data": (["train", missing, "--task", "segmentation", "--model", "unet3d", "--out",
                                 str(tmp_path / "b")], "got nothing at"),
        "predict, missing input": (["predict", str(bundle), missing, "--out", str(tmp_path / "p")], "got nothing at"),
        "predict, missing bundle": (["predict", str(tmp_path / "no-bundle"), str(tmp_path / "cases"), "--out",
                                     str(tmp_path / "p")], "expected a bundle folder or .zip"),
        "predict, DICOM SEG of NIfTI": (["predict", str(bundle), str(tmp_path / "cases"), "--out", str(tmp_path / "p"),
                                         "--format", "dicom-seg"], "expected input that can give --format dicom-seg"),
        "evaluate, missing data": (["evaluate", str(bundle), missing, "--out", str(tmp_path / "e")], "got nothing at"),
    }
    for name, (argv, message) in commands.items():
        completed, heavy = run_cli(tmp_path, *argv)
        assert completed.returncode == 2, f"{name}: {completed.stderr[-2000:]}"
        assert message in completed.stderr, f"{name}: {completed.stderr[-2000:]}"
        assert heavy == [], f"{name}: TensorFlow/Keras imported before the refusal: {heavy[:5]}"
    assert not (tmp_path / "p").exists() and not (tmp_path / "e").exists() and not (tmp_path / "b").exists()


def test_tensorflow_start_up_lines_stay_off_stderr(tmp_path: Path) -> None:
    """A real, tiny predict with TensorFlow's own logging settings untouched: stderr holds our lines only. The same
    run shows that the import watch sees TensorFlow when a command does import it."""
    image, _ = cube_volume((12, 14, 16), np.random.default_rng(0))
    write_volume(Volume(image, spacing=(1.5, 1.5, 1.5)), tmp_path / "cases" / "case00.nii.gz")
    env = {key: value for key, value in os.environ.items() if not key.startswith(("TF_CPP", "TF_ENABLE"))}
    wrapper = tmp_path / "cli_wrapper.py"
    wrapper.write_text(WRAPPER)
    env.update(PYTHONPATH=str(ROOT), MEDANALYSIS_TEST_IMPORTS=str(tmp_path / "imports.json"))
    completed = subprocess.run(
        [sys.executable, str(wrapper), "predict", str(shared_cube_bundle()), str(tmp_path / "cases"), "--out",
         str(tmp_path / "out"), "--progress", "log"],
        capture_output=True, text=True, env=env, timeout=300, check=False)
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "tensorflow" in json.loads((tmp_path / "imports.json").read_text())
    noise = [line for line in completed.stderr.splitlines() if TF_NOISE.search(line)]
    assert noise == [], f"TensorFlow start-up lines on stderr: {noise}"
    assert "case00: done" in completed.stderr  # our own progress is still there
    assert (tmp_path / "out" / "case00_label.nii.gz").is_file()


def test_the_start_up_filter_drops_only_start_up_noise(capfd: pytest.CaptureFixture[str]) -> None:
    from MedAnalysisLib.cli._quiet import filtered_native_stderr

    lines = [
        "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
        "I0000 00:00:1796530866.552874   10581 port.cc:153] oneDNN custom operations are on.",
        "I0000 00:00:1796530866.553222   10581 cudart_stub.cc:31] Could not find cuda drivers on your machine.",
        "E0000 00:00:1796530873.259456   10581 cuda_platform.cc:52] failed call to cuInit: UNKNOWN ERROR (303)",
        "E0000 00:00:1796530873.259456   10581 op_kernel.cc:1830] a real kernel error",
        "Traceback: something the user must see",
    ]
    capfd.readouterr()
    with filtered_native_stderr():
        os.write(2, ("\n".join(lines) + "\n").encode())
    assert capfd.readouterr().err.splitlines() == lines[-2:]


# ------------------------------------------------------------------------------------------- help and pipes
def _parsers(parser: argparse.ArgumentParser, name: str = "medanalysis"):
    yield name, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child_name, child in action.choices.items():
                yield from _parsers(child, f"{name} {child_name}")


def test_every_option_shows_its_default_in_help() -> None:
    from MedAnalysisLib.cli import build_parser
    from MedAnalysisLib.preprocessing.plan import DEFAULT_MEMORY_BUDGET_MB

    missing = []
    for name, parser in _parsers(build_parser()):
        formatter = parser._get_formatter()
        for action in parser._actions:
            if not action.option_strings or action.nargs == 0 or action.required:
                continue  # positionals, flags and required options have no default to show
            text = formatter._expand_help(action) if action.help else ""
            if "default" not in text.lower():
                missing.append(f"{name} {action.option_strings[-1]}")
    assert missing == [], f"options whose --help does not show the default: {missing}"
    rendered = " ".join(_help_text(build_parser(), "train").split())  # as a user sees it
    assert "--val-fraction VAL_FRACTION share of cases (or groups) for validation (default: 0.2)" in rendered
    assert "--workers WORKERS data-loading workers (threads) (default: 2)" in rendered
    plan_help = " ".join(_help_text(build_parser(), "plan").split())
    assert f"(default: {int(DEFAULT_MEMORY_BUDGET_MB)}," in plan_help


def _help_text(parser: argparse.ArgumentParser, command: str) -> str:
    for name, child in _parsers(parser):
        if name == f"medanalysis {command}":
            return child.format_help()
    raise AssertionError(command)


@pytest.mark.parametrize("command", ["help", "dicom ls", "info"])
def test_a_closed_stdout_ends_the_command_quietly(tmp_path: Path, command: str) -> None:
    """``medanalysis info B | head`` ended in a BrokenPipeError traceback. The reader here is gone before the
    command writes (the pipe's read end is closed first), so every run hits the closed pipe."""
    if command == "help":
        argv = ["--help"]
    elif command == "dicom ls":
        for n in range(3):
            write_dicom_series(tmp_path / "dicom" / f"s{n}", np.zeros((2, 8, 8), np.int16), series_number=n + 1,
                               series_uid=f"1.2.826.0.1.3680043.8.498.77.{n}")
        argv = ["dicom", "ls", str(tmp_path / "dicom")]
    else:
        argv = ["info", str(shared_cube_bundle())]
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        completed = subprocess.run([sys.executable, "-m", "MedAnalysisLib", *argv], stdout=write_end,
                                   stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)},
                                   timeout=120, check=False)
    finally:
        os.close(write_end)
    # argparse itself ignores a failed write of --help and exits 0; the commands exit 141, as cat and grep do
    assert completed.returncode == (0 if command == "help" else 141), completed.stderr[-2000:]
    for sign in ("Traceback", "BrokenPipe", "Broken pipe", "error", "Exception ignored"):
        assert sign not in completed.stderr, completed.stderr[-2000:]


# ------------------------------------------------------------------------------------------- progress bar
@pytest.mark.parametrize("columns", [40, 60, 150])
def test_the_progress_bar_fits_the_terminal(columns: int, monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    from MedAnalysisLib.progress import Reporter

    monkeypatch.setenv("COLUMNS", str(columns))
    reporter = Reporter("bar")
    message = "case_with_a_rather_long_name_0042 of a study folder"
    for done in (0, 3, 7, 10):
        reporter.progress("predict", done, 10, message)
    drawn = [line for line in re.split(r"[\r\n]", capsys.readouterr().err) if line]
    assert len(drawn) == 4
    assert all(len(line) <= columns - 1 for line in drawn), [len(line) for line in drawn]
    assert all("%" in line for line in drawn)
    if columns >= 150:  # a wide terminal shows the whole message and a full bar
        assert all(message in line and "[" in line for line in drawn)
