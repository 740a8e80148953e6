"""One model bundle: a folder (or a .zip of it) with ``bundle.json`` and ``model.weights.h5``.

Reading the configuration (:func:`read_single_config`) imports no TensorFlow. Loading (:func:`load_single`) checks
the weights' sha256 and the HDF5 file before Keras reads it, then builds the architecture from MedAnalysisLib code
and loads the weights into it. Saving (:func:`save_bundle`) writes the weights without optimizer state and
publishes the folder or .zip atomically.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from MedAnalysisLib import safe_archive
from MedAnalysisLib.bundles.config import (
    CONFIG_FILE,
    MAX_CONFIG_BYTES,
    BundleConfig,
    changed_defaults,
    expect,
)
from MedAnalysisLib.bundles.storage import (
    bundle_zip_root,
    check_hdf5_weights,
    copy_plain_files,
    extract_archive,
    publish,
    refuse_foreign_formats,
    sha256_file,
    small_file_bytes,
    verified_weights,
)
from MedAnalysisLib.errors import BundleError, MemoryBudgetError
from MedAnalysisLib.io.atomic import write_text_atomic
from MedAnalysisLib.labels import LabelInfo

if TYPE_CHECKING:
    import keras

    from MedAnalysisLib.preprocessing.plan import Plan


def read_single_config(path: Path) -> BundleConfig:
    """Validated ``bundle.json`` of a bundle folder, the json file itself, or a .zip bundle (no weights are read)."""
    import zipfile

    refuse_foreign_formats(path)
    if path.is_dir():
        data = small_file_bytes(path / CONFIG_FILE)
    elif path.name == CONFIG_FILE:
        data = small_file_bytes(path)
    else:
        try:
            members = safe_archive.list_members(path)
            data = safe_archive.read_member(path, bundle_zip_root(members) + CONFIG_FILE, max_bytes=MAX_CONFIG_BYTES)
        except (OSError, zipfile.BadZipFile) as error:
            raise BundleError(f"expected a readable .zip bundle, got {path.name!r}: {error}") from error
    return BundleConfig.from_json(data)


@dataclass
class LoadedBundle:
    """A bundle ready to run.

    Attributes:
        config: The validated :class:`BundleConfig`.
        model: The inference ``keras.Model`` built from code, weights loaded (one output; segmentation gives
            softmax probabilities ``(B, *spatial, n_classes)``, classification ``(B, 1)`` sigmoid or ``(B, n)``
            softmax, ``cnn_rnn`` a dict ``{"slices", "scan"}``). ``None`` for an ensemble, whose :attr:`members`
            hold the models.
        path: The path the bundle was loaded from (folder or .zip).
        directory: The folder the files were read from (the extraction folder for a .zip; removed with the
            object's :meth:`cleanup`).
        weights_sha256: The verified sha256 of the weights file (an ensemble: a fingerprint of its members').
    """

    config: BundleConfig
    model: keras.Model | None
    path: Path
    directory: Path
    weights_sha256: str
    _temporary: Path | None = None

    @property
    def plan(self) -> Plan:
        return self.config.plan

    @property
    def labels(self) -> tuple[LabelInfo, ...]:
        return self.config.labels

    @property
    def members(self) -> tuple[LoadedBundle, ...]:
        """The single bundles that run: this bundle itself (an ensemble lists its members, each with a model)."""
        return (self,)

    def cleanup(self) -> None:
        """Remove the extraction folder of a .zip bundle (nothing for a folder bundle)."""
        if self._temporary is not None:
            shutil.rmtree(self._temporary, ignore_errors=True)
            self._temporary = None

    def __del__(self) -> None:  # pragma: no cover - best effort
        self.cleanup()


def load_single(path: Path) -> LoadedBundle:
    """Load one bundle folder, its ``bundle.json`` or a .zip (see :func:`MedAnalysisLib.bundles.load_bundle`)."""
    from MedAnalysisLib.models import build_model
    from MedAnalysisLib.runtime import configure_threads

    config = read_single_config(path)
    temporary: Path | None = None
    if path.is_dir():
        folder = path
    elif path.name == CONFIG_FILE:
        folder = path.parent
    else:
        temporary, extracted = extract_archive(path, "medanalysis-bundle-")
        folder = extracted / bundle_zip_root(safe_archive.list_members(path)).rstrip("/")
    try:
        weights, sha = verified_weights(folder, config)
        check_before_building(config, weights)
        configure_threads()  # loading is the first TensorFlow work of an inference process
        try:
            model = build_model(config.family, **config.hparams)
        except (TypeError, ValueError) as error:
            raise BundleError(f"expected hyper-parameters that build a {config.family!r} model, got {error}") from error
        check_hdf5_weights(weights, model)
        try:
            model.load_weights(str(weights))
        except (ValueError, KeyError, OSError) as error:
            raise BundleError(f"expected weights that fit the {config.family!r} architecture, got: {error}") from error
        check_finite_weights(model)
    except BaseException:
        if temporary is not None:
            shutil.rmtree(temporary, ignore_errors=True)
        raise
    return LoadedBundle(config, model, path, folder, sha, temporary)


def model_input_size(config: BundleConfig) -> tuple[tuple[int, ...], int]:
    """The spatial size of one model input as the plan prepares it, and the number of slices (``cnn_rnn``)."""
    plan = config.plan
    if config.family in ("unet3d", "cnn3d"):
        return tuple(plan.patch_size), 1
    return tuple(plan.slice_shape), plan.sequence_length if config.family == "cnn_rnn" else 1


def check_before_building(config: BundleConfig, weights: Path) -> None:
    """Refuse, before anything is allocated, a model the weights file cannot hold or this machine cannot run.

    A Keras weights file stores every float32 weight uncompressed, so a file of fewer than 2 bytes per estimated
    parameter (half of what it must hold, a margin for the estimate) cannot fit the architecture: a small file that
    claims a large model is refused here instead of after building the model. Then the weights and the working memory
    of one input must fit this machine's physical memory (a bundle from a larger machine gets a clear error, not an
    allocator failure).

    Raises:
        BundleError: The weights file is too small for the model.
        MemoryBudgetError: Naming the estimate and the memory there is.
    """
    from MedAnalysisLib.io.validate import format_bytes, physical_memory_bytes
    from MedAnalysisLib.models.hparams import estimate_activation_bytes, estimate_parameters

    parameters = estimate_parameters(config.family, config.hparams)
    if parameters is None:
        return
    size = weights.stat().st_size
    expect(size >= 2 * parameters,
           f"expected a weights file of at least {2 * parameters} bytes for a model of about {parameters:,} "
           f"parameters, got {size} bytes")
    total = physical_memory_bytes()
    spatial, sequence = model_input_size(config)
    working = estimate_activation_bytes(config.family, config.hparams, spatial, sequence)
    if total is None or working is None:
        return
    needed = 4 * parameters + working
    if needed > total:
        raise MemoryBudgetError(
            f"expected the model to fit this machine's {format_bytes(total)} of memory, got an estimate of "
            f"{format_bytes(needed)} ({parameters:,} parameters and {format_bytes(working)} of working memory for one "
            f"input of {'x'.join(str(s) for s in spatial)} voxels)")


def check_finite_weights(model: keras.Model) -> None:
    """Refuse weights holding NaN or infinity: such a model gives meaningless probabilities (often an all-background
    map) without any other sign. The error names the first layer's weight, never the values."""
    import numpy as np

    for variable in model.weights:
        values = np.asarray(variable.numpy())
        if np.issubdtype(values.dtype, np.floating) and not np.isfinite(values).all():
            bad = int(values.size - np.count_nonzero(np.isfinite(values)))
            raise BundleError(f"expected finite weights, got {bad} NaN/Inf value(s) in "
                              f"{getattr(variable, 'path', variable.name)!r}")


def save_bundle(
    path: str | os.PathLike[str],
    model: keras.Model,
    config: BundleConfig,
    *,
    extra_files: Mapping[str, str | bytes | os.PathLike[str]] | None = None,
) -> Path:
    """Write a bundle folder (or a .zip when ``path`` ends in ``.zip``) atomically.

    Only the model's own weights are saved: a compiled model's optimizer state (twice the weights for Adam) is
    training state, not part of the model, and would make the bundle fail the size check of loading.

    Args:
        path: Target folder or ``.zip``; an existing bundle there is replaced as a whole.
        model: The inference model (its weights are saved; its architecture must be what ``config.family`` and
            ``config.hparams`` build).
        config: The configuration; ``weights`` is filled in here.
        extra_files: Sidecars to include, ``name -> text, bytes or a path to copy`` (plain names, e.g.
            ``"training_log.csv"``).

    Returns:
        The written path.
    """
    from MedAnalysisLib.keras_compat import save_weights_only

    path = Path(path)
    if path.suffix.lower() in (".keras", ".h5"):
        raise BundleError(f"expected a folder or .zip bundle path, got {path.name!r}")
    extra_files = dict(extra_files or {})
    for name in extra_files:
        safe_archive.check_member_name(name)
        expect("/" not in name and name not in (CONFIG_FILE, config.weights["file"]),
               f"expected plain sidecar file names other than the bundle's own, got {name!r}")

    def write_folder(folder: Path) -> None:
        weights = folder / config.weights["file"]
        optimizer = getattr(model, "optimizer", None)
        save_weights_only(model, weights, skip=[optimizer] if optimizer is not None else [])
        final = config.replace(weights={"file": config.weights["file"], "sha256": sha256_file(weights)})
        for name, content in extra_files.items():
            if isinstance(content, bytes):
                (folder / name).write_bytes(content)
            elif isinstance(content, str) and not os.path.exists(content):
                (folder / name).write_text(content, encoding="utf-8")
            else:
                shutil.copyfile(content, folder / name)
        write_text_atomic(folder / CONFIG_FILE, final.to_json())

    return publish(path, write_folder)


def copy_single_with_inference_defaults(loaded: LoadedBundle, out: Path, changes: Mapping[str, Any],
                                        card: Mapping[str, Any] | None = None) -> Path:
    """A copy of a loaded single bundle with other inference defaults and, when given, another (complete) model card
    (see :func:`MedAnalysisLib.bundles.copy_with_inference_defaults`)."""
    config = loaded.config
    inference, changed = changed_defaults(config.inference, changes)
    training = config.training
    if any(value is not None for value in changes.values()):
        training = {**training, "inference_defaults_changed": changed}
    new_config = config.replace(inference=inference, training=training,
                                card=dict(card) if card is not None else config.card)

    def write_folder(folder: Path) -> None:  # the verified files, byte for byte, and the new bundle.json
        copy_plain_files(loaded.directory, folder, skip=(CONFIG_FILE,))
        write_text_atomic(folder / CONFIG_FILE, new_config.to_json())

    return publish(out, write_folder)
