"""Which batches each model family trains and validates on, from prepared cases.

* ``unet3d``: random patches ``plan.patch_size`` with foreground oversampling and augmentation; validation on a
  fixed set of patches from the validation cases;
* ``unet2d``: axial slices resized to ``plan.slice_shape`` with their label slices;
* ``slice_cnn``: axial slices with the case's class as target (every slice of the validation cases once); when
  the cases have label maps and no class targets, the target of each slice is whether its label map has
  foreground there (classes "absent"/"present", e.g. "this slice contains the hippocampus");
* ``cnn3d``: each case centre-cropped or zero-padded to ``plan.patch_size``;
* ``cnn_rnn``: whole scans as slice sequences (``plan.sequence_length`` slices at most, zero-padded with a mask);
  per-slice targets say whether a slice holds foreground of the label map, the scan target is the case's class
  (or "any slice positive" when the case has none).

Cases are in memory (:class:`~MedAnalysisLib.preprocessing.transforms.PreparedCase`) or read lazily from a
preprocessed cache (:class:`~MedAnalysisLib.data.cache.CachedCase`); the same code serves both, and validation
batches are loaded one batch at a time (:class:`~MedAnalysisLib.training.feeders.RowFeeder`) except the fixed patch
and slice batches of segmentation (``val_batches`` batches), so no family holds every case in memory.

Every random draw comes from generators seeded by ``(seed, epoch, batch index)`` (see
:mod:`MedAnalysisLib.training.feeders`), so the batches do not depend on the number of loader threads.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from MedAnalysisLib.errors import InputError
from MedAnalysisLib.preprocessing.augment import AugmentConfig, Augmenter

Feeders = tuple[Any, Any]


def label_lookup(values: Sequence[int]) -> np.ndarray | None:
    """Lookup table label value -> class index when the values are not already 0..n-1."""
    values = [int(v) for v in values]
    if values == list(range(len(values))):
        return None
    table = np.zeros(max(values) + 1, dtype=np.int32)
    for index, value in enumerate(values):
        table[value] = index
    return table


def center_crop_or_pad(image: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """``(k, j, i, C)`` centre-cropped or zero-padded to ``size`` (k, j, i)."""
    out = np.zeros((*size, image.shape[-1]), dtype=np.float32)
    src, dst = [], []
    for have, want in zip(image.shape[:3], size, strict=True):
        if have >= want:
            start = (have - want) // 2
            src.append(slice(start, start + want))
            dst.append(slice(0, want))
        else:
            start = (want - have) // 2
            src.append(slice(0, have))
            dst.append(slice(start, start + have))
    out[tuple(dst)] = image[tuple(src)]
    return out


def class_index(target: Any, n_classes: int, case_id: str) -> int:
    if target is None or float(target) != int(float(target)) or not 0 <= int(float(target)) < n_classes:
        raise InputError(f"expected a class index in [0, {n_classes}) as target of case {case_id!r}, got {target!r}")
    return int(float(target))


@dataclass
class Feeding:
    """The prepared cases of a run and how to batch them; :meth:`make` is the runner's ``make_feeders``.

    Attributes:
        family: Model family.
        plan: The preprocessing plan the cases were prepared with.
        train_cases, val_cases: Prepared cases (:class:`~MedAnalysisLib.preprocessing.transforms.PreparedCase`).
        n_classes: Model outputs (labels).
        seed: Seed of sampling, augmentation and the fixed validation batches.
        batch_size: Requested global batch size, or None for the plan's.
        steps_per_epoch: Requested training batches per epoch, or None (about four passes, at most 250).
        val_batches: Fixed validation batches for patch/slice segmentation.
        augment: Augmentation of training batches, or None.
        workers: Loader threads.
        foreground_targets: Slice classifiers learn "this slice has foreground" from label maps.
        label_transform: Deep-supervision label pyramids, or None.
    """

    family: str
    plan: Any
    train_cases: Sequence[Any]
    val_cases: Sequence[Any]
    n_classes: int
    seed: int
    batch_size: int | None
    steps_per_epoch: int | None
    val_batches: int
    augment: AugmentConfig | None
    workers: int
    foreground_targets: bool
    label_transform: Callable[[tuple[Any, ...]], tuple[Any, ...]] | None

    def __post_init__(self) -> None:
        self.lookup = label_lookup(self.plan.label_values) if self.family in ("unet3d", "unet2d") else None
        self.binary = self.n_classes == 2

    def make(self, setup: Any) -> Feeders:
        """``(train_feeder, val_feeder or None)`` for the devices in ``setup`` (the batch splits across replicas)."""
        batch, steps = self._batch_and_steps(int(setup.n_replicas))
        augmenter = Augmenter(self.augment, seed=self.seed) if self.augment is not None else None
        if self.family in ("unet3d", "unet2d"):
            return self._segmentation(batch, steps, augmenter)
        if self.family == "slice_cnn":
            return self._slice_classifier(batch, steps, augmenter)
        if self.family == "cnn3d":
            return self._volume_classifier(batch)
        return self._sequence_classifier(batch, steps)

    def _batch_and_steps(self, replicas: int) -> tuple[int, int]:
        plan = self.plan
        default = plan.batch_size if self.family in ("unet3d", "cnn3d") else (
            min(plan.batch_size, 4) if self.family == "cnn_rnn" else plan.slice_batch_size)
        batch = max(int(self.batch_size or default), replicas)
        batch = int(math.ceil(batch / replicas) * replicas)
        steps = self.steps_per_epoch or int(min(250, max(1, math.ceil(4 * len(self.train_cases) / batch))))
        return batch, steps

    # ------------------------------------------------------------------ targets
    def _segmentation_targets(self, batch: tuple[Any, ...]) -> tuple[Any, ...]:
        x, y = batch[0], np.asarray(batch[1])
        if self.lookup is not None:
            y = self.lookup[np.clip(y, 0, len(self.lookup) - 1)]
        batch = (x, y.astype(np.int32))
        return self.label_transform(batch) if self.label_transform else batch

    def _class_targets(self, values: Any) -> np.ndarray:
        values = np.asarray(values)
        return values.reshape(-1, 1).astype(np.float32) if self.binary else values.astype(np.int32)

    # ------------------------------------------------------------------ families
    def _segmentation(self, batch: int, steps: int, augmenter: Augmenter | None) -> Feeders:
        from MedAnalysisLib.data.samplers import PatchSampler, SliceSampler
        from MedAnalysisLib.training.feeders import ArrayFeeder, SamplerFeeder

        plan, seed = self.plan, self.seed
        val_rng = [np.random.default_rng([seed, 7919, b]) for b in range(self.val_batches)]
        if self.family == "unet3d":
            sampler = PatchSampler(self.train_cases, plan.patch_size, batch, augmenter=augmenter, seed=seed,
                                   foreground_fraction=plan.foreground_fraction)
            val_sampler = PatchSampler(self.val_cases, plan.patch_size, batch, seed=seed) if self.val_cases else None
        else:
            sampler = SliceSampler(self.train_cases, batch, slice_shape=plan.slice_shape, target="mask",
                                   foreground_fraction=plan.foreground_fraction, augmenter=augmenter, seed=seed)
            val_sampler = SliceSampler(self.val_cases, batch, slice_shape=plan.slice_shape, target="mask",
                                       seed=seed) if self.val_cases else None
        train_feeder = SamplerFeeder(sampler.batch, steps, seed=seed, transform=self._segmentation_targets,
                                     workers=self.workers)
        if val_sampler is None:
            return train_feeder, None
        batches = [self._segmentation_targets(val_sampler.batch(rng)) for rng in val_rng]
        vx = np.concatenate([b[0] for b in batches])
        if isinstance(batches[0][1], tuple):  # deep supervision: one target per output
            vy: Any = tuple(np.concatenate([b[1][n] for b in batches]) for n in range(len(batches[0][1])))
        else:
            vy = np.concatenate([b[1] for b in batches])
        return train_feeder, ArrayFeeder(vx, vy, batch, shuffle=False)

    def _slice_classifier(self, batch: int, steps: int, augmenter: Augmenter | None) -> Feeders:
        from MedAnalysisLib.data.samplers import SliceSampler, case_slice_foreground
        from MedAnalysisLib.training.feeders import RowFeeder, SamplerFeeder

        if not self.foreground_targets:
            for case in [*self.train_cases, *self.val_cases]:
                class_index(case.target, self.n_classes, case.case_id)
        sampler = SliceSampler(self.train_cases, batch, slice_shape=self.plan.slice_shape,
                               target="slice_foreground" if self.foreground_targets else "case",
                               foreground_fraction=self.plan.foreground_fraction, augmenter=augmenter, seed=self.seed)
        train_feeder = SamplerFeeder(sampler.batch, steps, seed=self.seed,
                                     transform=lambda b: (b[0], self._class_targets(b[1])), workers=self.workers)
        if not self.val_cases:
            return train_feeder, None
        cases = list(self.val_cases)
        items = [(n, k) for n, c in enumerate(cases) for k in range(c.image.shape[0])]
        flags = [case_slice_foreground(c).astype(np.int32) for c in cases] if self.foreground_targets else None

        def load(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            picked = [items[r] for r in rows]
            x = np.stack([cases[n].image[k] for n, k in picked]).astype(np.float32, copy=False)
            y = [flags[n][k] if flags is not None else int(float(cases[n].target)) for n, k in picked]
            return x, self._class_targets(np.asarray(y))

        return train_feeder, RowFeeder(load, len(items), batch, shuffle=False)

    def _volume_classifier(self, batch: int) -> Feeders:
        from MedAnalysisLib.training.feeders import RowFeeder

        def loader(cases: Sequence[Any]) -> Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]:
            targets = [class_index(c.target, self.n_classes, c.case_id) for c in cases]  # checked before training

            def load(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
                x = np.stack([center_crop_or_pad(cases[r].image, self.plan.patch_size) for r in rows])
                return x, self._class_targets([targets[r] for r in rows])

            return load

        train, val = list(self.train_cases), list(self.val_cases)
        train_feeder = RowFeeder(loader(train), len(train), batch, shuffle=True, seed=self.seed, workers=self.workers)
        return train_feeder, RowFeeder(loader(val), len(val), batch, shuffle=False) if val else None

    def _sequence_batch(self, batch: tuple[np.ndarray, ...]) -> tuple[Any, ...]:
        x, mask, y_slices, y_scan = batch
        weights = {"slices": mask.astype(np.float32), "scan": np.ones(len(mask), np.float32)}
        if self.binary:
            targets = {"slices": y_slices.astype(np.float32)[..., None],
                       "scan": np.asarray(y_scan, np.float32).reshape(-1, 1)}
        else:
            targets = {"slices": y_slices.astype(np.int32), "scan": np.asarray(y_scan).astype(np.int32)}
        return {"slices": x, "mask": mask}, targets, weights

    def _sequence_classifier(self, batch: int, steps: int) -> Feeders:
        from MedAnalysisLib.data.samplers import SequenceSampler
        from MedAnalysisLib.training.feeders import RowFeeder, SamplerFeeder

        plan = self.plan
        sampler = SequenceSampler(self.train_cases, batch, max_slices=plan.sequence_length,
                                  slice_shape=plan.slice_shape, seed=self.seed)
        train_feeder = SamplerFeeder(sampler.batch, steps, seed=self.seed, transform=self._sequence_batch,
                                     workers=self.workers)
        if not self.val_cases:
            return train_feeder, None
        val_sampler = SequenceSampler(self.val_cases, batch, max_slices=plan.sequence_length,
                                      slice_shape=plan.slice_shape, seed=self.seed)

        def load(rows: np.ndarray) -> tuple[Any, ...]:
            return self._sequence_batch(val_sampler._stack([val_sampler.sequence(int(r)) for r in rows]))

        return train_feeder, RowFeeder(load, len(val_sampler.cases), batch, shuffle=False)
