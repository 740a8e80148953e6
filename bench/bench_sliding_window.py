"""Sliding-window inference: MedAnalysis (Keras/TensorFlow) against MONAI's ``sliding_window_inference`` (PyTorch).

Both run the same 3D U-Net (filters 16-32-64-128-256, two 3x3x3 conv + batch norm + ReLU per level, max-pool down,
2x2x2 transposed conv up, soft-max), with the *same weights*: the network is defined here in both frameworks, trained
briefly in Keras on a synthetic "bright blobs" task so that its output is a real segmentation rather than noise, and
its weights are copied into the PyTorch twin (a one-window check prints the largest difference). Both engines see a
256 x 256 x 160 (i, j, k) volume with 96^3 windows, overlap 0.25, Gaussian blending (sigma 1/8 of the window) and
the same window grid (4 x 4 x 2 = 32 windows), two windows per model call.

Usage (MONAI lives in its own environment, ``bench/.venv-monai`` with ``pip install torch==2.13.0 monai``)::

    nice .venv/bin/python bench/bench_sliding_window.py            # train once, then monai, bf16, fp32, monai, bf16
    nice .venv/bin/python bench/bench_sliding_window.py --engines monai,bfloat16 --repeats 2

Each engine runs in its own process under ``/usr/bin/time -v`` for its peak resident memory; engines listed twice
are interleaved so that a busy machine slows them alike. Printed: wall time of the sliding-window call (after one
warm-up call; best of the runs), whole-process peak RSS, Dice of each label map against MONAI's and against the
truth of the synthetic volume.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
OUT = HERE / "output" / "sliding_window"
SHAPE_KJI = (160, 256, 256)  # array order (k, j, i) of a 256 x 256 x 160 (i, j, k) volume
PATCH = (96, 96, 96)
OVERLAP = 0.25
FILTERS = (16, 32, 64, 128, 256)
N_CLASSES = 2
BATCH = 2
BN_EPS = 1e-3


# ----------------------------------------------------------------------------------------------- data
def make_image(shape: tuple[int, int, int], seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Smooth background, bright ellipsoidal blobs of varying size and contrast, Gaussian noise; blobs are label 1."""
    rng = np.random.default_rng(seed)
    k, j, i = np.meshgrid(*[np.arange(s, dtype=np.float32) for s in shape], indexing="ij")
    image = 0.3 * np.sin(k / 23.0) * np.cos(j / 31.0) + 0.2 * np.sin(i / 17.0)
    label = np.zeros(shape, np.uint8)
    n_blobs = max(2, int(np.prod(shape) / 160_000))
    for _ in range(n_blobs):
        centre = [rng.uniform(0, s) for s in shape]
        radii = rng.uniform(4, 16, size=3)
        inside = ((k - centre[0]) / radii[0]) ** 2 + ((j - centre[1]) / radii[1]) ** 2 + ((i - centre[2]) / radii[2]) ** 2 <= 1
        image[inside] += rng.uniform(1.5, 3.0)
        label[inside] = 1
    image += rng.normal(0, 0.35, size=shape).astype(np.float32)
    return image.astype(np.float32), label


# ----------------------------------------------------------------------------------------------- Keras side
def keras_unet():  # noqa: ANN201 - keras imported lazily
    import keras
    from keras import layers

    def block(x, filters: int, name: str):  # noqa: ANN001, ANN202
        for n in (1, 2):
            x = layers.Conv3D(filters, 3, padding="same", use_bias=False, name=f"{name}_conv{n}")(x)
            x = layers.BatchNormalization(epsilon=BN_EPS, momentum=0.9, name=f"{name}_bn{n}")(x)
            x = layers.ReLU(name=f"{name}_relu{n}")(x)
        return x

    inputs = keras.Input((None, None, None, 1), name="image")
    skips = []
    x = inputs
    for level, filters in enumerate(FILTERS):
        x = block(x, filters, f"enc{level}")
        if level < len(FILTERS) - 1:
            skips.append(x)
            x = layers.MaxPooling3D(2, name=f"pool{level}")(x)
    for level in range(len(FILTERS) - 2, -1, -1):
        x = layers.Conv3DTranspose(FILTERS[level], 2, strides=2, name=f"up{level}")(x)
        x = layers.Concatenate(name=f"cat{level}")([x, skips[level]])
        x = block(x, FILTERS[level], f"dec{level}")
    x = layers.Conv3D(N_CLASSES, 1, name="head")(x)
    outputs = layers.Softmax(name="softmax")(x)
    return keras.Model(inputs, outputs, name="bench_unet")


def torch_state_from_keras(model) -> dict[str, np.ndarray]:  # noqa: ANN001
    """Keras weights renamed and transposed to the PyTorch twin's ``state_dict`` layout."""
    state: dict[str, np.ndarray] = {}
    for layer in model.layers:
        weights = [np.asarray(w) for w in layer.get_weights()]
        if not weights:
            continue
        if layer.name.endswith(("conv1", "conv2")) or layer.name == "head":
            state[f"{layer.name}.weight"] = weights[0].transpose(4, 3, 0, 1, 2)  # (d,h,w,in,out) -> (out,in,d,h,w)
            if len(weights) > 1:
                state[f"{layer.name}.bias"] = weights[1]
        elif layer.name.startswith("up"):
            state[f"{layer.name}.weight"] = weights[0].transpose(4, 3, 0, 1, 2)  # (d,h,w,out,in) -> (in,out,d,h,w)
            state[f"{layer.name}.bias"] = weights[1]
        else:  # batch norm: gamma, beta, moving mean, moving variance
            gamma, beta, mean, variance = weights
            state.update({f"{layer.name}.weight": gamma, f"{layer.name}.bias": beta,
                          f"{layer.name}.running_mean": mean, f"{layer.name}.running_var": variance})
    return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in state.items()}


def prepare(args: argparse.Namespace) -> None:
    """Train the bench U-Net briefly on random crops of a training volume; save weights and the test volume."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras

    OUT.mkdir(parents=True, exist_ok=True)
    keras.utils.set_random_seed(0)
    model = keras_unet()
    train_image, train_label = make_image((96, 128, 128), seed=1)
    rng = np.random.default_rng(2)
    crop = (32, 32, 32)

    foreground = np.argwhere(train_label > 0)

    def batch() -> tuple[np.ndarray, np.ndarray]:
        xs, ys = [], []
        for n in range(4):
            if n % 2 == 0:  # half the crops centred on a blob voxel (blobs are ~3% of the volume)
                centre = foreground[rng.integers(len(foreground))]
                corner = [int(np.clip(c - p // 2, 0, s - p)) for c, p, s in zip(centre, crop, train_image.shape, strict=True)]
            else:
                corner = [int(rng.integers(0, s - c + 1)) for s, c in zip(train_image.shape, crop, strict=True)]
            window = tuple(slice(c, c + p) for c, p in zip(corner, crop, strict=True))
            xs.append(train_image[window][..., None])
            ys.append(train_label[window])
        return np.stack(xs), np.stack(ys)

    model.compile(optimizer=keras.optimizers.Adam(3e-3), loss="sparse_categorical_crossentropy", jit_compile=False)
    start = time.perf_counter()
    for step in range(args.train_steps):
        x, y = batch()
        loss = model.train_on_batch(x, y, sample_weight=1.0 + 4.0 * y.astype(np.float32))
        if step % 25 == 0 or step == args.train_steps - 1:
            print(f"train step {step}: loss {float(np.asarray(loss).ravel()[0]):.4f}", flush=True)
    print(f"training {args.train_steps} steps took {time.perf_counter() - start:.1f} s", flush=True)
    model.save_weights(OUT / "unet.weights.h5")
    np.savez(OUT / "unet_torch.npz", **torch_state_from_keras(model))
    image, label = make_image(SHAPE_KJI, seed=3)
    np.save(OUT / "image.npy", image)
    np.save(OUT / "truth.npy", label)
    window = image[None, :96, :96, :96, None]
    np.save(OUT / "check_window.npy", window)
    check = np.asarray(model(window, training=False))
    np.save(OUT / "check_keras.npy", check)
    truth = label[:96, :96, :96]
    found = check[0].argmax(-1)
    print(f"one-window check: Dice vs truth {2 * (found & truth).sum() / max(found.sum() + truth.sum(), 1):.3f}")


def run_medanalysis(args: argparse.Namespace) -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.path.insert(0, str(ROOT))
    from MedAnalysisLib.inference.model_runner import keras_predict_fn
    from MedAnalysisLib.inference.sliding_window import make_grid, sliding_window_predict
    from MedAnalysisLib.runtime import configure_threads

    configure_threads()  # the product's own thread configuration (training and load_bundle call the same)
    model = keras_unet()
    model.load_weights(OUT / "unet.weights.h5")
    image = np.load(OUT / "image.npy")
    predict_fn = keras_predict_fn(model, precision=args.precision)
    predict_fn(np.zeros((args.batch, *PATCH, 1), np.float32))  # trace and warm up
    times = []
    labels = None
    for _ in range(args.repeats):
        start = time.perf_counter()
        labels = sliding_window_predict(
            predict_fn, image, PATCH, n_classes=N_CLASSES, overlap=OVERLAP, batch_size=args.batch, gaussian=True,
            output="labels",
        )
        times.append(time.perf_counter() - start)
    np.save(OUT / f"labels_medanalysis_{args.precision}_b{args.batch}.npy", labels)
    print(json.dumps({"engine": f"MedAnalysis {args.precision} batch {args.batch}", "seconds": min(times),
                      "all_seconds": times, "windows": len(make_grid(SHAPE_KJI, PATCH, OVERLAP))}))


# ----------------------------------------------------------------------------------------------- PyTorch side
def run_monai(args: argparse.Namespace) -> None:
    import torch
    from monai.inferers import sliding_window_inference
    from torch import nn

    class Block(nn.Module):
        def __init__(self, name: str, cin: int, cout: int) -> None:
            super().__init__()
            self.name = name
            for n, c in ((1, cin), (2, cout)):
                self.add_module(f"{name}_conv{n}", nn.Conv3d(c, cout, 3, padding=1, bias=False))
                self.add_module(f"{name}_bn{n}", nn.BatchNorm3d(cout, eps=BN_EPS))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            for n in (1, 2):
                x = torch.relu(getattr(self, f"{self.name}_bn{n}")(getattr(self, f"{self.name}_conv{n}")(x)))
            return x

    class UNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.enc = nn.ModuleList()
            cin = 1
            for level, filters in enumerate(FILTERS):
                self.enc.append(Block(f"enc{level}", cin, filters))
                cin = filters
            self.ups = nn.ModuleDict()
            self.dec = nn.ModuleDict()
            for level in range(len(FILTERS) - 2, -1, -1):
                self.ups[f"up{level}"] = nn.ConvTranspose3d(FILTERS[level + 1], FILTERS[level], 2, stride=2)
                self.dec[f"dec{level}"] = Block(f"dec{level}", 2 * FILTERS[level], FILTERS[level])
            self.head = nn.Conv3d(FILTERS[0], N_CLASSES, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            skips = []
            for level, block in enumerate(self.enc):
                x = block(x)
                if level < len(FILTERS) - 1:
                    skips.append(x)
                    x = torch.max_pool3d(x, 2)
            for level in range(len(FILTERS) - 2, -1, -1):
                x = self.ups[f"up{level}"](x)
                x = self.dec[f"dec{level}"](torch.cat([x, skips[level]], dim=1))
            return torch.softmax(self.head(x), dim=1)

    def load(net: UNet) -> None:
        flat = dict(np.load(OUT / "unet_torch.npz"))
        own = {}
        for key, module in net.named_modules():
            short = key.split(".")[-1]
            for param in ("weight", "bias", "running_mean", "running_var"):
                source = f"{short}.{param}"
                if source in flat and hasattr(module, param) and getattr(module, param) is not None:
                    own[f"{key}.{param}"] = torch.from_numpy(flat.pop(source))
        missing = net.load_state_dict(own, strict=False)
        if flat or [k for k in missing.missing_keys if "num_batches" not in k]:
            raise RuntimeError(f"weights not mapped: {sorted(flat)} / {missing.missing_keys}")

    torch.manual_seed(0)
    net = UNet().eval()
    load(net)
    image = torch.from_numpy(np.load(OUT / "image.npy"))[None, None]
    with torch.inference_mode():
        window = torch.from_numpy(np.load(OUT / "check_window.npy")).permute(0, 4, 1, 2, 3)
        check = net(window).permute(0, 2, 3, 4, 1).numpy()
        difference = float(np.abs(check - np.load(OUT / "check_keras.npy")).max())
        net(torch.zeros((args.batch, 1, *PATCH)))  # warm up
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            probabilities = sliding_window_inference(
                image, roi_size=PATCH, sw_batch_size=args.batch, predictor=net, overlap=OVERLAP, mode="gaussian",
                sigma_scale=0.125, padding_mode="constant", cval=0.0,
            )
            labels = probabilities.argmax(dim=1)[0].to(torch.uint8).numpy()
            times.append(time.perf_counter() - start)
    np.save(OUT / f"labels_monai_b{args.batch}.npy", labels)
    print(json.dumps({"engine": f"MONAI {__import__('monai').__version__} / torch {torch.__version__} float32 "
                      f"batch {args.batch}", "seconds": min(times), "all_seconds": times,
                      "one_window_max_abs_difference_vs_keras": difference, "threads": torch.get_num_threads()}))


# ----------------------------------------------------------------------------------------------- orchestration
def dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(bool), b.astype(bool)
    total = a.sum() + b.sum()
    return 1.0 if total == 0 else float(2 * np.logical_and(a, b).sum() / total)


def timed(command: list[str]) -> tuple[dict, float]:
    """Run ``command`` under /usr/bin/time -v; return its JSON line and peak RSS in MB."""
    completed = subprocess.run(["/usr/bin/time", "-v", *command], capture_output=True, text=True, check=False)
    if completed.returncode != 0:
        raise RuntimeError(f"{command} failed:\n{completed.stdout}\n{completed.stderr[-3000:]}")
    line = [ln for ln in completed.stdout.splitlines() if ln.startswith("{")][-1]
    rss_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", completed.stderr).group(1))  # type: ignore[union-attr]
    return json.loads(line), rss_kb / 1024


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("step", nargs="?", default="all", choices=("all", "prepare", "medanalysis", "monai"))
    parser.add_argument("--precision", default="bfloat16", choices=("float32", "bfloat16", "auto"))
    parser.add_argument("--batch", type=int, default=BATCH)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--train-steps", type=int, default=200)
    parser.add_argument("--monai-python", default=str(HERE / ".venv-monai" / "bin" / "python"))
    parser.add_argument("--engines", default="monai,bfloat16,float32,monai,bfloat16",
                        help="comma-separated runs, in order: monai, float32, bfloat16 (MedAnalysis precisions); "
                        "list an engine twice to interleave runs on a busy machine (the best time is reported)")
    args = parser.parse_args(argv)
    if args.step == "prepare":
        prepare(args)
        return 0
    if args.step == "medanalysis":
        run_medanalysis(args)
        return 0
    if args.step == "monai":
        run_monai(args)
        return 0

    if not (OUT / "unet_torch.npz").is_file():
        subprocess.run([sys.executable, __file__, "prepare", "--train-steps", str(args.train_steps)], check=True)
    common = ["--batch", str(args.batch), "--repeats", str(args.repeats)]
    rows: dict[str, dict] = {}  # engine -> best run; engines may be listed several times to interleave them
    for engine in args.engines.split(","):
        if engine == "monai":
            result, rss = timed([args.monai_python, __file__, "monai", *common])
            labels = np.load(OUT / f"labels_monai_b{args.batch}.npy")
        else:
            result, rss = timed([sys.executable, __file__, "medanalysis", "--precision", engine, *common])
            labels = np.load(OUT / f"labels_medanalysis_{engine}_b{args.batch}.npy")
        result["peak_rss_mb"] = rss
        print(json.dumps(result), flush=True)
        best = rows.setdefault(result["engine"], {**result, "runs": []})
        best["runs"].append(round(result["seconds"], 2))
        best["seconds"] = min(best["seconds"], result["seconds"])
        best["peak_rss_mb"] = max(best["peak_rss_mb"], rss)
        best["labels"] = labels

    truth = np.load(OUT / "truth.npy")
    table = list(rows.values())
    reference = next((r for r in table if r["engine"].startswith("MONAI")), table[0])
    print(f"\nvolume {SHAPE_KJI[::-1]} (i, j, k), windows {PATCH}, overlap {OVERLAP}, Gaussian, batch {args.batch}, "
          f"{os.cpu_count()} CPU cores; time = best of the runs listed")
    print(f"{'engine':<50} {'time s':>8} {'vs ref':>7} {'peak RSS MB':>12} {'Dice vs ref':>12} {'Dice vs truth':>14}  runs")
    for row in table:
        print(f"{row['engine']:<50} {row['seconds']:8.2f} {reference['seconds'] / row['seconds']:6.2f}x "
              f"{row['peak_rss_mb']:12.0f} {dice(row['labels'], reference['labels']):12.5f} "
              f"{dice(row['labels'], truth):14.4f}  {row['runs']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
