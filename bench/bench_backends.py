"""The same model code on another Keras backend: prediction parity with TensorFlow, and training speed on a GPU.

MedAnalysis trains and predicts with Keras 3 on TensorFlow. Its models use ``keras.ops`` and ``keras.layers`` only,
so the same code runs on the JAX backend. This benchmark checks that on real bundles and real scans, and times the
training step of the benchmark configurations (on a GPU where there is one). Two steps:

1. ``export`` (TensorFlow, the project's environment): copies three trained bundles of the accuracy benchmarks
   (hippocampus ``unet3d``, CT ``slice_cnn``, hippocampus-slices ``cnn_rnn``), prepares a few of their held-out
   cases with each bundle's own plan, and saves the inputs and TensorFlow's float32 predictions::

       .venv/bin/python bench/bench_backends.py export bench/output/backends

2. ``check`` (any backend, e.g. JAX on a GPU; needs keras, numpy and h5py, not TensorFlow or SimpleITK): loads
   each bundle with :func:`MedAnalysisLib.bundles.load_bundle`, predicts the same inputs, and reports the largest
   probability difference and the share of equal labels; then times training steps in ``fit`` (the library's loss,
   optimizer and deep supervision, compiled by :mod:`MedAnalysisLib.training.runner`) and the forward pass for
   the configurations below, and, when PyTorch and MONAI are importable, MONAI's ``DynUNet`` of the same widths
   on the same batch::

       KERAS_BACKEND=jax XLA_PYTHON_CLIENT_PREALLOCATE=false python bench/bench_backends.py check \
           bench/output/backends --json result.json

Timed configurations (the exported bundles' architectures, freshly initialised, on random inputs of their shapes):
the hippocampus U-Net of ``bench/accuracy_hippocampus`` (widths 16-128, deep supervision, batch 4 of 40x56x40), the
same with nnU-Net's base width 32 (doubling to 256 at the fourth and last stage this patch allows) and nnU-Net's
batch 9 for this task, in float32 and ``mixed_bfloat16``; the CT ``slice_cnn`` of ``bench/accuracy_ct_contrast``
(global_pool, base width 16, batch norm, batch 16 of 128x128); the ``cnn_rnn`` of ``bench/accuracy_sequence``
(batch 4 of 47 slices of 64x48).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
OUTPUT = ROOT / "bench" / "output"

#: name -> (bundle folder, held-out cases, number of inputs: patches, slices or scans)
SOURCES = {
    "hippocampus_unet3d": (OUTPUT / "hippocampus" / "hippocampus-unet3d", OUTPUT / "hippocampus" / "test", 4),
    "ct_slice_cnn": (OUTPUT / "ct_contrast-split0-last" / "fold0" / "slice_cnn-global_pool",
                     OUTPUT / "ct_contrast-split0-last" / "fold0" / "test.csv", 8),
    "sequence_cnn_rnn": (OUTPUT / "sequence" / "hippocampus-slices-cnn_rnn", OUTPUT / "hippocampus" / "test", 2),
}


def _inputs_for(bundle: Any, data: Path, n: int) -> dict[str, np.ndarray]:
    """Held-out cases prepared with the bundle's own plan, in the layout its model takes."""
    from MedAnalysisLib.data.datasets import load_dataset
    from MedAnalysisLib.progress import Reporter
    from MedAnalysisLib.training.pipeline import _center_crop_or_pad, _prepare

    family, plan = bundle.config.family, bundle.plan
    task = None if family == "cnn_rnn" else bundle.config.task
    dataset = load_dataset(data, task=task)
    cases = dataset.cases[:n]
    prepared = _prepare(plan, cases, family, workers=2, reporter=Reporter("none"), stop_flag=None, stage="prepare")
    if family == "unet3d":
        return {"image": np.stack([_center_crop_or_pad(c.image, tuple(plan.patch_size)) for c in prepared])}
    if family == "slice_cnn":
        return {"image": np.concatenate([c.image for c in prepared]).astype(np.float32)}
    from MedAnalysisLib.data.samplers import SequenceSampler

    sampler = SequenceSampler(prepared, n, max_slices=plan.sequence_length, slice_shape=plan.slice_shape, seed=0)
    x, mask, *_ = next(iter(sampler.ordered_batches()))
    return {"slices": x.astype(np.float32), "mask": mask.astype(bool)}


def _model_inputs(arrays: dict[str, np.ndarray]) -> Any:
    return arrays["image"] if "image" in arrays else {"slices": arrays["slices"], "mask": arrays["mask"]}


def _outputs(model: Any, inputs: Any) -> dict[str, np.ndarray]:
    out = model.predict_on_batch(inputs)
    if isinstance(out, dict):
        return {f"out_{k}": np.asarray(v, np.float32) for k, v in out.items()}
    if isinstance(out, (list, tuple)):
        return {f"out_{i}": np.asarray(v, np.float32) for i, v in enumerate(out)}
    return {"out_0": np.asarray(out, np.float32)}


def export(folder: Path) -> int:
    import keras

    from MedAnalysisLib.bundles import load_bundle

    folder.mkdir(parents=True, exist_ok=True)
    manifest = {"backend": keras.backend.backend(), "keras": keras.__version__, "entries": {}}
    for name, (bundle_dir, data, n) in SOURCES.items():
        if not (bundle_dir / "bundle.json").exists():
            print(f"{name}: {bundle_dir} not found (run its accuracy benchmark first); skipped", file=sys.stderr)
            continue
        target = folder / name
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(bundle_dir, target / "bundle", ignore=shutil.ignore_patterns("training_log.csv"))
        bundle = load_bundle(target / "bundle")
        arrays = _inputs_for(bundle, data, n)
        outputs = _outputs(bundle.model, _model_inputs(arrays))
        np.savez_compressed(target / "io.npz", **arrays, **outputs)
        manifest["entries"][name] = {"family": bundle.config.family,
                                     "inputs": {k: list(v.shape) for k, v in arrays.items()},
                                     "outputs": {k: list(v.shape) for k, v in outputs.items()}}
        print(f"{name}: {bundle.config.family}, inputs {manifest['entries'][name]['inputs']}")
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return 0


def parity(folder: Path) -> dict[str, Any]:
    """Predict the exported inputs with this backend and compare with TensorFlow's predictions."""
    from MedAnalysisLib.bundles import load_bundle

    results = {}
    for name in json.loads((folder / "manifest.json").read_text())["entries"]:
        bundle = load_bundle(folder / name / "bundle")
        with np.load(folder / name / "io.npz") as data:
            arrays = {k: data[k] for k in data.files}
        expected = {k: v for k, v in arrays.items() if k.startswith("out_")}
        got = _outputs(bundle.model, _model_inputs(arrays))
        row = {"family": bundle.config.family, "max_abs_diff": 0.0, "labels_equal": 1.0}
        for key, want in expected.items():
            have = got[key]
            row["max_abs_diff"] = max(row["max_abs_diff"], float(np.max(np.abs(have - want))))
            if want.shape[-1] > 1:  # softmax maps / class probabilities: compare the arg-max labels
                same = np.mean(np.argmax(have, -1) == np.argmax(want, -1))
            else:  # sigmoid probabilities: compare the 0.5 decisions
                same = np.mean((have >= 0.5) == (want >= 0.5))
            row["labels_equal"] = min(row["labels_equal"], float(same))
        results[name] = row
        print(f"parity {name:<20} {row['family']:<10} max |p - p_tf| {row['max_abs_diff']:.2e}  "
              f"labels equal {row['labels_equal']:.6f}", flush=True)
    return results


def _sync(value: Any) -> None:
    """Wait for a result computed asynchronously on an accelerator (copying it to the host does)."""
    parts = value.values() if isinstance(value, dict) else value if isinstance(value, (list, tuple)) else [value]
    for part in parts:
        np.asarray(part)


def _median_seconds(fn: Any, steps: int, warmup: int = 2) -> tuple[float, float]:
    """(first-call seconds, median seconds of ``steps`` calls after ``warmup`` calls)."""
    start = time.perf_counter()
    _sync(fn())
    first = time.perf_counter() - start
    for _ in range(warmup - 1):
        _sync(fn())
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        _sync(fn())
        times.append(time.perf_counter() - start)
    return first, statistics.median(times)


#: name -> (exported bundle whose model and input shape are timed, hyper-parameters changed, batch size)
TIMED = {
    "hippocampus_unet3d_16-128_b4": ("hippocampus_unet3d", {}, 4),
    "hippocampus_unet3d_32-256_b9": ("hippocampus_unet3d", {"base_filters": 32, "max_filters": 320}, 9),
    "ct_slice_cnn_global_pool_b16": ("ct_slice_cnn", {}, 16),
    "sequence_cnn_rnn_b4": ("sequence_cnn_rnn", {}, 4),
}


def _timed_config(folder: Path, name: str) -> tuple[str, dict[str, Any], int, tuple[int, ...]]:
    """(family, hyper-parameters, batch, input shape without the batch axis) of a timed configuration, read from
    the exported bundle and its inputs so that the timing runs the benchmarks' own models."""
    from MedAnalysisLib.bundles import read_bundle_config

    source, changes, batch = TIMED[name]
    config = read_bundle_config(folder / source / "bundle")
    inputs = json.loads((folder / "manifest.json").read_text())["entries"][source]["inputs"]
    shape = inputs["image"] if "image" in inputs else inputs["slices"]
    return config.family, {**config.hparams, **changes}, batch, tuple(shape[1:])


def _batch(family: str, hparams: dict[str, Any], batch: int, shape: tuple[int, ...]) -> tuple[Any, Any]:
    from MedAnalysisLib.training.runner import _batch_transform

    rng = np.random.default_rng(0)
    x = rng.normal(size=(batch, *shape)).astype(np.float32)
    if family == "unet3d":
        y = rng.integers(0, hparams["n_classes"], size=(batch, *shape[:-1])).astype(np.int32)
        transform = _batch_transform(family, hparams)
        return transform((x, y)) if transform else (x, y)
    if family == "slice_cnn":
        return x, rng.integers(0, 2, size=(batch, 1)).astype(np.float32)
    mask = np.ones((batch, shape[0]), bool)
    return ({"slices": x, "mask": mask},
            {"slices": rng.integers(0, 2, size=(batch, shape[0], 1)).astype(np.float32),
             "scan": rng.integers(0, 2, size=(batch, 1)).astype(np.float32)})


def _repeat(value: Any, times: int) -> Any:
    """``times`` copies of a batch along the batch axis (arrays, or tuples and dicts of arrays)."""
    if isinstance(value, dict):
        return {k: _repeat(v, times) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return tuple(_repeat(v, times) for v in value)
    return np.concatenate([value] * times)


def time_keras(config: tuple[str, dict[str, Any], int, tuple[int, ...]], precision: str, steps: int) -> dict[str, Any]:
    import keras

    from MedAnalysisLib.models import build_training_model, family_task
    from MedAnalysisLib.training.runner import _compile

    family, hparams, batch, shape = config
    keras.mixed_precision.set_global_policy(precision)
    keras.utils.set_random_seed(0)
    try:
        inference_model, training_model = build_training_model(family, **hparams)
        _compile(family, family_task(family), hparams["n_classes"], training_model, inference_model,
                 loss_name=None, learning_rate=1e-3, jit_compile="auto")
        x, y = _batch(family, hparams, batch, shape)
        compile_s, on_batch_s = _median_seconds(lambda: training_model.train_on_batch(x, y), steps)
        # Training runs through fit (as the library's runner does): on JAX, train_on_batch also copies the model's
        # state back to its variables after every step, which fit does once per epoch.
        xs, ys = (_repeat(v, steps) for v in (x, y))
        training_model.fit(xs, ys, batch_size=batch, epochs=1, shuffle=False, verbose=0)
        start = time.perf_counter()
        training_model.fit(xs, ys, batch_size=batch, epochs=1, shuffle=False, verbose=0)
        step_s = (time.perf_counter() - start) / steps
        _, forward_s = _median_seconds(lambda: inference_model.predict_on_batch(x), steps)
        return {"params": int(inference_model.count_params()), "batch": batch, "precision": precision,
                "first_step_s": round(compile_s, 2), "train_step_ms": round(1000 * step_s, 2),
                "train_samples_per_s": round(batch / step_s, 1), "train_on_batch_ms": round(1000 * on_batch_s, 2),
                "forward_ms": round(1000 * forward_s, 2)}
    finally:
        keras.mixed_precision.set_global_policy("float32")


def time_monai(config: tuple[str, dict[str, Any], int, tuple[int, ...]], steps: int, filters: list[int],
               strides: list[list[int]]) -> dict[str, Any] | None:
    """MONAI's DynUNet with the same widths, strides and deep supervision on the same batch, in PyTorch (None when
    PyTorch or MONAI is missing). ``filters`` and ``strides`` are the Keras U-Net's topology."""
    try:
        import torch
        from monai.losses import DiceCELoss
        from monai.networks.nets import DynUNet
    except ImportError:
        return None

    _, hparams, batch, shape = config
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    levels = int(hparams.get("deep_supervision_levels", 2))
    model = DynUNet(spatial_dims=3, in_channels=1, out_channels=hparams["n_classes"], kernel_size=[3] * len(strides),
                    strides=strides, upsample_kernel_size=strides[1:], filters=filters,
                    norm_name="instance", act_name=("leakyrelu", {"negative_slope": 0.01, "inplace": True}),
                    deep_supervision=True, deep_supr_num=levels).to(device)
    x = torch.randn(batch, 1, *shape[:-1], device=device)
    y = torch.randint(0, hparams["n_classes"], (batch, 1, *shape[:-1]), device=device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    weights = np.array([0.5**n for n in range(levels + 1)])
    weights = (weights / weights.sum()).tolist()

    def train_step() -> None:
        model.train()
        optimizer.zero_grad(set_to_none=True)
        heads = model(x)  # (B, 1 + levels, C, ...): every head upsampled to full resolution
        loss = sum(w * loss_fn(heads[:, n], y) for n, w in enumerate(weights))
        loss.backward()
        optimizer.step()
        if device == "cuda":
            torch.cuda.synchronize()

    def forward() -> None:
        model.eval()
        with torch.no_grad():
            torch.softmax(model(x), dim=1)
        if device == "cuda":
            torch.cuda.synchronize()

    compile_s, step_s = _median_seconds(train_step, steps)
    _, forward_s = _median_seconds(forward, steps)
    return {"params": int(sum(p.numel() for p in model.parameters())), "batch": batch, "precision": "float32",
            "first_step_s": round(compile_s, 2), "train_step_ms": round(1000 * step_s, 2),
            "train_samples_per_s": round(batch / step_s, 1), "forward_ms": round(1000 * forward_s, 2),
            "torch": torch.__version__, "device": device}


def _device_name() -> str:
    import keras

    if keras.backend.backend() == "jax":
        import jax

        return ", ".join(sorted({d.device_kind for d in jax.devices()}))
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"


def check(folder: Path, steps: int, only: list[str] | None, json_out: Path | None) -> int:
    import keras

    result: dict[str, Any] = {"backend": keras.backend.backend(), "keras": keras.__version__,
                              "device": _device_name(), "parity": parity(folder), "timing": {}}
    print(f"backend {result['backend']} on {result['device']}; Keras training: mean step of a fit epoch of {steps} "
          f"steps; forward passes and MONAI: median of {steps} calls", flush=True)

    def save() -> None:  # after every row, so that a run cut short keeps what it measured
        if json_out is not None:
            json_out.write_text(json.dumps(result, indent=1))

    for name in only or list(TIMED):
        config = _timed_config(folder, name)
        family, hparams = config[0], config[1]
        for precision in ["float32", "mixed_bfloat16"] if family == "unet3d" else ["float32"]:
            row = time_keras(config, precision, steps)
            result["timing"][f"{name}/{precision}"] = row
            save()
            print(f"keras {name:<32}{precision:<16}{row['train_step_ms']:>9.2f} ms/step {row['train_samples_per_s']:>8.1f}"
                  f" samples/s  forward {row['forward_ms']:.2f} ms  first step {row['first_step_s']:.1f} s", flush=True)
        if family == "unet3d":
            from MedAnalysisLib.models.unet import unet_topology

            topology = unet_topology(3, patch_size=hparams["patch_size"], base_filters=hparams["base_filters"],
                                     max_filters=hparams["max_filters"])
            row = time_monai(config, steps, [int(f) for f in topology.filters],
                             [[int(v) for v in s] for s in topology.strides])
            if row is not None:
                result["timing"][f"{name}/monai-float32"] = row
                save()
                print(f"monai {name:<32}{'float32':<16}{row['train_step_ms']:>9.2f} ms/step "
                      f"{row['train_samples_per_s']:>8.1f} samples/s  forward {row['forward_ms']:.2f} ms", flush=True)
    save()
    print(json.dumps(result))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p_export = sub.add_parser("export", help="save bundles, inputs and TensorFlow's predictions")
    p_export.add_argument("folder", type=Path)
    p_check = sub.add_parser("check", help="compare predictions and time training on this backend")
    p_check.add_argument("folder", type=Path)
    p_check.add_argument("--steps", type=int, default=20, help="timed steps per configuration (median)")
    p_check.add_argument("--only", action="append", choices=sorted(TIMED), help="time these configurations only")
    p_check.add_argument("--json", type=Path, default=None, help="also write the result here")
    args = parser.parse_args(argv)
    if args.command == "export":
        return export(args.folder)
    return check(args.folder, args.steps, args.only, args.json)


if __name__ == "__main__":
    sys.exit(main())
