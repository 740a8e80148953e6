"""Model bundles: a folder (or a .zip of it) with ``bundle.json`` and ``model.weights.h5``.

A bundle is everything needed to run a trained model exactly as it was trained (DESIGN.md, decision 3):

* ``bundle.json``: a :class:`BundleConfig` (schema version, task, model family and hyper-parameters, input spec,
  the full preprocessing plan, labels with names, RGB colours and terminology codes, inference defaults, training
  provenance) and the sha256 of the weights file;
* ``model.weights.h5``: the Keras weights, nothing else;
* optional sidecars such as ``training_log.csv`` (one row per epoch).

The architecture is always rebuilt from MedAnalysisLib code (:func:`MedAnalysisLib.models.build_model`), and
weights are read only after their sha256 matches ``bundle.json``. Nothing in a bundle is ever executed or
deserialised as code: no ``keras.models.load_model``, no pickle, no SavedModel, no ``eval``. ``.keras`` files,
SavedModel folders and pickles offered as bundles are refused before any of their bytes are interpreted.

:func:`read_bundle_config` does not import TensorFlow or Keras (the Slicer panel uses it to show a model card).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import re
import shutil
import tempfile
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from MedAnalysisLib.errors import BundleError, PlanError
from MedAnalysisLib.io.atomic import atomic_directory, write_text_atomic

if TYPE_CHECKING:
    import keras

    from MedAnalysisLib.preprocessing.plan import Plan

#: Version of the ``bundle.json`` schema this code writes and reads.
BUNDLE_SCHEMA_VERSION = 1
CONFIG_FILE = "bundle.json"
WEIGHTS_FILE = "model.weights.h5"
TRAINING_LOG_FILE = "training_log.csv"
TASKS = ("segmentation", "classification")
#: Largest bundle.json accepted (a plan and a label table are a few kB).
MAX_CONFIG_BYTES = 4 * 1024**2

_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
_PICKLE_SUFFIXES = (".pkl", ".pickle", ".pt", ".pth", ".joblib", ".npy", ".npz", ".ckpt", ".bin")
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")


def _expect(condition: bool, message: str) -> None:
    if not condition:
        raise BundleError(message)


def _check_keys(where: str, data: Mapping[str, Any], required: set[str], optional: set[str] = frozenset()) -> None:  # type: ignore[assignment]
    _expect(isinstance(data, Mapping), f"expected {where} to be a JSON object, got {type(data).__name__}")
    keys = set(data)
    unknown = keys - required - optional
    missing = required - keys
    _expect(not unknown, f"expected only the keys {sorted(required | optional)} in {where}, got unknown {sorted(unknown)}")
    _expect(not missing, f"expected {where} to have the keys {sorted(missing)}, they are missing")


def _check_json_safe(where: str, value: Any) -> None:
    """Only plain JSON values (no NaN, no custom objects) may travel in a bundle."""
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as error:
        raise BundleError(f"expected plain JSON values in {where}, got {error}") from error


@dataclass(frozen=True)
class LabelInfo:
    """One output class.

    Attributes:
        value: The integer written into label maps (segmentation; 0 is the background) or the class index
            (classification).
        name: Human-readable name, e.g. ``"anterior hippocampus"``.
        color: Display colour, RGB integers 0-255.
        terminology: Optional coded meaning, e.g. ``{"category": {"scheme": "SCT", "code": "123037004", "meaning":
            "Anatomical Structure"}, "type": {...}}`` (DICOM SEG / Slicer terminology), or ``None``.
    """

    value: int
    name: str
    color: tuple[int, int, int] = (128, 128, 128)
    terminology: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        _expect(isinstance(self.value, int) and not isinstance(self.value, bool) and self.value >= 0,
                f"expected a label value that is an integer >= 0, got {self.value!r}")
        _expect(isinstance(self.name, str) and self.name.strip() != "", f"expected a label name, got {self.name!r}")
        color = tuple(self.color)
        _expect(
            len(color) == 3 and all(isinstance(c, int) and not isinstance(c, bool) and 0 <= c <= 255 for c in color),
            f"expected an RGB colour of three integers 0-255 for label {self.name!r}, got {self.color!r}",
        )
        object.__setattr__(self, "color", color)
        if self.terminology is not None:
            _expect(isinstance(self.terminology, dict), f"expected a terminology dict or null, got {self.terminology!r}")
            _check_json_safe(f"the terminology of label {self.name!r}", self.terminology)

    def to_dict(self) -> dict[str, Any]:
        return {"value": self.value, "name": self.name, "color": list(self.color), "terminology": self.terminology}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LabelInfo:
        _check_keys("a label", data, {"value", "name"}, {"color", "terminology"})
        color = data.get("color", (128, 128, 128))
        _expect(isinstance(color, (list, tuple)), f"expected an RGB list for label colour, got {color!r}")
        return cls(data["value"], data["name"], tuple(color), data.get("terminology"))  # type: ignore[arg-type]


#: Colours for labels 1, 2, ... when none are given (distinct on dark and light backgrounds).
DEFAULT_COLORS = ((216, 101, 79), (128, 174, 128), (241, 214, 145), (177, 122, 101), (111, 184, 210),
                  (221, 130, 101), (144, 238, 144), (220, 245, 20), (78, 63, 0), (255, 250, 220))


def default_labels(names: Mapping[int, str] | list[str]) -> tuple[LabelInfo, ...]:
    """LabelInfo for each ``value -> name`` (a list means values 0, 1, ...), with default colours, no terminology."""
    items = dict(enumerate(names)) if isinstance(names, list) else dict(names)
    labels = []
    for value, name in sorted(items.items()):
        color = (0, 0, 0) if value == 0 else DEFAULT_COLORS[(value - 1) % len(DEFAULT_COLORS)]
        labels.append(LabelInfo(int(value), str(name), color))
    return tuple(labels)


_INPUT_KEYS = {"channels"}
_INPUT_OPTIONAL = {"layout", "dtype"}
_INFERENCE_DEFAULTS: dict[str, Any] = {"overlap": 0.5, "tta": False, "postprocess": "none"}
_POSTPROCESS = ("none", "largest_component", "fill_holes")


@dataclass(frozen=True)
class BundleConfig:
    """Everything in ``bundle.json``; validated on construction and on load.

    Attributes:
        schema_version: :data:`BUNDLE_SCHEMA_VERSION`.
        name: Short model name shown to users.
        task: ``"segmentation"`` or ``"classification"``.
        family: Model family in :data:`MedAnalysisLib.models.MODEL_FAMILIES`.
        hparams: Keyword arguments of :func:`MedAnalysisLib.models.build_model` for this family (JSON values).
        plan: The preprocessing plan used in training (stored as ``Plan.to_dict()``).
        labels: One :class:`LabelInfo` per output class, in output-channel order (channel ``n`` of the softmax is
            ``labels[n]``, whose ``value`` is what a label map stores); for segmentation value 0 is the background.
        input: ``{"channels": [{"name": str, "modality": str}, ...], "layout": "channels_last", "dtype": "float32"}``.
        inference: Defaults for prediction: ``{"overlap": float in [0, 1), "tta": bool, "postprocess": "none" |
            "largest_component" | "fill_holes"}``.
        training: Provenance (data fingerprint, epochs, final metrics, library versions, seed, ...), plain JSON.
        weights: ``{"file": "model.weights.h5", "sha256": hex}``; filled in by :func:`save_bundle`.
        description: Free text for the model card.
    """

    name: str
    task: str
    family: str
    hparams: dict[str, Any]
    plan: Plan
    labels: tuple[LabelInfo, ...]
    input: dict[str, Any]
    inference: dict[str, Any] = field(default_factory=lambda: dict(_INFERENCE_DEFAULTS))
    training: dict[str, Any] = field(default_factory=dict)
    weights: dict[str, str] = field(default_factory=lambda: {"file": WEIGHTS_FILE, "sha256": ""})
    description: str = ""
    schema_version: int = BUNDLE_SCHEMA_VERSION

    def __post_init__(self) -> None:
        from MedAnalysisLib.models import MODEL_FAMILIES

        _expect(self.schema_version == BUNDLE_SCHEMA_VERSION and type(self.schema_version) is int,
                f"expected bundle schema version {BUNDLE_SCHEMA_VERSION}, got {self.schema_version!r}")
        _expect(isinstance(self.name, str) and self.name != "", f"expected a bundle name, got {self.name!r}")
        _expect(self.task in TASKS, f"expected task to be one of {TASKS}, got {self.task!r}")
        _expect(isinstance(self.family, str) and self.family in MODEL_FAMILIES,
                f"expected a model family among {sorted(MODEL_FAMILIES)}, got {self.family!r}")
        _expect(isinstance(self.hparams, dict), f"expected hparams to be a dict, got {type(self.hparams).__name__}")
        _check_json_safe("hparams", self.hparams)
        labels = tuple(self.labels)
        _expect(len(labels) >= 1 and all(isinstance(label, LabelInfo) for label in labels),
                f"expected at least one LabelInfo, got {self.labels!r}")
        values = [label.value for label in labels]
        _expect(len(set(values)) == len(values), f"expected distinct label values, got {values}")
        object.__setattr__(self, "labels", labels)
        _check_keys("input", self.input, _INPUT_KEYS, _INPUT_OPTIONAL)
        channels = self.input["channels"]
        _expect(isinstance(channels, list) and len(channels) >= 1,
                f"expected input.channels to be a non-empty list, got {channels!r}")
        for channel in channels:
            _check_keys("an input channel", channel, {"name", "modality"})
        _expect(self.input.get("layout", "channels_last") == "channels_last",
                f"expected input layout channels_last, got {self.input.get('layout')!r}")
        _check_keys("inference", self.inference, set(), set(_INFERENCE_DEFAULTS))
        inference = {**_INFERENCE_DEFAULTS, **self.inference}
        overlap = inference["overlap"]
        _expect(isinstance(overlap, (int, float)) and 0 <= overlap < 1,
                f"expected inference.overlap in [0, 1), got {overlap!r}")
        _expect(isinstance(inference["tta"], bool), f"expected inference.tta true or false, got {inference['tta']!r}")
        _expect(inference["postprocess"] in _POSTPROCESS,
                f"expected inference.postprocess in {_POSTPROCESS}, got {inference['postprocess']!r}")
        object.__setattr__(self, "inference", inference)
        _expect(isinstance(self.training, dict), "expected training provenance to be a dict")
        _check_json_safe("training", self.training)
        _check_keys("weights", self.weights, {"file", "sha256"})
        weights_file = self.weights["file"]
        _expect(isinstance(weights_file, str) and "/" not in weights_file and "\\" not in weights_file
                and weights_file.endswith(".weights.h5") and not weights_file.startswith("."),
                f"expected weights.file to be a plain file name ending in .weights.h5, got {weights_file!r}")
        sha = self.weights["sha256"]
        _expect(sha == "" or (isinstance(sha, str) and bool(_SHA256_RE.match(sha))),
                f"expected weights.sha256 to be 64 lowercase hex digits, got {sha!r}")
        _expect(isinstance(self.description, str), "expected description to be a string")
        if self.task == "segmentation":
            _expect(0 in values, f"expected a background label with value 0 for segmentation, got values {values}")

    @property
    def n_classes(self) -> int:
        """Number of output classes (segmentation: including the background)."""
        return len(self.labels)

    def label_names(self) -> dict[int, str]:
        return {label.value: label.name for label in self.labels}

    def replace(self, **changes: Any) -> BundleConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": self.schema_version,
            "name": self.name,
            "task": self.task,
            "family": self.family,
            "hparams": self.hparams,
            "plan": self.plan.to_dict(),
            "labels": [label.to_dict() for label in self.labels],
            "input": self.input,
            "inference": self.inference,
            "training": self.training,
            "weights": dict(self.weights),
            "description": self.description,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, allow_nan=False) + "\n"

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> BundleConfig:
        """Validate and build; unknown keys, a wrong schema version or wrong types raise :class:`BundleError`."""
        _check_keys("bundle.json", data, {"schema_version"},
                    {"name", "task", "family", "hparams", "plan", "labels", "input", "inference", "training", "weights",
                     "description"})
        version = data["schema_version"]
        _expect(version == BUNDLE_SCHEMA_VERSION and type(version) is int,
                f"expected bundle schema version {BUNDLE_SCHEMA_VERSION}, got {version!r}")
        _check_keys("bundle.json", data, {"schema_version", "name", "task", "family", "hparams", "plan", "labels",
                                          "input", "weights"}, {"inference", "training", "description"})
        from MedAnalysisLib.preprocessing.plan import Plan

        try:
            plan = Plan.from_dict(data["plan"])
        except PlanError as error:
            raise BundleError(f"expected a valid preprocessing plan in bundle.json: {error}") from error
        labels = data["labels"]
        _expect(isinstance(labels, list), f"expected labels to be a list, got {type(labels).__name__}")
        return cls(
            schema_version=version,
            name=data["name"],
            task=data["task"],
            family=data["family"],
            hparams=dict(data["hparams"]) if isinstance(data["hparams"], Mapping) else data["hparams"],
            plan=plan,
            labels=tuple(LabelInfo.from_dict(label) for label in labels),
            input=data["input"],
            inference=data.get("inference", dict(_INFERENCE_DEFAULTS)),
            training=data.get("training", {}),
            weights=data["weights"],
            description=data.get("description", ""),
        )

    @classmethod
    def from_json(cls, text: str | bytes) -> BundleConfig:
        try:
            data = json.loads(text, parse_constant=_reject_constant)
        except (ValueError, UnicodeDecodeError, RecursionError) as error:  # RecursionError: absurdly deep nesting
            raise BundleError(f"expected bundle.json to hold valid JSON, got a parse error: {error}") from error
        return cls.from_dict(data)


def _reject_constant(name: str) -> Any:
    raise BundleError(f"expected plain JSON numbers in bundle.json, got {name}")


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _refuse_foreign_formats(path: Path) -> None:
    """Refuse things that are not bundles (and would need unsafe deserialisation) before reading them."""
    name = path.name.lower()
    if name.endswith(".keras") or (path.is_file() and name.endswith((".h5", ".hdf5"))):
        raise BundleError(
            f"expected a MedAnalysis bundle (a folder or .zip with {CONFIG_FILE}), got a Keras model file "
            f"{path.name!r}; full Keras models are never loaded because they can carry code"
        )
    if name.endswith(_PICKLE_SUFFIXES):
        raise BundleError(
            f"expected a MedAnalysis bundle (a folder or .zip with {CONFIG_FILE}), got {path.name!r}, a pickle or "
            "tensor file that is never loaded because unpickling runs code"
        )
    if path.is_dir() and ((path / "saved_model.pb").exists() or (path / "saved_model.pbtxt").exists()):
        raise BundleError(
            f"expected a MedAnalysis bundle folder with {CONFIG_FILE}, got a TensorFlow SavedModel folder "
            f"{path.name!r}; SavedModels are never loaded because they can carry code"
        )
    if path.is_file() and not name.endswith(".zip") and name != CONFIG_FILE:
        with open(path, "rb") as handle:
            head = handle.read(8)
        kind = "a pickle" if head[:1] == b"\x80" else "a file"
        raise BundleError(
            f"expected a MedAnalysis bundle folder, its {CONFIG_FILE}, or a .zip of the folder, got {kind} "
            f"{path.name!r}"
        )


def _small_file_bytes(path: Path, where: str = "the bundle folder") -> bytes:
    """A configuration file's bytes: a regular file (not a link) of at most :data:`MAX_CONFIG_BYTES`."""
    _expect(path.is_file() and not path.is_symlink(),
            f"expected {path.name} in {where} {path.parent.name!r}, found none")
    size = path.stat().st_size
    _expect(size <= MAX_CONFIG_BYTES, f"expected {path.name} of at most {MAX_CONFIG_BYTES} bytes, got {size}")
    return path.read_bytes()


def _config_bytes_from_folder(folder: Path) -> bytes:
    return _small_file_bytes(folder / CONFIG_FILE)


def _zip_root(members: list[str]) -> str:
    """The folder prefix of bundle.json inside an archive: "" (at the top) or "name/" (one folder)."""
    if CONFIG_FILE in members:
        return ""
    candidates = [m[: -len(CONFIG_FILE)] for m in members if m.endswith("/" + CONFIG_FILE) and m.count("/") == 1]
    _expect(len(candidates) == 1,
            f"expected exactly one {CONFIG_FILE} at the top of the archive or in one top folder, got {len(candidates)}")
    return candidates[0]


def read_bundle_config(path: str | os.PathLike[str]) -> BundleConfig:
    """Read and validate ``bundle.json`` from a bundle folder, the json file itself, or a .zip bundle.

    Does not import TensorFlow or Keras and does not check the weights (that happens in :func:`load_bundle`). For
    an ensemble it returns the ensemble's model card (:func:`MedAnalysisLib.ensemble.read_ensemble_config`).

    Raises:
        BundleError: Not a bundle, unsafe archive, invalid JSON, unknown keys, wrong schema version or types.
    """
    from MedAnalysisLib import safe_archive
    from MedAnalysisLib.ensemble import is_ensemble, read_ensemble_config

    path = Path(path)
    _expect(path.exists(), f"expected a bundle folder or .zip at {path}, found nothing")
    if is_ensemble(path):
        return read_ensemble_config(path)
    _refuse_foreign_formats(path)
    if path.is_dir():
        data = _config_bytes_from_folder(path)
    elif path.name == CONFIG_FILE:
        data = _config_bytes_from_folder(path.parent)
    else:
        try:
            members = safe_archive.list_members(path)
            data = safe_archive.read_member(path, _zip_root(members) + CONFIG_FILE, max_bytes=MAX_CONFIG_BYTES)
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
            softmax, ``cnn_rnn`` a dict ``{"slices", "scan"}``).
        path: The path the bundle was loaded from (folder or .zip).
        directory: The folder the files were read from (the extraction folder for a .zip; removed with the
            object's :meth:`cleanup`).
        weights_sha256: The verified sha256 of the weights file.
    """

    config: BundleConfig
    model: keras.Model
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

    def cleanup(self) -> None:
        """Remove the extraction folder of a .zip bundle (nothing for a folder bundle)."""
        if self._temporary is not None:
            shutil.rmtree(self._temporary, ignore_errors=True)
            self._temporary = None

    def __del__(self) -> None:  # pragma: no cover - best effort
        self.cleanup()


def _check_weights_file(folder: Path, config: BundleConfig) -> tuple[Path, str]:
    weights = folder / config.weights["file"]
    _expect(weights.is_file() and not weights.is_symlink(),
            f"expected the weights file {config.weights['file']!r} in the bundle, found none")
    expected = config.weights["sha256"]
    _expect(expected != "", "expected a sha256 of the weights in bundle.json, got none")
    actual = sha256_file(weights)
    _expect(actual == expected,
            f"expected weights with sha256 {expected}, got {actual}: the weights file was changed or corrupted; "
            "refusing to load it")
    with open(weights, "rb") as handle:
        _expect(handle.read(8) == _HDF5_MAGIC, "expected an HDF5 weights file, got another format")
    return weights, actual


def _check_hdf5_weights(weights: Path, model: keras.Model) -> None:
    """Refuse what a weights file never needs, before Keras reads a byte of it.

    HDF5 can point outside the file (external and soft links, external or virtual dataset storage: reading them reads
    other files on this machine), and a dataset can declare a shape far larger than what it stores (a few-kB file can
    declare terabytes, allocated when read). Keras guards some of this, version by version and per dataset above a
    4 GiB floor; here every link must be a plain hard link, no dataset may live elsewhere, and all datasets together
    may declare at most twice the model's own weight bytes (plus 1 MiB).
    """
    import h5py
    import numpy as np

    budget = 2 * sum(math.prod(w.shape) * np.dtype(w.dtype).itemsize for w in model.weights) + 2**20
    problems: list[str] = []
    declared = 0

    def check_link(name: str, link: Any) -> None:
        if not isinstance(link, h5py.HardLink):
            problems.append(f"a {type(link).__name__} at {name!r}")

    def check_dataset(name: str, item: Any) -> None:
        nonlocal declared
        if isinstance(item, h5py.Dataset):
            if item.external or item.is_virtual:
                problems.append(f"a dataset stored in other files at {name!r}")
            declared += math.prod(item.shape or ()) * item.dtype.itemsize

    try:
        with h5py.File(weights, "r") as handle:
            handle.visititems_links(check_link)
            if not problems:
                handle.visititems(check_dataset)
    except (OSError, ValueError, TypeError, KeyError, RuntimeError) as error:
        raise BundleError(f"expected a readable HDF5 weights file, got: {error}") from error
    _expect(not problems, f"expected an HDF5 weights file with its data inside it, got {'; '.join(problems[:3])}")
    _expect(declared <= budget,
            f"expected weights of at most {budget} bytes for this {type(model).__name__} ({len(model.weights)} "
            f"variables), got datasets declaring {declared} bytes; refusing to read them")


def load_bundle(path: str | os.PathLike[str]) -> LoadedBundle:
    """Load a bundle folder or .zip: validate ``bundle.json``, check the weights' sha256, build and load the model.

    The model is returned uncompiled, ready for ``predict`` or ``__call__``. An ensemble path (see
    :mod:`MedAnalysisLib.ensemble`) gives a :class:`~MedAnalysisLib.ensemble.LoadedEnsemble`, whose members are
    each loaded this way.

    Args:
        path: Bundle folder, its ``bundle.json``, or a .zip of the folder (or an ensemble folder or .zip).

    Raises:
        BundleError: Any check fails (see :func:`read_bundle_config`), the weights hash differs, or the weights do
            not fit the architecture the config describes. Nothing from the bundle was executed.
    """
    from MedAnalysisLib import safe_archive
    from MedAnalysisLib.ensemble import is_ensemble, load_ensemble
    from MedAnalysisLib.models import build_model

    path = Path(path)
    if is_ensemble(path):
        return load_ensemble(path)
    config = read_bundle_config(path)
    temporary: Path | None = None
    if path.is_dir():
        folder = path
    elif path.name == CONFIG_FILE:
        folder = path.parent
    else:
        temporary = Path(tempfile.mkdtemp(prefix="medanalysis-bundle-"))
        extracted = safe_archive.safe_extract(path, temporary / "bundle")
        folder = extracted / _zip_root(safe_archive.list_members(path)).rstrip("/")
    try:
        weights, sha = _check_weights_file(folder, config)
        try:
            model = build_model(config.family, **config.hparams)
        except (TypeError, ValueError) as error:
            raise BundleError(f"expected hyper-parameters that build a {config.family!r} model, got {error}") from error
        _check_hdf5_weights(weights, model)
        try:
            model.load_weights(str(weights))
        except (ValueError, KeyError, OSError) as error:
            raise BundleError(f"expected weights that fit the {config.family!r} architecture, got: {error}") from error
    except BaseException:
        if temporary is not None:
            shutil.rmtree(temporary, ignore_errors=True)
        raise
    return LoadedBundle(config, model, path, folder, sha, temporary)


def _save_model_weights(model: keras.Model, weights: Path) -> None:
    """Save the model's own weights only: a compiled model's optimizer state (twice the weights for Adam) is training
    state, not part of the model, and would make the bundle fail the size check of :func:`load_bundle`."""
    optimizer = getattr(model, "optimizer", None)
    if optimizer is None:
        model.save_weights(str(weights))
        return
    from keras.src.saving import saving_lib

    saving_lib.save_weights_only(model, str(weights), objects_to_skip=[optimizer])


def save_bundle(
    path: str | os.PathLike[str],
    model: keras.Model,
    config: BundleConfig,
    *,
    extra_files: Mapping[str, str | bytes | os.PathLike[str]] | None = None,
) -> Path:
    """Write a bundle folder (or a .zip when ``path`` ends in ``.zip``) atomically.

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
    from MedAnalysisLib import safe_archive

    path = Path(path)
    if path.suffix.lower() in (".keras", ".h5"):
        raise BundleError(f"expected a folder or .zip bundle path, got {path.name!r}")
    extra_files = dict(extra_files or {})
    for name in extra_files:
        safe_archive.check_member_name(name)
        _expect("/" not in name and name not in (CONFIG_FILE, config.weights["file"]),
                f"expected plain sidecar file names other than the bundle's own, got {name!r}")

    def write_folder(folder: Path) -> None:
        weights = folder / config.weights["file"]
        _save_model_weights(model, weights)
        final = config.replace(weights={"file": config.weights["file"], "sha256": sha256_file(weights)})
        for name, content in extra_files.items():
            if isinstance(content, bytes):
                (folder / name).write_bytes(content)
            elif isinstance(content, str) and not os.path.exists(content):
                (folder / name).write_text(content, encoding="utf-8")
            else:
                shutil.copyfile(content, folder / name)
        write_text_atomic(folder / CONFIG_FILE, final.to_json())

    return _write_bundle_files(path, write_folder)


def _write_bundle_files(path: Path, write_folder: Callable[[Path], None]) -> Path:
    """Let ``write_folder`` fill a scratch folder, then publish it atomically as ``path`` (a folder or a .zip)."""
    from MedAnalysisLib import safe_archive

    if path.suffix.lower() == ".zip":
        with tempfile.TemporaryDirectory(prefix="medanalysis-bundle-") as scratch:
            folder = Path(scratch) / "bundle"
            folder.mkdir()
            write_folder(folder)
            safe_archive.zip_directory(folder, path)
        return path
    with atomic_directory(path) as temporary:
        write_folder(temporary)
    return path


def copy_plain_files(source: Path, target: Path, skip: tuple[str, ...] = ()) -> None:
    """Copy the regular files directly in ``source`` (no links, no sub-folders) into ``target``, byte for byte."""
    for item in source.iterdir():
        if item.is_file() and not item.is_symlink() and item.name not in skip:
            shutil.copyfile(item, target / item.name)


def _changed_defaults(old: Mapping[str, Any], changes: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, list]]:
    """The new inference defaults (``changes`` that are not None applied to ``old``) and ``{key: [old, new]}`` for the
    ones that really changed, as ``inference_defaults_changed`` records them."""
    inference = {**old, **{k: v for k, v in changes.items() if v is not None}}
    return inference, {k: [old.get(k), inference[k]] for k in changes
                       if changes[k] is not None and old.get(k) != inference[k]}


def copy_with_inference_defaults(source: str | os.PathLike[str], out: str | os.PathLike[str],
                                 **changes: Any) -> Path:
    """Write a copy of a bundle whose inference defaults (``overlap``, ``tta``, ``postprocess``) are changed.

    The weights are verified and copied byte for byte (same sha256), with the sidecars such as the training log;
    ``training.inference_defaults_changed`` records what changed (old, new). The source is never modified: ``out`` must be another path. Use it to store settings chosen on
    validation cases after training, so that ``medanalysis predict`` with the new bundle reproduces them.

    Raises:
        BundleError: ``out`` is the source, an unknown setting, or an invalid value.
    """
    source, out = Path(source), Path(out)
    if out.resolve() == source.resolve():
        raise BundleError(f"expected an output other than the source bundle {source.name!r} (bundles are never "
                          "changed in place)")
    unknown = sorted(set(changes) - set(_INFERENCE_DEFAULTS))
    if unknown:
        raise BundleError(f"expected inference settings among {sorted(_INFERENCE_DEFAULTS)}, got {unknown}")
    loaded = load_bundle(source)
    try:
        from MedAnalysisLib.ensemble import LoadedEnsemble, copy_ensemble_with_inference_defaults

        if isinstance(loaded, LoadedEnsemble):
            return copy_ensemble_with_inference_defaults(loaded, out, changes)
        config = loaded.config
        inference, changed = _changed_defaults(config.inference, changes)
        new_config = config.replace(inference=inference, training={**config.training,
                                                                   "inference_defaults_changed": changed})

        def write_folder(folder: Path) -> None:  # the verified files, byte for byte, and the new bundle.json
            copy_plain_files(loaded.directory, folder, skip=(CONFIG_FILE,))
            write_text_atomic(folder / CONFIG_FILE, new_config.to_json())

        return _write_bundle_files(out, write_folder)
    finally:
        loaded.cleanup()


def bundle_summary(config: BundleConfig) -> str:
    """A plain-text model card (used by ``medanalysis info``)."""
    plan = config.plan
    plan_dict = plan.to_dict()
    training = config.training
    lines = [
        f"Model:        {config.name}",
        f"Task:         {config.task} ({config.family})",
        "Labels:       " + ", ".join(f"{label.value} {label.name}" for label in config.labels),
    ]
    if config.task == "segmentation":
        from MedAnalysisLib.terminology import describe_terminology

        coded = [(label, describe_terminology(label.terminology)) for label in config.labels if label.value != 0]
        lines.append("Codes:        " + "; ".join(f"{label.value} {label.name}: {text}" for label, text in coded))
        missing = [label.name for label, text in coded if text.startswith("no standard code")]
        if missing:
            lines.append(f"              no standard code for {', '.join(missing)}: DICOM SEG codes "
                         f"{'it' if len(missing) == 1 else 'them'} as SCT Tissue; give codes with train --labels")
    lines += [
        f"Modality:     {plan_dict.get('modality', '?')}; channels: "
        + ", ".join(f"{c['name']} ({c['modality']})" for c in config.input["channels"]),
    ]
    spacing = plan_dict.get("target_spacing")
    lines.append(f"Spacing:      {'native' if spacing is None else ' x '.join(f'{s:g}' for s in spacing) + ' mm (i, j, k)'}")
    if plan_dict.get("patch_size") and config.family in ("unet3d", "cnn3d"):
        lines.append(f"Patch:        {' x '.join(str(p) for p in plan_dict['patch_size'])} voxels (k, j, i)")
    if plan_dict.get("slice_shape") and config.family in ("unet2d", "slice_cnn", "cnn_rnn"):
        lines.append(f"Slice shape:  {' x '.join(str(p) for p in plan_dict['slice_shape'])} pixels (j, i)")
    normalization = plan_dict.get("normalization")
    if normalization:
        lines.append(f"Intensities:  {json.dumps(normalization, sort_keys=True)}")
    metrics = training.get("final_metrics") or {}
    if metrics:
        lines.append("Metrics:      " + ", ".join(f"{k}={v:.4g}" if isinstance(v, (int, float)) else f"{k}={v}"
                                                  for k, v in metrics.items()))
    how = []
    for key in ("epochs", "epochs_completed", "n_train", "n_val", "seed", "strategy", "device", "trained_at"):
        if key in training:
            how.append(f"{key}={training[key]}")
    if how:
        lines.append("Training:     " + ", ".join(how))
    versions = training.get("library_versions")
    if versions:
        lines.append("Versions:     " + ", ".join(f"{k} {v}" for k, v in versions.items()))
    lines.append(f"Inference:    overlap {config.inference['overlap']}, tta {config.inference['tta']}, "
                 f"postprocess {config.inference['postprocess']}")
    ensemble = training.get("ensemble")
    if isinstance(ensemble, dict):
        members = ensemble.get("members", [])
        lines.append(f"Ensemble:     {len(members)} members, probabilities combined by {ensemble.get('combine')}")
        for number, member in enumerate(members):
            lines.append(f"  member-{number}:   {member.get('name')} ({member.get('family')}) weights sha256 "
                         f"{member.get('weights_sha256')}")
    else:
        lines.append(f"Weights:      {config.weights['file']} sha256 {config.weights['sha256']}")
    if config.description:
        lines.append(f"Description:  {config.description}")
    return "\n".join(lines)
