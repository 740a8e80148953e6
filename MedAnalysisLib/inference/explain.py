"""Where a classifier looked: class-activation heatmaps on the input's own grid.

``explain(loaded, volumes)`` answers "which voxels made this model say this class?" for the three classifier
families (``slice_cnn``, ``cnn3d``, ``cnn_rnn``):

* **Grad-CAM** (``method="gradcam"``): the gradient of the target class's *logit* (the score before the sigmoid or
  soft-max, which does not saturate when the model is confident) with respect to the activations of the last
  convolutional stage; each channel is weighted by the spatial mean of its gradient, the weighted sum goes through a
  ReLU and is upsampled (linearly, pixel centres aligned) to the slice or volume the model saw. For ``cnn_rnn`` the
  gradient of the *scan* score flows through the recurrent layers back to every slice's encoder, so each slice gets
  its own map. Gradients come from ``tf.GradientTape`` (TensorFlow) or ``jax.grad`` (JAX).
* **Occlusion** (``method="occlusion"``, any backend): a zero patch (grey: the mean in normalised units) slides
  over each slice (2D models) or the volume (``cnn3d``); the drop of the target logit is the heat of the voxels it
  covered. Bounded by :data:`MAX_OCCLUSION_PASSES` model passes and cancellable.

Preprocessing is exactly that of :func:`~MedAnalysisLib.inference.predict.predict`, and the map goes back through the
plan's own inversion (as probabilities do), so it lies on the input's grid. The map is divided by its maximum over the
whole volume (not per slice): a slice with little evidence stays dark; an all-zero map stays zero. See
``docs/explanations.md``.

:mod:`MedAnalysisLib.inference.explain_split` cuts a model at its last convolutional stage and holds the maps'
arithmetic (upsampling, occlusion).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from MedAnalysisLib.errors import CancelledError, InputError
from MedAnalysisLib.inference import as_volumes, class_values, validate_input
from MedAnalysisLib.inference.explain_split import (
    occlusion_map,
    occlusion_passes,
    occlusion_patch,
    split_model,
    upsample_linear,
)
from MedAnalysisLib.volume import Volume

METHODS = ("auto", "gradcam", "occlusion")
#: Most occluded inputs one explanation may run (a slice, a sequence or a volume each); beyond it the request is
#: refused before the first pass. 83 CT slices at 128x128 need 83 x 225 = 18 675.
MAX_OCCLUSION_PASSES = 50_000


@dataclass
class Explanation:
    """What :func:`explain` returns.

    Attributes:
        heatmap: float32 in [0, 1] on ``volumes[0]``'s grid (same shape, spacing, origin, direction).
        target_value: Label value of the explained class.
        target_name: Its name.
        method: ``"gradcam"`` or ``"occlusion"``.
        layer: The layer whose activations Grad-CAM used (None for occlusion).
        slice_contributions: ``cnn_rnn`` only: per slice ``{"slice", "position_lps", "contribution"}``, the
            target-class probability of the scan minus that with the slice masked out (positive: the slice speaks for
            the class; negative: against it).
    """

    heatmap: Volume
    target_value: int
    target_name: str
    method: str
    layer: str | None
    slice_contributions: list[dict[str, Any]] | None = None


def explain(loaded: Any, volumes: Volume | list[Volume], *, target: int | str | None = None, method: str = "auto",
            batch_size: int | None = None, stop_flag: Any = None, reporter: Any = None) -> Explanation:
    """Explain a classifier's answer on one scan with a heatmap on the scan's grid.

    Args:
        loaded: A :class:`~MedAnalysisLib.bundles.LoadedBundle` of a classifier (an ensemble: every member is
            explained and the heatmaps and slice contributions averaged).
        volumes: One Volume per input channel, any geometry (as for ``predict``).
        target: A class name or label value (a string of digits that names no class is read as a value);
            default: the second class of a two-class model, else the predicted class (``slice_cnn``: the highest
            mean probability over the slices).
        method: ``"auto"`` (Grad-CAM on TensorFlow and JAX, occlusion otherwise), ``"gradcam"`` or ``"occlusion"``.
        batch_size: Slices, sequences or volumes per model call (default 32, 8 for ``cnn_rnn``/``cnn3d``).
        stop_flag: A :class:`~MedAnalysisLib.progress.StopFlag`; when set, :class:`CancelledError` is raised at the
            next model call.
        reporter: A :class:`~MedAnalysisLib.progress.Reporter` for progress lines, or None.

    Raises:
        InputError: Not a classifier bundle, an unknown target or method, Grad-CAM where it is not possible, more
            than :data:`MAX_OCCLUSION_PASSES` occlusion passes, or bad input (as ``predict`` raises).
        CancelledError: ``stop_flag`` was set.
    """
    config = loaded.config
    if config.task != "classification":
        raise InputError(f"expected a classification bundle (slice_cnn, cnn3d, cnn_rnn) to explain, got a "
                         f"{config.task} bundle (family {config.family!r})")
    if method not in METHODS:
        raise InputError(f"expected method to be one of {list(METHODS)}, got {method!r}")
    if batch_size is not None and (isinstance(batch_size, bool) or int(batch_size) < 1):
        raise InputError(f"expected a batch size of at least 1, got {batch_size!r}")
    volumes = as_volumes(volumes)
    values = class_values(config)
    names = config.label_names()
    fixed = _resolve_target(target, values, names)
    runs = [_explain_member(member, volumes, fixed, method, batch_size, stop_flag, reporter)
            for member in loaded.members]
    return _combine(runs)


def _resolve_target(target: int | str | None, values: np.ndarray, names: dict[int, str]) -> int | None:
    """Class index of ``target`` (a label value or a class name), or None to choose it from the prediction."""
    if target is None:
        return 1 if len(values) == 2 else None
    class_names = [names.get(int(v), str(int(v))) for v in values]
    if isinstance(target, str) and target in class_names:
        return class_names.index(target)
    value = int(target) if isinstance(target, str) and target.isascii() and target.isdecimal() else target
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool) and int(value) in values.tolist():
        return values.tolist().index(int(value))
    options = [*values.tolist(), *class_names]
    raise InputError(f"expected target to be one of {options} (a label value or a class name), got {target!r}")


def _explain_member(loaded: Any, volumes: list[Volume], target: int | None, method: str, batch_size: int | None,
                    stop_flag: Any, reporter: Any) -> Explanation:
    """One single bundle's explanation (see :func:`explain`)."""
    config = loaded.config
    validate_input(volumes, config.family, config.plan)
    split = split_model(loaded.model, config.family)
    chosen = _choose_method(method, split)
    job = _Work(loaded, volumes, split, batch_size, stop_flag, reporter)
    index = job.predicted_class() if target is None else target
    if chosen == "gradcam":
        heat = job.gradcam(index)
    else:
        heat = job.occlusion(index)
    heatmap = job.to_input_grid(heat)
    contributions = job.slice_contributions(index) if config.family == "cnn_rnn" else None
    values = class_values(config)
    name = config.label_names().get(int(values[index]), str(int(values[index])))
    return Explanation(heatmap, int(values[index]), name, chosen, split.layer if chosen == "gradcam" else None,
                       contributions)


def _choose_method(method: str, split: Any) -> str:
    """``"gradcam"`` or ``"occlusion"`` for ``method`` on this backend and model."""
    import keras

    backend = keras.backend.backend()
    possible = backend in ("tensorflow", "jax") and split.layer is not None
    if method == "auto":
        return "gradcam" if possible else "occlusion"
    if method == "gradcam" and not possible:
        found = (f"the {backend!r} backend" if split.layer is not None
                 else "a model without a convolutional stage")
        raise InputError(f"expected the TensorFlow or JAX backend and a convolutional model for Grad-CAM, got "
                         f"{found}; use method='occlusion'")
    return method


def _combine(runs: list[Explanation]) -> Explanation:
    """The mean of the members' heatmaps and slice contributions (a single run is returned as it is)."""
    if len(runs) == 1:
        return runs[0]
    first = runs[0]
    mean = np.mean([np.asarray(r.heatmap.array, np.float32) for r in runs], axis=0).astype(np.float32)
    contributions = None
    if first.slice_contributions is not None:
        contributions = [{**row, "contribution": float(np.mean([r.slice_contributions[i]["contribution"]  # type: ignore[index]
                                                                 for r in runs]))}
                         for i, row in enumerate(first.slice_contributions)]
    methods = sorted({r.method for r in runs})
    return Explanation(first.heatmap.with_array(mean), first.target_value, first.target_name, "+".join(methods),
                       first.layer, contributions)


def _normalised(heat: np.ndarray) -> np.ndarray:
    """Divide by the maximum over the whole array; non-finite values become 0, an all-zero map stays zero."""
    heat = np.nan_to_num(np.asarray(heat, np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    heat = np.maximum(heat, 0.0)
    peak = float(heat.max(initial=0.0))
    return (heat / peak if peak > 0 else heat).astype(np.float32)


class _Work:
    """One bundle's explanation of one case: the prepared input, the model split and the steps of :func:`explain`."""

    def __init__(self, loaded: Any, volumes: list[Volume], split: Any, batch_size: int | None, stop_flag: Any,
                 reporter: Any) -> None:
        from MedAnalysisLib.preprocessing.transforms import apply_plan, prepare_slices

        self.loaded, self.volumes, self.split = loaded, volumes, split
        self.family = str(loaded.config.family)
        self.stop_flag, self.reporter = stop_flag, reporter
        self.batch = int(batch_size or (32 if self.family == "slice_cnn" else 8))
        self.crop: tuple[list[tuple[int, int]], list[int]] | None = None
        if self.family == "cnn3d":
            prepared = apply_plan(loaded.config.plan, volumes)
            self.inverse = prepared.inverse
            self.image = self._fit_volume(prepared.image)
        else:
            self.image, self.inverse = prepare_slices(loaded.config.plan, volumes)
        self.done = 0

    def _fit_volume(self, image: np.ndarray) -> np.ndarray:
        """Centre crop/pad to the model's fixed input size, as ``predict`` does; remembers how, to undo it."""
        fixed = self.loaded.model.input_shape[1:4]
        if not all(s is not None for s in fixed):
            return image
        pads = [(max(0, (f - s) // 2), max(0, f - s - (f - s) // 2)) for s, f in zip(image.shape[:3], fixed,
                                                                                        strict=True)]
        padded = np.pad(image, [*pads, (0, 0)])
        starts = [(s - f) // 2 for s, f in zip(padded.shape[:3], fixed, strict=True)]
        self.crop = (pads, starts)
        return padded[tuple(slice(a, a + f) for a, f in zip(starts, fixed, strict=True))]

    def check(self) -> None:
        if self.stop_flag is not None and self.stop_flag.is_set():
            raise CancelledError("explanation stopped on request")

    def progress(self, done: int, total: int) -> None:
        if self.reporter is not None:
            self.reporter.progress("explain", done, total, f"{done}/{total} model calls")

    def inputs(self, image: np.ndarray) -> np.ndarray:
        """The model-ready batch of the whole case (a sequence of one for cnn_rnn, a volume of one for cnn3d)."""
        return image if self.family == "slice_cnn" else image[None]

    def predicted_class(self) -> int:
        """Index of the predicted class (slice_cnn: the highest mean probability over the slices)."""
        logits = np.concatenate([self.split.logits(chunk) for chunk in self._chunks(self.inputs(self.image))])
        return int(np.argmax(np.mean(self.split.probabilities(logits), axis=0)))

    def _chunks(self, batch: np.ndarray) -> list[np.ndarray]:
        return [batch[s : s + self.batch] for s in range(0, len(batch), self.batch)]

    def gradcam(self, index: int) -> np.ndarray:
        """Grad-CAM on the prepared grid: ``(S, H, W)`` slices or the ``(k, j, i)`` model input."""
        batch = self.inputs(self.image)
        chunks = self._chunks(batch) if self.family == "slice_cnn" else [batch]
        maps = []
        for number, chunk in enumerate(chunks):
            self.check()
            activations, gradients = self.split.gradients(chunk, index)
            weights = gradients.mean(axis=tuple(range(1, gradients.ndim - 1)), keepdims=True)
            cam = np.maximum((activations * weights).sum(axis=-1), 0.0)
            spatial = chunk.shape[2:-1] if self.family == "cnn_rnn" else chunk.shape[1:-1]
            maps.extend(upsample_linear(c, spatial) for c in cam)
            self.progress(number + 1, len(chunks))
        return np.stack(maps)[0] if self.family == "cnn3d" else np.stack(maps)

    def occlusion(self, index: int) -> np.ndarray:
        """Occlusion heat on the prepared grid (see :func:`occlusion_map`)."""
        image = self.image
        if self.family == "slice_cnn":
            patch = occlusion_patch(image.shape[1:3])
            total = len(image) * occlusion_passes(image.shape[1:3], patch)
        else:
            patch = ((1,) if self.family == "cnn_rnn" else ()) + occlusion_patch(
                image.shape[1:3] if self.family == "cnn_rnn" else image.shape[:3])
            total = occlusion_passes(image.shape[:3], patch)
        if total > MAX_OCCLUSION_PASSES:
            raise InputError(f"expected at most {MAX_OCCLUSION_PASSES} occlusion passes, got {total} for a prepared "
                             f"grid of {list(image.shape[:-1])} with patches of {list(patch)}; use Grad-CAM")

        def score(batch: np.ndarray) -> np.ndarray:
            self.check()
            self.done += len(batch)
            self.progress(min(self.done, total), total)
            return self.split.score(self.split.logits(batch), index)

        if self.family == "slice_cnn":
            return np.stack([occlusion_map(score, s, patch, self.batch, self.check) for s in image])
        return occlusion_map(score, image, patch, self.batch, self.check)

    def to_input_grid(self, heat: np.ndarray) -> Volume:
        """The prepared-grid map back on the input grid through the plan's inversion, normalised to [0, 1]."""
        from MedAnalysisLib.preprocessing.transforms import invert_plan

        heat = np.maximum(np.nan_to_num(np.asarray(heat, np.float32)), 0.0)
        if self.crop is not None:
            pads, starts = self.crop
            full = np.zeros([s + a + b for s, (a, b) in zip(self.inverse.prepared.shape, pads, strict=True)],
                            np.float32)
            full[tuple(slice(a, a + n) for a, n in zip(starts, heat.shape, strict=True))] = heat
            heat = full[tuple(slice(a, a + n) for (a, _), n in zip(pads, self.inverse.prepared.shape, strict=True))]
        restored = invert_plan(self.loaded.config.plan, _normalised(heat)[..., None], self.inverse,
                               kind="probability")
        array = np.clip(_normalised(np.asarray(restored.array).reshape(restored.array.shape[:3])), 0.0, 1.0)
        original = self.volumes[0]
        return Volume(array, original.spacing, original.origin, original.direction,
                      metadata={"bundle": self.loaded.config.name, "kind": "heatmap"})

    def slice_contributions(self, index: int) -> list[dict[str, Any]]:
        """cnn_rnn: the scan's target probability minus that with each slice masked out, one pass per slice."""
        sequence = self.image[None]
        n = len(self.image)
        full = float(self.split.probabilities(self.split.logits(sequence))[0, index])
        drops = []
        for start in range(0, n, self.batch):
            self.check()
            count = min(self.batch, n - start)
            masks = np.ones((count, n), bool)
            masks[np.arange(count), start + np.arange(count)] = False
            batch = np.repeat(sequence, count, axis=0)
            probs = self.split.probabilities(self.split.logits(batch, masks))[:, index]
            drops.extend(full - float(p) for p in probs)
        return [{**row, "contribution": drop} for row, drop in zip(self._slice_rows(), drops, strict=True)]

    def _slice_rows(self) -> list[dict[str, Any]]:
        """``slice`` index on the input grid and ``position_lps`` of each prepared slice's centre (as ``predict``)."""
        prepared, original = self.inverse.prepared, self.volumes[0]
        centre = ((prepared.shape[2] - 1) / 2.0, (prepared.shape[1] - 1) / 2.0)
        rows = []
        for s in range(prepared.shape[0]):
            position = prepared.index_to_physical((centre[0], centre[1], float(s)))
            k = float(original.physical_to_index(position)[2])
            rows.append({"slice": int(round(k)) if abs(k - round(k)) < 0.25 else s,
                         "position_lps": [round(float(c), 3) for c in position]})
        return rows
