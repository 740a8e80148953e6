"""Property-based fuzzing of the *values* of a valid bundle: numbers turned into NaN, infinity, huge, negative or
fractional values or into other types, lists resized, labels duplicated, and the result loaded.

The seeds are real, tiny bundle folders (a 3D U-Net with 4-8 filters, and a slice CNN + RNN classifier, with their
weights). Each mutated ``bundle.json``
goes through :meth:`BundleConfig.from_dict` as a Python object (so NaN and infinity reach the value checks; the JSON
parser refuses them earlier), then, when accepted, is written beside the unchanged weights and loaded with
:func:`~MedAnalysisLib.bundles.load_bundle`, which builds the model. Either outcome must be clean: success, or a typed
:class:`~MedAnalysisLib.errors.MedAnalysisError` whose message says what was expected (``harness.CLEAN_FAILURES``).
Loading must never build a large model: every model built during the run is checked against a small bound, since
the validation has to refuse anything bigger than the seed's weights can fill before building.

The default run is short and deterministic; ``pytest -m nightly Testing/fuzz`` runs many random examples.
"""

from __future__ import annotations

import copy
import json
import math
import shutil
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import harness
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

#: Executions in the default suite (most are refused before anything is built; the accepted ones build a tiny model).
SHORT_EXAMPLES = 80
NIGHTLY_EXAMPLES = 3000
#: Largest model a load may build from a seed's weights file (each seed has under 5 000 parameters).
MAX_BUILT_PARAMETERS = 100_000

HPARAMS = {"n_classes": 2, "in_channels": 1, "patch_size": [16, 16, 16], "filters": [4, 8], "norm": "batch"}
HOSTILE_NUMBERS = (math.nan, math.inf, -math.inf, 0, -1, -0.0, 0.5, 1.5, 2, 3, 7, 17, 255, 256, 1024, 1025, 4096,
                   65535, 65536, 2**31, 2**63, 10**12, 1e-300, 1e30, 1e308)
OTHER_TYPES = (None, True, False, "1", "", "nan", [], {}, [1, 2], {"value": 1})

#: The seed bundles: a segmentation U-Net and a classifier with a recurrent part (other hyper-parameters).
SEEDS = ("unet3d", "cnn_rnn")
_SEED_FOLDERS: dict[str, Path] = {}


def seed_folder(family: str) -> Path:
    """A valid bundle folder, built once per process (the weights never change; only bundle.json is mutated)."""
    if family not in _SEED_FOLDERS:
        from helpers_inference import make_cube_plan, train_classifier_bundle

        from MedAnalysisLib.bundles import BundleConfig, LabelInfo, save_bundle
        from MedAnalysisLib.models import build_model

        root = Path(tempfile.mkdtemp(prefix="medanalysis-fuzz-values-"))
        if family == "unet3d":
            config = BundleConfig(
                name="fuzz", task="segmentation", family="unet3d", hparams=dict(HPARAMS), plan=make_cube_plan(),
                labels=(LabelInfo(0, "background", (0, 0, 0)), LabelInfo(1, "organ", (200, 80, 60))),
                input={"channels": [{"name": "image", "modality": "MR"}]},
            )
            _SEED_FOLDERS[family] = save_bundle(root / "seed", build_model("unet3d", **HPARAMS), config)
        else:
            _SEED_FOLDERS[family] = train_classifier_bundle(root / "seed", family)
    return _SEED_FOLDERS[family]


def seed_document(family: str) -> dict[str, Any]:
    return json.loads((seed_folder(family) / "bundle.json").read_text())


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every value's path in the document (objects and lists included, the root left out)."""
    found = [prefix] if prefix else []
    if isinstance(value, dict):
        for key, item in value.items():
            found.extend(_paths(item, (*prefix, key)))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found.extend(_paths(item, (*prefix, index)))
    return found


def _parent(document: dict[str, Any], path: tuple[Any, ...]) -> Any:
    target: Any = document
    for step in path[:-1]:
        target = target[step]
    return target


@st.composite
def value_mutations(draw: Any, family: str) -> dict[str, Any]:
    """1-3 value edits of a seed document: numbers, types, list sizes, label duplicates."""
    document = seed_document(family)
    for _ in range(draw(st.integers(1, 3))):
        # Half of the edits go to the values that size the model and the work (the rest anywhere).
        focus = draw(st.sampled_from(("hparams", "labels", "inference", "plan", None, None, None, None)))
        paths = [path for path in _paths(document) if focus is None or path[0] == focus] or _paths(document)
        path = draw(st.sampled_from(paths))
        parent, key = _parent(document, path), path[-1]
        current = parent[key]
        action = draw(st.sampled_from(("number", "number", "scale", "type", "resize", "duplicate_label", "nudge",
                                       "nudge")))
        if action == "nudge" and isinstance(current, bool):  # plausible values reach the model builder
            parent[key] = not current
        elif action == "nudge" and isinstance(current, int):
            parent[key] = current + draw(st.sampled_from((-2, -1, 1, 2, current)))
        elif action == "nudge" and isinstance(current, float):
            parent[key] = current * draw(st.sampled_from((0.0, 0.5, 1.5)))
        elif action == "number":
            parent[key] = draw(st.sampled_from(HOSTILE_NUMBERS))
        elif action == "scale" and isinstance(current, (int, float)) and not isinstance(current, bool):
            parent[key] = current * draw(st.sampled_from((-1, 2, 10, 1000, 10**6, 10**12)))
        elif action == "type":
            parent[key] = copy.deepcopy(draw(st.sampled_from(OTHER_TYPES)))
        elif action == "resize" and isinstance(current, list):
            how = draw(st.sampled_from(("empty", "drop", "grow", "repeat")))
            parent[key] = ([] if how == "empty" else current[:-1] if how == "drop"
                           else current + current[-1:] if how == "grow" else (current * 50)[:200])
        elif action == "duplicate_label" and isinstance(document.get("labels"), list) and document["labels"]:
            labels = document["labels"]
            labels.append(copy.deepcopy(labels[draw(st.integers(0, len(labels) - 1))]))
        else:
            parent[key] = draw(st.sampled_from(HOSTILE_NUMBERS + OTHER_TYPES))
    return document


def load_values(document: dict[str, Any], family: str) -> str:
    """Validate the mutated values, then (when accepted) load the bundle with them; returns what happened."""
    from MedAnalysisLib.bundles import BundleConfig, load_bundle

    config = BundleConfig.from_dict(copy.deepcopy(document))
    json.loads(config.to_json())  # what was accepted can be written back as plain JSON
    folder = Path(tempfile.mkdtemp(prefix="medanalysis-fuzz-values-"))
    try:
        target = folder / "bundle"
        shutil.copytree(seed_folder(family), target)
        (target / "bundle.json").write_text(json.dumps(document))
        loaded = load_bundle(target)
        built = loaded.model.count_params()
        assert built <= MAX_BUILT_PARAMETERS, f"loading built a model of {built} parameters"
        return "loaded"
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def fuzz(family: str, examples: int, *, deterministic: bool) -> Counter[str]:
    """Run ``examples`` mutations of the ``family`` seed; the outcome counts (``loaded`` or the error type)."""
    outcomes: Counter[str] = Counter()
    seed_folder(family)  # built outside the strategy (building draws Python random numbers)

    @settings(max_examples=examples, deadline=None, database=None, derandomize=deterministic, print_blob=True,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much])
    @given(document=value_mutations(family))
    def run(document: dict[str, Any]) -> None:
        outcome = harness.run_clean(lambda data: load_values(data, family), document)  # type: ignore[arg-type]
        outcomes["loaded" if outcome == "ok" else outcome] += 1

    run()
    return outcomes


@pytest.mark.parametrize("family", SEEDS)
def test_the_seed_loads(family: str) -> None:
    """Mutations start from a bundle that loads, so each refusal below is caused by its mutation."""
    assert load_values(seed_document(family), family) == "loaded"


@pytest.mark.parametrize("family", SEEDS)
def test_fuzz_bundle_values_short(family: str) -> None:
    outcomes = fuzz(family, SHORT_EXAMPLES, deterministic=True)
    assert sum(outcomes.values()) >= SHORT_EXAMPLES // 2
    assert outcomes["BundleError"] > 0, f"no mutation was refused: {dict(outcomes)}"


@pytest.mark.nightly
@pytest.mark.parametrize("family", SEEDS)
def test_fuzz_bundle_values_nightly(family: str) -> None:
    outcomes = fuzz(family, NIGHTLY_EXAMPLES, deterministic=False)
    print(f"bundle values ({family}): {sum(outcomes.values())} executions: {dict(outcomes.most_common())}")
