"""Training on any Keras backend: a tiny U-Net trains on the JAX backend with TensorFlow unimportable (as on a
machine without it), stops and resumes there, and bundles written on either backend give the same predictions
(within float tolerance) on the other.

One child process runs on JAX (``KERAS_BACKEND=jax``; this process runs on TensorFlow): it trains, loads the bundles
this process wrote, predicts fixed inputs and reports what it saw, including every attempt to import TensorFlow. The
tests below assert on its report, so the JAX backend starts once. The bundles of the families other than the U-Net
cost JAX a compilation per new shape and are checked nightly. The refusals (unsupported backends, distribution,
thread counts, determinism after JAX has started, TensorBoard without TensorFlow) happen before any backend work
and are checked in this process, with the backend name Keras reports replaced.

Run as a script (``python test_training_backends.py OUT INPUTS train|load BUNDLES...``) it is that child.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[1]
JAX_MISSING = importlib.util.find_spec("jax") is None
needs_jax = pytest.mark.skipif(JAX_MISSING, reason="JAX is not installed (pip install 'jax[cpu]', part of the test "
                               "extra): the JAX backend cannot be tested")
#: Largest difference allowed between the backends' float32 predictions of the same bundle and input.
TOLERANCE = 1e-4
#: Model family -> (hyper-parameters, plan overrides): every family, with each kind of normalisation layer.
FAMILIES: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "unet3d": ({"patch_size": [16, 16, 16], "filters": [4, 8], "norm": "batch"}, {}),
    "unet2d": ({"patch_size": [16, 16], "filters": [4, 8], "norm": "group"},
               {"slice_shape": (16, 16), "recommended_model": "unet2d"}),
    "cnn3d": ({"filters": [4, 8], "norm": "batch", "residual": False}, {"task": "classification"}),
    "slice_cnn": ({"preset": "global_pool", "input_shape": [16, 16], "base_filters": 4, "n_blocks": 1,
                   "norm": "instance"}, {"task": "classification", "slice_shape": (16, 16)}),
    "cnn_rnn": ({"slice_shape": [16, 16], "encoder_filters": [4], "rnn_units": 4, "attention_units": 4},
                {"task": "classification", "slice_shape": (16, 16)}),
}


def _inputs(family: str, rng: np.random.Generator) -> Any:
    """Two fixed inputs of the family's layout (channels last), of other means and spreads, so that even a
    classifier's pooled features (and so its outputs) differ between them."""
    spatial = {"unet3d": (16, 16, 16), "cnn3d": (16, 16, 16), "unet2d": (16, 16), "slice_cnn": (16, 16),
               "cnn_rnn": (5, 16, 16)}[family]
    images = np.stack([rng.normal(size=(*spatial, 1)) * (1 + 2 * n) + 2 * n for n in range(2)]).astype(np.float32)
    if family != "cnn_rnn":
        return images
    return {"slices": images, "mask": np.array([[True] * 5, [True, True, True, False, False]])}


def _predict(model: Any, x: Any) -> dict[str, np.ndarray]:
    """The model's outputs for ``x`` as float32 arrays, by output name (``""`` for a single output)."""
    import keras

    outputs = model(x, training=False)
    items = outputs.items() if isinstance(outputs, dict) else [("", outputs)]
    return {name: np.asarray(keras.ops.convert_to_numpy(value), np.float32) for name, value in items}


def _flat(prefix: str, values: dict[str, Any]) -> dict[str, Any]:
    return {f"{prefix}/{key}": value for key, value in values.items()}


def _unflat(saved: Any, prefix: str) -> dict[str, Any]:
    return {key.split("/", 1)[1]: saved[key] for key in saved.files if key.split("/", 1)[0] == prefix}


# --- The JAX child ------------------------------------------------------------------------------------------------


class _NoTensorFlow:
    """A finder that makes ``tensorflow`` unimportable, as on a machine without it, and notes who asked for it."""

    def __init__(self) -> None:
        self.askers: list[str] = []

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> None:
        if name.split(".")[0] != "tensorflow":
            return None
        import traceback

        frames = [frame.filename for frame in traceback.extract_stack()[:-1]
                  if "importlib" not in frame.filename and not frame.filename.endswith("module_utils.py")]
        self.askers.append(Path(frames[-1]).as_posix().split("site-packages/")[-1] if frames else "?")
        raise ModuleNotFoundError(f"No module named {name!r}", name=name)


def _changed_weights(result: Any) -> list[int]:
    """``[changed, total, initial builds equal]``: how many of the bundle's weights differ from the seeded initial
    ones (a bundle of unsynchronised JAX state would hold the initial weights)."""
    from MedAnalysisLib.bundles import load_bundle
    from MedAnalysisLib.keras_compat import set_random_seed
    from MedAnalysisLib.models import build_model

    initial = []
    for _ in range(2):
        set_random_seed(0)
        initial.append(build_model("unet3d", **result.config.hparams).get_weights())
    loaded = load_bundle(result.bundle_path)
    trained = loaded.model.get_weights()
    loaded.cleanup()
    same_start = all(np.array_equal(a, b) for a, b in zip(*initial, strict=True))
    return [sum(not np.array_equal(a, b) for a, b in zip(initial[0], trained, strict=True)), len(trained),
            int(same_start)]


def _stop_and_resume(out: Path, x: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    """A 2-epoch run stopped after its first batch, then run again: what the checkpoint and the resumed run say."""
    import io

    from helpers_models import tiny_plan

    from MedAnalysisLib.errors import CancelledError
    from MedAnalysisLib.progress import Reporter, StopFlag
    from MedAnalysisLib.training import checkpoint_dir_for, train_on_arrays

    run = {"family": "unet3d", "out": out, "plan": tiny_plan(), "labels": ["background", "cube"], "epochs": 2,
           "validation": (x[:2], y[:2]), "hparams": dict(FAMILIES["unet3d"][0]), "batch_size": 2, "seed": 1}
    flag = StopFlag()
    flag.set("test stop")
    try:
        train_on_arrays(x, y, stop_flag=flag, **run)
        stopped = "not stopped"
    except CancelledError as error:
        stopped = str(error)
    state = json.loads((checkpoint_dir_for(out) / "state.json").read_text())
    stream = io.StringIO()
    resumed = train_on_arrays(x, y, reporter=Reporter("jsonl", stream=stream), **run)
    return {"stopped": stopped, "partial": state["partial_epoch"], "completed_at_stop": state["epochs_completed"],
            "epochs": len(resumed.history["loss"]), "log": stream.getvalue(),
            "finite": all(np.isfinite(value) for value in resumed.metrics.values()),
            "checkpoint_left": checkpoint_dir_for(out).exists()}


def _child(out: Path, inputs_file: Path, train: bool, bundles: list[Path]) -> None:
    """On JAX, with TensorFlow unimportable: train (when asked), load every bundle and predict; write
    ``report.json`` and ``predictions.npz`` into ``out``."""
    blocker = _NoTensorFlow()
    sys.meta_path.insert(0, blocker)
    sys.path.insert(0, str(PROJECT_ROOT))
    sys.path.insert(0, str(Path(__file__).parent))
    import keras
    from helpers_models import segmentation_arrays, tiny_plan

    from MedAnalysisLib.bundles import bundle_summary, load_bundle
    from MedAnalysisLib.training import train_on_arrays

    report: dict[str, Any] = {"backend": keras.backend.backend()}
    if train:
        x, y = segmentation_arrays(4)
        result = train_on_arrays(x, y, family="unet3d", out=out / "jax-unet3d.zip", plan=tiny_plan(),
                                 labels=["background", "cube"], epochs=1, validation=(x[:2], y[:2]),
                                 hparams=dict(FAMILIES["unet3d"][0]), batch_size=2, seed=0, deterministic=True)
        assert result.config is not None
        bundles = [result.bundle_path, *bundles]
        report.update(training=result.config.training, metrics=result.metrics, bundle=str(result.bundle_path),
                      summary=bundle_summary(result.config), xla_flags=os.environ.get("XLA_FLAGS", ""),
                      changed=_changed_weights(result), resume=_stop_and_resume(out / "jax-resumed", x, y),
                      askers_training=list(blocker.askers))
    with np.load(inputs_file, allow_pickle=False) as saved:
        inputs = {name: _unflat(saved, name) for name in FAMILIES}
    predictions: dict[str, np.ndarray] = {}
    for path in bundles:
        loaded = load_bundle(path)
        x_in = inputs[loaded.config.family]
        predictions.update(_flat(path.name, _predict(loaded.model, x_in.get("", x_in))))
        if loaded.config.family == "unet3d":  # what predict and the panel call: the inference runner on JAX
            from MedAnalysisLib.inference.model_runner import keras_predict_fn

            predictions[f"runner-{path.name}/"] = keras_predict_fn(loaded.model)(x_in.get("", x_in))
        loaded.cleanup()
    np.savez(out / "predictions.npz", **predictions)
    report.update(tensorflow_imported="tensorflow" in sys.modules, askers=blocker.askers)
    (out / "report.json").write_text(json.dumps(report, default=str))


# --- This process (TensorFlow) ------------------------------------------------------------------------------------


def _tensorflow_bundle(folder: Path, family: str) -> Path:
    """A bundle of ``family`` written on TensorFlow, every weight (batch-norm statistics too) drawn at random."""
    from helpers_inference import CLASS_LABELS, make_cube_plan

    from MedAnalysisLib.bundles import BundleConfig, LabelInfo, save_bundle
    from MedAnalysisLib.models import build_model

    hparams, plan_overrides = FAMILIES[family]
    hparams = {"n_classes": 2, "in_channels": 1, **hparams}
    model = build_model(family, **hparams)
    rng = np.random.default_rng(len(family))
    model.set_weights([(rng.uniform(0.5, 1.5, w.shape) if "variance" in v.path else rng.normal(0, 0.3, w.shape))
                       .astype(w.dtype) for v, w in zip(model.weights, model.get_weights(), strict=True)])
    task = plan_overrides.get("task", "segmentation")
    plan = make_cube_plan(**{"recommended_model": family, **plan_overrides},
                          **({"target_spacing": None} if task == "classification" else {}))
    config = BundleConfig(name=f"tf-{family}", task=task, family=family, hparams=hparams, plan=plan,
                          labels=tuple(LabelInfo(v, n, c) for v, n, c in CLASS_LABELS),
                          input={"channels": [{"name": "image", "modality": "MR"}]})
    return save_bundle(folder / f"tf-{family}", model, config)


def _run_on_jax(folder: Path, families: list[str], *, train: bool) -> dict[str, Any]:
    """Bundles of ``families`` written here on TensorFlow, then the JAX child; its report, predictions and the
    inputs both sides used."""
    if JAX_MISSING:
        pytest.skip("JAX is not installed (pip install 'jax[cpu]', part of the test extra)")
    rng = np.random.default_rng(11)
    inputs = {family: _inputs(family, rng) for family in FAMILIES}
    flat = {}
    for family, value in inputs.items():
        flat.update(_flat(family, value if isinstance(value, dict) else {"": value}))
    np.savez(folder / "inputs.npz", **flat)
    bundles = [_tensorflow_bundle(folder, family) for family in families]
    env = {**os.environ, "KERAS_BACKEND": "jax", "TF_CPP_MIN_LOG_LEVEL": "2", "JAX_PLATFORMS": "cpu"}
    env.pop("XLA_FLAGS", None)
    command = [sys.executable, __file__, str(folder), str(folder / "inputs.npz"), "train" if train else "load",
               *map(str, bundles)]
    completed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stderr[-4000:]
    report = json.loads((folder / "report.json").read_text())
    with np.load(folder / "predictions.npz", allow_pickle=False) as saved:
        predictions = {key: saved[key] for key in saved.files}
    return {"report": report, "predictions": predictions, "inputs": inputs, "bundles": bundles}


@pytest.fixture(scope="module")
def jax_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The JAX child trains a U-Net and loads it and a TensorFlow-written U-Net bundle."""
    return _run_on_jax(tmp_path_factory.mktemp("backends"), ["unet3d"], train=True)


@pytest.fixture(scope="module")
def jax_run_other_families(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The JAX child loads TensorFlow-written bundles of the other families (JAX compiles each new shape: slow)."""
    return _run_on_jax(tmp_path_factory.mktemp("families"), [f for f in FAMILIES if f != "unet3d"], train=False)


@needs_jax
def test_jax_trains_without_tensorflow_and_records_its_backend(jax_run: dict[str, Any]) -> None:
    report = jax_run["report"]
    assert report["backend"] == "jax"
    assert report["tensorflow_imported"] is False, "training and loading on JAX must not import TensorFlow"
    assert report["askers_training"] == [] and report["askers"] == [], "nothing may even try to import TensorFlow"
    training = report["training"]
    assert training["keras_backend"] == "jax" and training["epochs_completed"] == 1
    assert set(training["library_versions"]) >= {"keras", "jax", "jaxlib", "numpy"}
    assert "tensorflow" not in training["library_versions"]
    assert training["device"].startswith("CPU") and "JAX backend" in training["device"]
    assert training["intra_op_threads"] == len(os.sched_getaffinity(0))
    assert training["deterministic"] is True and "--xla_gpu_deterministic_ops=true" in report["xla_flags"].split()
    assert all(np.isfinite(value) for value in report["metrics"].values())
    changed, total, same_start = report["changed"]
    assert same_start == 1 and changed == total, f"expected every weight trained, got {changed} of {total}"
    assert {"loss", "mean_dice", "val_loss", "val_mean_dice"} <= set(report["metrics"])
    assert "jax" in report["summary"] and "intra_op_threads=" in report["summary"]


@needs_jax
def test_a_stopped_jax_run_saves_a_checkpoint_and_resumes(jax_run: dict[str, Any]) -> None:
    """The checkpoint's optimizer state is restored into JAX variables before the jitted steps take them over."""
    resume = jax_run["report"]["resume"]
    assert "training stopped on request during epoch 1; checkpoint saved" in resume["stopped"]
    assert resume["partial"] is True and resume["completed_at_stop"] == 0
    assert "resuming from the checkpoint after epoch 0" in resume["log"]
    assert resume["epochs"] == 2 and resume["finite"] is True and resume["checkpoint_left"] is False


@needs_jax
def test_a_jax_bundle_predicts_the_same_on_tensorflow(jax_run: dict[str, Any]) -> None:
    from MedAnalysisLib.bundles import load_bundle

    bundle = Path(jax_run["report"]["bundle"])
    loaded = load_bundle(bundle)
    try:
        here = _predict(loaded.model, jax_run["inputs"]["unet3d"])[""]
    finally:
        loaded.cleanup()
    there = jax_run["predictions"][f"{bundle.name}/"]
    assert here.shape == there.shape == (2, 16, 16, 16, 2)
    np.testing.assert_allclose(here, there, atol=TOLERANCE, rtol=0)


def _compare_on_tensorflow(run: dict[str, Any], family: str) -> None:
    """The TensorFlow-written bundle of ``family``, predicted here, against what the JAX child predicted."""
    from MedAnalysisLib.bundles import load_bundle

    bundle = next(path for path in run["bundles"] if path.name == f"tf-{family}")
    loaded = load_bundle(bundle)
    try:
        here = _predict(loaded.model, run["inputs"][family])
    finally:
        loaded.cleanup()
    there = {key.split("/", 1)[1]: value for key, value in run["predictions"].items()
             if key.split("/", 1)[0] == bundle.name}
    assert set(there) == set(here)
    for name, value in here.items():
        assert np.ptp(value) > 1e-3, f"{family} {name}: expected outputs that vary with the input, got constants"
        np.testing.assert_allclose(there[name], value, atol=TOLERANCE, rtol=0, err_msg=f"{family} output {name!r}")


@needs_jax
def test_a_tensorflow_unet_bundle_predicts_the_same_on_jax(jax_run: dict[str, Any]) -> None:
    _compare_on_tensorflow(jax_run, "unet3d")


@needs_jax
def test_the_inference_runner_gives_the_same_probabilities_on_both_backends(jax_run: dict[str, Any]) -> None:
    """``keras_predict_fn`` (behind ``predict``, ``evaluate`` and the panel): a ``tf.function`` here, Keras's jitted
    prediction step on JAX."""
    from MedAnalysisLib.bundles import load_bundle
    from MedAnalysisLib.inference.model_runner import keras_predict_fn

    for bundle in (Path(jax_run["report"]["bundle"]), next(p for p in jax_run["bundles"] if p.name == "tf-unet3d")):
        loaded = load_bundle(bundle)
        try:
            here = keras_predict_fn(loaded.model)(jax_run["inputs"]["unet3d"])
        finally:
            loaded.cleanup()
        there = jax_run["predictions"][f"runner-{bundle.name}/"]
        assert here.shape == there.shape == (2, 16, 16, 16, 2) and np.ptp(here) > 1e-3
        np.testing.assert_allclose(there, here, atol=TOLERANCE, rtol=0, err_msg=bundle.name)


@needs_jax
@pytest.mark.nightly
@pytest.mark.parametrize("family", [f for f in FAMILIES if f != "unet3d"])
def test_a_tensorflow_bundle_of_every_family_predicts_the_same_on_jax(jax_run_other_families: dict[str, Any],
                                                                     family: str) -> None:
    _compare_on_tensorflow(jax_run_other_families, family)
    # Keras itself probes for TensorFlow when it serialises a Bidirectional layer (cnn_rnn); MedAnalysis never does.
    askers = jax_run_other_families["report"]["askers"]
    assert [asker for asker in askers if not asker.startswith("keras/")] == []
    assert jax_run_other_families["report"]["tensorflow_imported"] is False


# --- Refusals, before any backend work ----------------------------------------------------------------------------


@pytest.fixture
def on_backend(monkeypatch: pytest.MonkeyPatch) -> Any:
    """Make Keras report another backend name (the checks below run before the backend does anything)."""
    import keras

    def use(name: str) -> None:
        monkeypatch.setattr(keras.backend, "backend", lambda: name)

    return use


@pytest.mark.parametrize("name", ["torch", "numpy", "openvino"])
def test_a_backend_that_cannot_train_is_refused_by_name(tmp_path: Path, on_backend: Any, name: str) -> None:
    from helpers_models import segmentation_arrays, tiny_plan

    from MedAnalysisLib.errors import InputError
    from MedAnalysisLib.runtime import configure_threads
    from MedAnalysisLib.training import train_on_arrays

    on_backend(name)
    x, y = segmentation_arrays(2)
    with pytest.raises(InputError, match=rf"expected the Keras backend to be one of tensorflow, jax .*got '{name}'"):
        train_on_arrays(x, y, family="unet3d", out=tmp_path / "m.zip", plan=tiny_plan(), labels=["bg", "cube"],
                        hparams={"filters": [4, 8], "patch_size": [16, 16, 16]}, epochs=1)
    with pytest.raises(InputError, match=f"got '{name}'"):
        configure_threads()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("strategy", ["mirrored", "multiworker"])
def test_distribution_on_jax_is_refused(on_backend: Any, strategy: str) -> None:
    from MedAnalysisLib.errors import InputError
    from MedAnalysisLib.training.device import setup_devices

    on_backend("jax")
    with pytest.raises(InputError, match=rf"expected one device on the JAX backend .*got strategy '{strategy}'"):
        setup_devices(strategy=strategy)


def test_a_tf_config_cluster_on_jax_is_refused(on_backend: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from MedAnalysisLib.errors import InputError
    from MedAnalysisLib.training.device import setup_devices

    on_backend("jax")
    cluster = {"cluster": {"worker": ["127.0.0.1:1", "127.0.0.1:2"]}, "task": {"type": "worker", "index": 0}}
    monkeypatch.setenv("TF_CONFIG", json.dumps(cluster))
    with pytest.raises(InputError, match="got TF_CONFIG describing a cluster of 2 workers"):
        setup_devices(strategy="auto")


def test_jax_threads_are_the_available_cores(on_backend: Any) -> None:
    from MedAnalysisLib.errors import InputError
    from MedAnalysisLib.runtime import available_cores, check_threads, configure_threads

    on_backend("jax")
    cores = available_cores()
    assert configure_threads() == cores == configure_threads(cores)
    check_threads(None)
    check_threads(cores)
    expected = {cores + 1: f"this process may run on {cores} only", cores + 8: f"this process may run on {cores} only"}
    if cores > 1:
        expected[1] = "run on fewer cores instead (e.g. taskset -c 0-0)"
    for other, how in expected.items():
        for check in (configure_threads, check_threads):
            with pytest.raises(InputError, match=rf"expected threads to be unset or {cores} .*got {other}: ") as raised:
                check(other)
            assert how in str(raised.value)
    for bad in (0, -1, True, 2.0, "2"):
        for check in (configure_threads, check_threads):
            with pytest.raises(InputError, match=f"expected threads to be an integer >= 1 or None, got {bad!r}"):
                check(bad)


@needs_jax
def test_determinism_after_jax_started_is_refused(on_backend: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    import jax

    from MedAnalysisLib.errors import InputError
    from MedAnalysisLib.runtime import enable_op_determinism

    jax.devices("cpu")  # starts JAX's CPU backend in this process
    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_enable_fast_math=false")
    on_backend("jax")
    with pytest.raises(InputError, match="expected deterministic training to be asked for before any JAX work"):
        enable_op_determinism()
    assert os.environ["XLA_FLAGS"] == "--xla_cpu_enable_fast_math=false"
    monkeypatch.setenv("XLA_FLAGS", "--xla_gpu_deterministic_ops=true")
    enable_op_determinism()  # already in the flags: nothing to refuse


def test_tensorboard_on_jax_without_tensorflow_is_refused_before_training(
        tmp_path: Path, on_backend: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from helpers_models import segmentation_arrays, tiny_plan

    from MedAnalysisLib.errors import InputError
    from MedAnalysisLib.training import train_on_arrays

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *args: None if name == "tensorflow" else real_find_spec(name, *args))
    on_backend("jax")
    x, y = segmentation_arrays(2)
    missing = "tensorflow" if importlib.util.find_spec("tensorboard") else "tensorboard and no tensorflow"
    with pytest.raises(InputError, match=f"expected tensorboard and tensorflow installed for TensorBoard logs .*got "
                                         f"no {missing} ") as raised:
        train_on_arrays(x, y, family="unet3d", out=tmp_path / "m.zip", plan=tiny_plan(), labels=["bg", "cube"],
                        hparams={"filters": [4, 8], "patch_size": [16, 16, 16]}, epochs=1,
                        tensorboard_dir=str(tmp_path / "tb"))
    assert "pip install" in str(raised.value) and "tensorflow" in str(raised.value).split("pip install")[1]
    assert list(tmp_path.iterdir()) == []


def test_multi_worker_fit_refuses_another_backend(on_backend: Any) -> None:
    from MedAnalysisLib.keras_compat import multi_worker_fit

    on_backend("jax")
    with pytest.raises(ValueError, match="expected the TensorFlow backend for multi-worker training, got 'jax'"), \
            multi_worker_fit(object()):
        pass


def test_seeding_without_tensorflow_gives_the_draws_of_keras_set_random_seed() -> None:
    import keras

    from MedAnalysisLib import keras_compat

    keras.utils.set_random_seed(3)
    expected = (keras.ops.convert_to_numpy(keras.random.uniform((4,))), np.random.random(2))
    keras.utils.set_random_seed(99)
    keras_compat._seed_without_tensorflow(3)
    got = (keras.ops.convert_to_numpy(keras.random.uniform((4,))), np.random.random(2))
    np.testing.assert_array_equal(got[0], expected[0])
    np.testing.assert_array_equal(got[1], expected[1])


def test_seeding_without_tensorflow_names_the_keras_internal_that_went_away(monkeypatch: pytest.MonkeyPatch) -> None:
    from keras.src.utils import rng_utils

    from MedAnalysisLib import keras_compat

    monkeypatch.delattr(rng_utils, "GLOBAL_RANDOM_SEED")
    with pytest.raises(keras_compat.KerasCompatibilityError, match=r"expected Keras to provide .*global_state"):
        keras_compat._seed_without_tensorflow(3)
    with pytest.raises(ValueError, match="expected an integer seed, got True"):
        keras_compat._seed_without_tensorflow(True)


if __name__ == "__main__":
    _child(Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3] == "train", [Path(arg) for arg in sys.argv[4:]])
