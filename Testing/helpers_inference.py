"""Tiny trained model bundles for inference and evaluation tests (built in seconds, inside the tests)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

CUBE_VALUE = 100.0


def cube_volume(shape: tuple[int, int, int], rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Noise N(0, 1) with one bright axis-aligned box (value 100) at a random place; the box is label 1."""
    image = rng.normal(0, 1, size=shape).astype(np.float32)
    label = np.zeros(shape, np.uint8)
    size = [int(rng.integers(3, max(4, s // 2))) for s in shape]
    corner = [int(rng.integers(0, s - z + 1)) for s, z in zip(shape, size)]
    box = tuple(slice(c, c + z) for c, z in zip(corner, size))
    image[box] = CUBE_VALUE
    label[box] = 1
    return image, label


def write_cube_msd(root: Path, n: int = 3, *, label: str = "cube", case: str = "box_{:03d}",
                   shape: tuple[int, int, int] = (12, 14, 16), seed: int = 4, modality: str = "MRI",
                   **geometry: object) -> Path:
    """A tiny labelled MSD folder under ``root``: ``n`` cases (``case`` formatted with the index) of a bright box
    labelled 1 (named ``label``); ``geometry`` (Volume's spacing, origin, direction) defaults to 1.5 mm voxels.
    Returns ``root``."""
    import json

    from MedAnalysisLib.io import write_volume
    from MedAnalysisLib.volume import Volume

    geometry = geometry or {"spacing": (1.5, 1.5, 1.5)}
    rng = np.random.default_rng(seed)
    training = []
    for m in range(n):
        image, labels = cube_volume(shape, rng)
        name = case.format(m)
        write_volume(Volume(image, **geometry), root / "imagesTr" / f"{name}.nii.gz")
        write_volume(Volume(labels, **geometry), root / "labelsTr" / f"{name}.nii.gz")
        training.append({"image": f"./imagesTr/{name}.nii.gz", "label": f"./labelsTr/{name}.nii.gz"})
    (root / "dataset.json").write_text(json.dumps({"name": root.name, "modality": {"0": modality},
                                                   "labels": {"0": "background", "1": label},
                                                   "training": training, "test": []}))
    return root


def make_cube_plan(**overrides: object):  # noqa: ANN201 - Plan imported lazily
    from MedAnalysisLib.preprocessing.plan import Normalization, Plan

    settings: dict[str, object] = dict(
        task="segmentation", modality="MR", n_channels=1, channel_names=("image",), label_values=(0, 1),
        target_spacing=(1.5, 1.5, 1.5), orientation="LPS", normalization=Normalization(scheme="zscore"),
        crop_to_nonzero=False, patch_size=(16, 16, 16), batch_size=2, recommended_model="unet3d", pooling_levels=1,
    )
    settings.update(overrides)
    return Plan(**settings)  # type: ignore[arg-type]


def train_cube_bundle(path: Path, *, steps: int = 60, seed: int = 0, name: str = "cube-finder") -> Path:
    """Train a tiny 3D U-Net to find bright boxes and save it as a bundle (a real, trained model).

    Training data are prepared exactly as inference prepares images (per-image z-score), 16^3 patches.
    """
    import keras

    from MedAnalysisLib.bundles import BundleConfig, LabelInfo, save_bundle
    from MedAnalysisLib.models import build_training_model
    from MedAnalysisLib.preprocessing.transforms import normalize

    keras.utils.set_random_seed(seed)
    plan = make_cube_plan()
    hparams = {"n_classes": 2, "in_channels": 1, "patch_size": [16, 16, 16], "filters": [4, 8], "norm": "batch"}
    model, training_model = build_training_model("unet3d", **hparams)
    training_model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="sparse_categorical_crossentropy",
                           jit_compile=False)
    rng = np.random.default_rng(seed)
    steps_per_epoch = 20
    log = "epoch,loss\n"
    losses = []
    for step in range(steps):
        xs, ys = [], []
        for _ in range(8):
            image, label = cube_volume((16, 16, 16), rng)
            xs.append(normalize(image, plan.normalization)[..., None])
            ys.append(label)
        loss = training_model.train_on_batch(np.stack(xs), np.stack(ys))
        losses.append(float(np.asarray(loss).ravel()[0]))
        if (step + 1) % steps_per_epoch == 0 or step == steps - 1:
            log += f"{step // steps_per_epoch},{float(np.mean(losses))!r}\n"
            losses = []
    config = BundleConfig(
        name=name, task="segmentation", family="unet3d", hparams=hparams, plan=plan,
        labels=(LabelInfo(0, "background", (0, 0, 0)), LabelInfo(1, "cube", (230, 80, 60))),
        input={"channels": [{"name": "image", "modality": "MR"}]},
        inference={"overlap": 0.5, "tta": False, "postprocess": "none"},
        training={"steps": steps, "seed": seed},
    )
    return save_bundle(path, model, config, extra_files={"training_log.csv": log})


_TRAINED: dict[str, Path] = {}


def shared_cube_bundle() -> Path:
    """One trained cube bundle per test process (training takes a few seconds; tests only read it)."""
    import tempfile

    if "cube" not in _TRAINED:
        folder = Path(tempfile.mkdtemp(prefix="medanalysis-test-bundle-"))
        _TRAINED["cube"] = train_cube_bundle(folder / "cube-finder", steps=80)
    return _TRAINED["cube"]


CLASS_LABELS = ((0, "no box", (90, 90, 90)), (1, "box", (230, 80, 60)))


def box_or_not(shape: tuple[int, int, int], rng: np.random.Generator, has_box: bool) -> np.ndarray:
    """Noise N(0, 1), with a bright box (value 100) when ``has_box``: the classification toy task."""
    image, _ = cube_volume(shape, rng)
    if not has_box:
        image = rng.normal(0, 1, size=shape).astype(np.float32)
    return image


def train_classifier_bundle(path: Path, family: str, *, steps: int = 0, seed: int = 0) -> Path:
    """A tiny classifier bundle (``cnn3d``, ``slice_cnn`` or ``cnn_rnn``) for the box/no-box task.

    ``steps`` > 0 trains a ``cnn3d`` on whole 16^3 volumes; the slice families are saved as built (their tests check
    the shape of results, not their accuracy).
    """
    import keras

    from MedAnalysisLib.bundles import BundleConfig, LabelInfo, save_bundle
    from MedAnalysisLib.models import build_training_model
    from MedAnalysisLib.preprocessing.transforms import normalize

    keras.utils.set_random_seed(seed)
    plan = make_cube_plan(task="classification", target_spacing=None, recommended_model=family,
                          slice_shape=(16, 16), patch_size=(16, 16, 16))
    hparams: dict[str, object] = {"n_classes": 2, "in_channels": 1}
    if family == "cnn3d":
        hparams.update(filters=[4, 8], norm="batch", residual=False)
    elif family == "slice_cnn":
        hparams.update(preset="global_pool", input_shape=[16, 16], base_filters=4, n_blocks=1)
    else:
        hparams.update(slice_shape=[16, 16], encoder_filters=[4], rnn_units=4, attention_units=4)
    model, training_model = build_training_model(family, **hparams)
    if steps:
        training_model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="binary_crossentropy", jit_compile=False)
        rng = np.random.default_rng(seed)
        for _ in range(steps):
            targets = rng.integers(0, 2, 8)
            x = np.stack([normalize(box_or_not((16, 16, 16), rng, bool(t)), plan.normalization)[..., None]
                          for t in targets])
            training_model.train_on_batch(x, targets.astype(np.float32)[:, None])
    config = BundleConfig(
        name=f"box-{family}", task="classification", family=family, hparams=hparams, plan=plan,
        labels=tuple(LabelInfo(v, n, c) for v, n, c in CLASS_LABELS),
        input={"channels": [{"name": "image", "modality": "MR"}]},
    )
    return save_bundle(path, model, config)
