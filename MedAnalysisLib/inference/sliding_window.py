"""Sliding-window inference over volumes larger (or smaller) than a model's patch.

The window grid, the Gaussian importance map and the accumulation are plain numpy; the model is any callable
``predict_fn(batch) -> probabilities`` (see :func:`MedAnalysisLib.inference.model_runner.keras_predict_fn` for a
Keras model wrapped in a ``tf.function``). All arrays are channels-last in ``(k, j, i)`` = ``(z, y, x)`` order.

How the work is kept small:

* Windows are placed on the grid MONAI and nnU-Net use (step ``patch * (1 - overlap)``, last window flush with the
  border), so overlap 0 and any overlap < 1 cover every voxel with the fewest windows that give that overlap.
* The windows form a Cartesian product and the Gaussian importance map is a product of 1D Gaussians, so the sum of
  weights at each voxel is the product of three 1D sums: no weight volume is allocated.
* Windows are accumulated in order of their k start into a rolling buffer only ``patch_k`` slices thick; slices no
  later window reaches are normalised and written out at once, so the extra memory beyond the output is one slab.
  With ``output="labels"`` the output itself is the arg-max label map (one byte a voxel), which is how a volume
  whose probabilities would not fit the memory budget is still segmented.
* Uncertainty (``uncertainty=True``, see :mod:`MedAnalysisLib.inference.uncertainty`) rides in the same buffer: with
  more than one test-time flip, each window's mean over its flips of the per-flip entropy is one extra channel,
  weighted and blended exactly as the probabilities are; the entropy of the blended probabilities and the blended
  mean entropy are computed slab by slab as rows are written out, so the maps cost one float32 volume each and the
  probabilities never have to be kept whole.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from MedAnalysisLib.errors import ImageValidationError, InputError, MemoryBudgetError

#: A model call: ``(B, k, j, i, C)`` float32 windows -> ``(B, k, j, i, n_classes)`` probabilities (any float dtype).
PredictFn = Callable[[np.ndarray], np.ndarray]

#: Standard deviation of the Gaussian importance map as a fraction of the patch size (MONAI and nnU-Net use 1/8).
GAUSSIAN_SIGMA_SCALE = 0.125
#: Smallest weight the importance map gives a voxel (relative to the centre), so border voxels are never divided by 0.
GAUSSIAN_FLOOR = 1e-6
#: Most model calls on single windows one run may make (windows x test-time augmentation passes). A whole-body CT
#: (512x512x1000) in 64^3 windows at overlap 0.5 with all 8 flips needs about 56 000; an overlap near 1 asks for
#: millions (days of work) and is refused before the first window runs.
MAX_WINDOW_PASSES = 100_000


def window_starts(length: int, patch: int, overlap: float) -> list[int]:
    """Start indices of the windows along one axis.

    Args:
        length: Axis length in voxels (already padded to at least ``patch``).
        patch: Window length in voxels.
        overlap: Fraction in [0, 1) by which neighbouring windows overlap.

    Returns:
        Sorted starts; the first is 0 and the last is ``length - patch``, so every voxel is covered.
    """
    if patch < 1 or length < patch:
        raise InputError(f"expected 1 <= patch <= length, got patch {patch} and length {length}")
    if not 0.0 <= overlap < 1.0:
        raise InputError(f"expected an overlap in [0, 1), got {overlap}")
    step = max(1, int(patch * (1.0 - overlap)))
    count = math.ceil((length - patch) / step) + 1
    return sorted({min(n * step, length - patch) for n in range(count)})


def gaussian_weights_1d(patch: int, sigma_scale: float = GAUSSIAN_SIGMA_SCALE) -> np.ndarray:
    """Gaussian importance along one axis: 1 at the centre, at least :data:`GAUSSIAN_FLOOR` at the edges."""
    centre = (patch - 1) / 2.0
    sigma = max(patch * sigma_scale, 1e-6)
    weights = np.exp(-0.5 * ((np.arange(patch) - centre) / sigma) ** 2)
    weights /= weights.max()
    return np.maximum(weights, GAUSSIAN_FLOOR).astype(np.float32)


def importance_map(patch_size: Sequence[int], gaussian: bool = True) -> np.ndarray:
    """The ``(k, j, i)`` importance map of one window (the outer product of the per-axis weights)."""
    axes = [gaussian_weights_1d(p) if gaussian else np.ones(p, np.float32) for p in patch_size]
    return (axes[0][:, None, None] * axes[1][None, :, None] * axes[2][None, None, :]).astype(np.float32)


@dataclass(frozen=True)
class WindowGrid:
    """Where the windows go over a (padded) volume.

    Attributes:
        shape: Padded spatial shape ``(k, j, i)`` the windows tile.
        patch_size: Window size ``(k, j, i)``.
        starts: Per-axis start lists, ``(starts_k, starts_j, starts_i)``.
    """

    shape: tuple[int, int, int]
    patch_size: tuple[int, int, int]
    starts: tuple[list[int], list[int], list[int]]

    def __len__(self) -> int:
        return len(self.starts[0]) * len(self.starts[1]) * len(self.starts[2])

    def corners(self) -> Iterator[tuple[int, int, int]]:
        """Window corners ``(k0, j0, i0)``, ordered by k start first (the order accumulation needs)."""
        yield from itertools.product(*self.starts)

    def slices(self) -> Iterator[tuple[slice, slice, slice]]:
        """Index expressions of each window into the padded volume, in :meth:`corners` order."""
        for corner in self.corners():
            yield tuple(slice(c, c + p) for c, p in zip(corner, self.patch_size, strict=True))  # type: ignore[misc]


def make_grid(shape: Sequence[int], patch_size: Sequence[int], overlap: float) -> WindowGrid:
    """The window grid over ``shape`` (each axis at least as long as the patch)."""
    shape_t = tuple(int(s) for s in shape)
    patch_t = tuple(int(p) for p in patch_size)
    starts = tuple(window_starts(length, patch, overlap) for length, patch in zip(shape_t, patch_t, strict=True))
    return WindowGrid(shape=shape_t, patch_size=patch_t, starts=starts)  # type: ignore[arg-type]


def tta_flip_sets(tta_flips: bool | Sequence[Sequence[int]]) -> list[tuple[int, ...]]:
    """Spatial axes (0=k, 1=j, 2=i) flipped in each test-time augmentation pass; ``()`` is the plain pass."""
    if tta_flips is False:
        return [()]
    if tta_flips is True:
        return [combo for r in range(4) for combo in itertools.combinations((0, 1, 2), r)]
    sets = list(dict.fromkeys(tuple(sorted({int(a) for a in axes})) for axes in tta_flips))  # each pass once
    for axes in sets:
        if any(a not in (0, 1, 2) for a in axes):
            raise InputError(f"expected flip axes among 0 (k), 1 (j), 2 (i), got {axes}")
    return sets if () in sets else [(), *sets]


def estimate_memory_bytes(
    shape: Sequence[int],
    patch_size: Sequence[int],
    *,
    n_channels: int,
    n_classes: int,
    batch_size: int,
    output: Literal["probabilities", "labels"] = "probabilities",
    window_activation_bytes: int = 0,
    uncertainty_maps: int = 0,
) -> dict[str, int]:
    """Bytes the sliding window needs, by item, before it runs.

    Args:
        shape: Spatial shape ``(k, j, i)`` of the image.
        patch_size: Window size ``(k, j, i)``.
        n_channels: Image channels.
        n_classes: Model output channels.
        batch_size: Windows per model call.
        output: What is returned (float32 probabilities or a uint8/uint16 label map).
        window_activation_bytes: The model's working memory for one window (0 when unknown).
        uncertainty_maps: float32 uncertainty maps returned besides the output (0, 1 for the entropy, 2 with the
            mean per-pass entropy, whose extra channel is also accumulated in the buffer and the batch).

    Returns:
        A dict with ``padded_input``, ``output``, ``rolling_buffer``, ``batch`` and ``total`` (bytes).
    """
    padded = [max(int(s), int(p)) for s, p in zip(shape, patch_size, strict=True)]
    voxels = int(np.prod(padded))
    patch_voxels = int(np.prod(patch_size))
    slab = int(patch_size[0]) * padded[1] * padded[2]
    accumulated = n_classes + (1 if uncertainty_maps > 1 else 0)  # the mean per-pass entropy is one more channel
    items = {
        "padded_input": voxels * n_channels * 4 if list(padded) != [int(s) for s in shape] else 0,
        "output": voxels * n_classes * 4 if output == "probabilities" else voxels * (1 if n_classes <= 256 else 2),
        "uncertainty_maps": int(np.prod([int(s) for s in shape])) * int(uncertainty_maps) * 4,
        "rolling_buffer": slab * accumulated * 4,
        "batch": batch_size * patch_voxels * (n_channels + 2 * accumulated) * 4 + batch_size * window_activation_bytes,
    }
    items["total"] = sum(items.values())
    return items


def sliding_window_predict(
    predict_fn: PredictFn,
    image: np.ndarray,
    patch_size: Sequence[int],
    *,
    n_classes: int,
    overlap: float = 0.5,
    batch_size: int = 2,
    gaussian: bool = True,
    tta_flips: bool | Sequence[Sequence[int]] = False,
    memory_budget_mb: float | None = None,
    output: Literal["probabilities", "labels"] = "probabilities",
    pad_value: float = 0.0,
    progress: Callable[[int, int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    uncertainty: bool = False,
) -> Any:
    """Run ``predict_fn`` over overlapping windows of ``image`` and blend the results.

    Args:
        predict_fn: ``(B, k, j, i, C)`` float32 -> ``(B, k, j, i, n_classes)`` class probabilities. It may carry an
            integer attribute ``window_activation_bytes`` (its working memory per window) for the memory estimate.
        image: ``(k, j, i, C)`` float32 (already normalised); ``(k, j, i)`` is taken as one channel.
        patch_size: Window size ``(k, j, i)`` in voxels. Axes shorter than the patch are padded with
            ``pad_value`` and cropped back afterwards.
        n_classes: Number of output channels of ``predict_fn``.
        overlap: Fraction in [0, 1) by which neighbouring windows overlap.
        batch_size: Windows per model call (lowered automatically to fit ``memory_budget_mb``).
        gaussian: Weight each window by a Gaussian centred on it (else uniform averaging).
        tta_flips: ``True`` for all 8 flip combinations of the spatial axes, or a list of axis tuples
            (0=k, 1=j, 2=i); results are flipped back and averaged.
        memory_budget_mb: Cap on the memory estimate of :func:`estimate_memory_bytes`; the batch is lowered first,
            then :class:`MemoryBudgetError` is raised naming what would fit (e.g. ``output="labels"``). ``None``
            caps the buffers (input, output, accumulation, batch) at the machine's physical memory.
        output: ``"probabilities"`` returns ``(k, j, i, n_classes)`` float32; ``"labels"`` returns the arg-max
            ``(k, j, i)`` label map (uint8, or uint16 beyond 256 classes) without holding the probabilities.
        pad_value: Value used to pad axes shorter than the patch (0 is the mean of a z-scored image).
        progress: Called as ``progress(windows_done, windows_total)`` after each model call.
        should_stop: Polled between model calls; when it returns True, :class:`~MedAnalysisLib.errors.CancelledError`
            is raised.
        uncertainty: Also return uncertainty maps (see the module docstring); they count in the memory estimate.

    Returns:
        The blended probabilities or labels on the input's ``(k, j, i)`` grid; with ``uncertainty`` a pair
        ``(that, maps)`` where ``maps`` holds ``(k, j, i)`` float32 maps in [0, 1]: ``"entropy"`` (of the blended
        probabilities) and, with more than one flip, ``"mean_entropy"`` (the weighted mean over windows and flips of
        each pass's entropy; entropy minus it is the disagreement).

    Raises:
        ImageValidationError: The image is not 3D (+channels), or holds NaN/Inf.
        InputError: Bad patch size, overlap, batch size or class count, or more than :data:`MAX_WINDOW_PASSES`
            window passes.
        MemoryBudgetError: Even a batch of one would exceed ``memory_budget_mb``.
        BundleError: The model returned NaN or infinite values.
    """
    from MedAnalysisLib.errors import CancelledError

    image, patch = _checked_input(image, patch_size, n_classes, batch_size, output)
    shape = tuple(int(s) for s in image.shape[:3])
    padded_shape = tuple(max(s, p) for s, p in zip(shape, patch, strict=True))
    grid = make_grid(padded_shape, patch, overlap)
    flips = tta_flip_sets(tta_flips)
    check_window_passes(len(grid), len(flips), overlap, patch)
    maps = (2 if len(flips) > 1 else 1) if uncertainty else 0
    activation = int(getattr(predict_fn, "window_activation_bytes", 0) or 0)
    if memory_budget_mb is None:  # without a budget, the buffers alone must fit the machine (the per-window
        memory_budget_mb, activation = _physical_memory_mb(), 0  # activation estimate is far too pessimistic for it)
    batch_size = _batch_within_budget(shape, patch, image.shape[3], int(n_classes), int(batch_size), output,
                                      activation, memory_budget_mb, maps)
    # Pad axes shorter than the patch (at the end, so indices of the original voxels do not move).
    if padded_shape != shape:
        padding = [(0, ps - s) for ps, s in zip(padded_shape, shape, strict=True)] + [(0, 0)]
        image = np.pad(image, padding, mode="constant", constant_values=pad_value)
    blend = _RollingBlend(shape, padded_shape, patch, grid, int(n_classes), gaussian, output, maps)
    corners = list(grid.corners())
    done_windows = 0
    for first in range(0, len(corners), batch_size):
        if should_stop is not None and should_stop():
            raise CancelledError("sliding-window inference stopped on request")
        chunk = corners[first : first + batch_size]
        batch = np.stack([image[k : k + patch[0], j : j + patch[1], i : i + patch[2]] for k, j, i in chunk])
        predictions = _predict_with_flips(predict_fn, batch, flips, patch, n_classes, pass_entropy=maps > 1)
        for corner, prediction in zip(chunk, predictions, strict=True):
            blend.add(corner, prediction)
        done_windows += len(chunk)
        if progress is not None:
            progress(done_windows, len(corners))
    result = blend.finish()
    return (result, blend.maps) if uncertainty else result


def check_window_passes(windows: int, passes: int, overlap: float, patch: Sequence[int]) -> None:
    """Refuse a run of more than :data:`MAX_WINDOW_PASSES` model calls on single windows before the first one.

    Raises:
        InputError: Naming the count and what lowers it.
    """
    total = int(windows) * int(passes)
    if total > MAX_WINDOW_PASSES:
        raise InputError(
            f"expected at most {MAX_WINDOW_PASSES} window passes (windows x test-time augmentation flips), got "
            f"{windows} windows x {passes} = {total} for patch {list(patch)} at overlap {overlap}; lower the overlap "
            "or turn test-time augmentation off"
        )


def _physical_memory_mb() -> float | None:
    """The machine's physical memory in MiB (None where the platform does not say)."""
    from MedAnalysisLib.io.validate import physical_memory_bytes

    total = physical_memory_bytes()
    return None if total is None else total / 2**20


def check_finite_output(values: np.ndarray, what: str = "probabilities") -> None:
    """Refuse model outputs holding NaN or infinity (weights that overflow on this input): a silent arg-max over
    them would give an all-background map.

    Raises:
        BundleError: Naming how many values are not finite.
    """
    from MedAnalysisLib.errors import BundleError

    finite = np.isfinite(values)
    if not finite.all():
        raise BundleError(f"expected finite {what} from the model, got {int(values.size - np.count_nonzero(finite))} "
                          "NaN/Inf value(s); the bundle's weights overflow on this input")


def _checked_input(image: np.ndarray, patch_size: Sequence[int], n_classes: int, batch_size: int,
                   output: str) -> tuple[np.ndarray, tuple[int, ...]]:
    """The image as ``(k, j, i, C)`` float32 and the patch as three ints, or the error naming what is wrong."""
    image = np.asarray(image)
    if image.ndim == 3:
        image = image[..., None]
    if image.ndim != 4:
        raise ImageValidationError(
            f"expected an image of shape (k, j, i) or (k, j, i, C) for a 3D model, got shape {image.shape}"
        )
    patch = tuple(int(p) for p in patch_size)
    if len(patch) != 3 or min(patch) < 1:
        raise InputError(f"expected a patch size of three positive integers (k, j, i), got {tuple(patch_size)}")
    if min(image.shape[:3]) < 1:
        raise ImageValidationError(f"expected a non-empty image, got shape {image.shape}")
    if int(n_classes) < 1:
        raise InputError(f"expected n_classes >= 1, got {n_classes}")
    if int(batch_size) < 1:
        raise InputError(f"expected batch_size >= 1, got {batch_size}")
    if output not in ("probabilities", "labels"):
        raise InputError(f"expected output 'probabilities' or 'labels', got {output!r}")
    if not np.isfinite(image).all():
        raise ImageValidationError(
            f"expected finite voxel values, got {int(np.size(image) - np.isfinite(image).sum())} NaN/Inf voxels"
        )
    return image.astype(np.float32, copy=False), patch


def _batch_within_budget(shape: tuple[int, ...], patch: tuple[int, ...], n_channels: int, n_classes: int,
                         batch_size: int, output: str, activation: int, memory_budget_mb: float | None,
                         uncertainty_maps: int = 0) -> int:
    """The batch size, halved until the memory estimate fits the budget (:class:`MemoryBudgetError` if 1 does not)."""
    if memory_budget_mb is None:
        return batch_size
    budget = float(memory_budget_mb) * 2**20
    while True:
        estimate = estimate_memory_bytes(shape, patch, n_channels=n_channels, n_classes=n_classes,
                                         batch_size=batch_size, output=output,  # type: ignore[arg-type]
                                         window_activation_bytes=activation, uncertainty_maps=uncertainty_maps)
        if estimate["total"] <= budget or batch_size == 1:
            break
        batch_size = max(1, batch_size // 2)
    if estimate["total"] > budget:
        hint = " (output='labels' needs no probability volume)" if output == "probabilities" else ""
        raise MemoryBudgetError(
            f"expected sliding-window inference to fit {memory_budget_mb:.1f} MB, got an estimate of "
            f"{estimate['total'] / 2**20:.1f} MB with batch size 1 ("
            + ", ".join(f"{k} {v / 2**20:.1f} MB" for k, v in estimate.items() if k != "total")
            + f"){hint}"
        )
    return batch_size


def _predict_with_flips(predict_fn: PredictFn, batch: np.ndarray, flips: list[tuple[int, ...]],
                        patch: tuple[int, ...], n_classes: int, *, pass_entropy: bool = False) -> np.ndarray:
    """``predict_fn`` on a batch of windows, averaged over the flips (each flipped back), checked for its shape.

    With ``pass_entropy`` one channel is appended: the mean over the flips of each flip's entropy (nats).
    """
    from MedAnalysisLib.inference.uncertainty import entropy_nats

    predictions = None
    entropies = None
    for axes in flips:
        spatial = tuple(a + 1 for a in axes)
        x = np.ascontiguousarray(np.flip(batch, spatial)) if axes else batch
        y = np.asarray(predict_fn(x), dtype=np.float32)
        if y.shape != (len(batch), *patch, n_classes):
            raise InputError(
                f"expected the model to return shape {(len(batch), *patch, n_classes)} "
                f"(batch, k, j, i, classes), got {y.shape}"
            )
        check_finite_output(y)
        if axes:
            y = np.flip(y, spatial)
        predictions = y if predictions is None else predictions + y
        if pass_entropy:
            h = entropy_nats(y)[..., None]
            entropies = h if entropies is None else entropies + h
    assert predictions is not None
    if len(flips) > 1:
        predictions /= len(flips)
    if entropies is not None:
        predictions = np.concatenate([predictions, entropies / len(flips)], axis=-1)
    return predictions


class _RollingBlend:
    """Weighted windows summed into a buffer one patch deep along k; rows no later window reaches are normalised
    by the summed weights and written out, so memory holds one slab of probabilities, not the whole volume.

    Windows must arrive in grid order (k ascending), as :meth:`WindowGrid.corners` gives them. ``uncertainty_maps``
    (0, 1 or 2) asks for the entropy map and, with 2, the mean per-pass entropy, accumulated as one more channel.
    """

    def __init__(self, shape: tuple[int, ...], padded_shape: tuple[int, ...], patch: tuple[int, ...],
                 grid: WindowGrid, n_classes: int, gaussian: bool, output: str, uncertainty_maps: int = 0) -> None:
        self.shape, self.patch, self.output, self.n_classes = shape, patch, output, n_classes
        names = ("entropy", "mean_entropy")[:uncertainty_maps]
        self.maps = {name: np.empty(shape, np.float32) for name in names}
        weights_1d = [gaussian_weights_1d(p) if gaussian else np.ones(p, np.float32) for p in patch]
        self.window_weight = importance_map(patch, gaussian)[..., None]
        # Sum of weights at each voxel, per axis (the grid is a Cartesian product, the weights a product of axes).
        self.totals = []
        for axis in range(3):
            total = np.zeros(padded_shape[axis], np.float64)
            for start in grid.starts[axis]:
                total[start : start + patch[axis]] += weights_1d[axis]
            self.totals.append(total.astype(np.float32))
        self.inverse_jk = 1.0 / (self.totals[1][:, None, None] * self.totals[2][None, :, None])  # (J, I, 1)
        self.label_dtype = np.uint8 if n_classes <= 256 else np.uint16
        self.result = (np.empty((*shape, n_classes), np.float32) if output == "probabilities"
                       else np.empty(shape, self.label_dtype))
        self.padded_k = padded_shape[0]
        accumulated = n_classes + (1 if "mean_entropy" in self.maps else 0)
        self.buffer = np.zeros((patch[0], padded_shape[1], padded_shape[2], accumulated), np.float32)
        self.buffer_start = 0  # padded k index of buffer row 0

    def add(self, corner: tuple[int, int, int], prediction: np.ndarray) -> None:
        k, j, i = corner
        if k > self.buffer_start:
            self.flush(k)
        patch, start = self.patch, self.buffer_start
        self.buffer[k - start : k - start + patch[0], j : j + patch[1], i : i + patch[2]] += (
            prediction * self.window_weight
        )

    def flush(self, until: int) -> None:
        """Normalise padded rows [buffer_start, until) and write the part inside the image to ``result``."""
        rows = until - self.buffer_start
        if rows <= 0:
            return
        start, shape = self.buffer_start, self.shape
        done = self.buffer[:rows] * self.inverse_jk[None] / self.totals[0][start:until, None, None, None]
        keep = min(until, shape[0]) - start
        if keep > 0:
            block = done[:keep, : shape[1], : shape[2]]
            target = slice(start, start + keep)
            self._write_maps(target, block)
            block = block[..., : self.n_classes]
            if self.output == "probabilities":
                self.result[target] = block
            else:
                self.result[target] = np.argmax(block, axis=-1).astype(self.label_dtype)
        remaining = self.patch[0] - rows
        self.buffer[:remaining] = self.buffer[rows:].copy()
        self.buffer[remaining:] = 0.0
        self.buffer_start = until

    def _write_maps(self, target: slice, block: np.ndarray) -> None:
        """The uncertainty maps of finished rows: entropy of the blended probabilities, blended mean entropy."""
        if not self.maps:
            return
        from MedAnalysisLib.inference.uncertainty import log_classes, normalised_entropy

        self.maps["entropy"][target] = normalised_entropy(block[..., : self.n_classes])
        if "mean_entropy" in self.maps:
            self.maps["mean_entropy"][target] = np.clip(block[..., self.n_classes] / log_classes(self.n_classes),
                                                        0.0, 1.0)

    def finish(self) -> np.ndarray:
        self.flush(self.padded_k)
        return self.result
