"""Runtime settings that training, inference and the benchmarks share, per Keras backend: the Keras backend in use,
thread pools and op determinism.

Every entry point sets the thread pools through :func:`configure_threads` before its first backend op: training
(:func:`MedAnalysisLib.training.runner.fit_and_bundle`), inference (:func:`MedAnalysisLib.bundles.load_bundle`, the
first backend work of a prediction) and the benchmarks in ``bench/``, so figures measured there are figures of
the product's own configuration. Nothing here imports TensorFlow unless Keras runs on the TensorFlow backend, so a
machine with JAX and without TensorFlow trains and predicts (``KERAS_BACKEND=jax``).

TensorFlow backend. TensorFlow fixes its pools at first use; a later call keeps them. Reproducibility, as measured
(2-core AMD EPYC Zen 4, TensorFlow 2.21, Keras 3.15.1, tiny 3D U-Net, 2 epochs):

* the same seed and the same *intra-op thread count* give bit-identical weights, with or without op determinism
  and whatever the number of data-loading workers (batches are pure functions of seed, epoch and index);
* another intra-op thread count gives other weights (float sums are split across threads differently), with or
  without op determinism and with oneDNN on or off; the inter-op pool does not matter;
* the thread count, not the machine, decides: 2 intra-op threads on a process limited to 1 core give the weights
  of 2 threads on 2 cores. The bundle records the count (``training.intra_op_threads``); ``--threads N`` replays it.

Op determinism (:func:`enable_op_determinism`, ``medanalysis train --deterministic``) makes TensorFlow choose
deterministic kernels or refuse ops that have none; it matters on GPUs (atomics, cuDNN autotuning) and for
``tf.data``, where run-to-run differences otherwise appear even at a fixed thread count.

JAX backend. XLA's CPU client sizes its pool to the cores the process may run on (its CPU affinity) and offers no
setting for another count, so the thread count is :func:`available_cores`; a different explicit count is refused
(narrow the cores with ``taskset`` instead). Op determinism is XLA's ``--xla_gpu_deterministic_ops`` flag (GPUs;
XLA's CPU kernels are deterministic), read once when JAX starts its first backend, so it must come before any JAX
work.
"""

from __future__ import annotations

import os

from MedAnalysisLib.errors import InputError

#: Keras backends that MedAnalysis trains and predicts on.
SUPPORTED_BACKENDS = ("tensorflow", "jax")
#: The XLA flag that makes GPU kernels deterministic on the JAX backend.
JAX_DETERMINISM_FLAG = "--xla_gpu_deterministic_ops=true"


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity: ``taskset``, Slurm and container CPU sets narrow it)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def keras_backend() -> str:
    """The Keras backend of this process (``KERAS_BACKEND`` or ``~/.keras/keras.json``), checked to be supported.

    Raises:
        InputError: A backend MedAnalysis does not run on (e.g. ``torch``, or ``numpy``, which cannot train).
    """
    import keras

    name = str(keras.backend.backend())
    if name not in SUPPORTED_BACKENDS:
        raise InputError(f"expected the Keras backend to be one of {', '.join(SUPPORTED_BACKENDS)} (set "
                         f"KERAS_BACKEND before starting), got {name!r}")
    return name


def _check_threads(threads: int | None) -> None:
    if threads is not None and (not isinstance(threads, int) or isinstance(threads, bool) or threads < 1):
        raise InputError(f"expected threads to be an integer >= 1 or None, got {threads!r}")


def configure_threads(threads: int | None = None) -> int:
    """Size the backend's intra-op pool (call before any backend op) and return the thread count in effect.

    Args:
        threads: Intra-op threads; ``None`` for one per available core (:func:`available_cores`).

    Returns:
        The intra-op thread count the backend uses (the count set here, or the one already fixed by earlier work).

    Raises:
        InputError: ``threads`` is not an integer >= 1; TensorFlow already runs with another count that was asked
            for explicitly (its pools are fixed at first use; start a new process); on JAX, a count other than the
            available cores (XLA cannot be told another one).
    """
    _check_threads(threads)
    if keras_backend() == "jax":
        return _jax_threads(threads)
    return _tensorflow_threads(threads)


def _jax_threads(threads: int | None) -> int:
    """XLA's CPU pool: one thread per available core, which only the CPU affinity changes."""
    cores = available_cores()
    if threads is not None and threads != cores:
        how = (f"run on fewer cores instead (e.g. taskset -c 0-{threads - 1})" if threads < cores
               else f"this process may run on {cores} only")
        raise InputError(f"expected threads to be unset or {cores} (the cores this process may use) on the JAX "
                         f"backend, got {threads}: XLA sizes its pool to the process's cores, so {how}; or train on "
                         "the TensorFlow backend (KERAS_BACKEND=tensorflow)")
    return cores


def check_threads(threads: int | None) -> None:
    """Refuse a thread count the backend cannot use, without starting the backend (so that the command line can
    refuse it before preparing any data); :func:`configure_threads` applies it later.

    Raises:
        InputError: As :func:`configure_threads`, except for a TensorFlow already running with another count.
    """
    _check_threads(threads)
    if keras_backend() == "jax":
        _jax_threads(threads)


def _tensorflow_threads(threads: int | None) -> int:
    import tensorflow as tf

    wanted = available_cores() if threads is None else threads
    try:
        tf.config.threading.set_intra_op_parallelism_threads(wanted)
    except RuntimeError:  # already initialised: the pools are fixed for this process
        current = tf.config.threading.get_intra_op_parallelism_threads() or available_cores()
        if threads is not None and current != threads:
            raise InputError(f"expected to run TensorFlow with {threads} intra-op threads, got a process whose "
                             f"TensorFlow already runs with {current} (set threads before any TensorFlow work, "
                             "or run in a new process)") from None
        return current
    return wanted


def enable_op_determinism() -> None:
    """Make the backend's ops deterministic from now on, for the whole process (there is no public way back).

    TensorFlow: op determinism, which costs speed where TensorFlow has to pick slower deterministic kernels (GPUs) or
    serialise ``tf.data``; ops without a deterministic kernel raise an error instead of running. JAX: XLA's
    deterministic GPU kernels (:data:`JAX_DETERMINISM_FLAG` in ``XLA_FLAGS``).

    Raises:
        InputError: On JAX, a backend already started (XLA reads its flags once; start a new process).
    """
    if keras_backend() == "jax":
        _jax_determinism()
        return
    import tensorflow as tf

    tf.config.experimental.enable_op_determinism()


def _jax_backend_started() -> bool:
    """Whether JAX has created a backend (after which XLA no longer reads ``XLA_FLAGS``)."""
    try:
        from jax._src import xla_bridge
    except ImportError:  # pragma: no cover - JAX moved it: assume started, so that determinism is never silent
        return True
    check = getattr(xla_bridge, "backends_are_initialized", None)
    return True if check is None else bool(check())


def _jax_determinism() -> None:
    flags = os.environ.get("XLA_FLAGS", "")
    if JAX_DETERMINISM_FLAG in flags.split():
        return
    if _jax_backend_started():
        raise InputError("expected deterministic training to be asked for before any JAX work, got a process whose "
                         f"JAX backend already runs (XLA reads {JAX_DETERMINISM_FLAG} once; run in a new process or "
                         "put the flag into XLA_FLAGS)")
    os.environ["XLA_FLAGS"] = f"{flags} {JAX_DETERMINISM_FLAG}".strip()


__all__ = ["JAX_DETERMINISM_FLAG", "SUPPORTED_BACKENDS", "available_cores", "check_threads", "configure_threads",
           "enable_op_determinism", "keras_backend"]
