"""Device and distribution setup for training (TensorFlow-only; imported by the training runner alone).

* One GPU: the default strategy, memory growth on, mixed precision (float16 on compute capability 7.x,
  bfloat16 on 8.0 and later) unless turned off.
* Several GPUs: ``tf.distribute.MirroredStrategy``.
* Several machines: ``tf.distribute.MultiWorkerMirroredStrategy`` when ``TF_CONFIG`` describes a cluster of two or
  more workers (set it on every machine, as Slurm/Kubernetes launchers do); worker 0 is the chief and writes the
  bundle.
* CPU: the default strategy in float32 (``mixed_precision="on"`` gives bfloat16, useful on CPUs with AVX-512 bf16),
  and never XLA: ``jit_compile=False`` is passed explicitly because Keras's ``"auto"`` switches XLA on as soon as a
  GPU is visible and XLA is several times slower for 3D convolutions on CPUs.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

from MedAnalysisLib.errors import InputError
from MedAnalysisLib.progress import Reporter


@dataclass
class DeviceSetup:
    """What :func:`setup_devices` chose.

    Attributes:
        strategy: The ``tf.distribute`` strategy whose ``scope()`` the model is built in.
        description: Human-readable summary naming the device(s), e.g. ``"1 GPU (NVIDIA H100, mixed_bfloat16)"``.
        kind: ``"cpu"`` or ``"gpu"``.
        n_replicas: Replicas in sync (the global batch is split across them).
        precision: Keras dtype policy name (``"float32"``, ``"mixed_float16"``, ``"mixed_bfloat16"``).
        jit_compile: Value passed to ``model.compile`` (``False`` on CPU).
        is_chief: Whether this process writes outputs (always True unless multi-worker and not worker 0).
        worker_index: Task index in a multi-worker cluster (0 otherwise).
        multi_worker: Whether the strategy spans several processes (MultiWorkerMirroredStrategy).
    """

    strategy: Any
    description: str
    kind: str
    n_replicas: int
    precision: str
    jit_compile: bool | str
    is_chief: bool = True
    worker_index: int = 0
    multi_worker: bool = False


def _cluster_from_tf_config() -> tuple[int, bool] | None:
    """``(n_workers, has_chief)`` from TF_CONFIG, or None when unset or single-worker."""
    text = os.environ.get("TF_CONFIG")
    if not text:
        return None
    try:
        config = json.loads(text)
        workers = config.get("cluster", {}).get("worker", [])
        has_chief = bool(config.get("cluster", {}).get("chief"))
    except (ValueError, AttributeError, TypeError) as error:
        raise InputError(f"expected TF_CONFIG to be JSON with cluster.worker and task, got {text[:200]!r}") from error
    n_workers = len(workers) + len(config.get("cluster", {}).get("chief", []))
    return (n_workers, has_chief) if n_workers > 1 else None


def setup_devices(
    *,
    mixed_precision: str = "auto",
    strategy: str = "auto",
    reporter: Reporter | None = None,
) -> DeviceSetup:
    """Choose devices, distribution strategy and precision, and say which device is used.

    Args:
        mixed_precision: ``"auto"`` (on for GPUs of compute capability >= 7.0, off on CPU), ``"on"`` or ``"off"``.
        strategy: ``"auto"`` (multi-worker from TF_CONFIG, mirrored over several GPUs, else default),
            ``"mirrored"`` (mirrored over every visible GPU, or every logical CPU device when there is no GPU),
            ``"multiworker"`` or ``"default"``.
        reporter: Where the device message goes.

    Returns:
        The :class:`DeviceSetup`. The global Keras dtype policy is set to its ``precision``.
    """
    import keras
    import tensorflow as tf

    if mixed_precision not in ("auto", "on", "off"):
        raise InputError(f"expected mixed_precision auto, on or off, got {mixed_precision!r}")
    if strategy not in ("auto", "mirrored", "multiworker", "default"):
        raise InputError(f"expected strategy auto, mirrored, multiworker or default, got {strategy!r}")
    gpus = tf.config.list_physical_devices("GPU")
    for gpu in gpus:
        try:
            tf.config.experimental.set_memory_growth(gpu, True)
        except (RuntimeError, ValueError):  # already initialised: growth cannot change any more
            pass
    cluster = _cluster_from_tf_config()
    if strategy == "multiworker" or (strategy == "auto" and cluster is not None):
        chosen = tf.distribute.MultiWorkerMirroredStrategy()
        resolver = chosen.cluster_resolver
        task_type, task_index = resolver.task_type, int(resolver.task_id or 0)
        is_chief = task_type == "chief" if cluster and cluster[1] else task_index == 0
        label = f"{cluster[0] if cluster else '?'} workers (this is {task_type} {task_index})"
    elif strategy == "mirrored" or (strategy == "auto" and len(gpus) > 1):
        devices = [d.name for d in tf.config.list_logical_devices("GPU")] or [
            d.name for d in tf.config.list_logical_devices("CPU")]
        chosen = tf.distribute.MirroredStrategy(devices=devices)
        is_chief, task_index = True, 0
        label = f"{len(devices)} mirrored devices"
    else:
        chosen = tf.distribute.get_strategy()
        is_chief, task_index = True, 0
        label = "1 device"

    kind = "gpu" if gpus else "cpu"
    precision = "float32"
    if kind == "gpu":
        details = tf.config.experimental.get_device_details(gpus[0])
        capability = details.get("compute_capability") or (0, 0)
        names = details.get("device_name", "GPU")
        if mixed_precision == "on" or (mixed_precision == "auto" and tuple(capability) >= (7, 0)):
            precision = "mixed_bfloat16" if tuple(capability) >= (8, 0) else "mixed_float16"
        device_text = f"{len(gpus)} GPU(s) ({names}, compute capability {'.'.join(map(str, capability))})"
        jit: bool | str = "auto"
    else:
        if mixed_precision == "on":
            precision = "mixed_bfloat16"
        n_cpu = len(tf.config.list_logical_devices("CPU"))
        device_text = f"CPU ({os.cpu_count()} cores{f', {n_cpu} logical devices' if n_cpu > 1 else ''}; no GPU found)"
        jit = False
    keras.mixed_precision.set_global_policy(precision)
    setup = DeviceSetup(
        strategy=chosen,
        description=f"{device_text}, {label}, {chosen.num_replicas_in_sync} replica(s) in sync, {precision}",
        kind=kind,
        n_replicas=int(chosen.num_replicas_in_sync),
        precision=precision,
        jit_compile=jit,
        is_chief=is_chief,
        worker_index=task_index,
        multi_worker=isinstance(chosen, tf.distribute.MultiWorkerMirroredStrategy),
    )
    if reporter is not None:
        reporter.log(f"training on {setup.description}")
    return setup
