"""Batch feeders for ``model.fit``: ``keras.utils.PyDataset`` subclasses with worker threads.

Every batch is a pure function of ``(seed, epoch, index)``: the random generator of batch ``index`` in epoch
``epoch`` is ``numpy.random.default_rng([seed, epoch, index])``. Batches therefore do not depend on how many
workers load them or in which order, which keeps seeded runs reproducible and lets a resumed run see the same
batches as an uninterrupted one.

Shapes (channels-last, float32 images):

* segmentation: ``x (B, *spatial, C)``, ``y (B, *spatial)`` int32; with deep supervision ``y`` is a tuple
  ``(y, y[:, ::s...], ...)`` matching the auxiliary outputs;
* classification: ``x (B, *spatial, C)``, ``y (B, 1)`` float32 (binary) or ``(B,)`` int32 (multi-class);
* ``cnn_rnn``: ``x = {"slices": (B, S, H, W, C), "mask": (B, S) bool}``, ``y = {"slices": (B, S, 1), "scan":
  (B, 1)}`` and sample weights ``{"slices": mask as float32, "scan": ones}`` so padded slices do not count.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import keras
import numpy as np


def downsample_labels(y: np.ndarray, strides: Sequence[Sequence[int]]) -> tuple[np.ndarray, ...]:
    """``(y, y[:, ::s0, ::s1, ...], ...)``: nearest-neighbour label targets for deep-supervision outputs."""
    outputs = [y]
    for stride in strides:
        index = (slice(None),) + tuple(slice(None, None, int(s)) for s in stride)
        outputs.append(np.ascontiguousarray(y[index]))
    return tuple(outputs)


class SamplerFeeder(keras.utils.PyDataset):
    """Draws ``steps`` random batches per epoch from ``sample(rng) -> batch``.

    Args:
        sample: Function of a numpy ``Generator`` returning one batch (``(x, y)`` or ``(x, y, sample_weight)``),
            e.g. ``PatchSampler.batch``.
        steps: Batches per epoch.
        seed: Base seed.
        transform: Optional function applied to each batch (e.g. deep-supervision label pyramids).
        workers: Loader threads.
    """

    def __init__(
        self,
        sample: Callable[[np.random.Generator], tuple[Any, ...]],
        steps: int,
        *,
        seed: int = 0,
        transform: Callable[[tuple[Any, ...]], tuple[Any, ...]] | None = None,
        workers: int = 1,
        max_queue_size: int = 4,
    ) -> None:
        super().__init__(workers=workers, use_multiprocessing=False, max_queue_size=max_queue_size)
        if steps < 1:
            raise ValueError(f"expected at least one step per epoch, got {steps}")
        self.sample = sample
        self.steps = int(steps)
        self.seed = int(seed)
        self.transform = transform
        self.epoch = 0

    def __len__(self) -> int:
        return self.steps

    def __getitem__(self, index: int) -> tuple[Any, ...]:
        rng = np.random.default_rng([self.seed, self.epoch, int(index)])
        batch = self.sample(rng)
        return self.transform(batch) if self.transform else batch

    def on_epoch_end(self) -> None:
        self.epoch += 1


class RowFeeder(keras.utils.PyDataset):
    """Batches of rows ``0..n-1`` loaded on demand, reshuffled every epoch with ``default_rng([seed, epoch])`` when
    ``shuffle``: only the rows of one batch are ever in memory (validation on every case of a cache, volume
    classifiers). Each batch's rows are sorted, as :class:`ArrayFeeder`'s are.

    Args:
        load: ``load(rows)`` -> ``(x, y[, w])`` for an ascending array of row numbers.
        n: Number of rows.
        batch_size: Batch size (the last batch may be smaller).
        shuffle: Reshuffle every epoch.
        seed: Base seed of the shuffles.
        transform: Optional function applied to each batch.
        workers: Loader threads.
    """

    def __init__(
        self,
        load: Callable[[np.ndarray], tuple[Any, ...]],
        n: int,
        batch_size: int,
        *,
        shuffle: bool = True,
        seed: int = 0,
        transform: Callable[[tuple[Any, ...]], tuple[Any, ...]] | None = None,
        workers: int = 1,
    ) -> None:
        super().__init__(workers=workers, use_multiprocessing=False, max_queue_size=4)
        if batch_size < 1:
            raise ValueError(f"expected batch_size >= 1, got {batch_size}")
        self.load = load
        self.n = int(n)
        self.batch_size = int(batch_size)
        self.shuffle = shuffle
        self.seed = int(seed)
        self.transform = transform
        self.epoch = 0

    def __len__(self) -> int:
        return max(1, -(-self.n // self.batch_size))

    def _order(self) -> np.ndarray:
        if not self.shuffle:
            return np.arange(self.n)
        return np.random.default_rng([self.seed, self.epoch]).permutation(self.n)

    def __getitem__(self, index: int) -> tuple[Any, ...]:
        rows = np.sort(self._order()[index * self.batch_size : (index + 1) * self.batch_size])
        batch = self.load(rows)
        return self.transform(batch) if self.transform else batch

    def on_epoch_end(self) -> None:
        self.epoch += 1


class ArrayFeeder(RowFeeder):
    """Batches of in-memory arrays, reshuffled every epoch with ``default_rng([seed, epoch])`` when ``shuffle``.

    Args:
        x: Array ``(N, ...)`` or dict of arrays with the same first dimension.
        y: Array or dict/tuple of arrays, first dimension N.
        batch_size: Batch size (the last batch may be smaller).
        sample_weight: Optional array or dict of arrays, first dimension N.
        shuffle: Reshuffle every epoch.
        seed: Base seed of the shuffles.
        transform: Optional function applied to each ``(x, y[, w])`` batch.
    """

    def __init__(
        self,
        x: Any,
        y: Any,
        batch_size: int,
        *,
        sample_weight: Any = None,
        shuffle: bool = True,
        seed: int = 0,
        transform: Callable[[tuple[Any, ...]], tuple[Any, ...]] | None = None,
        workers: int = 1,
    ) -> None:
        self.x, self.y, self.sample_weight = x, y, sample_weight
        n = _length(x)
        for name, value in (("y", y), ("sample_weight", sample_weight)):
            if value is not None and _length(value) != n:
                raise ValueError(f"expected {name} with {n} rows like x, got {_length(value)}")
        super().__init__(self._rows, n, batch_size, shuffle=shuffle, seed=seed, transform=transform, workers=workers)

    def _rows(self, rows: np.ndarray) -> tuple[Any, ...]:
        batch: tuple[Any, ...] = (_take(self.x, rows), _take(self.y, rows))
        if self.sample_weight is not None:
            batch = (*batch, _take(self.sample_weight, rows))
        return batch


def _length(value: Any) -> int:
    if isinstance(value, dict):
        lengths = {len(v) for v in value.values()}
        if len(lengths) != 1:
            raise ValueError(f"expected arrays of one length in the dict, got lengths {sorted(lengths)}")
        return lengths.pop()
    if isinstance(value, (tuple, list)):
        return _length(value[0])
    return len(value)


def _take(value: Any, rows: np.ndarray) -> Any:
    if value is None:
        return None
    if isinstance(value, dict):
        return {k: np.asarray(v)[rows] for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return tuple(np.asarray(v)[rows] for v in value)
    return np.asarray(value)[rows]
