"""Training samplers: 3D patches, 2D slices and whole-scan slice sequences, with seeded randomness.

Every sampler draws from prepared cases (:class:`~MedAnalysisLib.preprocessing.transforms.PreparedCase`, arrays
``(k, j, i, C)`` float32 with integer labels ``(k, j, i)``) and returns numpy batches, channels last:

* :class:`PatchSampler`: ``x (B, k, j, i, C)`` float32, ``y (B, k, j, i)`` int32, with foreground oversampling
  (a share of each batch is centred on a voxel of a foreground class, classes taken in turn).
* :class:`SliceSampler`: ``x (B, H, W, C)`` and ``y (B, H, W)`` (masks) or ``(B,)`` (case or slice targets).
* :class:`SequenceSampler`: ``x (B, S, H, W, C)`` zero-padded, ``mask (B, S)`` bool, ``y_slices (B, S)``,
  ``y_scan (B,)``, for CNN+RNN models.

Cases may hold numpy arrays or lazy arrays (:class:`~MedAnalysisLib.data.cache.CachedArray`, read from a
preprocessed cache): the samplers only index the windows, slices and sequences a batch needs, and take foreground
locations and per-slice foreground flags from the case when it carries them (``class_locations``,
``slice_foreground``) instead of scanning label maps, so memory depends on the batch, not on the number of cases.

``batch(rng)`` is a pure function of the generator's state: the same seed gives the same batch, whatever thread
runs it. :meth:`_Sampler.batches` prepares batches on worker threads (SimpleITK and numpy release the GIL) with
one generator per batch spawned from a seed, so results do not depend on scheduling.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from MedAnalysisLib.errors import InputError

if TYPE_CHECKING:  # samplers only receive these; the data layer does not depend on preprocessing at run time
    from MedAnalysisLib.preprocessing.augment import Augmenter
    from MedAnalysisLib.preprocessing.transforms import PreparedCase

#: Foreground voxel positions remembered per class and case (a seeded subsample; enough to vary patch centres).
MAX_LOCATIONS = 10_000


def _generator(rng: np.random.Generator | int | None, fallback: np.random.Generator) -> np.random.Generator:
    if rng is None:
        return fallback
    if isinstance(rng, np.random.Generator):
        return rng
    return np.random.default_rng(rng)

def slice_foreground(label: np.ndarray) -> np.ndarray:
    """``(S,)`` booleans: whether each axial slice of a ``(S, ...)`` label map holds any foreground (label > 0)."""
    return (np.asarray(label) > 0).reshape(label.shape[0], -1).any(axis=1)


def _slice_shape(cases: Sequence[Any], slice_shape: Sequence[int] | None) -> tuple[int, ...]:
    """The in-plane ``(H, W)`` of 2D/sequence batches: the given one, or the cases' common in-plane shape."""
    if slice_shape is None:
        shapes = {c.image.shape[1:3] for c in cases}
        if len(shapes) != 1:
            raise InputError(f"expected one in-plane shape across cases or a slice_shape, got {sorted(shapes)}")
        slice_shape = shapes.pop()
    return tuple(int(s) for s in slice_shape)


class _Sampler:
    """Shared machinery: a fallback generator and threaded, seed-deterministic batch streams."""

    def __init__(self, seed: int) -> None:
        self.seed = int(seed)
        self._rng = np.random.default_rng(seed)

    def batch(self, rng: np.random.Generator | int | None = None) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    def batches(self, n_batches: int | None = None, *, seed: int | None = None, workers: int = 2) -> Iterator[Any]:
        """Yield ``n_batches`` batches (forever when None), prepared ahead on ``workers`` threads, in order.

        Batch ``b`` uses its own generator spawned from ``SeedSequence(seed)`` (default: the sampler's seed), so the
        stream is identical for any number of workers.
        """
        root = np.random.SeedSequence(self.seed if seed is None else seed)
        workers = max(1, int(workers))

        def make(child: np.random.SeedSequence) -> Any:
            return self.batch(np.random.default_rng(child))

        count = 0
        with ThreadPoolExecutor(max_workers=workers) as pool:
            pending = []
            while n_batches is None or count < n_batches:
                while len(pending) < 2 * workers and (n_batches is None or count + len(pending) < n_batches):
                    pending.append(pool.submit(make, root.spawn(1)[0]))
                future = pending.pop(0)
                count += 1
                yield future.result()


def _crop_or_pad(array: np.ndarray, start: Sequence[int], size: Sequence[int]) -> np.ndarray:
    """Window ``[start, start + size)`` over the leading axes; parts outside the array are zero."""
    n = len(size)
    out = np.zeros(tuple(size) + array.shape[n:], dtype=array.dtype)
    src, dst = [], []
    for axis in range(n):
        lo = max(0, start[axis])
        hi = min(array.shape[axis], start[axis] + size[axis])
        if hi <= lo:
            return out
        src.append(slice(lo, hi))
        dst.append(slice(lo - start[axis], hi - start[axis]))
    out[tuple(dst)] = array[tuple(src)]
    return out


def _start_containing(rng: np.random.Generator, point: Sequence[int], shape: Sequence[int], size: Sequence[int]) -> list[int]:
    """A window start that keeps ``point`` inside and the window inside the array (centred where it is smaller).

    The point lands near the window centre, jittered by up to a quarter of the window.
    """
    start = []
    for p, s, w in zip(point, shape, size, strict=True):
        if s <= w:  # the window covers the whole axis
            start.append((s - w) // 2)
            continue
        low, high = max(0, p - w + 1), min(p, s - w)  # every start in [low, high] contains p
        middle, jitter = p - w // 2, max(1, w // 4)
        lo, hi = max(low, middle - jitter), min(high, middle + jitter)
        if lo > hi:
            lo, hi = low, high
        start.append(int(rng.integers(lo, hi + 1)))
    return start


#: Context added on each side of a window, as a share of its size, when the augmenter rotates or zooms: enough
#: for the default 15 degrees and zoom-out to 0.85 to fill the window with image rather than zeros.
CONTEXT_MARGIN = 0.25


def _extract(
    image: np.ndarray,
    label: np.ndarray | None,
    start: Sequence[int],
    size: Sequence[int],
    augmenter: Augmenter | None,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Window ``[start, start + size)`` of image and label, augmented (with surrounding context when it helps)."""
    if augmenter is None:
        return _crop_or_pad(image, start, size), (_crop_or_pad(label, start, size) if label is not None else None)
    margin = [int(np.ceil(CONTEXT_MARGIN * s)) if augmenter.resamples else 0 for s in size]
    outer_start = [s - m for s, m in zip(start, margin, strict=True)]
    outer_size = [s + 2 * m for s, m in zip(size, margin, strict=True)]
    outer_image = _crop_or_pad(image, outer_start, outer_size)
    outer_label = _crop_or_pad(label, outer_start, outer_size) if label is not None else None
    return augmenter(outer_image, outer_label, rng, output_shape=tuple(size))


def _random_start(rng: np.random.Generator, shape: Sequence[int], size: Sequence[int]) -> list[int]:
    return [int(rng.integers(0, s - w + 1)) if s >= w else (s - w) // 2 for s, w in zip(shape, size, strict=True)]


def class_location_indices(label: np.ndarray, rng: np.random.Generator) -> dict[int, np.ndarray]:
    """Per foreground class (label > 0), the sorted flat voxel indices of that class: all of them, or a seeded
    subsample of :data:`MAX_LOCATIONS` where there are more (what a preprocessed cache stores per case)."""
    flat = np.asarray(label).reshape(-1)
    locations: dict[int, np.ndarray] = {}
    for value in np.unique(flat):
        if value <= 0:
            continue
        indices = np.flatnonzero(flat == value)
        if indices.size > MAX_LOCATIONS:
            indices = np.sort(rng.choice(indices, MAX_LOCATIONS, replace=False))
        locations[int(value)] = indices.astype(np.int64)
    return locations


def _class_locations(label: np.ndarray, rng: np.random.Generator) -> dict[int, np.ndarray]:
    return {value: np.stack(np.unravel_index(indices, label.shape), axis=1).astype(np.int32)
            for value, indices in class_location_indices(label, rng).items()}


def _case_locations(case: Any, rng: np.random.Generator) -> dict[int, np.ndarray]:
    """The case's foreground locations ``{class: positions}`` (``len(positions)`` and ``positions[n]`` a (k, j, i)
    voxel): the ones it carries (a cached case, so that no label map is scanned), else found by scanning its label
    map (``(n, 3)`` int32 rows)."""
    given = getattr(case, "class_locations", None)
    return dict(given) if given is not None else _class_locations(case.label, rng)


def case_slice_foreground(case: Any) -> np.ndarray:
    """``(k,)`` booleans: which axial slices of a case's label map hold foreground; taken from the case when it
    carries them (a cached case), else computed from its label map."""
    given = getattr(case, "slice_foreground", None)
    return np.asarray(given, dtype=bool) if given is not None else slice_foreground(case.label)


def _check_cases(cases: Sequence[PreparedCase], need_label: bool) -> list[PreparedCase]:
    cases = list(cases)
    if not cases:
        raise InputError("expected at least one prepared case, got none")
    channels = {c.image.shape[-1] for c in cases}
    if len(channels) != 1 or any(c.image.ndim != 4 for c in cases):
        raise InputError(
            f"expected every prepared image as (k, j, i, C) with the same C, got shapes {[c.image.shape for c in cases[:5]]}"
        )
    for case in cases:
        if need_label and case.label is None:
            raise InputError(f"expected a label map for every case, case {case.case_id!r} has none")
        if case.label is not None and case.label.shape != case.image.shape[:3]:
            raise InputError(f"expected label shape {case.image.shape[:3]} for case {case.case_id!r}, got {case.label.shape}")
    return cases


def _n_forced(batch_size: int, fraction: float) -> int:
    if fraction <= 0:
        return 0
    return int(min(batch_size, max(1, round(batch_size * fraction))))


class PatchSampler(_Sampler):
    """Random 3D patches with foreground oversampling.

    Args:
        cases: Prepared cases with labels.
        patch_size: (k, j, i) voxels.
        batch_size: Patches per batch.
        foreground_fraction: Share of each batch (at least one patch when > 0) centred on a foreground voxel; the
            foreground class cycles through every class present in the data, so each class gets its share. Without
            spatial augmentation these patches are guaranteed to contain that class (rotation and scaling may move
            it near the border).
        augmenter: Applied to each patch (image and label alike), or None.
        seed: Seed of the fallback generator and of the foreground-location subsample.
    """

    def __init__(
        self,
        cases: Sequence[PreparedCase],
        patch_size: Sequence[int],
        batch_size: int,
        *,
        foreground_fraction: float = 0.33,
        augmenter: Augmenter | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__(seed)
        self.cases = _check_cases(cases, need_label=True)
        self.patch_size = tuple(int(p) for p in patch_size)
        if len(self.patch_size) != 3 or min(self.patch_size) < 1:
            raise InputError(f"expected a patch size of 3 positive voxel counts (k, j, i), got {patch_size}")
        if batch_size < 1:
            raise InputError(f"expected batch_size >= 1, got {batch_size}")
        if not 0.0 <= foreground_fraction <= 1.0:
            raise InputError(f"expected foreground_fraction in [0, 1], got {foreground_fraction}")
        self.batch_size = int(batch_size)
        self.foreground_fraction = float(foreground_fraction)
        self.augmenter = augmenter
        location_rng = np.random.default_rng([self.seed, 1])
        self.locations = [_case_locations(c, location_rng) for c in self.cases]
        self.classes = sorted({v for loc in self.locations for v in loc})
        self._cases_with = {v: [n for n, loc in enumerate(self.locations) if v in loc] for v in self.classes}

    def sample(self, rng: np.random.Generator, foreground_class: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """One patch ``(k, j, i, C)`` and its label ``(k, j, i)``; centred on ``foreground_class`` when given."""
        if foreground_class is not None and foreground_class in self._cases_with:
            index = int(rng.choice(self._cases_with[foreground_class]))
            points = self.locations[index][foreground_class]
            point = points[int(rng.integers(len(points)))]
            case = self.cases[index]
            start = _start_containing(rng, point, case.image.shape[:3], self.patch_size)
        else:
            index = int(rng.integers(len(self.cases)))
            case = self.cases[index]
            start = _random_start(rng, case.image.shape[:3], self.patch_size)
        return _extract(case.image, case.label, start, self.patch_size, self.augmenter, rng)  # type: ignore[return-value]

    def batch(self, rng: np.random.Generator | int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``(x (B, k, j, i, C) float32, y (B, k, j, i) int32)``; the last patches are the foreground ones."""
        rng = _generator(rng, self._rng)
        forced = _n_forced(self.batch_size, self.foreground_fraction) if self.classes else 0
        first_class = int(rng.integers(len(self.classes))) if self.classes else 0
        xs, ys = [], []
        for n in range(self.batch_size):
            cls = None
            if n >= self.batch_size - forced:
                cls = self.classes[(first_class + n) % len(self.classes)]
            x, y = self.sample(rng, cls)
            xs.append(x)
            ys.append(y)
        return np.stack(xs).astype(np.float32, copy=False), np.stack(ys).astype(np.int32)


class SliceSampler(_Sampler):
    """Random axial slices (along k) for 2D models.

    Args:
        cases: Prepared cases ``(k, j, i, C)`` (from :func:`apply_plan` or :func:`prepare_slices`).
        batch_size: Slices per batch.
        slice_shape: (H, W) of the output; slices are cropped (randomly, or around the foreground) or zero-padded
            to it. Default: the cases' own in-plane shape, which must then be the same for all.
        target: ``"mask"``: y is the label slice ``(B, H, W)``; ``"case"``: y is the case target ``(B,)``;
            ``"slice_foreground"``: y is 1 where the slice's label has foreground, else 0 ``(B,)``.
        foreground_fraction: Share of slices drawn from slices with foreground (with ``"mask"`` and
            ``"slice_foreground"``).
        augmenter: Applied to each ``(H, W, C)`` slice and its label, or None.
        seed: Seed of the fallback generator.
    """

    def __init__(
        self,
        cases: Sequence[PreparedCase],
        batch_size: int,
        *,
        slice_shape: Sequence[int] | None = None,
        target: Literal["mask", "case", "slice_foreground"] = "mask",
        foreground_fraction: float = 0.33,
        augmenter: Augmenter | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__(seed)
        if target not in ("mask", "case", "slice_foreground"):
            raise InputError(f"expected target 'mask', 'case' or 'slice_foreground', got {target!r}")
        self.cases = _check_cases(cases, need_label=target != "case")
        if target == "case" and any(c.target is None for c in self.cases):
            raise InputError("expected a target on every case for target='case', some have none")
        self.slice_shape = _slice_shape(self.cases, slice_shape)
        self.batch_size = int(batch_size)
        self.target = target
        self.foreground_fraction = float(foreground_fraction)
        self.augmenter = augmenter
        self.slices = [(n, k) for n, c in enumerate(self.cases) for k in range(c.image.shape[0])]
        self.foreground_slices = [
            (n, k)
            for n, c in enumerate(self.cases)
            if c.label is not None
            for k in np.flatnonzero(case_slice_foreground(c))
        ]
        float_targets = target == "case" and any(isinstance(c.target, float) and not float(c.target).is_integer() for c in self.cases)
        self._target_dtype = np.float32 if float_targets else np.int32

    def _slice(self, rng: np.random.Generator, case_index: int, k: int, centre_on_foreground: bool) -> tuple[np.ndarray, Any]:
        case = self.cases[case_index]
        image = case.image[k]
        label = case.label[k] if case.label is not None else None
        if centre_on_foreground and label is not None and (label > 0).any():
            points = np.argwhere(label > 0)
            start = _start_containing(rng, points[int(rng.integers(len(points)))], image.shape[:2], self.slice_shape)
        else:
            start = _random_start(rng, image.shape[:2], self.slice_shape)
        image, label = _extract(image, label, start, self.slice_shape, self.augmenter, rng)
        if self.target == "mask":
            y: Any = label
        elif self.target == "case":
            y = case.target
        else:
            y = int(label is not None and (label > 0).any())
        return image, y

    def batch(self, rng: np.random.Generator | int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``(x (B, H, W, C) float32, y)`` with y ``(B, H, W)`` int32 masks or ``(B,)`` targets."""
        rng = _generator(rng, self._rng)
        use_fg = self.target in ("mask", "slice_foreground") and self.foreground_slices
        forced = _n_forced(self.batch_size, self.foreground_fraction) if use_fg else 0
        xs, ys = [], []
        for n in range(self.batch_size):
            foreground = n >= self.batch_size - forced
            pool = self.foreground_slices if foreground else self.slices
            case_index, k = pool[int(rng.integers(len(pool)))]
            x, y = self._slice(rng, case_index, k, foreground)
            xs.append(x)
            ys.append(y)
        return np.stack(xs).astype(np.float32, copy=False), np.asarray(np.stack(ys) if self.target == "mask" else ys).astype(
            np.int32 if self.target != "case" else self._target_dtype
        )


class SequenceSampler(_Sampler):
    """Whole scans as slice sequences for CNN+RNN models.

    Args:
        cases: Prepared cases, normally from :func:`prepare_slices` (every slice ``(H, W, C)`` of one shape).
        batch_size: Scans per batch.
        max_slices: Sequence length S (default: the longest case). Shorter scans are zero-padded at the end
            (``mask`` False there); longer scans contribute a random window of S consecutive slices.
        slice_shape: (H, W); slices are centre-cropped or zero-padded to it (default: the cases' common shape).
        augmenter: Applied to the whole ``(S, H, W, C)`` sequence at once, so every slice of a scan gets the same
            spatial transform (configure ``flip_axes=(1, 2)`` to keep the slice order).
        seed: Seed of the fallback generator.

    ``y_slices`` is 1 where a slice's label has foreground (0 without labels); ``y_scan`` is the case target, or
    1 when any slice has foreground if the case has no target.
    """

    def __init__(
        self,
        cases: Sequence[PreparedCase],
        batch_size: int,
        *,
        max_slices: int | None = None,
        slice_shape: Sequence[int] | None = None,
        augmenter: Augmenter | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__(seed)
        self.cases = _check_cases(cases, need_label=False)
        self.slice_shape = _slice_shape(self.cases, slice_shape)
        self.max_slices = int(max_slices or max(c.image.shape[0] for c in self.cases))
        if self.max_slices < 1 or batch_size < 1:
            raise InputError(f"expected max_slices >= 1 and batch_size >= 1, got {self.max_slices} and {batch_size}")
        self.batch_size = int(batch_size)
        self.augmenter = augmenter

    def sequence(self, index: int, rng: np.random.Generator | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
        """One scan: ``(x (S, H, W, C), mask (S,), y_slices (S,), y_scan)``; with ``rng`` None no randomness is used
        (the first S slices, no augmentation) - the form to use for validation."""
        case = self.cases[index]
        n = case.image.shape[0]
        first = int(rng.integers(0, n - self.max_slices + 1)) if rng is not None and n > self.max_slices else 0
        count = min(n, self.max_slices)
        in_plane = case.image.shape[1:3]
        start = [0, *((s - w) // 2 for s, w in zip(in_plane, self.slice_shape, strict=True))]
        size = [count, *self.slice_shape]
        image = _crop_or_pad(case.image[first : first + count], start, size)
        label = _crop_or_pad(case.label[first : first + count], start, size) if case.label is not None else None
        if self.augmenter is not None and rng is not None:
            image, label = self.augmenter(image, label, rng)
        x = np.zeros((self.max_slices, *self.slice_shape, image.shape[-1]), dtype=np.float32)
        x[:count] = image
        mask = np.zeros(self.max_slices, dtype=bool)
        mask[:count] = True
        y_slices = np.zeros(self.max_slices, dtype=np.int32)
        if label is not None:
            y_slices[:count] = slice_foreground(label)
        elif case.label is not None:
            y_slices[:count] = slice_foreground(case.label[first : first + count])
        y_scan = float(case.target) if case.target is not None else float(y_slices.any())
        return x, mask, y_slices, y_scan

    def batch(self, rng: np.random.Generator | int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """``(x (B, S, H, W, C) float32, mask (B, S) bool, y_slices (B, S) int32, y_scan (B,))``."""
        rng = _generator(rng, self._rng)
        items = [self.sequence(int(rng.integers(len(self.cases))), rng) for _ in range(self.batch_size)]
        return self._stack(items)

    def _stack(self, items: list[tuple[np.ndarray, np.ndarray, np.ndarray, float]]) -> tuple[np.ndarray, ...]:
        x = np.stack([i[0] for i in items])
        mask = np.stack([i[1] for i in items])
        y_slices = np.stack([i[2] for i in items])
        scans = [i[3] for i in items]
        y_scan = np.asarray(scans, dtype=np.float32 if any(not float(s).is_integer() for s in scans) else np.int32)
        return x, mask, y_slices, y_scan

    def ordered_batches(self) -> Iterator[tuple[np.ndarray, ...]]:
        """Every case once, in order, without randomness (the last batch may be smaller): for validation."""
        for begin in range(0, len(self.cases), self.batch_size):
            yield self._stack([self.sequence(n) for n in range(begin, min(begin + self.batch_size, len(self.cases)))])
