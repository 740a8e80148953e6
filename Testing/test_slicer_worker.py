"""Background jobs: the real ``medanalysis`` child process on a tiny bundle, progress streaming, results into the
scene, errors with the worker's message, and cancel (clean stop, then a hard kill) leaving no process behind."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))


from MedAnalysisLib import slicer_adapter as adapter  # noqa: E402
from MedAnalysisLib.io import write_volume  # noqa: E402
from MedAnalysisLib.volume import Volume, rotation_about_axis  # noqa: E402
from MedAnalysisLib.worker import WorkerJob  # noqa: E402
from MedAnalysisSlicerLib.jobs import MedAnalysisJob  # noqa: E402
from MedAnalysisSlicerLib.logic import SceneLogic  # noqa: E402

TIMEOUT_S = 240


def oblique_volume(seed: int = 0, shape=(10, 16, 18)) -> Volume:
    rng = np.random.default_rng(seed)
    return Volume(rng.normal(0, 40, shape).astype(np.int16), spacing=(0.9, 1.3, 2.5), origin=(12.5, -7.0, 40.0),
                  direction=rotation_about_axis("z", 25) @ rotation_about_axis("y", -8))


def follow(job, timeout_s: float = TIMEOUT_S) -> list[dict]:
    """Poll like the panel's timer until the job ends; returns every message."""
    messages = []
    deadline = time.monotonic() + timeout_s
    while job.running:
        messages += job.poll()
        assert time.monotonic() < deadline, f"job still running after {timeout_s} s: {job.argv if hasattr(job, 'argv') else ''}"
        time.sleep(0.05)
    return messages + job.poll()


def group_members(pgid: int) -> list[int]:
    """Live processes whose process group is ``pgid`` (the child's group, which holds its whole tree)."""
    members = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            fields = stat[stat.rfind(")") + 2:].split()
            if int(fields[2]) == pgid and fields[0] != "Z":
                members.append(int(entry.name))
    return members


def test_background_jobs_stream_progress_and_match_the_in_process_results(scene, bundles):
    segmentation_bundle, classification_bundle = bundles
    logic = SceneLogic(scene.scene, python=sys.executable)
    node = adapter.scalar_volume_node_from_volume(scene.scene, oblique_volume(), "CT")
    before = adapter.snapshot(node)

    # Both children start at once, as they may from the panel and the console.
    segment_job = logic.segment(node, str(segmentation_bundle), background=True)
    classify_job = logic.classify(node, str(classification_bundle), background=True)
    assert isinstance(segment_job, MedAnalysisJob) and segment_job.kind == "segment"
    assert os.getpgid(segment_job.worker.pid) == segment_job.worker.pid  # the child leads its own process group
    messages = follow(segment_job)
    follow(classify_job)
    progress = [m for m in messages if m["type"] == "progress"]
    assert progress and all(0.0 <= m["fraction"] <= 1.0 for m in progress)
    assert progress[-1]["fraction"] == 1.0
    assert segment_job.worker.returncode == 0 and segment_job.worker.error is None
    assert segment_job.worker.result["done"] == ["channel0"]

    outputs = logic.finishJob(segment_job)
    assert not segment_job.context["scratch"].exists()  # scratch files are removed
    card = logic.readModelCard(str(segmentation_bundle))
    from_job = adapter.label_volume_from_segmentation(outputs["segmentation"], card.labels, node)
    in_process = logic.segment(node, str(segmentation_bundle))
    from_console = adapter.label_volume_from_segmentation(in_process, card.labels, node)
    np.testing.assert_array_equal(from_job.array, from_console.array)
    np.testing.assert_allclose(from_job.ijk_to_ras(), adapter.ijk_to_ras_array(node), rtol=0, atol=1e-12)
    assert adapter.rows_from_table_node(outputs["table"]) == adapter.rows_from_table_node(logic.lastOutputs["table"])

    rows = adapter.rows_from_table_node(logic.finishJob(classify_job)["table"])
    reference = adapter.rows_from_table_node(logic.classify(node, str(classification_bundle)))
    assert rows[-1]["scope"] == "scan" and rows[-1]["predicted"] in {"normal", "lesion"}
    assert rows[-1]["predicted"] == reference[-1]["predicted"]
    assert rows[-1]["p_lesion"] == pytest.approx(reference[-1]["p_lesion"], abs=1e-5)

    after = adapter.snapshot(node)
    np.testing.assert_array_equal(before[0], after[0])
    np.testing.assert_array_equal(before[1], after[1])
    assert before[2] == after[2]


def test_worker_errors_reach_the_caller_with_the_libraries_message(tmp_path):
    (tmp_path / "not-a-bundle").mkdir()
    image = write_volume(oblique_volume(), tmp_path / "ct.nrrd")
    job = WorkerJob(["predict", str(tmp_path / "not-a-bundle"), str(image), "--out", str(tmp_path / "out")])
    messages = follow(job)
    assert job.returncode == 2
    assert job.result is None
    assert job.error["error_type"] == "BundleError"
    assert "bundle.json" in job.error["message"]
    assert [m for m in messages if m["type"] == "error"][-1]["message"] == job.error["message"]


def test_cancel_stops_cleanly_between_cases_and_leaves_no_process(tmp_path, bundles):
    segmentation_bundle, _ = bundles
    cases = tmp_path / "cases"
    cases.mkdir()
    for index in range(40):
        write_volume(oblique_volume(index, shape=(12, 24, 24)), cases / f"case{index:02d}.nrrd")
    job = WorkerJob(["predict", str(segmentation_bundle), str(cases), "--out", str(tmp_path / "out")])
    deadline = time.monotonic() + TIMEOUT_S
    started_cases = 0
    while started_cases < 2:  # wait until prediction is under way (model loaded, first case done)
        for message in job.poll():
            if message["type"] == "progress" and message.get("stage") == "cases":
                started_cases += 1
        assert job.running and time.monotonic() < deadline, job.stderr_tail
        time.sleep(0.05)
    pgid = job.pid
    code = job.cancel(grace_s=60.0)
    messages = follow(job)
    assert code == 3  # the child's own clean exit: "cancelled"
    assert job.cancelled and job.error["error_type"] == "CancelledError"
    assert any(m["type"] == "error" for m in messages)
    assert group_members(pgid) == []
    finished = sorted(p.name for p in (tmp_path / "out").glob("case*.json"))
    assert 1 <= len(finished) < 40  # completed cases are kept, the rest was not started


def test_cancel_kills_the_whole_tree_when_the_child_does_not_stop(tmp_path, bundles):
    segmentation_bundle, _ = bundles
    image = write_volume(oblique_volume(), tmp_path / "ct.nrrd")
    job = WorkerJob(["predict", str(segmentation_bundle), str(image), "--out", str(tmp_path / "out")])
    time.sleep(0.5)  # importing, not yet able to react to the stop line between cases
    pgid = job.pid
    code = job.cancel(grace_s=0.0)
    follow(job)
    assert code is not None and job.returncode is not None
    assert job.error is not None and job.error["error_type"] == "CancelledError"
    assert group_members(pgid) == []
    with pytest.raises(ProcessLookupError):
        os.kill(job.pid, 0)


def test_a_child_that_dies_without_an_error_line_is_explained_from_its_stderr():
    job = WorkerJob(["no-such-command"])  # argparse rejects it before any JSON line is written
    messages = follow(job)
    assert job.returncode == 2 and job.result is None
    assert job.error["error_type"] == "WorkerCrash"
    assert "exited with code 2" in job.error["message"] and "invalid choice" in job.error["message"]
    assert messages[-1] == {"type": "error", **job.error}
    with pytest.raises(ValueError, match="without --progress"):
        WorkerJob(["predict", "--progress", "bar"])
