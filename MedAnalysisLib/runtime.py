"""TensorFlow runtime settings that training, inference and the benchmarks share: thread pools and op determinism.

Every entry point sets the thread pools through :func:`configure_threads` before its first TensorFlow op: training
(:func:`MedAnalysisLib.training.runner.fit_and_bundle`), inference (:func:`MedAnalysisLib.bundles.load_bundle`, the
first TensorFlow work of a prediction) and the benchmarks in ``bench/``, so figures measured there are figures of
the product's own configuration. TensorFlow fixes its pools at first use; a later call keeps them.

Reproducibility, as measured (2-core AMD EPYC Zen 4, TensorFlow 2.21, Keras 3.15.1, tiny 3D U-Net, 2 epochs):

* the same seed and the same *intra-op thread count* give bit-identical weights, with or without op determinism
  and whatever the number of data-loading workers (batches are pure functions of seed, epoch and index);
* another intra-op thread count gives other weights (float sums are split across threads differently), with or
  without op determinism and with oneDNN on or off; the inter-op pool does not matter;
* the thread count, not the machine, decides: 2 intra-op threads on a process limited to 1 core give the weights
  of 2 threads on 2 cores. The bundle records the count (``training.intra_op_threads``); ``--threads N`` replays it.

Op determinism (:func:`enable_op_determinism`, ``medanalysis train --deterministic``) makes TensorFlow choose
deterministic kernels or refuse ops that have none; it matters on GPUs (atomics, cuDNN autotuning) and for
``tf.data``, where run-to-run differences otherwise appear even at a fixed thread count.
"""

from __future__ import annotations

import os

from MedAnalysisLib.errors import InputError


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity: ``taskset``, Slurm and container CPU sets narrow it)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def configure_threads(threads: int | None = None) -> int:
    """Size TensorFlow's intra-op pool (call before any TensorFlow op) and return the thread count in effect.

    Args:
        threads: Intra-op threads; ``None`` for one per available core (:func:`available_cores`).

    Returns:
        The intra-op thread count TensorFlow uses (the count set here, or the one already fixed by earlier work).

    Raises:
        InputError: ``threads`` is not an integer >= 1, or TensorFlow already runs with another count that was
            asked for explicitly (its pools are fixed at first use; start a new process).
    """
    if threads is not None and (not isinstance(threads, int) or isinstance(threads, bool) or threads < 1):
        raise InputError(f"expected threads to be an integer >= 1 or None, got {threads!r}")
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
    """Make TensorFlow ops deterministic from now on, for the whole process (TensorFlow offers no public way back).

    Costs speed where TensorFlow has to pick slower deterministic kernels (GPUs) or serialise ``tf.data``; ops without
    a deterministic kernel raise an error instead of running.
    """
    import tensorflow as tf

    tf.config.experimental.enable_op_determinism()


__all__ = ["available_cores", "configure_threads", "enable_op_determinism"]
