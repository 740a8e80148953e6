"""What ``bundle.json`` holds (:class:`BundleConfig`, validated on construction) and the checks bundle files share.

Nothing here imports TensorFlow or Keras (the Slicer panel reads model cards with it). The helpers :func:`expect`,
:func:`check_keys`, :func:`check_json_safe` and :func:`parse_json` are shared by the modules of
:mod:`MedAnalysisLib.bundles` (single bundles and ensembles validate their JSON the same way); they raise
:class:`~MedAnalysisLib.errors.BundleError` with "expected ..., got ..." messages.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from MedAnalysisLib.bundles.card import check_card, default_card
from MedAnalysisLib.errors import BundleError, PlanError
from MedAnalysisLib.labels import LabelInfo
from MedAnalysisLib.models.hparams import MAX_CLASSES, MAX_PARAMETERS, check_hparams, estimate_parameters, with_defaults

if TYPE_CHECKING:
    from MedAnalysisLib.preprocessing.plan import Plan

#: Version of the ``bundle.json`` schema this code writes (2: with the model card, ``"card"``).
BUNDLE_SCHEMA_VERSION = 2
#: Versions it reads: a bundle of schema 1 (written before model cards) loads with the default card.
READABLE_SCHEMA_VERSIONS = (1, 2)
CONFIG_FILE = "bundle.json"
WEIGHTS_FILE = "model.weights.h5"
TRAINING_LOG_FILE = "training_log.csv"
TASKS = ("segmentation", "classification")
#: Largest bundle.json (or ensemble.json) accepted (a plan and a label table are a few kB).
MAX_CONFIG_BYTES = 4 * 1024**2
#: Inference settings a bundle (or an ensemble) stores, with their defaults.
INFERENCE_DEFAULTS: dict[str, Any] = {"overlap": 0.5, "tta": False, "postprocess": "none"}
POSTPROCESS = ("none", "largest_component", "fill_holes")
INPUT_KEYS = {"channels"}
INPUT_OPTIONAL = {"layout", "dtype"}
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
#: Largest stored sliding-window overlap (the Slicer panel's maximum): at 0.9 a 3D window grid already runs about
#: 1000 times the windows of overlap 0; beyond it the work grows without limit (step 1 voxel at overlap -> 1).
MAX_OVERLAP = 0.9
#: Longest channel name or modality, and most input channels.
MAX_TEXT = 128
MAX_INPUT_CHANNELS = 64


def check_schema_version(version: Any, what: str = "bundle") -> None:
    """A schema version this code reads (:data:`READABLE_SCHEMA_VERSIONS`), as an integer (not text, not a bool)."""
    expect(type(version) is int and version in READABLE_SCHEMA_VERSIONS,
           f"expected {what} schema version {' or '.join(map(str, READABLE_SCHEMA_VERSIONS))}, got {_show(version)}")


def expect(condition: bool, message: str) -> None:
    """Raise :class:`BundleError` with ``message`` unless ``condition`` holds."""
    if not condition:
        raise BundleError(message)


def check_keys(where: str, data: Mapping[str, Any], required: set[str], optional: set[str] | None = None) -> None:
    """``data`` is a JSON object with all of ``required``, and nothing beyond ``required | optional``."""
    optional = optional or set()
    expect(isinstance(data, Mapping), f"expected {where} to be a JSON object, got {type(data).__name__}")
    keys = set(data)
    unknown = keys - required - optional
    missing = required - keys
    expect(not unknown,
           f"expected only the keys {sorted(required | optional)} in {where}, got unknown {sorted(unknown)}")
    expect(not missing, f"expected {where} to have the keys {sorted(missing)}, they are missing")


def check_json_safe(where: str, value: Any) -> None:
    """Only plain JSON values (no NaN, no custom objects) may travel in a bundle."""
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as error:
        raise BundleError(f"expected plain JSON values in {where}, got {error}") from error


def parse_json(text: str | bytes, where: str) -> Any:
    """Parse a configuration file's JSON; NaN/Infinity, invalid UTF-8 and absurd nesting raise :class:`BundleError`."""

    def reject_constant(name: str) -> Any:
        raise BundleError(f"expected plain JSON numbers in {where}, got {name}")

    try:
        return json.loads(text, parse_constant=reject_constant)
    except (ValueError, UnicodeDecodeError, RecursionError) as error:  # RecursionError: absurdly deep nesting
        raise BundleError(f"expected {where} to hold valid JSON, got a parse error: {error}") from error


def _show(value: Any) -> str:
    """``repr`` of a value for a message, shortened (a hostile value can be a megabyte of JSON)."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def check_inference(inference: Any) -> dict[str, Any]:
    """The inference defaults completed from :data:`INFERENCE_DEFAULTS`, each value checked against its bounds."""
    check_keys("inference", inference, set(), set(INFERENCE_DEFAULTS))
    inference = {**INFERENCE_DEFAULTS, **inference}
    overlap = inference["overlap"]
    expect(isinstance(overlap, (int, float)) and not isinstance(overlap, bool) and 0 <= overlap <= MAX_OVERLAP,
           f"expected inference.overlap in [0, {MAX_OVERLAP}], got {_show(overlap)}")
    expect(isinstance(inference["tta"], bool), f"expected inference.tta true or false, got {_show(inference['tta'])}")
    expect(isinstance(inference["postprocess"], str) and inference["postprocess"] in POSTPROCESS,
           f"expected inference.postprocess in {POSTPROCESS}, got {_show(inference['postprocess'])}")
    return inference


def changed_defaults(old: Mapping[str, Any], changes: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, list]]:
    """The new inference defaults (``changes`` that are not None applied to ``old``) and ``{key: [old, new]}`` for the
    ones that really changed, as ``inference_defaults_changed`` records them.

    Raises:
        BundleError: A setting that is not an inference default.
    """
    unknown = sorted(set(changes) - set(INFERENCE_DEFAULTS))
    expect(not unknown, f"expected inference settings among {sorted(INFERENCE_DEFAULTS)}, got {unknown}")
    inference = {**old, **{k: v for k, v in changes.items() if v is not None}}
    return inference, {k: [old.get(k), inference[k]] for k in changes
                       if changes[k] is not None and old.get(k) != inference[k]}


@dataclass(frozen=True)
class BundleConfig:
    """Everything in ``bundle.json``; validated on construction and on load: each value against its type and bounds,
    and the values against each other (:func:`check_consistency`), before any model is built.

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
        inference: Defaults for prediction: ``{"overlap": float in [0, 0.9], "tta": bool, "postprocess": "none" |
            "largest_component" | "fill_holes"}``.
        training: Provenance (data fingerprint, epochs, final metrics, library versions, seed, ...), plain JSON.
        weights: ``{"file": "model.weights.h5", "sha256": hex}``; filled in by
            :func:`~MedAnalysisLib.bundles.save_bundle`.
        description: Free text for the model card.
        card: The model card (:mod:`MedAnalysisLib.bundles.card`): authors, version and changelog, licence, intended
            and out-of-scope use, training data, evaluation, limitations, clinical use; checked and completed on
            construction (:func:`~MedAnalysisLib.bundles.card.check_card`).
        schema_version: The schema read (1 or 2); a configuration is always held, and written, as
            :data:`BUNDLE_SCHEMA_VERSION` (a bundle of schema 1 gets the default card: not for clinical use, the
            rest not stated).
    """

    name: str
    task: str
    family: str
    hparams: dict[str, Any]
    plan: Plan
    labels: tuple[LabelInfo, ...]
    input: dict[str, Any]
    inference: dict[str, Any] = field(default_factory=lambda: dict(INFERENCE_DEFAULTS))
    training: dict[str, Any] = field(default_factory=dict)
    weights: dict[str, str] = field(default_factory=lambda: {"file": WEIGHTS_FILE, "sha256": ""})
    description: str = ""
    card: dict[str, Any] = field(default_factory=default_card)
    schema_version: int = BUNDLE_SCHEMA_VERSION

    def __post_init__(self) -> None:
        from MedAnalysisLib.models import MODEL_FAMILIES

        check_schema_version(self.schema_version)
        object.__setattr__(self, "schema_version", BUNDLE_SCHEMA_VERSION)
        object.__setattr__(self, "card", check_card(self.card))
        expect(isinstance(self.name, str) and self.name != "", f"expected a bundle name, got {self.name!r}")
        expect(self.task in TASKS, f"expected task to be one of {TASKS}, got {self.task!r}")
        expect(isinstance(self.family, str) and self.family in MODEL_FAMILIES,
               f"expected a model family among {sorted(MODEL_FAMILIES)}, got {self.family!r}")
        expect(isinstance(self.hparams, dict), f"expected hparams to be a dict, got {type(self.hparams).__name__}")
        check_json_safe("hparams", self.hparams)
        labels = tuple(self.labels)
        expect(len(labels) >= 1 and all(isinstance(label, LabelInfo) for label in labels),
               f"expected at least one LabelInfo, got {_show(self.labels)}")
        expect(len(labels) <= MAX_CLASSES, f"expected at most {MAX_CLASSES} labels, got {len(labels)}")
        values = [label.value for label in labels]
        expect(len(set(values)) == len(values), f"expected distinct label values, got {_show(values)}")
        object.__setattr__(self, "labels", labels)
        check_keys("input", self.input, INPUT_KEYS, INPUT_OPTIONAL)
        channels = self.input["channels"]
        expect(isinstance(channels, list) and 1 <= len(channels) <= MAX_INPUT_CHANNELS,
               f"expected input.channels to be a non-empty list of at most {MAX_INPUT_CHANNELS}, got {_show(channels)}")
        for channel in channels:
            check_keys("an input channel", channel, {"name", "modality"})
            expect(all(isinstance(channel[key], str) and 0 < len(channel[key]) <= MAX_TEXT
                       and channel[key].isprintable() for key in ("name", "modality")),
                   f"expected an input channel's name and modality as text of 1 to {MAX_TEXT} printable characters, "
                   f"got {_show(channel)}")
        expect(self.input.get("layout", "channels_last") == "channels_last",
               f"expected input layout channels_last, got {_show(self.input.get('layout'))}")
        expect(self.input.get("dtype", "float32") == "float32",
               f"expected input dtype float32, got {_show(self.input.get('dtype'))}")
        object.__setattr__(self, "inference", check_inference(self.inference))
        expect(isinstance(self.training, dict), "expected training provenance to be a dict")
        check_json_safe("training", self.training)
        check_keys("weights", self.weights, {"file", "sha256"})
        weights_file = self.weights["file"]
        expect(isinstance(weights_file, str) and "/" not in weights_file and "\\" not in weights_file
               and weights_file.endswith(".weights.h5") and not weights_file.startswith("."),
               f"expected weights.file to be a plain file name ending in .weights.h5, got {weights_file!r}")
        sha = self.weights["sha256"]
        expect(sha == "" or (isinstance(sha, str) and bool(SHA256_RE.match(sha))),
               f"expected weights.sha256 to be 64 lowercase hex digits, got {sha!r}")
        expect(isinstance(self.description, str), "expected description to be a string")
        if self.task == "segmentation":
            expect(0 in values, f"expected a background label with value 0 for segmentation, got values "
                                f"{_show(values)}")
        check_consistency(self)

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
            "card": self.card,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, allow_nan=False) + "\n"

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> BundleConfig:
        """Validate and build; unknown keys, a wrong schema version or wrong types raise :class:`BundleError`."""
        optional = {"inference", "training", "description"}
        check_keys("bundle.json", data, {"schema_version"},
                   {"name", "task", "family", "hparams", "plan", "labels", "input", "weights", *optional, "card"})
        version = data["schema_version"]
        check_schema_version(version)
        check_keys("bundle.json", data, {"schema_version", "name", "task", "family", "hparams", "plan", "labels",
                                          "input", "weights"}, optional | ({"card"} if version >= 2 else set()))
        from MedAnalysisLib.preprocessing.plan import Plan

        try:
            plan = Plan.from_dict(data["plan"])
        except PlanError as error:
            raise BundleError(f"expected a valid preprocessing plan in bundle.json: {error}") from error
        labels = data["labels"]
        expect(isinstance(labels, list), f"expected labels to be a list, got {type(labels).__name__}")
        return cls(
            schema_version=version,
            name=data["name"],
            task=data["task"],
            family=data["family"],
            hparams=dict(data["hparams"]) if isinstance(data["hparams"], Mapping) else data["hparams"],
            plan=plan,
            labels=tuple(LabelInfo.from_dict(label) for label in labels),
            input=data["input"],
            inference=data.get("inference", dict(INFERENCE_DEFAULTS)),
            training=data.get("training", {}),
            weights=data["weights"],
            description=data.get("description", ""),
            card=data.get("card", {}),
        )

    @classmethod
    def from_json(cls, text: str | bytes) -> BundleConfig:
        return cls.from_dict(parse_json(text, CONFIG_FILE))


# ------------------------------------------------------------------------------------- values against each other
def check_consistency(config: BundleConfig) -> None:
    """The values of a bundle against each other and against sane bounds, before anything is built or run.

    The model family must do the bundle's task; the plan must describe the same channels and (segmentation) the
    same task and labels in output order (a :class:`~MedAnalysisLib.preprocessing.plan.Plan` keeps its own bounds
    on construction, :data:`~MedAnalysisLib.preprocessing.plan.PLAN_BOUNDS`), with no more label values than a model
    may have classes; the hyper-parameters must be ones the family
    accepts (:func:`~MedAnalysisLib.models.hparams.check_hparams`), give one output per label and one input per
    channel, fit the plan's patch or slice size, and build at most
    :data:`~MedAnalysisLib.models.hparams.MAX_PARAMETERS` weights.
    """
    from MedAnalysisLib.models import MODEL_FAMILIES

    family_task = MODEL_FAMILIES[config.family]["task"]
    expect(family_task == config.task,
           f"expected a {config.task} model family, got {config.family!r}, which does {family_task}")
    plan = config.plan
    if config.task == "segmentation":  # a classifier may be trained from a segmentation dataset's plan
        expect(plan.task == "segmentation", f"expected a segmentation preprocessing plan, got a {plan.task} plan")
    n_channels = len(config.input["channels"])
    expect(plan.n_channels == n_channels,
           f"expected the plan to prepare {n_channels} channel(s) as input.channels lists, got {plan.n_channels}")
    _check_plan_bounds(plan)
    values = [label.value for label in config.labels]
    if config.task == "segmentation":
        expect(list(plan.label_values) == values,
               f"expected the plan's label values to be the bundle's labels in output order {_show(values)}, got "
               f"{_show(list(plan.label_values))}")
    try:
        topology = check_hparams(config.family, config.hparams)
    except ValueError as error:
        raise BundleError(f"expected hyper-parameters that build a {config.family!r} model; {error}") from error
    hparams = with_defaults(config.family, config.hparams)
    if "n_classes" in hparams:
        expect(hparams["n_classes"] == len(values),
               f"expected hparams.n_classes to be {len(values)} (one output per label), got {hparams['n_classes']}")
    channels = _model_channels(config.family, hparams)
    if channels is not None:
        expect(channels == n_channels,
               f"expected a model taking {n_channels} input channel(s), got one taking {channels}")
    if topology is not None:
        grid = plan.patch_size if config.family == "unet3d" else plan.slice_shape
        stride = topology.total_stride
        expect(all(size % step == 0 for size, step in zip(grid, stride, strict=True)),
               f"expected the plan's {'patch_size' if config.family == 'unet3d' else 'slice_shape'} to be divisible "
               f"by the U-Net's total stride {list(stride)} ({len(topology.filters)} stages), got {list(grid)}")
    _check_fixed_shape(config.family, hparams, plan)
    parameters = estimate_parameters(config.family, config.hparams)
    if parameters is not None:
        expect(parameters <= MAX_PARAMETERS, f"expected a model of at most {MAX_PARAMETERS:,} parameters, got "
                                             f"hyper-parameters that build about {parameters:,}")


def _check_plan_bounds(plan: Plan) -> None:
    """No more label values than a model may have classes (the plan has checked its other bounds, and that its label
    values are distinct and fit a uint16 label map, when it was built)."""
    labels = list(plan.label_values)
    expect(len(labels) <= MAX_CLASSES, f"expected at most {MAX_CLASSES} plan.label_values, got {len(labels)}")


def _model_channels(family: str, hparams: dict[str, Any]) -> int | None:
    """The input channels the family builds from ``hparams`` (None for families without a schema)."""
    if family == "slice_cnn":
        shape = hparams.get("input_shape")
        if hparams.get("preset") == "basic" and shape is not None and len(shape) == 3 and shape[2] is not None:
            return int(shape[2])
    return hparams.get("in_channels")


def _check_fixed_shape(family: str, hparams: dict[str, Any], plan: Plan) -> None:
    """A slice model with a fixed input size must take the slices the plan prepares (else it fails mid-run)."""
    key = {"slice_cnn": "input_shape", "cnn_rnn": "slice_shape"}.get(family)
    shape = hparams.get(key) if key else None
    if shape is None:
        return
    fixed = [(size, wanted) for size, wanted in zip(shape[:2], plan.slice_shape, strict=True) if size is not None]
    expect(all(size == wanted for size, wanted in fixed),
           f"expected hparams.{key} to match the plan's slice_shape {list(plan.slice_shape)}, got {_show(shape)}")

