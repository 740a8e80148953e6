"""Device and distribution setup for training, per Keras backend (imported by the training runner alone).

TensorFlow backend:

* One GPU: the default strategy, memory growth on, mixed precision (float16 on compute capability 7.x,
  bfloat16 on 8.0 and later) unless turned off.
* Several GPUs: ``tf.distribute.MirroredStrategy``.
* Several machines: ``tf.distribute.MultiWorkerMirroredStrategy`` when ``TF_CONFIG`` describes a cluster of two or
  more workers (set it on every machine, as Slurm/Kubernetes launchers do); worker 0 is the chief and writes the
  bundle.
* CPU: the default strategy in float32 (``mixed_precision="on"`` gives bfloat16, useful on CPUs with AVX-512 bf16),
  and never XLA: ``jit_compile=False`` is passed explicitly because Keras's ``"auto"`` switches XLA on as soon as a
  GPU is visible and XLA is several times slower for 3D convolutions on CPUs.

JAX backend (no TensorFlow import): one device, JAX's default (the first GPU when JAX sees one, else the CPU), the
same mixed-precision rule, and ``jit_compile=True`` on every device: XLA is JAX's only compiler, and without it every
op runs eagerly one by one. Distribution is TensorFlow's: ``strategy="mirrored"`` or ``"multiworker"``, and a
``TF_CONFIG`` cluster with ``"auto"``, are refused on JAX rather than trained on one device (or, in a cluster, as
several unrelated copies that would each write the bundle).
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Any

from MedAnalysisLib.errors import InputError
from MedAnalysisLib.progress import Reporter


@dataclass
class DeviceSetup:
    """What :func:`setup_devices` chose.

    Attributes:
        strategy: The ``tf.distribute`` strategy whose ``scope()`` the model is built in (on JAX a
            :class:`SingleDevice`, whose scope changes nothing).
        description: Human-readable summary naming the device(s), e.g. ``"1 GPU (NVIDIA H100, mixed_bfloat16)"``.
        kind: ``"cpu"`` or ``"gpu"``.
        n_replicas: Replicas in sync (the global batch is split across them).
        precision: Keras dtype policy name (``"float32"``, ``"mixed_float16"``, ``"mixed_bfloat16"``).
        jit_compile: Value passed to ``model.compile`` (TensorFlow: ``False`` on CPU; JAX: ``True``).
        is_chief: Whether this process writes outputs (always True unless multi-worker and not worker 0).
        worker_index: Task index in a multi-worker cluster (0 otherwise).
        multi_worker: Whether the strategy spans several processes (MultiWorkerMirroredStrategy).
        backend: The Keras backend (``"tensorflow"`` or ``"jax"``).
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
    backend: str = "tensorflow"


class SingleDevice:
    """The strategy of a backend without ``tf.distribute``: one replica, and a ``scope()`` that changes nothing."""

    num_replicas_in_sync = 1

    def scope(self) -> contextlib.AbstractContextManager[None]:
        """A no-op context: variables go to the backend's default device."""
        return contextlib.nullcontext()


def _cluster_from_tf_config() -> tuple[int, bool] | None:
    """``(n_workers, has_chief)`` from TF_CONFIG, or None when unset or single-worker."""
    text = os.environ.get("TF_CONFIG")
    if not text:
        return None
    from MedAnalysisLib.io.small_files import parse_json_text
    from MedAnalysisLib.sanitize import terminal_field

    config = parse_json_text(text, "TF_CONFIG")  # bounded size and depth: no RecursionError from the environment
    try:
        workers = config.get("cluster", {}).get("worker", [])
        has_chief = bool(config.get("cluster", {}).get("chief"))
    except (ValueError, AttributeError, TypeError) as error:
        raise InputError("expected TF_CONFIG to be JSON with cluster.worker and task, got "
                         f"{terminal_field(text[:200])}") from error
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

    Raises:
        InputError: An unknown value, or on the JAX backend a distribution (see the module docstring).
    """
    from MedAnalysisLib.runtime import keras_backend

    if mixed_precision not in ("auto", "on", "off"):
        raise InputError(f"expected mixed_precision auto, on or off, got {mixed_precision!r}")
    if strategy not in ("auto", "mirrored", "multiworker", "default"):
        raise InputError(f"expected strategy auto, mirrored, multiworker or default, got {strategy!r}")
    backend = keras_backend()
    setup = (_jax_setup(mixed_precision, strategy) if backend == "jax"
             else _tensorflow_setup(mixed_precision, strategy))
    if reporter is not None:
        reporter.log(f"training on {setup.description}")
    return setup


def _precision(mixed_precision: str, kind: str, capability: tuple[int, ...]) -> str:
    """The Keras dtype policy: mixed on GPUs of compute capability >= 7.0 unless off; bfloat16 on CPUs when on."""
    if kind == "gpu":
        if mixed_precision == "on" or (mixed_precision == "auto" and capability >= (7, 0)):
            return "mixed_bfloat16" if capability >= (8, 0) else "mixed_float16"
        return "float32"
    return "mixed_bfloat16" if mixed_precision == "on" else "float32"


def _capability(text: Any) -> tuple[int, ...]:
    """``"9.0"`` or ``(9, 0)`` -> ``(9, 0)``; anything else -> ``(0, 0)``."""
    try:
        parts = str(text).split(".") if isinstance(text, str) else list(text)
        return tuple(int(part) for part in parts) or (0, 0)
    except (TypeError, ValueError):
        return (0, 0)


def _jax_setup(mixed_precision: str, strategy: str) -> DeviceSetup:
    """One device, JAX's default; distribution refused (see the module docstring)."""
    import jax
    import keras

    from MedAnalysisLib.runtime import available_cores

    cluster = _cluster_from_tf_config()
    if strategy in ("mirrored", "multiworker"):
        _refuse_distribution(f"strategy {strategy!r}")
    if strategy == "auto" and cluster is not None:
        _refuse_distribution(f"TF_CONFIG describing a cluster of {cluster[0]} workers")
    device = jax.devices()[0]
    kind = "cpu" if device.platform == "cpu" else "gpu"
    precision = _precision(mixed_precision, kind, _capability(getattr(device, "compute_capability", None)))
    if kind == "gpu":
        others = len(jax.devices()) - 1
        unused = f"; {others} more unused: JAX trains on one device" if others else ""
        device_text = f"1 {device.platform.upper()} ({device.device_kind}{unused})"
    else:
        device_text = f"CPU ({available_cores()} cores; no GPU found)"
    keras.mixed_precision.set_global_policy(precision)
    return DeviceSetup(strategy=SingleDevice(), description=f"{device_text}, JAX backend, 1 device, {precision}",
                       kind=kind, n_replicas=1, precision=precision, jit_compile=True, backend="jax")


def _refuse_distribution(asked: str) -> None:
    raise InputError(f"expected one device on the JAX backend (distributed training runs on the TensorFlow backend: "
                     f"KERAS_BACKEND=tensorflow), got {asked}")


def _tensorflow_setup(mixed_precision: str, strategy: str) -> DeviceSetup:
    """Memory growth, the ``tf.distribute`` strategy and the precision (see the module docstring)."""
    import keras
    import tensorflow as tf

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
    if kind == "gpu":
        details = tf.config.experimental.get_device_details(gpus[0])
        capability = details.get("compute_capability") or (0, 0)
        names = details.get("device_name", "GPU")
        precision = _precision(mixed_precision, kind, _capability(capability))
        device_text = f"{len(gpus)} GPU(s) ({names}, compute capability {'.'.join(map(str, capability))})"
        jit: bool | str = "auto"
    else:
        precision = _precision(mixed_precision, kind, (0, 0))
        n_cpu = len(tf.config.list_logical_devices("CPU"))
        device_text = f"CPU ({os.cpu_count()} cores{f', {n_cpu} logical devices' if n_cpu > 1 else ''}; no GPU found)"
        jit = False
    keras.mixed_precision.set_global_policy(precision)
    return DeviceSetup(
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
