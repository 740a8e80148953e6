"""Helpers for the models/training tests: tiny prepared arrays and a script entry point for training runs that
must happen in their own process (distribution strategies, logical devices, op determinism, kill and resume).

Run as a script: ``python helpers_models.py MODE OUT [SEED]`` with MODE ``plain``, ``mirrored`` (two logical CPU
devices) or ``worker`` (TF_CONFIG set by the caller); prints one JSON line with the result.
"""

from __future__ import annotations

import json
import os
import socket
import sys
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

PROJECT_ROOT = Path(__file__).resolve().parents[1]
if str(PROJECT_ROOT) not in sys.path:
    sys.path.insert(0, str(PROJECT_ROOT))

#: Tiny U-Net: 3 stages of 4-8-16 filters on 16^3 patches.
TINY_UNET = {"filters": [4, 8, 16], "patch_size": [16, 16, 16]}


def tiny_plan(**overrides: Any) -> Any:
    from MedAnalysisLib.preprocessing.plan import Plan

    fields = {"patch_size": (16, 16, 16), "label_values": (0, 1), "slice_shape": (16, 16), "batch_size": 2,
              "modality": "MRI", "channel_names": ("T1",)}
    fields.update(overrides)
    return Plan(**fields)


def segmentation_arrays(n: int = 4, size: int = 16, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Noisy images of a bright cube; label 1 inside the cube. ``x (n, s, s, s, 1)``, ``y (n, s, s, s)``."""
    rng = np.random.default_rng(seed)
    y = np.zeros((n, size, size, size), np.int32)
    for index in range(n):
        lo = rng.integers(2, size // 2, size=3)
        y[index, lo[0] : lo[0] + 6, lo[1] : lo[1] + 6, lo[2] : lo[2] + 6] = 1
    x = (y[..., None] * 2.0 + rng.normal(0, 0.5, size=(*y.shape, 1))).astype(np.float32)
    return x, y


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _main(argv: list[str]) -> int:
    mode, out = argv[0], argv[1]
    seed = int(argv[2]) if len(argv) > 2 else 0
    import tensorflow as tf

    if mode == "mirrored":
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    if mode == "deterministic":
        tf.config.experimental.enable_op_determinism()
    from MedAnalysisLib.training import train_on_arrays

    x, y = segmentation_arrays(4)
    result = train_on_arrays(
        x, y, family="unet3d", out=out, plan=tiny_plan(), labels=["background", "cube"], epochs=1,
        validation=(x[:2], y[:2]), hparams=dict(TINY_UNET), batch_size=2, seed=seed,
        strategy={"mirrored": "mirrored", "worker": "multiworker"}.get(mode, "auto"),
    )
    print(json.dumps({"bundle": str(result.bundle_path), "metrics": result.metrics,
                      "replicas": result.config.training["replicas"] if result.config else None}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
