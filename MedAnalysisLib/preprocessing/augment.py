"""Seeded data augmentation for training patches and slices, without scipy.

Spatial transforms are applied identically to the image and the label map: flips, 90-degree in-plane rotations,
and one combined resampling (SimpleITK, multi-threaded) for small rotations, scaling and optional elastic
deformation (a coarse random displacement field). Intensity transforms touch the image only: gamma,
brightness, contrast, Gaussian noise and Gaussian blur.

Arrays: a 3D patch is ``(k, j, i, C)`` with label ``(k, j, i)``; a 2D slice is ``(H, W, C)`` with label
``(H, W)``. The in-plane axes are the last two spatial axes (j, i). All randomness comes from the
``numpy.random.Generator`` passed to :meth:`Augmenter.__call__`, so a seed reproduces a batch exactly.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from MedAnalysisLib.errors import PlanError


@dataclass(frozen=True)
class AugmentConfig:
    """Probabilities and ranges of each augmentation (a probability of 0 switches a transform off).

    Attributes:
        p_flip: Probability of flipping, per axis in ``flip_axes``.
        flip_axes: Spatial axes that may be flipped (0 = k, 1 = j, 2 = i for 3D; 0 = H, 1 = W for 2D).
        p_rot90: Probability of a 90/180/270-degree in-plane rotation (180 only for non-square patches).
        p_rotate: Probability of a small rotation (about every axis in 3D, in-plane in 2D).
        rotate_degrees: Maximum absolute rotation angle.
        p_scale: Probability of isotropic scaling.
        scale_range: (min, max) zoom factor (> 1 magnifies).
        p_elastic: Probability of an elastic deformation (off by default: it is the slowest transform).
        elastic_grid: Cells of the random displacement grid per axis (control points = cells + 1).
        elastic_magnitude: Standard deviation of control-point displacements, in voxels.
        p_gamma: Probability of a gamma change (intensities rescaled to [0, 1], raised, rescaled back, mean and
            std kept).
        gamma_range: (min, max) gamma.
        p_brightness: Probability of multiplying intensities by a factor.
        brightness_range: (min, max) factor.
        p_contrast: Probability of scaling intensities about their mean (clipped to the original range).
        contrast_range: (min, max) factor.
        p_noise: Probability of additive Gaussian noise.
        noise_std: Maximum noise standard deviation (drawn uniformly from [0, noise_std]).
        p_blur: Probability of Gaussian blurring, per channel.
        blur_sigma: (min, max) blur sigma in voxels.
    """

    p_flip: float = 0.5
    flip_axes: tuple[int, ...] = (0, 1, 2)
    p_rot90: float = 0.0
    p_rotate: float = 0.2
    rotate_degrees: float = 15.0
    p_scale: float = 0.2
    scale_range: tuple[float, float] = (0.85, 1.25)
    p_elastic: float = 0.0
    elastic_grid: int = 4
    elastic_magnitude: float = 2.0
    p_gamma: float = 0.3
    gamma_range: tuple[float, float] = (0.7, 1.5)
    p_brightness: float = 0.15
    brightness_range: tuple[float, float] = (0.75, 1.25)
    p_contrast: float = 0.15
    contrast_range: tuple[float, float] = (0.75, 1.25)
    p_noise: float = 0.1
    noise_std: float = 0.1
    p_blur: float = 0.2
    blur_sigma: tuple[float, float] = (0.5, 1.0)

    def __post_init__(self) -> None:
        for name, value in _checked_fields(self).items():
            object.__setattr__(self, name, value)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AugmentConfig:
        """Build from a mapping of fields (JSON values: lists for the pairs); every value is checked.

        Raises:
            PlanError: An unknown key, or a value of the wrong type or out of its range (see :data:`AUGMENT_BOUNDS`).
        """
        if not isinstance(data, dict):
            raise PlanError(f"expected augmentation settings as a mapping, got {type(data).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(str(key) for key in set(data) - names)
        if unknown:
            raise PlanError(f"expected augmentation keys among {sorted(names)}, got unknown {_shown(unknown)}")
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}


#: Upper bounds of the augmentation sizes: well beyond any useful setting, low enough that a typo cannot make a
#: transform destroy the image or allocate without end (an elastic grid of 1e9 cells, a blur sigma of 1000 voxels).
#: Ranges must also have 0 < min <= max.
AUGMENT_BOUNDS: dict[str, float] = {
    "rotate_degrees": 180.0, "scale_range": 4.0, "elastic_grid": 32, "elastic_magnitude": 20.0, "gamma_range": 5.0,
    "brightness_range": 4.0, "contrast_range": 4.0, "noise_std": 5.0, "blur_sigma": 10.0,
}
#: Spatial axes a patch has at most (k, j, i); 2D slices use 0 and 1 of them.
SPATIAL_AXES = 3
_RANGES = ("scale_range", "gamma_range", "brightness_range", "contrast_range", "blur_sigma")


def _shown(value: Any) -> str:
    """``repr`` of a value for a message, shortened (a typed value can be very long)."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _number(name: str, value: Any, low: float, high: float) -> float:
    """A finite real number in [low, high] (booleans and text are not numbers)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise PlanError(f"expected {name} in [{low:g}, {high:g}] (a number), got {type(value).__name__} "
                        f"{_shown(value)}")
    if not math.isfinite(float(value)):
        raise PlanError(f"expected {name} in [{low:g}, {high:g}] (a finite number), got {_shown(value)}")
    if not low <= float(value) <= high:
        raise PlanError(f"expected {name} in [{low:g}, {high:g}], got {_shown(value)}")
    return float(value)


def _pair(name: str, value: Any, high: float) -> tuple[float, float]:
    """(min, max) with 0 < min <= max <= high."""
    if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)) or len(value) != 2:
        raise PlanError(f"expected {name} as a pair [min, max] with 0 < min <= max <= {high:g}, got "
                        f"{type(value).__name__} {_shown(value)}")
    low_value, high_value = (_number(f"{name}[{n}]", item, 0.0, high) for n, item in enumerate(value))
    if not 0 < low_value <= high_value:
        raise PlanError(f"expected {name} as a pair [min, max] with 0 < min <= max <= {high:g}, got {_shown(value)}")
    return low_value, high_value


def _axes(value: Any) -> tuple[int, ...]:
    """Distinct integer spatial axes in 0..2."""
    if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
        raise PlanError(f"expected flip_axes as a list of distinct axes from 0 to {SPATIAL_AXES - 1}, got "
                        f"{type(value).__name__} {_shown(value)}")
    if not all(isinstance(axis, (int, np.integer)) and not isinstance(axis, bool) and 0 <= axis < SPATIAL_AXES
               for axis in value) or len(set(value)) != len(value):
        raise PlanError(f"expected flip_axes as a list of distinct axes from 0 to {SPATIAL_AXES - 1}, got "
                        f"{_shown(value)}")
    return tuple(int(axis) for axis in value)


def _checked_fields(config: AugmentConfig) -> dict[str, Any]:
    """Every field of ``config`` checked (type, finiteness, range) and in canonical form (floats, tuples).

    Raises:
        PlanError: Naming the field, what was expected and what was found.
    """
    checked: dict[str, Any] = {}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if f.name.startswith("p_"):
            checked[f.name] = _number(f"augmentation probability {f.name}", value, 0.0, 1.0)
        elif f.name in _RANGES:
            checked[f.name] = _pair(f.name, value, AUGMENT_BOUNDS[f.name])
        elif f.name == "flip_axes":
            checked[f.name] = _axes(value)
        elif f.name == "elastic_grid":
            high = int(AUGMENT_BOUNDS[f.name])
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 1 <= value <= high:
                raise PlanError(f"expected elastic_grid to be an integer from 1 to {high}, got {_shown(value)}")
            checked[f.name] = int(value)
        else:
            checked[f.name] = _number(f.name, value, 0.0, AUGMENT_BOUNDS[f.name])
    return checked


#: No augmentation at all (validation).
NO_AUGMENTATION = AugmentConfig(
    p_flip=0, p_rot90=0, p_rotate=0, p_scale=0, p_elastic=0, p_gamma=0, p_brightness=0, p_contrast=0, p_noise=0, p_blur=0
)


class Augmenter:
    """Random augmentation of an image patch and its label map.

    Args:
        config: An :class:`AugmentConfig`, a dict of its fields, or None for the defaults.
        seed: Seed of the generator used when ``__call__`` gets no generator.

    Example:
        >>> augmenter = Augmenter({"p_elastic": 0.1}, seed=0)
        >>> image, label = augmenter(image, label, np.random.default_rng(7))
    """

    def __init__(self, config: AugmentConfig | dict[str, Any] | None = None, seed: int = 0) -> None:
        if config is None:
            config = AugmentConfig()
        elif isinstance(config, dict):
            config = AugmentConfig.from_dict(config)
        self.config = config
        self._rng = np.random.default_rng(seed)

    @property
    def resamples(self) -> bool:
        """Whether rotation, scaling or elastic deformation may apply (they profit from context around a patch)."""
        c = self.config
        return c.p_rotate > 0 or c.p_scale > 0 or c.p_elastic > 0

    def __call__(
        self,
        image: np.ndarray,
        label: np.ndarray | None = None,
        rng: np.random.Generator | None = None,
        *,
        output_shape: tuple[int, ...] | None = None,
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Augment one sample.

        Args:
            image: ``(k, j, i, C)`` or ``(H, W, C)`` float array.
            label: ``(k, j, i)`` or ``(H, W)`` integer array on the same grid, or None.
            rng: Source of randomness (default: the augmenter's own seeded generator).
            output_shape: Return only the centre of this spatial shape. Samplers pass a patch with a margin of
                context around it, so that rotated and zoomed-out patches are filled with image instead of
                zeros. The margin must be the same on both sides of each axis.

        Returns:
            ``(image float32, label)`` of the input's shapes, or of ``output_shape`` (the label keeps its dtype).
        """
        rng = rng if rng is not None else self._rng
        image = np.asarray(image)
        if image.ndim not in (3, 4):
            raise PlanError(f"expected an image (k, j, i, C) or (H, W, C), got shape {image.shape}")
        spatial = image.ndim - 1
        if label is not None and tuple(label.shape) != tuple(image.shape[:spatial]):
            raise PlanError(f"expected a label of shape {image.shape[:spatial]}, got {label.shape}")
        if output_shape is not None:
            output_shape = tuple(int(o) for o in output_shape)
            have = image.shape[:spatial]
            if len(output_shape) != spatial or any(o < 1 or o > h or (h - o) % 2 for o, h in zip(output_shape, have, strict=True)):
                raise PlanError(
                    f"expected an output_shape of {spatial} sizes, each no larger than the input {have} with an even "
                    f"margin, got {output_shape}"
                )
        c = self.config
        image = image.astype(np.float32, copy=False)

        # ---- axis flips and in-plane 90-degree rotations (exact, no interpolation)
        for axis in c.flip_axes:
            if axis >= spatial:
                continue
            if rng.random() < c.p_flip:
                image = np.flip(image, axis)
                label = np.flip(label, axis) if label is not None else None
        if c.p_rot90 > 0 and rng.random() < c.p_rot90:
            plane = (spatial - 2, spatial - 1)
            square = image.shape[plane[0]] == image.shape[plane[1]]
            turns = int(rng.integers(1, 4)) if square else 2
            image = np.rot90(image, turns, axes=plane)
            label = np.rot90(label, turns, axes=plane) if label is not None else None

        # ---- rotation, scaling, elastic: one resampling
        angles = np.zeros(3 if spatial == 3 else 1)
        scale = 1.0
        elastic = False
        if rng.random() < c.p_rotate:
            angles = rng.uniform(-c.rotate_degrees, c.rotate_degrees, size=angles.shape)
        if rng.random() < c.p_scale:
            scale = float(rng.uniform(*c.scale_range))
        if rng.random() < c.p_elastic:
            elastic = True
        if np.any(angles != 0) or scale != 1.0 or elastic:
            image, label = _spatial_resample(image, label, np.deg2rad(angles), scale, elastic, c, rng, output_shape)
        elif output_shape is not None and output_shape != image.shape[:spatial]:
            centre = tuple(slice((h - o) // 2, (h - o) // 2 + o) for h, o in zip(image.shape, output_shape, strict=False))
            image = image[centre]
            label = label[centre] if label is not None else None

        # ---- intensity
        if rng.random() < c.p_gamma:
            image = _gamma(image, float(rng.uniform(*c.gamma_range)))
        if rng.random() < c.p_brightness:
            image = image * np.float32(rng.uniform(*c.brightness_range))
        if rng.random() < c.p_contrast:
            image = _contrast(image, float(rng.uniform(*c.contrast_range)))
        if rng.random() < c.p_noise:
            sigma = float(rng.uniform(0, c.noise_std))
            image = image + rng.normal(0.0, sigma, size=image.shape).astype(np.float32)
        if c.p_blur > 0:
            blurred = []
            for channel in range(image.shape[-1]):
                data = image[..., channel]
                if rng.random() < c.p_blur:
                    data = _blur(data, float(rng.uniform(*c.blur_sigma)))
                blurred.append(data)
            image = np.stack(blurred, axis=-1)
        image = np.ascontiguousarray(image, dtype=np.float32)
        label = np.ascontiguousarray(label) if label is not None else None
        return image, label


def _spatial_resample(
    image: np.ndarray,
    label: np.ndarray | None,
    angles: np.ndarray,
    scale: float,
    elastic: bool,
    c: AugmentConfig,
    rng: np.random.Generator,
    output_shape: tuple[int, ...] | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Rotate (radians), zoom and optionally deform about the centre; points outside the input become 0.

    The output is the centred ``output_shape`` region (default: the whole input), in voxel units.
    """
    import SimpleITK as sitk

    spatial = image.ndim - 1
    in_xyz = image.shape[:spatial][::-1]
    size_xyz = tuple(output_shape[::-1]) if output_shape is not None else in_xyz
    start_xyz = [float((i - o) // 2) for i, o in zip(in_xyz, size_xyz, strict=True)]
    center = [m + (s - 1) / 2.0 for m, s in zip(start_xyz, size_xyz, strict=True)]
    if spatial == 3:
        # angles are about the k, j, i array axes = ITK z, y, x.
        rotation = sitk.Euler3DTransform(center, float(angles[2]), float(angles[1]), float(angles[0]))
        matrix = np.array(rotation.GetMatrix()).reshape(3, 3) / scale
        affine = sitk.AffineTransform(3)
    else:
        ca, sa = math.cos(float(angles[0])), math.sin(float(angles[0]))
        matrix = np.array([[ca, -sa], [sa, ca]]) / scale
        affine = sitk.AffineTransform(2)
    affine.SetMatrix(tuple(matrix.ravel()))
    affine.SetCenter(center)
    transform: sitk.Transform = affine
    if elastic:
        # A coarse random displacement field, linearly interpolated by the transform itself: smooth enough for
        # augmentation and ten times faster than evaluating a B-spline transform at every voxel.
        points = c.elastic_grid + 1
        shape = (points,) * spatial + (spatial,)
        field = sitk.GetImageFromArray(rng.normal(0.0, c.elastic_magnitude, size=shape), isVector=True)
        field.SetSpacing([max(s - 1, 1) / (points - 1) for s in size_xyz])
        field.SetOrigin(start_xyz)
        displacement = sitk.DisplacementFieldTransform(sitk.Cast(field, sitk.sitkVectorFloat64))
        transform = sitk.CompositeTransform([affine, displacement])

    identity = tuple(np.eye(spatial).ravel())

    def resample(data: np.ndarray, interpolator: int, vector: bool = False) -> np.ndarray:
        source = sitk.GetImageFromArray(np.ascontiguousarray(data), isVector=vector)
        out = sitk.Resample(
            source, [int(s) for s in size_xyz], transform, interpolator, start_xyz, [1.0] * spatial, identity, 0.0,
            source.GetPixelID(),
        )
        return sitk.GetArrayFromImage(out)

    if image.shape[-1] == 1:
        channels = [resample(image[..., 0], sitk.sitkLinear)]
    else:
        out = resample(image, sitk.sitkLinear, vector=True)
        channels = [out[..., n] for n in range(image.shape[-1])]
    new_image = np.stack(channels, axis=-1).astype(np.float32, copy=False)
    new_label = resample(label, sitk.sitkNearestNeighbor) if label is not None else None
    return new_image, new_label


def _gamma(image: np.ndarray, gamma: float) -> np.ndarray:
    out = np.empty_like(image)
    for channel in range(image.shape[-1]):
        data = image[..., channel]
        low, high = float(data.min()), float(data.max())
        if high - low < 1e-8:
            out[..., channel] = data
            continue
        mean, std = float(data.mean()), float(data.std())
        scaled = np.power((data - low) / (high - low), gamma, dtype=np.float32) * (high - low) + low
        new_std = float(scaled.std())
        if new_std > 1e-8:
            scaled = (scaled - scaled.mean()) / new_std * std + mean
        out[..., channel] = scaled
    return out


def _contrast(image: np.ndarray, factor: float) -> np.ndarray:
    out = np.empty_like(image)
    for channel in range(image.shape[-1]):
        data = image[..., channel]
        mean = float(data.mean())
        out[..., channel] = np.clip((data - mean) * np.float32(factor) + np.float32(mean), data.min(), data.max())
    return out


def _blur(data: np.ndarray, sigma: float) -> np.ndarray:
    import SimpleITK as sitk

    if min(data.shape) < 4:  # the recursive filter needs at least 4 voxels along each axis
        return data
    image = sitk.GetImageFromArray(np.ascontiguousarray(data, dtype=np.float32))
    return sitk.GetArrayFromImage(sitk.SmoothingRecursiveGaussian(image, sigma))
