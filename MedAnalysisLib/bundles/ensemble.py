"""Ensembles of model bundles: several trained models whose probabilities are averaged when predicting.

An ensemble is a folder (or a .zip of it) holding ``ensemble.json`` and one complete bundle per member
(``member-0/``, ``member-1/``, ...), each with its own ``bundle.json``, weights and preprocessing plan. The members are
copied byte for byte when the ensemble is made and ``ensemble.json`` pins the sha256 of every member's weights, so the
ensemble alone reproduces its predictions, like a single bundle (DESIGN.md, decision 3).

How members are combined (a decision made here, as nnU-Net combines its folds): every member runs its own plan on the
input and its class probabilities are brought back to the *input* grid; there the probabilities of all members are
averaged, and the arg-max and the post-processing follow once, on the mean. Averaging on the input grid is what lets
members with different plans be combined (cross-validation folds whose normalisation statistics differ, or a 2D with a
3D U-Net). Classifiers average per-slice and whole-scan probabilities the same way.

Members must agree on the task, the labels (values and names, in order) and the input channels. Classifiers must also
share the model family, because per-slice and whole-scan outputs cannot be averaged with each other. Ensembles are
never nested.

:func:`MedAnalysisLib.bundles.load_bundle` and :func:`~MedAnalysisLib.bundles.read_bundle_config` accept an ensemble
path wherever they accept a bundle, so ``medanalysis predict/evaluate/info`` and the Slicer panel run ensembles
unchanged. This module builds on :mod:`MedAnalysisLib.bundles.single` (each member is a single bundle); nothing below
it knows about ensembles.
"""

from __future__ import annotations

import dataclasses
import hashlib
import shutil
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from MedAnalysisLib import safe_archive
from MedAnalysisLib.bundles.card import DEFAULT_VERSION, check_card_part, default_card, merge_cards, with_change
from MedAnalysisLib.bundles.config import (
    CONFIG_FILE,
    INFERENCE_DEFAULTS,
    MAX_CONFIG_BYTES,
    BundleConfig,
    changed_defaults,
    expect,
)
from MedAnalysisLib.bundles.ensemble_config import (  # also importable from here, as before
    ENSEMBLE_FILE,
    MAX_MEMBERS,
    MIN_MEMBERS,
    EnsembleConfig,
)
from MedAnalysisLib.bundles.single import LoadedBundle, load_single
from MedAnalysisLib.bundles.storage import copy_plain_files, extract_archive, publish, small_file_bytes
from MedAnalysisLib.errors import BundleError
from MedAnalysisLib.io.atomic import write_text_atomic
from MedAnalysisLib.sanitize import terminal_field


@dataclass
class LoadedEnsemble(LoadedBundle):
    """A loaded ensemble: a :class:`LoadedBundle` whose ``model`` is None and whose :attr:`members` run the models.

    ``config`` is the ensemble's model card: the first member's configuration with the ensemble's name, description
    and inference defaults, and ``training["ensemble"]`` listing the members. ``weights_sha256`` is a fingerprint of
    the members' weights (sha256 of their sha256s in order).
    """

    member_bundles: tuple[LoadedBundle, ...] = ()
    ensemble: EnsembleConfig | None = None

    @property
    def members(self) -> tuple[LoadedBundle, ...]:
        return self.member_bundles

    def cleanup(self) -> None:
        for member in self.member_bundles:
            member.cleanup()
        super().cleanup()


def is_ensemble(path: str | Path) -> bool:
    """True for an ensemble folder, its ``ensemble.json``, or a .zip holding one (nothing is extracted)."""
    path = Path(path)
    if path.is_dir():
        return (path / ENSEMBLE_FILE).is_file()
    if path.name == ENSEMBLE_FILE:
        return path.is_file()
    if path.is_file() and path.suffix.lower() == ".zip":
        try:
            return _zip_root(safe_archive.list_members(path)) is not None
        except (OSError, zipfile.BadZipFile, BundleError):
            return False
    return False


def _zip_root(members: list[str]) -> str | None:
    """The folder prefix of ensemble.json in an archive ("" or "name/"), or None when there is none."""
    if ENSEMBLE_FILE in members:
        return ""
    roots = [m[: -len(ENSEMBLE_FILE)] for m in members if m.endswith("/" + ENSEMBLE_FILE) and m.count("/") == 1]
    return roots[0] if len(roots) == 1 else None


def fingerprint(shas: Sequence[str]) -> str:
    """The ensemble's weights fingerprint: sha256 over its members' weights sha256s, in order."""
    return hashlib.sha256(("ensemble:" + ",".join(shas)).encode("ascii")).hexdigest()


def check_members(configs: Sequence[BundleConfig], names: Sequence[str] | None = None) -> None:
    """Refuse members that cannot be averaged: another task, other labels or inputs, another classifier family."""
    names = list(names) if names is not None else [c.name for c in configs]
    first = configs[0]

    def describe(config: BundleConfig) -> dict[str, Any]:
        return {
            "task": config.task,
            "labels": [(label.value, label.name) for label in config.labels],
            "channels": len(config.input["channels"]),
            "family": config.family if config.task == "classification" else "a segmentation model",
        }

    expected = describe(first)
    for name, config in zip(names[1:], configs[1:], strict=True):
        found = describe(config)
        for key, value in expected.items():
            expect(found[key] == value,
                   f"expected every ensemble member to have the {key} of {names[0]!r} ({value}), got {found[key]} "
                   f"in {name!r}")


def _card(ensemble: EnsembleConfig, members: Sequence[BundleConfig], shas: Sequence[str]) -> BundleConfig:
    first = members[0]
    listed = [{"name": c.name, "family": c.family, "weights_sha256": sha,
               **{k: c.training[k] for k in ("seed", "best_epoch", "n_train", "trained_at") if k in c.training}}
              for c, sha in zip(members, shas, strict=True)]
    training = {"ensemble": {"combine": ensemble.combine, "members": listed, **ensemble.provenance}}
    inference = {**first.inference, **ensemble.inference}
    return first.replace(name=ensemble.name, description=ensemble.description or first.description,
                         inference=inference, training=training, card=ensemble.card)


def read_ensemble_config(path: str | Path) -> BundleConfig:
    """The ensemble's model card (see :class:`LoadedEnsemble`) from ``ensemble.json`` and the members' bundle.json.

    Reads no weights and does not import TensorFlow.
    """
    path = Path(path)
    if path.name == ENSEMBLE_FILE:
        path = path.parent
    if path.is_dir():
        ensemble = EnsembleConfig.from_json(small_file_bytes(path / ENSEMBLE_FILE, "the ensemble folder"))
        members = []
        for entry in ensemble.members:  # the rule load_ensemble follows: a member is a real folder inside
            folder = path / entry["folder"]
            expect(folder.is_dir() and not folder.is_symlink(),
                   f"expected the member folder {entry['folder']!r} in the ensemble, found none")
            members.append(BundleConfig.from_json(small_file_bytes(folder / CONFIG_FILE, "the member folder")))
    else:
        try:
            root = _zip_root(safe_archive.list_members(path)) or ""
            ensemble = EnsembleConfig.from_json(
                safe_archive.read_member(path, root + ENSEMBLE_FILE, max_bytes=MAX_CONFIG_BYTES))
            members = [BundleConfig.from_json(safe_archive.read_member(
                path, f"{root}{m['folder']}/{CONFIG_FILE}", max_bytes=MAX_CONFIG_BYTES)) for m in ensemble.members]
        except (OSError, zipfile.BadZipFile, KeyError) as error:
            raise BundleError(f"expected a readable .zip ensemble, got {path.name!r}: {error}") from error
    shas = [m["weights_sha256"] for m in ensemble.members]
    for config, sha in zip(members, shas, strict=True):
        expect(config.weights["sha256"] == sha,
               f"expected member {config.name!r} to have weights sha256 {sha} as {ENSEMBLE_FILE} records, got "
               f"{config.weights['sha256']}")
    check_members(members)
    return _card(ensemble, members, shas)


def load_ensemble(path: str | Path) -> LoadedEnsemble:
    """Load an ensemble folder or .zip: every member is loaded and checked like a single bundle
    (:func:`~MedAnalysisLib.bundles.single.load_single`).

    Raises:
        BundleError: ``ensemble.json`` is invalid, a member is missing, fails its checks, has other weights than
            ``ensemble.json`` pins, or cannot be averaged with the others.
    """
    path = Path(path)
    source = path.parent if path.name == ENSEMBLE_FILE else path
    temporary: Path | None = None
    members: list[LoadedBundle] = []
    try:
        if source.is_dir():
            root = source
        else:
            temporary, extracted = extract_archive(source, "medanalysis-ensemble-")
            root = extracted / (_zip_root(safe_archive.list_members(source)) or "").rstrip("/")
        ensemble = EnsembleConfig.from_json(small_file_bytes(root / ENSEMBLE_FILE, "the ensemble folder"))
        for entry in ensemble.members:
            folder = root / entry["folder"]
            expect(folder.is_dir() and not folder.is_symlink(),
                   f"expected the member folder {entry['folder']!r} in the ensemble, found none")
            expect(not (folder / ENSEMBLE_FILE).exists(), "expected single bundles as members, got an ensemble")
            member = load_single(folder)
            members.append(member)
            expect(member.weights_sha256 == entry["weights_sha256"],
                   f"expected member {entry['folder']!r} to have weights sha256 {entry['weights_sha256']} as "
                   f"{ENSEMBLE_FILE} records, got {member.weights_sha256}")
        configs = [m.config for m in members]
        check_members(configs)
        shas = [m.weights_sha256 for m in members]
        card = _card(ensemble, configs, shas)
    except BaseException:
        for member in members:
            member.cleanup()
        if temporary is not None:
            shutil.rmtree(temporary, ignore_errors=True)
        raise
    return LoadedEnsemble(card, None, path, root, fingerprint(shas), temporary, member_bundles=tuple(members),
                          ensemble=ensemble)


def make_ensemble(
    members: Sequence[str | Path],
    out: str | Path,
    *,
    name: str | None = None,
    description: str = "",
    card: Mapping[str, Any] | None = None,
    **inference: Any,
) -> Path:
    """Write an ensemble of trained bundles (folders or .zip) to ``out`` (a folder, or a path ending in .zip).

    Each member is loaded and verified (:func:`~MedAnalysisLib.bundles.single.load_single`: sha256, architecture)
    and its files are copied byte for byte into ``member-N/``. ``inference`` (``overlap``, ``tta``, ``postprocess``;
    None = keep) sets the ensemble's defaults; without them the first member's defaults apply. The members are never
    modified.

    The ensemble's model card (:func:`ensemble_card`) takes the training data the members agree on, version
    :data:`~MedAnalysisLib.bundles.card.DEFAULT_VERSION` and one changelog entry; ``card`` (a part of a card, its
    fields checked) replaces what it gives. Its evaluation is empty unless ``card`` gives one: the members'
    evaluations do not describe their average.

    Raises:
        BundleError: Fewer than 2 or more than 16 members, a member that is itself an ensemble, members that cannot
            be averaged (:func:`check_members`), ``out`` being one of the members, or invalid inference settings.
    """
    paths = [Path(p) for p in members]
    out = Path(out)
    expect(MIN_MEMBERS <= len(paths) <= MAX_MEMBERS,
           f"expected {MIN_MEMBERS} to {MAX_MEMBERS} member bundles, got {len(paths)}")
    for path in paths:
        expect(path.exists(), f"expected a bundle folder or .zip at {path}, found nothing")
        expect(not is_ensemble(path), f"expected single bundles as members, got the ensemble {path.name!r}")
        expect(path.resolve() != out.resolve() and path.resolve() not in out.resolve().parents,
               f"expected an output other than the member {path.name!r} and outside it (bundles are never changed "
               "in place)")
    _refuse_duplicates([str(p.resolve()) for p in paths], paths, "the same bundle (after resolving links)")
    unknown = sorted(set(inference) - set(INFERENCE_DEFAULTS))
    expect(not unknown, f"expected inference settings among {sorted(INFERENCE_DEFAULTS)}, got {unknown}")
    loaded: list[LoadedBundle] = []
    try:
        for path in paths:
            loaded.append(load_single(path))
        _refuse_duplicates([m.weights_sha256 for m in loaded], paths, "the same weights (sha256)")
        configs = [m.config for m in loaded]
        check_members(configs, [p.name for p in paths])
        chosen = {k: v for k, v in inference.items() if v is not None}
        user_card = check_card_part(dict(card or {}))
        config = EnsembleConfig(
            name=name or f"{configs[0].name}-ensemble{len(paths)}",
            members=tuple({"folder": f"member-{n}", "weights_sha256": m.weights_sha256} for n, m in enumerate(loaded)),
            inference={**configs[0].inference, **chosen},
            description=description,
            provenance={"member_sources": [p.name for p in paths]},
            card=ensemble_card(configs, user_card),
        )
        _card(config, configs, [m.weights_sha256 for m in loaded])  # validates the inference values

        return _write_ensemble(out, config, [m.directory for m in loaded])
    finally:
        for member in loaded:
            member.cleanup()


def ensemble_card(members: Sequence[BundleConfig], given: Mapping[str, Any]) -> dict[str, Any]:
    """The card of a new ensemble: each training-data field on which every member's card agrees (a field they differ
    on is not stated: cross-validation folds train on different cases), version
    :data:`~MedAnalysisLib.bundles.card.DEFAULT_VERSION`, one changelog entry, then the fields ``given`` states (a
    checked part of a card). Clinical use stays "not for clinical use" unless ``given`` states it."""
    cards = [member.card for member in members]
    agreed = {key: cards[0]["training_data"][key] for key in cards[0]["training_data"]
              if all(card["training_data"][key] == cards[0]["training_data"][key] for card in cards)}
    inferred = {"version": DEFAULT_VERSION, "training_data": agreed}
    card = merge_cards(default_card(), inferred, given)
    return with_change(card, f"ensemble of {len(members)} members made (probabilities averaged)")


def _refuse_duplicates(keys: Sequence[str], paths: Sequence[Path], what: str) -> None:
    """Refuse members that share ``keys`` (resolved paths or weights hashes): one model given twice would count
    twice in the mean, silently weighting it over the others."""
    seen: dict[str, Path] = {}
    for key, path in zip(keys, paths, strict=True):
        expect(key not in seen, f"expected distinct ensemble members, got {terminal_field(path.name, 60)!s} and "
                                f"{terminal_field(seen.get(key, path).name, 60)!s} with {what}")
        seen[key] = path


def copy_ensemble_with_inference_defaults(loaded: LoadedEnsemble, out: Path, changes: Mapping[str, Any],
                                          card: Mapping[str, Any] | None = None) -> Path:
    """:func:`~MedAnalysisLib.bundles.copy_with_inference_defaults` for an ensemble: members copied byte for byte,
    the changed defaults (old, new) recorded in ``provenance["inference_defaults_changed"]``, and ``card`` (a
    complete card) when given."""
    assert loaded.ensemble is not None  # load_ensemble always sets it
    inference, changed = changed_defaults(loaded.config.inference, changes)
    provenance = loaded.ensemble.provenance
    if any(value is not None for value in changes.values()):
        provenance = {**provenance, "inference_defaults_changed": changed}
    config = dataclasses.replace(loaded.ensemble, inference=inference, provenance=provenance,
                                 card=dict(card) if card is not None else loaded.ensemble.card)
    loaded.config.replace(inference=inference)  # validates the values
    return _write_ensemble(out, config, [loaded.directory / entry["folder"] for entry in config.members])


def _write_ensemble(out: Path, config: EnsembleConfig, member_folders: Sequence[Path]) -> Path:
    """Publish ``ensemble.json`` and a byte-for-byte copy of each member folder atomically as ``out``."""

    def write_folder(folder: Path) -> None:
        for entry, source in zip(config.members, member_folders, strict=True):
            (folder / entry["folder"]).mkdir()
            copy_plain_files(source, folder / entry["folder"])
        write_text_atomic(folder / ENSEMBLE_FILE, config.to_json())

    return publish(Path(out), write_folder)
