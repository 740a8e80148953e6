"""The preprocessed cache: written once and resumed, read lazily into the same batches as prepared arrays in memory,
refused when its files do not match their records, and trained from without SimpleITK."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers_inference import make_cube_plan, write_cube_msd

from MedAnalysisLib.cli import main
from MedAnalysisLib.data.cache import (
    CASES,
    IMAGE,
    LABEL,
    MANIFEST,
    RECORD,
    build_cache,
    case_key,
    open_cache,
)
from MedAnalysisLib.data.datasets import read_case
from MedAnalysisLib.data.samplers import PatchSampler, SequenceSampler, SliceSampler
from MedAnalysisLib.data.sources import load_source
from MedAnalysisLib.errors import CancelledError, InputError, OutputError
from MedAnalysisLib.preprocessing.transforms import apply_plan
from MedAnalysisLib.progress import Reporter, StopFlag

ROOT = Path(__file__).resolve().parents[1]
SHAPE = (16, 16, 16)


@pytest.fixture(scope="module")
def msd(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_cube_msd(tmp_path_factory.mktemp("data") / "Task01_Cubes", n=4, shape=SHAPE)


def _plan(**overrides: object):  # noqa: ANN202 - Plan imported lazily by the helper
    return make_cube_plan(patch_size=(8, 8, 8), slice_shape=(12, 12), **overrides)


def _build(data: Path, cache: Path, plan=None, **options: object):  # noqa: ANN001, ANN202
    return build_cache(load_source(data), plan or _plan(), cache, prepare=apply_plan, read=read_case, **options)


def _mtimes(cache: Path) -> dict[str, int]:
    return {str(p.relative_to(cache)): p.stat().st_mtime_ns for p in sorted((cache / CASES).rglob("*"))}


def _copy(data: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(data, tmp_path / data.name))


# ---------------------------------------------------------------------------------------------- writing


def test_each_case_is_prepared_once_and_only_what_changed_again(msd: Path, tmp_path: Path) -> None:
    data, cache = _copy(msd, tmp_path), tmp_path / "cache"
    first = _build(data, cache)
    assert (first.prepared, first.reused) == (4, 0)
    before = _mtimes(cache)
    again = _build(data, cache)
    assert (again.prepared, again.reused) == (0, 4) and _mtimes(cache) == before
    # a training-only field (batch size) keeps every case
    assert _build(data, cache, _plan(batch_size=5)).prepared == 0
    # one source file rewritten (a new modification time): that case and nothing else
    changed = sorted((data / "imagesTr").iterdir())[1]
    info = changed.stat()
    os.utime(changed, ns=(info.st_atime_ns, info.st_mtime_ns + 10**9))
    assert (_build(data, cache).prepared, _mtimes(cache) != before) == (1, True)
    untouched = case_key("box_000")
    assert {k: v for k, v in _mtimes(cache).items() if k.startswith(untouched)} == \
        {k: v for k, v in before.items() if k.startswith(untouched)}
    # a plan that prepares other arrays: every case again
    assert _build(data, cache, _plan(target_spacing=(2.0, 2.0, 2.0))).prepared == 4
    assert open_cache(cache).entries[0].case_id == "box_000"


def test_a_stopped_preprocess_keeps_whole_cases_and_resumes(msd: Path, tmp_path: Path) -> None:
    cache, flag = tmp_path / "cache", StopFlag()

    class StopAfterTwo(Reporter):
        def progress(self, stage: str, done: float, total: float, message: str = "", **extra: object) -> None:
            if done >= 2:
                flag.set("test stop")

    with pytest.raises(CancelledError):
        _build(msd, cache, reporter=StopAfterTwo("none"), stop_flag=flag)
    folders = [p for p in (cache / CASES).iterdir()]
    assert len(folders) == 2 and all((p / RECORD).is_file() for p in folders)
    with pytest.raises(InputError, match="expected a finished cache"):
        open_cache(cache)
    leftover = cache / CASES / ".0123.partial"  # what a killed writer leaves
    leftover.mkdir()
    (leftover / IMAGE).write_bytes(b"half")
    summary = _build(msd, cache)
    assert (summary.prepared, summary.reused, leftover.exists()) == (2, 2, False)
    assert len(open_cache(cache).entries) == 4


def test_worker_processes_write_the_same_cache(msd: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import MedAnalysisLib.data.cache as cache_module

    monkeypatch.setattr(cache_module, "MIN_PROCESS_JOBS", 2)  # processes for these 4 small cases too
    one, two = _build(msd, tmp_path / "one"), _build(msd, tmp_path / "two", workers=2)
    assert (one.prepared, two.prepared) == (4, 4)
    for entry in open_cache(tmp_path / "one").entries:
        a, b = open_cache(tmp_path / "one").case(entry.case_id), open_cache(tmp_path / "two").case(entry.case_id)
        assert np.array_equal(np.asarray(a.image), np.asarray(b.image))


@pytest.mark.parametrize("what", ["file", "folder of other files", "link"])
def test_a_cache_never_goes_over_something_else(msd: Path, tmp_path: Path, what: str) -> None:
    target = tmp_path / "cache"
    if what == "file":
        target.write_text("notes")
    elif what == "link":
        (tmp_path / "elsewhere").mkdir()
        target.symlink_to(tmp_path / "elsewhere")
    else:
        target.mkdir()
        (target / "notes.txt").write_text("mine")
    with pytest.raises(OutputError, match="expected a"):
        _build(msd, target)
    code = main(["preprocess", str(msd), "--plan", str(_plan_file(tmp_path)), "--out", str(target)])
    assert code == 2
    assert not (tmp_path / "elsewhere" / MANIFEST).exists()
    if what == "folder of other files":
        assert sorted(p.name for p in target.iterdir()) == ["notes.txt"]


def _plan_file(tmp_path: Path) -> Path:
    path = tmp_path / "plan.json"
    path.write_text(_plan().to_json())
    return path


# ---------------------------------------------------------------------------------------------- reading


def _cases(cache: Path) -> list:
    opened = open_cache(cache)
    return [opened.case(e.case_id) for e in opened.entries]


def test_samplers_draw_the_same_batches_from_the_cache_as_from_memory(msd: Path, tmp_path: Path) -> None:
    dataset, plan = load_source(msd), _plan()
    _build(msd, tmp_path / "volumes")
    _build(msd, tmp_path / "slices", slice_shape=plan.slice_shape)
    memory = [apply_plan(plan, *read_case(c)) for c in dataset.cases]
    sliced = [apply_plan(plan, *read_case(c), slice_shape=plan.slice_shape) for c in dataset.cases]
    cached, cached_slices = _cases(tmp_path / "volumes"), _cases(tmp_path / "slices")
    pairs = [(PatchSampler(memory, (8, 8, 8), 3, seed=5), PatchSampler(cached, (8, 8, 8), 3, seed=5)),
             (SliceSampler(sliced, 3, seed=5), SliceSampler(cached_slices, 3, seed=5)),
             (SequenceSampler(sliced, 2, max_slices=6, seed=5), SequenceSampler(cached_slices, 2, max_slices=6,
                                                                                   seed=5))]
    for in_memory, from_cache in pairs:
        for seed in (0, 1):
            for a, b in zip(in_memory.batch(seed), from_cache.batch(seed), strict=True):
                assert np.array_equal(a, b)
    assert cached[0].class_locations is not None and cached[0].slice_foreground.shape == (SHAPE[0],)


def test_reading_a_cache_imports_no_simpleitk_and_copies_only_windows(msd: Path, tmp_path: Path) -> None:
    _build(msd, tmp_path / "cache")
    script = (
        "import sys\n"
        "from MedAnalysisLib.data.cache import open_cache\n"
        "from MedAnalysisLib.data.samplers import PatchSampler\n"
        f"c = open_cache({str(tmp_path / 'cache')!r})\n"
        "cases = [c.case(e.case_id) for e in c.entries]\n"
        "x, y = PatchSampler(cases, (8, 8, 8), 2).batch(0)\n"
        "window = cases[0].image[2:4]\n"
        "print(x.shape, type(window).__name__, window.shape, 'SimpleITK' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, check=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120).stdout
    assert out.strip() == "(2, 8, 8, 8, 1) ndarray (2, 16, 16, 1) False"


def _record(folder: Path) -> dict:
    return json.loads((folder / RECORD).read_text())


def _tamper(cache: Path, how: str, outside: Path) -> None:
    """One hostile change to a good cache (the first case unless said otherwise)."""
    folder = cache / CASES / case_key("box_000")
    record = _record(folder)
    manifest = json.loads((cache / MANIFEST).read_text())
    if how == "image linked outside":
        np.save(outside / "secret.npy", np.zeros((16, 16, 16, 1), np.float32))
        (folder / IMAGE).unlink()
        (folder / IMAGE).symlink_to(outside / "secret.npy")
    elif how == "case folder linked outside":
        shutil.copytree(folder, outside / "case")
        shutil.rmtree(folder)
        folder.symlink_to(outside / "case")
    elif how == "folder name not a case key":
        manifest["cases"][0]["key"] = "../../" + outside.name
    elif how == "header shape differs from record":
        np.save(folder / IMAGE, np.zeros((16, 16, 8, 2), np.float32))
    elif how == "float64 image":
        np.save(folder / IMAGE, np.zeros((16, 16, 16, 1), np.float64))
    elif how == "pickled object array":
        np.save(folder / LABEL, np.array([{"a": 1}] * 16, dtype=object), allow_pickle=True)
    elif how == "fortran order":
        np.save(folder / IMAGE, np.asfortranarray(np.zeros((16, 16, 16, 1), np.float32)))
    elif how == "truncated file":
        data = (folder / IMAGE).read_bytes()
        (folder / IMAGE).write_bytes(data[: len(data) // 2])
    elif how == "bytes appended":
        (folder / IMAGE).write_bytes((folder / IMAGE).read_bytes() + b"\0" * 64)
    elif how == "location outside the volume":
        record["class_locations"] = {"1": [16 ** 3]}
    elif how == "negative class":
        record["class_locations"] = {"-1": [0]}
    elif how == "record not JSON":
        (folder / RECORD).write_text("{" * 100_000)
        return
    elif how == "record deeply nested":
        (folder / RECORD).write_text("[" * 100_000 + "]" * 100_000)
        return
    elif how == "manifest repeats a case":
        manifest["cases"].append(manifest["cases"][0])
    elif how == "record of another plan":
        record["plan_key"] = "0" * 64
    elif how == "wrong slice flags":
        record["slice_foreground"] = [2] * 16
    elif how == "manifest of another version":
        manifest["version"] = 99
    elif how == "manifest unfinished":
        manifest["complete"] = False
    elif how == "plan key not the plan's":
        manifest["plan"]["orientation"] = "RAS"
    if how.startswith(("manifest", "folder", "plan key")):
        (cache / MANIFEST).write_text(json.dumps(manifest))
    elif not how.startswith(("image", "case folder", "header", "float", "pickled", "fortran", "truncated", "bytes")):
        (folder / RECORD).write_text(json.dumps(record))


HOSTILE = ["image linked outside", "case folder linked outside", "folder name not a case key",
           "header shape differs from record", "float64 image", "pickled object array", "fortran order",
           "truncated file", "bytes appended", "location outside the volume", "negative class", "record not JSON", "record deeply nested",
           "manifest repeats a case",
           "record of another plan", "wrong slice flags", "manifest of another version", "manifest unfinished",
           "plan key not the plan's"]


@pytest.fixture(scope="module")
def good_cache(msd: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    cache = tmp_path_factory.mktemp("good") / "cache"
    _build(msd, cache)
    return cache


@pytest.mark.parametrize("how", HOSTILE)
def test_a_cache_that_does_not_match_its_records_is_refused(good_cache: Path, tmp_path: Path, how: str) -> None:
    cache, outside = Path(shutil.copytree(good_cache, tmp_path / "cache", symlinks=True)), tmp_path / "outside"
    outside.mkdir()
    _tamper(cache, how, outside)
    with pytest.raises(InputError, match="expected") as caught:
        [open_cache(cache).case(e.case_id) for e in open_cache(cache).entries]
    assert "box_000" not in str(caught.value)  # messages name what was expected, never a case's name


def test_a_cached_array_changed_after_opening_is_refused_when_read(good_cache: Path, tmp_path: Path) -> None:
    cache = Path(shutil.copytree(good_cache, tmp_path / "cache"))
    case = open_cache(cache).case("box_000")
    np.save(cache / CASES / case_key("box_000") / IMAGE, np.zeros((4, 4, 4, 1), np.float32))
    with pytest.raises(InputError, match=r"expected a cached array of shape \(16, 16, 16, 1\)"):
        case.image[0]


# ---------------------------------------------------------------------------------------------- training


def test_train_validates_its_cache_folder_before_any_work(msd: Path, tmp_path: Path) -> None:
    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("keep")
    base = ["train", str(msd), "--task", "segmentation", "--model", "unet3d", "--epochs", "1"]
    assert main([*base, "--out", str(tmp_path / "m"), "--cache", str(other)]) == 2
    (tmp_path / "m2.cache").write_text("a file where the default cache goes")
    assert main([*base, "--out", str(tmp_path / "m2.zip")]) == 2
    assert (other / "notes.txt").read_text() == "keep" and not (tmp_path / "m").exists()
    unfinished = tmp_path / "unfinished"
    with pytest.raises(CancelledError):
        flag = StopFlag()
        flag.set()
        _build(msd, unfinished, stop_flag=flag)
    assert main(["train", str(unfinished), *base[2:], "--out", str(tmp_path / "m3")]) == 2
    assert not (tmp_path / "m3").exists()


def test_pipeline_prepares_nothing_the_second_time_and_reuses_its_plan(msd: Path, tmp_path: Path) -> None:
    """``train DATA`` twice on one cache: the second run prepares no case and plans nothing (the plan planned from
    the training cases is kept in the cache)."""
    from MedAnalysisLib.training import pipeline
    from MedAnalysisLib.training.options import TrainingOptions

    options = TrainingOptions(task="segmentation", family="unet3d", out=tmp_path / "model.zip", workers=1)
    dataset = pipeline._load_dataset(msd, options)
    train_cases, _ = pipeline._split(dataset, options)
    key = pipeline._auto_plan_key(train_cases, options)
    assert pipeline._cached_plan(pipeline.default_cache_dir(options.out), key) is None
    logs: list[str] = []

    class Logs(Reporter):
        def log(self, message: str, level: str = "info") -> None:
            logs.append(message)

    cache_dir = pipeline.default_cache_dir(options.out)
    assert cache_dir == tmp_path / "model.cache"
    for _ in range(2):
        plan = pipeline._cached_plan(cache_dir, key) or _plan()
        pipeline._prepare_into_cache(dataset, plan, "unet3d", cache_dir, options, Logs("none"), None,
                                     {"key": key, "plan": plan.to_dict()})
    assert [line.split(": ")[1] for line in logs] == ["4 case(s) prepared, 0 reused", "0 case(s) prepared, 4 reused"]
    assert pipeline._cached_plan(cache_dir, key) == _plan()


@pytest.mark.parametrize("backend", [pytest.param("tensorflow", marks=pytest.mark.nightly), "jax"])
def test_train_from_a_cache_without_simpleitk(msd: Path, tmp_path: Path, backend: str) -> None:
    """One tiny run of ``medanalysis train CACHE`` in a child: it trains, and SimpleITK was never imported; on the
    JAX backend TensorFlow is not imported either (numpy and Keras are all that training from a cache needs)."""
    if backend == "jax" and importlib.util.find_spec("jax") is None:
        pytest.skip("JAX is not installed (pip install 'jax[cpu]', part of the test extra)")
    assert main(["preprocess", str(msd), "--plan", str(_plan_file(tmp_path)), "--out", str(tmp_path / "cache"),
                 "--workers", "1"]) == 0
    script = (
        "import json, sys\n"
        "from MedAnalysisLib.cli import main\n"
        f"code = main(['train', {str(tmp_path / 'cache')!r}, '--task', 'segmentation', '--model', 'unet3d', "
        f"'--out', {str(tmp_path / 'model')!r}, '--epochs', '1', '--steps-per-epoch', '1', "
        "'--hparam', 'base_filters=4', '--progress', 'none'])\n"
        "print('RESULT', json.dumps([code, 'SimpleITK' in sys.modules, 'tensorflow' in sys.modules]))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT), "KERAS_BACKEND": backend, "JAX_PLATFORMS": "cpu"}
    child = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, check=False,
                           env=env, timeout=300)
    result = next((line for line in child.stdout.splitlines() if line.startswith("RESULT ")), None)
    assert result is not None, child.stderr[-2000:]
    assert json.loads(result[len("RESULT "):]) == [0, False, backend == "tensorflow"]
    config = json.loads((tmp_path / "model" / "bundle.json").read_text())
    assert config["training"]["keras_backend"] == backend


@pytest.mark.parametrize("family", ["unet3d", "unet2d", "slice_cnn", "cnn3d", "cnn_rnn"])
def test_every_family_feeds_the_same_batches_from_the_cache_as_from_memory(msd: Path, tmp_path: Path,
                                                                           family: str) -> None:
    """Training and validation batches (validation loaded one batch at a time) are equal on both paths."""
    import dataclasses
    from types import SimpleNamespace

    from MedAnalysisLib.training.feeding import Feeding

    plan = _plan(sequence_length=6)
    slices = plan.slice_shape if family in ("unet2d", "slice_cnn", "cnn_rnn") else None
    _build(msd, tmp_path / "cache", slice_shape=slices)
    cached = [dataclasses.replace(c, target=n % 2) for n, c in enumerate(_cases(tmp_path / "cache"))]
    memory = [dataclasses.replace(apply_plan(plan, *read_case(c), slice_shape=slices), target=n % 2,
                                  case_id=c.case_id) for n, c in enumerate(load_source(msd).cases)]
    settings = dict(family=family, plan=plan, n_classes=2, seed=3, batch_size=2, steps_per_epoch=2, val_batches=2,
                    augment=None, workers=1, foreground_targets=family == "slice_cnn", label_transform=None)
    setup = SimpleNamespace(n_replicas=1)
    a = Feeding(train_cases=memory[:3], val_cases=memory[3:], **settings).make(setup)
    b = Feeding(train_cases=cached[:3], val_cases=cached[3:], **settings).make(setup)
    for feeder_a, feeder_b in zip(a, b, strict=True):
        assert len(feeder_a) == len(feeder_b)
        for index in range(len(feeder_a)):
            _assert_equal(feeder_a[index], feeder_b[index])


def _assert_equal(a: object, b: object) -> None:
    if isinstance(a, dict):
        assert a.keys() == b.keys()  # type: ignore[union-attr]
        for key in a:
            _assert_equal(a[key], b[key])  # type: ignore[index]
    elif isinstance(a, (tuple, list)):
        assert len(a) == len(b)  # type: ignore[arg-type]
        for x, y in zip(a, b, strict=True):  # type: ignore[call-overload]
            _assert_equal(x, y)
    else:
        assert np.array_equal(np.asarray(a), np.asarray(b))


def test_a_cache_keeps_what_the_dataset_says_about_itself_for_the_model_card(msd: Path, tmp_path: Path) -> None:
    """``train CACHE`` fills the card's training data as ``train DATA`` does: the cache manifest keeps the MSD name,
    licence and reference, and what it holds is made safe again when read (a cache is untrusted input too)."""
    from MedAnalysisLib.training.pipeline import _cache_dataset

    data = _copy(msd, tmp_path)
    meta = json.loads((data / "dataset.json").read_text())
    meta.update(name="Cubes\x1b[2J", licence="CC BY-SA 4.0", reference="Somebody et al.")
    (data / "dataset.json").write_text(json.dumps(meta))
    cache = tmp_path / "cache"
    _build(data, cache)
    about = _cache_dataset(open_cache(cache)).about
    assert about == {"name": "Cubes\\x1b[2J", "license": "CC BY-SA 4.0", "reference": "Somebody et al."}
    manifest_path = cache / MANIFEST
    manifest = json.loads(manifest_path.read_text())
    manifest["dataset"]["about"] = {"name": "x\u202ey", "license": ["not", "text"], "reference": "r" * 5000}
    manifest_path.write_text(json.dumps(manifest))
    about = _cache_dataset(open_cache(cache)).about
    assert about["name"] == "x\\u202ey" and "license" not in about
    assert len(about["reference"]) == 1000 and about["reference"].endswith("more characters)")
    manifest["dataset"]["about"] = "not an object"
    manifest_path.write_text(json.dumps(manifest))
    assert _cache_dataset(open_cache(cache)).about == {}
