"""Every use of Keras internals (``keras.src...`` and private attributes), in one place, behind one version bound.

The rest of the library uses public Keras API only (STYLE.md, practice 14). What public API cannot do yet:

* :func:`save_weights_only` -- save a compiled model's weights *without* its optimizer state. ``Model.save_weights``
  writes the optimizer's variables too (twice the weights for Adam), which a bundle must not carry: they are
  training state, not model, and would fail the size check of :func:`MedAnalysisLib.bundles.load_bundle`. Uses
  ``keras.src.saving.saving_lib.save_weights_only(model, path, objects_to_skip=[...])``.
* :func:`multi_worker_fit` -- let ``Model.fit`` run under ``tf.distribute.MultiWorkerMirroredStrategy``. Keras 3
  reduces a first distributed batch for its symbolic build, which fails for that strategy (keras-team/keras#20585),
  and reduces per-step scalar logs across workers with ``axis=0`` (an error for scalars). The work-around clears
  the model's private ``_distribute_strategy`` (the build is then deferred to the first traced step, which runs
  under the same strategy) and replaces ``keras.src.backend.tensorflow.trainer._collective_all_reduce_multi_worker``
  for the duration of the fit, so per-step logs are reduced over the local replica only (epoch-end metrics come from
  synchronised metric variables and stay global). TensorFlow backend only.
* :func:`set_random_seed` -- what ``keras.utils.set_random_seed`` does, without importing TensorFlow on the other
  backends. The public function also seeds TensorFlow whenever it is installed, which imports it (seconds and about
  half a gigabyte) in a JAX process that never uses it. Off the TensorFlow backend, this stores the seed and clears
  the global seed generator through ``keras.src.backend.common.global_state`` under the names
  ``keras.src.utils.rng_utils.GLOBAL_RANDOM_SEED`` and ``keras.src.random.seed_generator.GLOBAL_SEED_GENERATOR``,
  and seeds Python's and NumPy's generators, as the public function does. Its contract test (the same draws as the
  public function, and this error when the names go away) is in ``Testing/test_training_backends.py``.

:data:`KERAS_REQUIREMENT` is the range these were checked against; ``pyproject.toml``, ``Resources/requirements.txt``
and ``Resources/constraints.txt`` carry the same bound, and ``Testing/test_keras_compat.py`` holds the contract:
one test per internal, exercising it the way the code here does, plus a test that the installed Keras lies inside
the bound and that every file states the same bound. Raising the bound is a conscious step: install the new Keras,
run that test file, fix what it reports here, then change the bound everywhere at once.
"""

from __future__ import annotations

import contextlib
import random
import re
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

#: Keras releases the internals below were checked against: [floor, ceiling), as (major, minor).
KERAS_FLOOR = (3, 12)
KERAS_CEILING = (3, 16)
#: The pip requirement every dependency list of MedAnalysis states for Keras.
KERAS_REQUIREMENT = f"keras>={KERAS_FLOOR[0]}.{KERAS_FLOOR[1]},<{KERAS_CEILING[0]}.{KERAS_CEILING[1]}"


class KerasCompatibilityError(RuntimeError):
    """The installed Keras no longer has an internal MedAnalysis relies on (see :mod:`MedAnalysisLib.keras_compat`)."""


def keras_version_tuple(version: str) -> tuple[int, int]:
    """``"3.15.1"`` -> ``(3, 15)`` (pre-release and local suffixes after the minor number are ignored)."""
    match = re.match(r"^(\d+)\.(\d+)", version)
    if match is None:
        raise ValueError(f"expected a Keras version such as 3.15.1, got {version!r}")
    return int(match.group(1)), int(match.group(2))


def is_supported_keras(version: str) -> bool:
    """Whether a Keras version lies in [:data:`KERAS_FLOOR`, :data:`KERAS_CEILING`)."""
    return KERAS_FLOOR <= keras_version_tuple(version) < KERAS_CEILING


def _broken(what: str, error: BaseException) -> KerasCompatibilityError:
    import keras

    return KerasCompatibilityError(
        f"expected Keras to provide {what} ({KERAS_REQUIREMENT}, see MedAnalysisLib/keras_compat.py), got keras "
        f"{keras.__version__} without it: {error}"
    )


def save_weights_only(model: Any, path: str | Path, skip: Sequence[Any] = ()) -> None:
    """``model``'s weights to ``path`` (``*.weights.h5``), leaving out the objects in ``skip`` (e.g. its optimizer).

    Raises:
        KerasCompatibilityError: The installed Keras lacks ``saving_lib.save_weights_only(..., objects_to_skip=)``.
    """
    if not skip:
        model.save_weights(str(path))
        return
    try:
        from keras.src.saving import saving_lib

        save = saving_lib.save_weights_only
    except (ImportError, AttributeError) as error:
        raise _broken("keras.src.saving.saving_lib.save_weights_only", error) from error
    try:
        save(model, str(path), objects_to_skip=list(skip))
    except TypeError as error:  # the keyword went away or changed its name
        raise _broken("save_weights_only(..., objects_to_skip=[...])", error) from error


def _local_replica_reduction(strategy: Any) -> bool:
    """Stand-in for Keras's check "reduce per-step logs across workers": never (see :func:`multi_worker_fit`)."""
    return False


def set_random_seed(seed: int) -> None:
    """Seed Python, NumPy and Keras (and TensorFlow on its backend, or where it is already imported).

    Off the TensorFlow backend, TensorFlow is not imported (see the module docstring); the Keras draws that follow
    are the ones ``keras.utils.set_random_seed(seed)`` gives.

    Raises:
        KerasCompatibilityError: The installed Keras keeps its global seed elsewhere.
    """
    import keras

    if keras.backend.backend() == "tensorflow" or "tensorflow" in sys.modules:
        keras.utils.set_random_seed(seed)
    else:
        _seed_without_tensorflow(seed)


def _seed_without_tensorflow(seed: int) -> None:
    """``keras.utils.set_random_seed`` less its TensorFlow step (see the module docstring)."""
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise ValueError(f"expected an integer seed, got {seed!r}")
    try:
        from keras.src.backend.common import global_state
        from keras.src.random import seed_generator
        from keras.src.utils import rng_utils

        names = (rng_utils.GLOBAL_RANDOM_SEED, seed_generator.GLOBAL_SEED_GENERATOR)
    except (ImportError, AttributeError) as error:
        raise _broken("keras.src.backend.common.global_state and the global seed names", error) from error
    global_state.set_global_attribute(names[0], seed)
    global_state.set_global_attribute(names[1], None)  # recreated from the seed at the next draw
    random.seed(seed)
    np.random.seed(seed)


@contextlib.contextmanager
def multi_worker_fit(model: Any) -> Iterator[None]:
    """Within the block, ``model.fit`` works under ``MultiWorkerMirroredStrategy`` (see the module docstring).

    Enter the block inside the strategy's ``scope()``; both changes are undone on exit.

    Raises:
        KerasCompatibilityError: The model has no ``_distribute_strategy`` attribute (Keras changed its trainer).
        ValueError: Keras runs on another backend than TensorFlow (there is no ``tf.distribute`` strategy there).
    """
    import keras

    if keras.backend.backend() != "tensorflow":
        raise ValueError(f"expected the TensorFlow backend for multi-worker training, got {keras.backend.backend()!r}")
    if not hasattr(model, "_distribute_strategy"):
        raise _broken("a _distribute_strategy attribute on TensorFlow-backend models",
                      AttributeError(f"{type(model).__name__} has no _distribute_strategy"))
    try:
        from keras.src.backend.tensorflow import trainer as tf_trainer
    except ImportError as error:
        raise _broken("the module keras.src.backend.tensorflow.trainer", error) from error
    # Keras releases that fixed the scalar reduction dropped the helper; there is then nothing to replace.
    original_reduction = getattr(tf_trainer, "_collective_all_reduce_multi_worker", None)
    original_strategy = model._distribute_strategy
    model._distribute_strategy = None
    if original_reduction is not None:
        tf_trainer._collective_all_reduce_multi_worker = _local_replica_reduction
    try:
        yield
    finally:
        if original_reduction is not None:
            tf_trainer._collective_all_reduce_multi_worker = original_reduction
        model._distribute_strategy = original_strategy


__all__ = ["KERAS_CEILING", "KERAS_FLOOR", "KERAS_REQUIREMENT", "KerasCompatibilityError", "is_supported_keras",
           "multi_worker_fit", "save_weights_only", "set_random_seed"]
