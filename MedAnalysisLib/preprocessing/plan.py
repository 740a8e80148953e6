"""The preprocessing plan: everything needed to turn a scan into model input, saved inside every model bundle.

A :class:`Plan` is derived from a dataset :class:`~MedAnalysisLib.preprocessing.fingerprint.Fingerprint` by
:func:`make_plan`, following the reasoning of nnU-Net's experiment planning (target spacing from the median, with a
finer percentile along a strongly anisotropic axis; normalisation chosen by modality; patch size from the median
shape within a memory budget), and then stored as JSON. Training and inference both apply the same plan with
:func:`MedAnalysisLib.preprocessing.transforms.apply_plan`, so they see exactly the same preprocessing.

Axis conventions: ``target_spacing`` is ITK order ``(i, j, k)`` in mm, ``patch_size`` and ``median_shape`` are
array order ``(k, j, i)`` in voxels, ``slice_shape`` is ``(j, i)`` (rows, columns of an axial slice).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import types
import typing
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Union

import numpy as np

from MedAnalysisLib.errors import PlanError

if TYPE_CHECKING:
    from MedAnalysisLib.preprocessing.fingerprint import Fingerprint

#: Bounds on plan values, the same as a bundle's plan must keep (:data:`MedAnalysisLib.bundles.config.PLAN_BOUNDS`):
#: a patch of 512^3 voxels is 512 MiB of float32 input alone, 4096^2 slices are beyond any scanner's matrix, and a
#: target spacing outside 0.01-100 mm is no scan (a micrometre would resample a body to a terabyte). A plan is
#: refused on construction when it breaks them, so ``plan --set`` cannot write a plan that train refuses later.
PLAN_BOUNDS: dict[str, tuple[float, float]] = {
    "patch_size": (1, 1024), "slice_shape": (1, 4096), "batch_size": (1, 256), "slice_batch_size": (1, 4096),
    "sequence_length": (1, 4096), "target_spacing": (0.01, 100.0), "pooling_levels": (0, 10),
}
MAX_PATCH_VOXELS = 512**3
MAX_SLICE_PIXELS = 4096**2

#: Version of the plan's JSON layout; bumped whenever a field changes meaning.
PLAN_SCHEMA_VERSION = 1

#: Default memory (MiB) one training step may use. Small on purpose: it gives patches that train at a usable pace
#: on a 2-core CPU. GPU users raise it (``--memory-budget-mb 16000``) or override ``patch_size``/``batch_size``.
DEFAULT_MEMORY_BUDGET_MB = 1024.0

#: CT voxels above this value (HU) are the body (soft tissue, bone; lung parenchyma is below it but enclosed by the
#: chest wall); air, padding outside the field of view and foam cushions are below it.
CT_BODY_THRESHOLD_HU = -500.0

#: nnU-Net's anisotropy threshold: an axis is "low resolution" when its spacing is more than 3x the next largest.
ANISOTROPY_THRESHOLD = 3.0

#: Estimated training memory of a 3D U-Net with 32 base filters, bytes per input voxel per batch element
#: (activations and their gradients across all levels; an estimate in line with nnU-Net's reference of a 128^3
#: patch with batch 2 fitting in about 10 GB).
BYTES_PER_VOXEL_3D = 2400.0
#: The same for a 2D U-Net (2D feature maps are cheaper per pixel: fewer, thinner levels).
BYTES_PER_PIXEL_2D = 1600.0

NORMALIZATION_SCHEMES = ("ct", "zscore_nonzero", "zscore", "none")
IMAGE_INTERPOLATORS = ("linear", "bspline")
MODEL_CHOICES = ("unet3d", "unet2d", "cnn_rnn", "cnn3d", "slice_cnn")
TASKS = ("segmentation", "classification")


@dataclass(frozen=True)
class Normalization:
    """Intensity normalisation applied to every image channel.

    Attributes:
        scheme: ``"ct"``: clip to ``[clip_low, clip_high]`` (training-set foreground 0.5/99.5 percentiles, in HU)
            then ``(x - mean) / std`` with training-set statistics; ``"zscore_nonzero"``: per image, z-score over
            the voxels that are not zero (outside stays 0), the choice for MR; ``"zscore"``: per image over all
            voxels; ``"none"``: values pass unchanged (cast to float32).
        clip_low: Lower clip value (``"ct"`` only).
        clip_high: Upper clip value (``"ct"`` only).
        mean: Dataset mean after clipping (``"ct"`` only).
        std: Dataset standard deviation after clipping (``"ct"`` only).
    """

    scheme: str = "zscore_nonzero"
    clip_low: float | None = None
    clip_high: float | None = None
    mean: float | None = None
    std: float | None = None

    def __post_init__(self) -> None:
        if self.scheme not in NORMALIZATION_SCHEMES:
            raise PlanError(f"expected normalization.scheme in {NORMALIZATION_SCHEMES}, got {self.scheme!r}")
        if self.scheme == "ct":
            values = (self.clip_low, self.clip_high, self.mean, self.std)
            if any(v is None or not math.isfinite(v) for v in values):
                raise PlanError(
                    "expected finite clip_low, clip_high, mean and std for CT normalisation, got "
                    f"clip_low={self.clip_low}, clip_high={self.clip_high}, mean={self.mean}, std={self.std}"
                )
            if self.clip_low > self.clip_high:  # type: ignore[operator]
                raise PlanError(f"expected clip_low <= clip_high, got {self.clip_low} > {self.clip_high}")
            if self.std <= 0:  # type: ignore[operator]
                raise PlanError(f"expected a positive std for CT normalisation, got {self.std}")


@dataclass(frozen=True)
class Plan:
    """Frozen, versioned preprocessing plan (see the module docstring for axis conventions).

    Attributes:
        schema_version: Layout version of this record (:data:`PLAN_SCHEMA_VERSION`).
        task: ``"segmentation"`` or ``"classification"``.
        modality: Dataset modality as given by the dataset (``"CT"``, ``"MRI"``, ...).
        n_channels: Number of image channels (one file or series per channel).
        channel_names: One name per channel.
        label_values: Segmentation label values including background 0 (class index = position), or the class
            values of a classification target.
        target_spacing: Voxel size (i, j, k) in mm that images are resampled to, or ``None`` to keep each image's.
        orientation: Three-letter code (as :meth:`Volume.orientation_code`: the patient direction each of the
            i, j, k axes points to, e.g. ``"LPS"``) that images are brought to by permuting and flipping axes
            only (never interpolating), or ``""`` to keep the stored axis order.
        image_interpolation: ``"linear"`` or ``"bspline"`` (label maps always nearest, probabilities linear).
        normalization: The intensity normalisation.
        crop_to_nonzero: Crop to the bounding box of non-zero voxels (all channels) before resampling.
        body_threshold: With ``crop_to_nonzero``, crop instead to the box around the body: the connected regions
            brighter than this value (raw units, before normalisation) in any channel, after an in-plane opening
            that cuts thin structures such as the table (see :func:`~MedAnalysisLib.preprocessing.transforms.body_box`).
            CT plans use :data:`CT_BODY_THRESHOLD_HU`; ``None`` (other modalities) keeps the non-zero box.
        patch_size: Training/inference patch (k, j, i) in voxels at the target spacing, each a multiple of
            ``2 ** pooling_levels`` unless overridden.
        batch_size: Patches per 3D training batch.
        slice_shape: (j, i) size of axial slices for 2D and slice-sequence models.
        slice_keep_aspect: When slices are resized to ``slice_shape``, first widen the crop box (inside the image)
            to the same height/width ratio in mm, so that anatomy is scaled, not stretched. Plans made by
            :func:`make_plan` set it; ``False`` (plans of earlier bundles) resizes the crop box as it is.
        slice_batch_size: Slices per 2D training batch.
        sequence_length: Slices per sequence for slice-sequence (CNN+RNN) models; shorter scans are zero-padded.
        recommended_model: Model family that suits the data (``"unet3d"``, ``"unet2d"``, ``"cnn_rnn"``,
            ``"cnn3d"``, ``"slice_cnn"``).
        pooling_levels: Down-sampling steps the patch size is divisible for.
        foreground_fraction: Share of training patches forced to contain foreground.
        memory_budget_mb: The memory budget (MiB) patch and batch size were chosen for.
        median_shape: Median (k, j, i) shape of the cases after cropping, at the target spacing.
        notes: Plain-language reasons behind the choices (for people reading the JSON).
    """

    schema_version: int = PLAN_SCHEMA_VERSION
    task: str = "segmentation"
    modality: str = "unknown"
    n_channels: int = 1
    channel_names: tuple[str, ...] = ("image",)
    label_values: tuple[int, ...] = (0, 1)
    target_spacing: tuple[float, float, float] | None = None
    orientation: str = "LPS"
    image_interpolation: str = "linear"
    normalization: Normalization = field(default_factory=Normalization)
    crop_to_nonzero: bool = True
    body_threshold: float | None = None
    patch_size: tuple[int, int, int] = (64, 64, 64)
    batch_size: int = 2
    slice_shape: tuple[int, int] = (128, 128)
    slice_keep_aspect: bool = False
    slice_batch_size: int = 16
    sequence_length: int = 32
    recommended_model: str = "unet3d"
    pooling_levels: int = 3
    foreground_fraction: float = 0.33
    memory_budget_mb: float = DEFAULT_MEMORY_BUDGET_MB
    median_shape: tuple[int, int, int] | None = None
    notes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _validate_plan(self)

    # ------------------------------------------------------------------ serialisation
    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict (tuples become lists)."""
        return _jsonable(dataclasses.asdict(self))

    def to_json(self) -> str:
        """Indented JSON; the same plan always gives the same text."""
        return json.dumps(self.to_dict(), indent=1)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Plan:
        """Build a plan from :meth:`to_dict` output, refusing unknown keys, wrong types and other schema versions.

        Raises:
            PlanError: Naming the offending key, what was expected and what was found.
        """
        if not isinstance(data, dict):
            raise PlanError(f"expected a JSON object for the plan, got {type(data).__name__}")
        version = data.get("schema_version", None)
        if version != PLAN_SCHEMA_VERSION:
            raise PlanError(f"expected plan schema_version {PLAN_SCHEMA_VERSION}, got {version!r}")
        return _build(cls, data, "plan")

    @classmethod
    def from_json(cls, text: str) -> Plan:
        """Parse a plan's JSON text (at most 16 MiB and 32 levels deep, no NaN/Infinity) and build it.

        Raises:
            PlanError: Text that does not parse, is too large or too deep, or a plan that breaks the schema.
        """
        from MedAnalysisLib.io.small_files import parse_json_text

        return cls.from_dict(parse_json_text(text, "plan JSON", error=PlanError))

    @classmethod
    def from_file(cls, path: str | os.PathLike[str], what: str = "a plan JSON file") -> Plan:
        """Read a plan file the user named: a regular file (a FIFO or device is never opened) of at most 16 MiB.

        Raises:
            PlanError: Not a regular file, too large, unreadable, not JSON, or not a valid plan.
        """
        from MedAnalysisLib.io.small_files import read_small_text

        return cls.from_json(read_small_text(path, what, error=PlanError))

    def replace(self, **overrides: Any) -> Plan:
        """A copy with fields replaced; values may be typed or text (``"32,32,32"``), keys may be dotted.

        Example:
            >>> plan.replace(patch_size="32,32,32", **{"normalization.scheme": "zscore"})
        """
        data = self.to_dict()
        for key, value in overrides.items():
            _set_override(data, key, value)
        return Plan.from_dict(data)


# ---------------------------------------------------------------------------------------------- validation


def _validate_plan(plan: Plan) -> None:
    if plan.task not in TASKS:
        raise PlanError(f"expected task in {TASKS}, got {plan.task!r}")
    if plan.n_channels < 1 or len(plan.channel_names) != plan.n_channels:
        raise PlanError(
            f"expected n_channels >= 1 and one channel name per channel, got n_channels={plan.n_channels} and "
            f"channel_names={list(plan.channel_names)}"
        )
    if plan.target_spacing is not None and (len(plan.target_spacing) != 3 or min(plan.target_spacing) <= 0):
        raise PlanError(f"expected target_spacing of 3 positive mm values (i, j, k) or null, got {plan.target_spacing}")
    if plan.orientation:
        letters = {"L": 0, "R": 0, "P": 1, "A": 1, "S": 2, "I": 2}
        code = plan.orientation
        if len(code) != 3 or any(c not in letters for c in code) or sorted(letters[c] for c in code) != [0, 1, 2]:
            raise PlanError(f"expected an orientation code such as 'LPS' or 'RAS' (one of L/R, P/A, S/I each), got {code!r}")
    if plan.image_interpolation not in IMAGE_INTERPOLATORS:
        raise PlanError(f"expected image_interpolation in {IMAGE_INTERPOLATORS}, got {plan.image_interpolation!r}")
    for name in ("patch_size", "slice_shape"):
        value = getattr(plan, name)
        if min(value) < 1:
            raise PlanError(f"expected positive {name}, got {value}")
    for name in ("batch_size", "slice_batch_size", "sequence_length"):
        if getattr(plan, name) < 1:
            raise PlanError(f"expected {name} >= 1, got {getattr(plan, name)}")
    if plan.recommended_model not in MODEL_CHOICES:
        raise PlanError(f"expected recommended_model in {MODEL_CHOICES}, got {plan.recommended_model!r}")
    if not 0.0 <= plan.foreground_fraction <= 1.0:
        raise PlanError(f"expected foreground_fraction in [0, 1], got {plan.foreground_fraction}")
    if plan.pooling_levels < 0 or plan.memory_budget_mb <= 0:
        raise PlanError(
            f"expected pooling_levels >= 0 and memory_budget_mb > 0, got {plan.pooling_levels} and {plan.memory_budget_mb}"
        )
    _check_bounds(plan)
    _check_label_values(plan.label_values)


def _shown(value: Any) -> str:
    """``repr`` of a value for a message, shortened (an override can be very long)."""
    text = repr(list(value) if isinstance(value, tuple) else value)
    return text if len(text) <= 80 else text[:77] + "..."


def _check_bounds(plan: Plan) -> None:
    """Sizes and spacings within :data:`PLAN_BOUNDS`, patches and slices within their voxel counts."""
    for name, (low, high) in PLAN_BOUNDS.items():
        value = getattr(plan, name)
        items = [] if value is None else list(value) if isinstance(value, tuple) else [value]
        if not all(low <= item <= high for item in items):
            raise PlanError(f"expected plan.{name} within [{low:g}, {high:g}], got {_shown(value)}")
    voxels = math.prod(int(size) for size in plan.patch_size)
    if voxels > MAX_PATCH_VOXELS:
        raise PlanError(f"expected a plan.patch_size of at most {MAX_PATCH_VOXELS} voxels, got "
                        f"{_shown(plan.patch_size)} ({voxels} voxels)")
    pixels = int(plan.slice_shape[0]) * int(plan.slice_shape[1])
    if pixels > MAX_SLICE_PIXELS:
        raise PlanError(f"expected a plan.slice_shape of at most {MAX_SLICE_PIXELS} pixels, got "
                        f"{_shown(plan.slice_shape)}")


def _check_label_values(values: tuple[int, ...]) -> None:
    """At least one value, each distinct and in [0, 65535] (label maps are uint16: nothing may wrap). How many classes
    a model may have is the model's limit (checked with the bundle), not the plan's."""
    from MedAnalysisLib.labels import MAX_LABEL_VALUE

    repeated = sorted({value for value in values if values.count(value) > 1})
    if not values or repeated or not all(0 <= value <= MAX_LABEL_VALUE for value in values):
        found = f"{_shown(repeated)} more than once in " if repeated else ""
        raise PlanError(f"expected distinct plan.label_values in [0, {MAX_LABEL_VALUE}], got {found}"
                        f"{_shown(values)}")


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check ``value`` (parsed JSON) against the annotation ``tp`` and convert lists to tuples."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None:
            if type(None) in args:
                return None
            raise PlanError(f"expected {where} to be {_type_name(tp)}, got null")
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except PlanError as error:
                errors.append(str(error))
        raise PlanError(errors[0] if len(errors) == 1 else f"expected {where} to be {_type_name(tp)}, got {value!r}")
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise PlanError(f"expected {where} to be a list, got {type(value).__name__} {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], f"{where}[{n}]") for n, v in enumerate(value))
        if len(value) != len(args):
            raise PlanError(f"expected {where} to have {len(args)} values, got {len(value)}: {list(value)}")
        return tuple(_coerce(v, a, f"{where}[{n}]") for n, (v, a) in enumerate(zip(value, args, strict=True)))
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise PlanError(f"expected {where} to be an object, got {type(value).__name__} {value!r}")
        return _build(tp, value, where)
    if tp is bool:
        if not isinstance(value, bool):
            raise PlanError(f"expected {where} to be true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise PlanError(f"expected {where} to be an integer, got {type(value).__name__} {value!r}")
        return int(value)
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
            raise PlanError(f"expected {where} to be a number, got {type(value).__name__} {value!r}")
        if not math.isfinite(float(value)):
            raise PlanError(f"expected {where} to be a finite number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise PlanError(f"expected {where} to be text, got {type(value).__name__} {value!r}")
        return value
    raise PlanError(f"cannot check {where}: unsupported annotation {tp}")  # pragma: no cover - programming error


def _build(cls: Any, data: dict[str, Any], where: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise PlanError(f"expected only the keys {names} in {where}, got unknown key(s) {unknown}")
    kwargs = {name: _coerce(data[name], hints[name], f"{where}.{name}") for name in names if name in data}
    return cls(**kwargs)


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def _parse_text(text: str) -> Any:
    """Parse an override given as text: JSON first, then comma-separated lists, then plain text."""
    from MedAnalysisLib.io.small_files import parse_json_text

    text = text.strip()
    try:
        return parse_json_text(text, "a plan override value", error=PlanError)
    except PlanError as error:
        if "nested deeper" in str(error) or "characters, got" in str(error):
            raise
    if "," in text:
        return [_parse_text(part) for part in text.split(",")]
    lowered = text.lower()
    if lowered in ("none", "null"):
        return None
    if lowered in ("true", "false"):
        return lowered == "true"
    return text


def _fixed_tuple_length(parts: list[str]) -> int:
    """Length of a fixed-size tuple field of Plan (0 when the field is something else), for null fields."""
    if len(parts) != 1:
        return 0
    annotation = typing.get_type_hints(Plan).get(parts[0])
    for candidate in typing.get_args(annotation) or (annotation,):
        args = typing.get_args(candidate)
        if typing.get_origin(candidate) is tuple and args and Ellipsis not in args:
            return len(args)
    return 0


#: Plan fields whose override can be checked alone, before any case is read (the others depend on each other or
#: on the data: channels and their names, the normalisation's statistics).
STANDALONE_FIELDS = (*PLAN_BOUNDS, "label_values", "foreground_fraction", "memory_budget_mb", "orientation",
                     "image_interpolation", "crop_to_nonzero", "body_threshold", "slice_keep_aspect", "recommended_model")


def check_overrides(overrides: dict[str, Any]) -> None:
    """Check ``--set`` overrides before any case is read: every key must name a plan field, and the fields of
    :data:`STANDALONE_FIELDS` must have values a plan accepts (types, bounds, distinct label values), so a command
    refuses them at once rather than after hours of planning or training.

    Raises:
        PlanError: Naming the field, what was expected and what was found.
    """
    if not isinstance(overrides, dict):
        raise PlanError(f"expected plan overrides as a mapping, got {type(overrides).__name__}")
    for key, value in overrides.items():
        data = Plan().to_dict()
        _set_override(data, str(key), value)
        if str(key) in STANDALONE_FIELDS:
            Plan.from_dict(data)


def _set_override(data: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    target = data
    for part in parts[:-1]:
        if not isinstance(target.get(part), dict):
            raise PlanError(f"expected {part!r} to be a plan section that holds {key!r}, got {target.get(part)!r}")
        target = target[part]
    if parts[-1] not in target:
        raise PlanError(f"expected a plan field to override (one of {sorted(target)}), got {key!r}")
    current = target[parts[-1]]
    if isinstance(value, str):
        value = _parse_text(value)
        if isinstance(current, str) and not isinstance(value, str):
            value = str(value) if value is not None else ""
    if isinstance(value, tuple):
        value = list(value)
    # A single number given for a per-axis field means "the same along every axis".
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        length = len(current) if isinstance(current, list) else _fixed_tuple_length(parts) if current is None else 0
        if length:
            value = [value] * length
    target[parts[-1]] = value


# ---------------------------------------------------------------------------------------------- planning


def target_spacing_from(spacings: np.ndarray, shapes_kji: np.ndarray) -> tuple[tuple[float, float, float], str]:
    """Median spacing, with nnU-Net's rule for strongly anisotropic data.

    If the coarsest axis of the median spacing is more than :data:`ANISOTROPY_THRESHOLD` times coarser than the
    others *and* has fewer than a third as many voxels as the smallest other axis, the 10th percentile of that
    axis's spacings is used instead (but not finer than the other axes): resampling thick slices to the median
    would throw away resolution that most cases have.

    Args:
        spacings: (n_cases, 3) spacings in (i, j, k) order, mm.
        shapes_kji: (n_cases, 3) shapes in (k, j, i) order, voxels.

    Returns:
        The target spacing (i, j, k) and a sentence explaining it.
    """
    spacings = np.asarray(spacings, dtype=np.float64)
    sizes_ijk = np.asarray(shapes_kji, dtype=np.float64)[:, ::-1]
    target = np.median(spacings, axis=0)
    median_size = np.median(sizes_ijk * spacings / target, axis=0)
    worst = int(np.argmax(target))
    others = [a for a in range(3) if a != worst]
    aniso_spacing = target[worst] > ANISOTROPY_THRESHOLD * max(target[a] for a in others)
    aniso_voxels = median_size[worst] * ANISOTROPY_THRESHOLD < min(median_size[a] for a in others)
    note = f"target spacing = median spacing {np.round(target, 4).tolist()} mm (i, j, k)"
    if aniso_spacing and aniso_voxels:
        finer = float(np.percentile(spacings[:, worst], 10))
        finer = max(finer, max(target[a] for a in others) + 1e-5)
        note = (
            f"axis {'ijk'[worst]} is strongly anisotropic (median {target[worst]:.4g} mm, > {ANISOTROPY_THRESHOLD:g}x "
            f"the other axes, few voxels): its target spacing is the 10th percentile {finer:.4g} mm instead of the "
            f"median; other axes use the median"
        )
        target[worst] = finer
    return tuple(float(round(s, 6)) for s in target), note  # type: ignore[return-value]


def _round_up(value: float, multiple: int) -> int:
    return int(max(multiple, math.ceil(value / multiple) * multiple))


def _patch_and_batch(
    median_shape: np.ndarray, spacing_kji: np.ndarray, budget_mb: float, levels: int, n_channels: int, total_voxels: float
) -> tuple[tuple[int, int, int], int, list[str]]:
    """Patch (k, j, i) covering the median shape, shrunk until one batch of 2 fits the budget; then the batch size."""
    multiple = 2**levels
    notes = []
    # One-slice (2D) data keeps a one-voxel patch depth: there is nothing to pool along k.
    patch = np.array([1 if s == 1 and axis == 0 else _round_up(s, multiple) for axis, s in enumerate(median_shape)], dtype=np.int64)
    per_voxel = BYTES_PER_VOXEL_3D * (1 + 0.05 * (n_channels - 1))
    budget = budget_mb * 2**20
    min_batch = 2

    def fits(p: np.ndarray, batch: int) -> bool:
        return float(np.prod(p)) * batch * per_voxel <= budget

    shrunk = False
    while not fits(patch, min_batch) and (patch > multiple).any():
        # As nnU-Net: shrink the axis whose patch is largest compared with the median shape, so the patch keeps the
        # proportions of the data; ties go to the axis with the larger physical extent.
        physical = patch * spacing_kji
        score = patch / np.maximum(median_shape, 1) + 1e-3 * physical / physical.max()
        candidates = np.where(patch > multiple)[0]
        axis = candidates[np.argmax(score[candidates])]
        patch[axis] -= multiple
        shrunk = True
    if shrunk:
        notes.append(
            f"patch shrunk below the median shape {median_shape.tolist()} to fit the {budget_mb:g} MiB memory budget; "
            "raise memory_budget_mb (e.g. on a GPU) to cover more context"
        )
    else:
        notes.append(f"patch covers the median shape {median_shape.tolist()} (k, j, i), rounded up to multiples of {multiple}")
    batch = int(budget // (float(np.prod(patch)) * per_voxel))
    # As nnU-Net: a batch should not cover more than 5% of all the training voxels, so that it stays stochastic.
    cap = int(max(min_batch, 0.05 * total_voxels // float(np.prod(patch))))
    batch = int(max(min_batch, min(batch, cap, 64)))
    return tuple(int(p) for p in patch), batch, notes  # type: ignore[return-value]


def make_plan(
    fingerprint: Fingerprint,
    overrides: dict[str, Any] | None = None,
    memory_budget_mb: float = DEFAULT_MEMORY_BUDGET_MB,
    *,
    orientation: str = "LPS",
    pooling_levels: int | None = None,
) -> Plan:
    """Derive the preprocessing plan of a dataset from its fingerprint.

    Args:
        fingerprint: Measured by :func:`~MedAnalysisLib.preprocessing.fingerprint.fingerprint_dataset`.
        overrides: Plan fields to force after planning (values typed or text, keys may be dotted such as
            ``"normalization.scheme"``); see :meth:`Plan.replace`.
        memory_budget_mb: Memory in MiB one training step may use (activations of the model for one batch).
        orientation: Canonical orientation code; ``""`` keeps each image's stored axis order.
        pooling_levels: Down-sampling steps the patch must be divisible for (default: 4 for patches whose axes all
            exceed 64 voxels after rounding, else 3).

    Returns:
        A validated :class:`Plan`; the same fingerprint and arguments always give the same plan.

    Raises:
        PlanError: The fingerprint is empty or an override is invalid.
    """
    if fingerprint.n_cases < 1:
        raise PlanError("expected a fingerprint of at least one case, got none")
    if memory_budget_mb <= 0:
        raise PlanError(f"expected a positive memory budget in MiB, got {memory_budget_mb}")
    notes: list[str] = []
    spacings = np.asarray(fingerprint.spacings, dtype=np.float64)
    shapes = np.asarray(fingerprint.shapes_after_crop, dtype=np.float64)
    target, note = target_spacing_from(spacings, shapes)
    notes.append(note)
    target_kji = np.array(target[::-1])
    resampled = np.where(shapes == 1, 1.0, shapes * spacings[:, ::-1] / target_kji)  # one slice stays one slice
    median_shape = np.maximum(np.round(np.median(resampled, axis=0)), 1).astype(np.int64)
    total_voxels = float(np.sum(np.prod(resampled, axis=1)))

    # ---- normalisation by modality
    modality = fingerprint.modality
    if modality.upper() == "CT":
        stats = fingerprint.foreground_intensity
        normalization = Normalization(
            "ct",
            clip_low=float(stats["percentile_00_5"]),
            clip_high=float(stats["percentile_99_5"]),
            mean=float(stats["mean_clipped"]),
            std=max(float(stats["std_clipped"]), 1e-6),
        )
        notes.append(
            "CT: intensities clipped to the training foreground 0.5/99.5 percentiles "
            f"[{normalization.clip_low:.5g}, {normalization.clip_high:.5g}] HU, then z-scored with the dataset mean "
            f"{normalization.mean:.5g} and std {normalization.std:.5g}"
        )
    else:
        normalization = Normalization("zscore_nonzero")
        notes.append(f"{modality}: each image z-scored over its non-zero voxels (intensities are not comparable across scans)")

    # As nnU-Net: always crop to the non-zero box; it costs nothing where there is no zero background. CT has no
    # zero background (air is -1000 HU), so CT crops to the body instead: the same anatomy then fills the same share
    # of a slice whatever the reconstruction field of view, and the table and the air around the patient are gone.
    crop = True
    body_threshold = CT_BODY_THRESHOLD_HU if modality.upper() == "CT" else None
    region = (f"body (connected regions above {body_threshold:g} HU, table cut off)" if body_threshold is not None
              else "non-zero bounding box of all channels")
    notes.append(f"cropped to the {region} (keeps {fingerprint.crop_fraction_median:.0%} of the voxels, median)")

    # ---- patch and batch size (3D)
    if pooling_levels is None:
        pooling_levels = 4 if median_shape.min() > 64 else 3
    patch, batch, patch_notes = _patch_and_batch(
        median_shape, target_kji, memory_budget_mb, pooling_levels, fingerprint.n_channels, total_voxels
    )
    notes.extend(patch_notes)
    notes.append(f"batch size {batch} fits the {memory_budget_mb:g} MiB budget (at least 2, at most 5% of the data)")

    # ---- 2D slices and sequences
    slice_multiple = 2 ** max(pooling_levels, 4)
    in_plane = median_shape[1:].astype(np.float64)
    # At least 8 slices per batch must fit the budget: larger slices are scaled down (aspect kept).
    max_pixels = memory_budget_mb * 2**20 / (8 * BYTES_PER_PIXEL_2D)
    if in_plane.prod() > max_pixels:
        in_plane = in_plane * math.sqrt(max_pixels / in_plane.prod())
        notes.append(f"2D slices scaled to about {int(in_plane[0])}x{int(in_plane[1])} pixels to fit the budget")
    slice_shape = tuple(min(_round_up(s, slice_multiple), 512) for s in in_plane)
    per_slice = float(slice_shape[0] * slice_shape[1]) * BYTES_PER_PIXEL_2D
    slice_batch = int(max(2, min(64, memory_budget_mb * 2**20 // per_slice)))
    sequence_length = int(max(1, np.max(resampled[:, 0]).round()))
    sequence_length = int(min(sequence_length, 256))

    # ---- which model family suits the data
    anisotropy = max(target) / min(target)
    if fingerprint.task == "classification":
        if median_shape[0] <= 1:
            model = "slice_cnn"
            notes.append("single-slice images: a 2D slice classifier")
        elif anisotropy > ANISOTROPY_THRESHOLD:
            model = "cnn_rnn"
            notes.append(f"thick slices (anisotropy {anisotropy:.1f}): per-slice CNN with a recurrent layer over slices")
        else:
            model = "cnn3d"
            notes.append("volumes with near-isotropic voxels: a 3D CNN classifier")
    else:
        if median_shape[0] <= 1 or (anisotropy > ANISOTROPY_THRESHOLD and median_shape[0] < 16):
            model = "unet2d"
            notes.append(f"few or thick slices (anisotropy {anisotropy:.1f}, median {int(median_shape[0])} slices): 2D U-Net")
        else:
            model = "unet3d"
            notes.append(f"anisotropy {anisotropy:.1f} and {int(median_shape[0])} median slices: 3D U-Net")

    plan = Plan(
        task=fingerprint.task,
        modality=modality,
        n_channels=fingerprint.n_channels,
        channel_names=tuple(fingerprint.channel_names),
        label_values=tuple(int(v) for v in fingerprint.label_values),
        target_spacing=target,
        orientation=orientation,
        normalization=normalization,
        crop_to_nonzero=crop,
        body_threshold=body_threshold,
        patch_size=patch,
        batch_size=batch,
        slice_shape=slice_shape,
        slice_keep_aspect=True,
        slice_batch_size=slice_batch,
        sequence_length=sequence_length,
        recommended_model=model,
        pooling_levels=int(pooling_levels),
        memory_budget_mb=float(memory_budget_mb),
        median_shape=tuple(int(s) for s in median_shape),  # type: ignore[arg-type]
        notes=tuple(notes),
    )
    if overrides:
        plan = plan.replace(**overrides)
        changed = ", ".join(f"{k}={v}" for k, v in sorted(overrides.items()))
        plan = dataclasses.replace(plan, notes=(*plan.notes, f"overridden by the user: {changed}"))
    return plan
