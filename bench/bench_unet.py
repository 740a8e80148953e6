"""Training-step time and forward throughput of ``unet3d`` against the same U-Net in MONAI/PyTorch, on this CPU.

Model: nnU-Net-style 3D U-Net, widths 16-32-64-128-256, two conv-instance-norm-leaky-ReLU units per stage,
strided-conv down, transposed-conv up, 2 output classes; batch 2 of 1 x 96^3 (channels-last in Keras,
channels-first in PyTorch, each framework's fast layout). The peer is MONAI's ``DynUNet`` with the same layout
(kernel 3, strides 1-2-2-2-2, instance norm, leaky ReLU, no residual, no deep supervision).

Keras runs in TensorFlow graph mode (``tf.function``, ``jit_compile=False``: XLA is several times slower for 3D
convolutions on CPU) in float32 and in bfloat16 (``mixed_bfloat16``; AVX-512 bf16 CPUs). The training step is
``model.train_on_batch`` with Adam and soft Dice + cross-entropy, as :mod:`MedAnalysisLib.training` runs it.
MONAI runs in its own environment, in a subprocess::

    python -m venv bench/.venv-monai && bench/.venv-monai/bin/pip install torch==2.13.0 monai
    nice .venv/bin/python bench/bench_unet.py [--repeats 3] [--size 96]

Prints wall seconds per step, process CPU seconds per step (all threads; unaffected by other work sharing the
cores) and samples/s for each framework, and a JSON summary line.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
MONAI_PYTHON = ROOT / "bench" / ".venv-monai" / "bin" / "python"
FILTERS = (16, 32, 64, 128, 256)
N_CLASSES = 2


def _timed(fn, repeats: int) -> tuple[float, float]:  # noqa: ANN001
    """Median wall seconds and median process CPU seconds (all threads) of ``fn`` after one warm-up call.

    On a machine shared with other work the wall time includes waiting for cores; the CPU time does not, and
    CPU seconds / cores is what the step would take on idle cores with perfect threading.
    """
    fn()  # warm-up: tracing / allocation
    walls, cpus = [], []
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        fn()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return statistics.median(walls), statistics.median(cpus)


def run_keras(size: int, batch: int, repeats: int, precision: str) -> dict[str, float]:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.path.insert(0, str(ROOT))
    import keras
    import tensorflow as tf

    from MedAnalysisLib.losses import DiceCELoss
    from MedAnalysisLib.models import build_model
    from MedAnalysisLib.runtime import configure_threads

    configure_threads()  # the thread pools training and prediction use
    keras.mixed_precision.set_global_policy(precision)
    keras.utils.set_random_seed(0)
    model = build_model("unet3d", n_classes=N_CLASSES, patch_size=(size,) * 3, filters=FILTERS)
    rng = np.random.default_rng(0)
    x = tf.constant(rng.normal(size=(batch, size, size, size, 1)).astype("float32"))
    y = tf.constant(rng.integers(0, N_CLASSES, size=(batch, size, size, size)).astype("int32"))
    forward = tf.function(lambda t: model(t, training=False), jit_compile=False)
    forward_s, forward_cpu = _timed(lambda: forward(x).numpy(), repeats)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=DiceCELoss(N_CLASSES), jit_compile=False)
    train_s, train_cpu = _timed(lambda: model.train_on_batch(x, y), repeats)
    keras.mixed_precision.set_global_policy("float32")
    return {"params": int(model.count_params()), "forward_s": forward_s, "forward_cpu_s": forward_cpu,
            "train_step_s": train_s, "train_step_cpu_s": train_cpu}


def run_monai(size: int, batch: int, repeats: int) -> dict[str, float]:
    import torch
    from monai.losses import DiceCELoss
    from monai.networks.nets import DynUNet

    torch.manual_seed(0)
    torch.set_num_threads(os.cpu_count() or 1)
    model = DynUNet(spatial_dims=3, in_channels=1, out_channels=N_CLASSES, kernel_size=[3] * 5,
                    strides=[1, 2, 2, 2, 2], upsample_kernel_size=[2, 2, 2, 2], filters=list(FILTERS),
                    norm_name="instance", act_name=("leakyrelu", {"negative_slope": 0.01, "inplace": True}),
                    res_block=False, deep_supervision=False)
    x = torch.randn(batch, 1, size, size, size)
    y = torch.randint(0, N_CLASSES, (batch, 1, size, size, size))

    def forward() -> None:
        model.eval()
        with torch.no_grad():
            torch.softmax(model(x), dim=1)

    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)

    def train_step() -> None:
        model.train()
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(model(x), y)
        loss.backward()
        optimizer.step()

    forward_s, forward_cpu = _timed(forward, repeats)
    train_s, train_cpu = _timed(train_step, repeats)
    return {"params": int(sum(p.numel() for p in model.parameters())), "forward_s": forward_s,
            "forward_cpu_s": forward_cpu, "train_step_s": train_s, "train_step_cpu_s": train_cpu,
            "torch": torch.__version__}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=96, help="cube edge in voxels (default 96)")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3, help="timed repetitions after one warm-up (median)")
    parser.add_argument("--peer", choices=("monai",), help=argparse.SUPPRESS)
    parser.add_argument("--skip-monai", action="store_true")
    parser.add_argument("--skip-bf16", action="store_true")
    args = parser.parse_args(argv)
    if args.peer == "monai":
        print(json.dumps(run_monai(args.size, args.batch, args.repeats)))
        return 0

    results: dict[str, dict[str, float]] = {}
    results["keras_float32"] = run_keras(args.size, args.batch, args.repeats, "float32")
    if not args.skip_bf16:
        results["keras_bfloat16"] = run_keras(args.size, args.batch, args.repeats, "mixed_bfloat16")
    if not args.skip_monai:
        if not MONAI_PYTHON.exists():
            print(f"MONAI peer skipped: {MONAI_PYTHON} not found (see the module docstring)", file=sys.stderr)
        else:
            out = subprocess.run([str(MONAI_PYTHON), __file__, "--peer", "monai", "--size", str(args.size),
                                  "--batch", str(args.batch), "--repeats", str(args.repeats)],
                                 capture_output=True, text=True, check=True)
            results["monai_float32"] = json.loads(out.stdout.strip().splitlines()[-1])

    print(f"3D U-Net {'-'.join(map(str, FILTERS))}, batch {args.batch} x 1 x {args.size}^3, {os.cpu_count()} CPU cores, "
          f"median of {args.repeats}")
    print(f"{'run':<16}{'params':>10}{'train s':>9}{'(cpu s)':>9}{'samp/s':>8}{'fwd s':>8}{'(cpu s)':>9}{'samp/s':>8}")
    for name, r in results.items():
        print(f"{name:<16}{r['params']:>10}{r['train_step_s']:>9.2f}{r['train_step_cpu_s']:>9.2f}"
              f"{args.batch / r['train_step_s']:>8.3f}{r['forward_s']:>8.2f}{r['forward_cpu_s']:>9.2f}"
              f"{args.batch / r['forward_s']:>8.3f}")
    print("samples/s from wall time; cpu s = process CPU seconds over all threads (load-independent)")
    print(json.dumps({"size": args.size, "batch": args.batch, "results": results}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
