"""The contract of every Keras internal MedAnalysis uses (MedAnalysisLib/keras_compat.py), and its version bound.

Each test exercises one internal the way keras_compat uses it, so that a Keras release that changes it fails here,
by name, instead of in a user's training run. The bound test makes raising the Keras ceiling a conscious step: it
fails when the installed Keras lies outside the bound, and when the files that state the bound disagree.
"""

from __future__ import annotations

import importlib.metadata
import inspect
import re
from pathlib import Path

import h5py
import keras
import numpy as np
import pytest
import tensorflow as tf

from MedAnalysisLib import keras_compat
from MedAnalysisLib.keras_compat import KERAS_REQUIREMENT, is_supported_keras, keras_version_tuple

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def _tiny_model() -> keras.Model:
    inputs = keras.Input((4,))
    return keras.Model(inputs, keras.layers.Dense(2)(keras.layers.Dense(8, activation="relu")(inputs)))


def _tiny_compiled_model() -> keras.Model:
    keras.utils.set_random_seed(0)
    model = _tiny_model()
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="mse")
    x = np.random.default_rng(0).normal(size=(8, 4)).astype("float32")
    model.fit(x, x[:, :2], epochs=1, batch_size=4, verbose=0)  # builds the optimizer's variables
    return model


def _keras_requirements(text: str) -> list[str]:
    return [line.split("#")[0].strip().replace(" ", "") for line in text.splitlines()
            if re.match(r"^\s*keras\s*[<>=!~]", line)]


# ------------------------------------------------------------------ the version bound
def test_the_installed_keras_lies_inside_the_bound_every_file_states() -> None:
    installed = importlib.metadata.version("keras")
    assert is_supported_keras(installed), (
        f"keras {installed} is installed, but MedAnalysis declares {KERAS_REQUIREMENT}: run this file against it, fix "
        "what it reports in MedAnalysisLib/keras_compat.py, then raise KERAS_CEILING there and the bound in "
        "pyproject.toml, Resources/requirements.txt and Resources/constraints.txt together")
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    pyproject = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    stated = {
        "pyproject.toml": _keras_requirements("\n".join(pyproject["project"]["dependencies"])),
        "Resources/requirements.txt": _keras_requirements(
            (PROJECT_ROOT / "Resources" / "requirements.txt").read_text(encoding="utf-8")),
        "Resources/constraints.txt": _keras_requirements(
            (PROJECT_ROOT / "Resources" / "constraints.txt").read_text(encoding="utf-8")),
    }
    assert stated == {name: [KERAS_REQUIREMENT] for name in stated}


def test_the_ceiling_is_one_minor_release_above_what_was_checked() -> None:
    """The ceiling excludes the next minor release after the newest Keras these contracts ran against, no more."""
    floor, ceiling = keras_compat.KERAS_FLOOR, keras_compat.KERAS_CEILING
    assert floor < ceiling and ceiling[0] == floor[0]
    assert keras_version_tuple(keras.__version__) < ceiling
    assert keras_version_tuple("3.15.1") == (3, 15) and keras_version_tuple("3.16.0rc1") == (3, 16)
    assert not is_supported_keras(f"{ceiling[0]}.{ceiling[1]}.0") and is_supported_keras(f"{floor[0]}.{floor[1]}.0")
    with pytest.raises(ValueError, match="expected a Keras version"):
        keras_version_tuple("three")


# ------------------------------------------------------------------ keras.src.saving.saving_lib.save_weights_only
def test_save_weights_only_takes_objects_to_skip() -> None:
    from keras.src.saving import saving_lib

    parameters = inspect.signature(saving_lib.save_weights_only).parameters
    assert "objects_to_skip" in parameters, "saving_lib.save_weights_only lost objects_to_skip"


def test_saving_without_the_optimizer_writes_only_the_model_weights(tmp_path: Path) -> None:
    model = _tiny_compiled_model()
    assert model.optimizer.variables, "the optimizer should hold state after fit"
    plain, skipped = tmp_path / "plain.weights.h5", tmp_path / "skipped.weights.h5"
    model.save_weights(str(plain))
    keras_compat.save_weights_only(model, skipped, skip=[model.optimizer])

    def datasets(path: Path) -> list[str]:
        names: list[str] = []
        with h5py.File(path, "r") as handle:
            handle.visititems(lambda name, item: names.append(name) if isinstance(item, h5py.Dataset) else None)
        return names

    # Why the internal is needed: the public save_weights still writes the optimizer's state. When this fails, Keras
    # offers a public way: use it in keras_compat.save_weights_only and drop the internal.
    assert any("optimizer" in name for name in datasets(plain))
    assert not any("optimizer" in name for name in datasets(skipped))
    assert len(datasets(skipped)) == len(model.weights)
    fresh = _tiny_model()
    fresh.load_weights(str(skipped))
    for expected, loaded in zip(model.get_weights(), fresh.get_weights(), strict=True):
        np.testing.assert_array_equal(expected, loaded)


def test_saving_an_uncompiled_model_uses_the_public_api(tmp_path: Path) -> None:
    inputs = keras.Input((3,))
    model = keras.Model(inputs, keras.layers.Dense(1)(inputs))
    keras_compat.save_weights_only(model, tmp_path / "m.weights.h5")
    assert (tmp_path / "m.weights.h5").is_file()


# ------------------------------------------------------------------ the multi-worker fit work-around
def test_the_trainer_resolves_the_reduction_helper_by_its_module_name() -> None:
    """keras_compat replaces ``_collective_all_reduce_multi_worker`` in the trainer module; that only works while the
    reduction looks it up there at call time and it takes the strategy."""
    from keras.src.backend.tensorflow import trainer as tf_trainer

    helper = tf_trainer._collective_all_reduce_multi_worker
    assert list(inspect.signature(helper).parameters) == ["strategy"]
    assert helper(tf.distribute.get_strategy()) is False
    assert "_collective_all_reduce_multi_worker" in inspect.getsource(tf_trainer.reduce_per_replica)


def test_a_model_without_its_strategy_defers_the_build_to_the_traced_step() -> None:
    """``_distribute_strategy`` is what the TensorFlow trainer reads to decide on a symbolic build and to find the
    strategy; cleared, the model falls back to the strategy of the enclosing scope."""
    from keras.src.backend.tensorflow.trainer import TensorFlowTrainer

    source = inspect.getsource(TensorFlowTrainer._maybe_symbolic_build)
    assert "self._distribute_strategy is None" in source
    strategy = tf.distribute.MirroredStrategy(["/cpu:0"])
    with strategy.scope():
        inputs = keras.Input((2,))
        model = keras.Model(inputs, keras.layers.Dense(1)(inputs))
    assert model._distribute_strategy is strategy
    model._distribute_strategy = None
    assert model.distribute_strategy is tf.distribute.get_strategy()
    with strategy.scope():
        assert model.distribute_strategy is strategy


def test_multi_worker_fit_changes_both_internals_only_inside_the_block() -> None:
    from keras.src.backend.tensorflow import trainer as tf_trainer

    strategy = tf.distribute.MirroredStrategy(["/cpu:0"])
    with strategy.scope():
        inputs = keras.Input((2,))
        model = keras.Model(inputs, keras.layers.Dense(1)(inputs))
    original = tf_trainer._collective_all_reduce_multi_worker
    with keras_compat.multi_worker_fit(model):
        assert model._distribute_strategy is None
        assert tf_trainer._collective_all_reduce_multi_worker is not original
        assert tf_trainer._collective_all_reduce_multi_worker(strategy) is False
    assert model._distribute_strategy is strategy
    assert tf_trainer._collective_all_reduce_multi_worker is original


def test_a_keras_without_the_internals_fails_with_a_clear_message(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from keras.src.saving import saving_lib

    monkeypatch.delattr(saving_lib, "save_weights_only")
    model = _tiny_compiled_model()
    with pytest.raises(keras_compat.KerasCompatibilityError, match=r"expected Keras to provide .*save_weights_only"):
        keras_compat.save_weights_only(model, tmp_path / "x.weights.h5", skip=[model.optimizer])

    class NoStrategy:
        pass

    with pytest.raises(keras_compat.KerasCompatibilityError, match="_distribute_strategy"), \
            keras_compat.multi_worker_fit(NoStrategy()):
        pass
