"""How to train: one validated, frozen :class:`TrainingOptions`, shared by the command line, the worker and Python.

``medanalysis train`` builds it from its parsed arguments (:mod:`MedAnalysisLib.cli.train`); the Slicer panel's
background worker runs that command, so it trains with the same object; Python callers pass it to
:func:`MedAnalysisLib.training.train` (``train(dataset, options)``, or the keyword form ``train(dataset,
task=..., family=..., out=...)``, which builds it). Every field is checked on construction and every problem is an
:class:`~MedAnalysisLib.errors.InputError` saying what was expected and what was found, before any scan is read or
TensorFlow is imported; built from a mapping (:meth:`TrainingOptions.from_mapping`, e.g. a JSON file), unknown keys
are refused.

Nothing here imports TensorFlow.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from MedAnalysisLib.errors import BundleError, InputError, PlanError
from MedAnalysisLib.labels import LabelInfo, check_user_labels, default_labels
from MedAnalysisLib.preprocessing.augment import AugmentConfig
from MedAnalysisLib.preprocessing.plan import Plan, check_overrides

#: Monitor name (and mode) that keeps the final epoch's weights instead of choosing one on validation data.
LAST_EPOCH = "last"
#: Losses :func:`MedAnalysisLib.losses.get_loss` knows.
LOSS_NAMES = ("dice_ce", "focal", "bce", "ce")
MIXED_PRECISION = ("auto", "on", "off")
STRATEGIES = ("auto", "mirrored", "multiworker", "default")
DEFAULT_LEARNING_RATE = 1e-3
#: Validation batches drawn once (fixed) for patch- and slice-based segmentation.
DEFAULT_VAL_BATCHES = 4
#: Largest learning rate accepted: Adam diverges long before; a typo such as 1e3 for 1e-3 is refused.
MAX_LEARNING_RATE = 10.0
#: Upper bounds of the integer options: far beyond any real run, low enough that a typo (an extra zero or three)
#: is refused before any work instead of allocating or looping for ever. Seeds are 32-bit (numpy's seeding).
LIMITS: dict[str, int] = {
    "epochs": 100_000, "folds": 100, "seed": 2**32 - 1, "batch_size": 4096, "steps_per_epoch": 1_000_000,
    "val_batches": 10_000, "patience": 100_000, "workers": 256, "threads": 1024,
}


def monitor_setting(monitor: str) -> tuple[str, str]:
    """``(metric, mode)`` for a monitored metric name: ``"min"`` for losses, ``"max"`` for the rest.

    ``"last"`` keeps the final epoch's weights whatever the validation says (mode ``"last"``), as nnU-Net does.

    Raises:
        InputError: A name that is not a validation metric (``val_...``) nor ``last``.
    """
    if monitor == LAST_EPOCH:
        return LAST_EPOCH, LAST_EPOCH
    if not isinstance(monitor, str) or not monitor.startswith("val_"):
        raise InputError(f"expected a validation metric to monitor (a name starting with 'val_', such as val_loss "
                         f"or val_auc) or 'last', got {monitor!r}")
    return monitor, "min" if monitor.endswith("loss") else "max"


def augment_settings(augment: bool | Mapping[str, Any] | AugmentConfig | None) -> AugmentConfig | None:
    """The augmentation a training run uses: None (off), the defaults, or the defaults with some fields changed.

    Raises:
        PlanError: A field that :class:`AugmentConfig` does not have, or a value out of its range.
        InputError: Anything but a bool, a mapping, an AugmentConfig or None.
    """
    if augment is None or isinstance(augment, AugmentConfig):
        return augment
    if isinstance(augment, Mapping):
        return AugmentConfig.from_dict({**AugmentConfig().to_dict(), **dict(augment)})
    if isinstance(augment, bool):
        return AugmentConfig() if augment else None
    raise InputError(f"expected augment as True, False, a mapping of AugmentConfig fields or an AugmentConfig, "
                     f"got {type(augment).__name__}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _expect(condition: bool, message: str) -> None:
    if not condition:
        raise InputError(message)


def _at_least(name: str, value: Any, low: int, optional: bool = False, high: int | None = None) -> None:
    """Refuse anything but an integer in [low, high] (high: the field's entry in :data:`LIMITS`)."""
    if optional and value is None:
        return
    high = LIMITS.get(name, 2**31 - 1) if high is None else high
    _expect(_is_int(value) and value >= low,
            f"expected {name} to be an integer >= {low}{' or None' if optional else ''}, got {_shown(value)}")
    _expect(value <= high, f"expected {name} to be an integer from {low} to {high}, got {_shown(value)}")


def _shown(value: Any) -> str:
    """``repr`` of a value for a message, shortened (a typed value can be very long)."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def check_user_hparams(family: str, hparams: Mapping[str, Any]) -> None:
    """Refuse hyper-parameters a user typed that the family's builder (or Keras) would reject: unknown names, values
    of the wrong type or out of range (:data:`MedAnalysisLib.models.hparams.SCHEMAS`). Values the plan fills in
    (classes, channels, patch size) are checked with the rest once known, before the model is built.

    Raises:
        InputError: Naming the hyper-parameter, what was expected and what was given.
    """
    from MedAnalysisLib.models.hparams import SCHEMAS

    schema = SCHEMAS.get(family)
    if schema is None:  # a family registered elsewhere validates its own arguments
        return
    unknown = sorted(str(key) for key in set(hparams) - set(schema))
    _expect(not unknown, f"expected hyper-parameters of a {family!r} model among {sorted(schema)}, got unknown "
                         f"{_shown(unknown)}")
    for name, value in hparams.items():
        try:
            schema[name](name, value)
        except ValueError as error:
            raise InputError(f"{error} (hyper-parameter of {family!r})") from None


def _as_labels(labels: Any) -> tuple[LabelInfo, ...] | None:
    """LabelInfo per class from LabelInfo objects, ``{value: name}`` or names for values 0, 1, ... (None: from data)."""
    if labels is None:
        return None
    if isinstance(labels, Mapping):
        found = default_labels({int(k): str(v) for k, v in labels.items()})
        check_user_labels(found, "labels", named_background=False)
        return found
    _expect(isinstance(labels, Sequence) and not isinstance(labels, str) and len(labels) > 0,
            f"expected labels as LabelInfo objects, a {{value: name}} mapping or a list of names, got {labels!r}")
    if all(isinstance(label, LabelInfo) for label in labels):
        found = tuple(labels)
    elif all(isinstance(label, Mapping) for label in labels):
        found = tuple(LabelInfo.from_dict(label) for label in labels)
    else:
        found = default_labels([str(label) for label in labels])
    values = [label.value for label in found]
    _expect(len(set(values)) == len(values), f"expected each label value once, got {values}")
    check_user_labels(found, "labels", named_background=False)
    return found


@dataclass(frozen=True, kw_only=True)
class TrainingOptions:
    """Everything that decides a training run besides the data (frozen; validated on construction).

    Attributes:
        family: Model family: ``unet3d``, ``unet2d``, ``slice_cnn``, ``cnn3d`` or ``cnn_rnn``.
        out: Bundle folder, or a path ending in ``.zip``.
        task: ``"segmentation"`` or ``"classification"``; must match the family (default: the family's task).
        epochs: Maximum number of epochs.
        plan: A preprocessing plan (a mapping is read with ``Plan.from_dict``); default: planned from the training
            cases' fingerprint.
        plan_overrides: Plan fields to override, e.g. ``{"patch_size": "32,32,32"}``.
        hparams: Model hyper-parameters (``n_classes``, channels and sizes are filled in from the plan); JSON values.
        val_fraction: Share of cases (whole groups) held out for validation, in [0, 1); stratified by class when
            every case has a class target; ignored with ``folds``.
        folds: k for k-fold cross-validation (train fold ``fold``), or None.
        fold: Which fold to train (0-based); 0 without ``folds``.
        seed: Seed of the split, the initialisation, sampling and augmentation.
        batch_size: Global batch size (default: the plan's, at least one per replica).
        steps_per_epoch: Training batches per epoch (default: about four passes over the training cases, <= 250).
        val_batches: Fixed validation batches for patch/slice segmentation.
        learning_rate: Initial learning rate (polynomial decay to 0 over ``epochs``).
        patience: Early-stopping patience in epochs (None: no early stopping).
        loss: ``"dice_ce"``, ``"focal"``, ``"bce"``, ``"ce"`` (None: by task).
        augment: Augmentation of training batches: an :class:`AugmentConfig` or None (off). Given as True (the
            defaults), False, or a mapping of the fields to change (``{"p_gamma": 0, "p_brightness": 0}`` keeps CT
            intensities quantitative).
        monitor: Validation metric that chooses the epoch whose weights are kept, e.g. ``"val_loss"`` (lowest wins
            for names ending in ``loss``, highest otherwise), or ``"last"``; None: mean Dice for segmentation, AUC
            for binary classification, accuracy otherwise.
        workers: Threads for case preparation and batch loading (batches do not depend on it).
        mixed_precision: ``"auto"``, ``"on"`` or ``"off"`` (see :func:`MedAnalysisLib.training.device.setup_devices`).
        strategy: ``"auto"``, ``"mirrored"``, ``"multiworker"`` or ``"default"``.
        tensorboard_dir: Also write TensorBoard logs there.
        name: Model name for the bundle (default: the data folder's name and the family).
        labels: LabelInfo per class (a ``{value: name}`` mapping or a list of names also works), overriding the
            dataset's names for the values they cover.
        resume: Continue from ``<out>.checkpoint`` when it belongs to the same run.
        deterministic: Turn on TensorFlow op determinism (:func:`MedAnalysisLib.runtime.enable_op_determinism`):
            deterministic kernels or an error, at a cost in speed (GPUs, ``tf.data``). Bit-identical weights also
            need the same ``threads`` (see :mod:`MedAnalysisLib.runtime`).
        threads: TensorFlow intra-op threads (None: one per available core). Results depend on this count, not on
            the machine: the bundle records it as ``training.intra_op_threads``.
        card: Fields of the bundle's model card (:mod:`MedAnalysisLib.bundles.card`: authors, version, licence,
            intended use, ...), each checked; they win over what training fills in itself (the dataset's name,
            licence and reference, the number of training cases, the validation metrics, version 1.0.0).

    Raises:
        InputError: On construction, any field of the wrong type or out of range (the message names it).
    """

    family: str
    out: Path
    task: str | None = None
    epochs: int = 50
    plan: Plan | None = None
    plan_overrides: dict[str, Any] = field(default_factory=dict)
    hparams: dict[str, Any] = field(default_factory=dict)
    val_fraction: float = 0.2
    folds: int | None = None
    fold: int = 0
    seed: int = 0
    batch_size: int | None = None
    steps_per_epoch: int | None = None
    val_batches: int = DEFAULT_VAL_BATCHES
    learning_rate: float = DEFAULT_LEARNING_RATE
    patience: int | None = None
    loss: str | None = None
    augment: AugmentConfig | None = field(default_factory=AugmentConfig)
    monitor: str | None = None
    workers: int = 2
    mixed_precision: str = "auto"
    strategy: str = "auto"
    tensorboard_dir: str | None = None
    name: str | None = None
    labels: tuple[LabelInfo, ...] | None = None
    resume: bool = True
    deterministic: bool = False
    threads: int | None = None
    card: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        self._check_model_and_output()
        self._check_split_and_schedule()
        self._check_runtime()
        self._normalise_structures()

    def _set(self, name: str, value: Any) -> None:
        object.__setattr__(self, name, value)

    def _check_model_and_output(self) -> None:
        from MedAnalysisLib.models import MODEL_FAMILIES, family_task

        _expect(isinstance(self.family, str) and self.family in MODEL_FAMILIES,
                f"expected a model family among {sorted(MODEL_FAMILIES)}, got {self.family!r}")
        task = family_task(self.family)
        _expect(self.task is None or self.task == task,
                f"expected a {task} task for model {self.family!r}, got {self.task!r}")
        self._set("task", task)
        _expect(isinstance(self.out, (str, os.PathLike)) and str(self.out) != "",
                f"expected out to be a bundle folder or .zip path, got {self.out!r}")
        out = Path(self.out)
        _expect(out.suffix.lower() not in (".keras", ".h5"),
                f"expected a folder or .zip bundle path as out, got {out.name!r}")
        self._set("out", out)
        _expect(self.name is None or (isinstance(self.name, str) and self.name.strip() != ""),
                f"expected name to be a non-empty string or None, got {self.name!r}")
        _expect(self.loss is None or self.loss in LOSS_NAMES,
                f"expected loss among {LOSS_NAMES} or None, got {self.loss!r}")
        if self.monitor is not None:
            monitor_setting(self.monitor)

    def _check_split_and_schedule(self) -> None:
        _at_least("epochs", self.epochs, 1)
        _expect(isinstance(self.val_fraction, (int, float)) and not isinstance(self.val_fraction, bool)
                and 0.0 <= self.val_fraction < 1.0, f"expected val_fraction in [0, 1), got {_shown(self.val_fraction)}")
        _at_least("folds", self.folds, 2, optional=True)
        if self.folds is None:
            _expect(self.fold == 0 and _is_int(self.fold),
                    f"expected fold 0 without folds (k-fold cross-validation), got {self.fold!r}")
        else:
            _expect(_is_int(self.fold) and 0 <= self.fold < self.folds,
                    f"expected fold in [0, {self.folds}), got {self.fold!r}")
        _at_least("seed", self.seed, 0)
        _at_least("batch_size", self.batch_size, 1, optional=True)
        _at_least("steps_per_epoch", self.steps_per_epoch, 1, optional=True)
        _at_least("val_batches", self.val_batches, 1)
        _at_least("patience", self.patience, 1, optional=True)
        rate = DEFAULT_LEARNING_RATE if self.learning_rate is None else self.learning_rate
        _expect(isinstance(rate, (int, float)) and not isinstance(rate, bool) and not rate <= 0,
                f"expected learning_rate > 0, got {_shown(rate)}")
        _expect(math.isfinite(rate) and rate <= MAX_LEARNING_RATE,
                f"expected learning_rate to be a finite number in (0, {MAX_LEARNING_RATE:g}], got {_shown(rate)}")
        self._set("learning_rate", float(rate))

    def _check_runtime(self) -> None:
        _at_least("workers", self.workers, 1)
        _at_least("threads", self.threads, 1, optional=True)
        _expect(self.mixed_precision in MIXED_PRECISION,
                f"expected mixed_precision among {MIXED_PRECISION}, got {self.mixed_precision!r}")
        _expect(self.strategy in STRATEGIES, f"expected strategy among {STRATEGIES}, got {self.strategy!r}")
        for flag in ("resume", "deterministic"):
            _expect(isinstance(getattr(self, flag), bool), f"expected {flag} true or false, got {getattr(self, flag)!r}")
        _expect(self.tensorboard_dir is None or (isinstance(self.tensorboard_dir, (str, os.PathLike))
                                                 and str(self.tensorboard_dir) != ""),
                f"expected tensorboard_dir to be a folder path or None, got {self.tensorboard_dir!r}")
        if self.tensorboard_dir is not None:
            self._set("tensorboard_dir", str(self.tensorboard_dir))

    def _normalise_structures(self) -> None:
        """Plan, overrides, hyper-parameters, augmentation and labels in one canonical form each."""
        import json

        if isinstance(self.plan, Mapping):
            self._set("plan", Plan.from_dict(self.plan))
        _expect(self.plan is None or isinstance(self.plan, Plan),
                f"expected plan to be a Plan, its dict, or None, got {type(self.plan).__name__}")
        for name in ("plan_overrides", "hparams"):
            value = getattr(self, name)
            value = {} if value is None else value
            _expect(isinstance(value, Mapping) and all(isinstance(k, str) for k in value),
                    f"expected {name} to be a mapping with string keys, got {value!r}")
            self._set(name, dict(value))
        try:
            json.dumps(self.hparams, allow_nan=False)
        except (TypeError, ValueError) as error:
            raise InputError(f"expected hparams with plain JSON values, got {error}") from None
        check_user_hparams(self.family, self.hparams)
        try:
            check_overrides(self.plan_overrides)
            if self.plan is not None and self.plan_overrides:
                self.plan.replace(**self.plan_overrides)
        except PlanError as error:
            raise InputError(f"{error} (plan override)") from None
        if self.card is not None:
            from MedAnalysisLib.bundles.card import check_card_part

            self._set("card", check_card_part(self.card, InputError))
        try:
            self._set("augment", augment_settings(self.augment))  # type: ignore[arg-type]
            self._set("labels", _as_labels(self.labels))
        except (PlanError, BundleError) as error:
            raise InputError(str(error)) from error

    # ------------------------------------------------------------------ building and copying
    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> TrainingOptions:
        """Build from a mapping (keyword arguments, a JSON object); unknown keys raise :class:`InputError`."""
        _expect(isinstance(data, Mapping), f"expected training options as a mapping, got {type(data).__name__}")
        unknown = sorted(set(data) - set(cls.field_names()))
        _expect(not unknown, f"expected training options among {sorted(cls.field_names())}, got unknown {unknown}")
        missing = sorted({"family", "out"} - set(data))
        _expect(not missing, f"expected training options to name {missing}, they are missing")
        return cls(**dict(data))

    @classmethod
    def build(cls, options: TrainingOptions | Mapping[str, Any] | None = None, **changes: Any) -> TrainingOptions:
        """``options`` with ``changes`` applied: the keyword form of the training functions in one place."""
        if isinstance(options, TrainingOptions):
            return options.replace(**changes) if changes else options
        _expect(options is None or isinstance(options, Mapping),
                f"expected TrainingOptions, a mapping or None, got {type(options).__name__}")
        return cls.from_mapping({**dict(options or {}), **changes})

    def replace(self, **changes: Any) -> TrainingOptions:
        """A copy with ``changes`` (validated again; unknown names raise :class:`InputError`)."""
        unknown = sorted(set(changes) - set(self.field_names()))
        _expect(not unknown, f"expected training options among {sorted(self.field_names())}, got unknown {unknown}")
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON values (``from_mapping(to_dict())`` gives an equal object)."""
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        data["out"] = str(self.out)
        data["plan"] = self.plan.to_dict() if self.plan is not None else None
        data["augment"] = self.augment.to_dict() if self.augment is not None else False
        data["labels"] = [label.to_dict() for label in self.labels] if self.labels is not None else None
        return data

    @property
    def monitored(self) -> tuple[str, str] | None:
        """``(metric, mode)`` of :attr:`monitor`, or None for the task's default."""
        return monitor_setting(self.monitor) if self.monitor else None


__all__ = ["DEFAULT_LEARNING_RATE", "DEFAULT_VAL_BATCHES", "LAST_EPOCH", "LIMITS", "LOSS_NAMES", "MAX_LEARNING_RATE",
           "TrainingOptions", "augment_settings", "check_user_hparams", "monitor_setting"]
