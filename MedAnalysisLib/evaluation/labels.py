"""Which label of the truth each label of a segmentation bundle is scored against.

A bundle's labels and a dataset's labels are two numberings that need not agree: a bundle trained on organ, vessel
and lesion (1, 2, 3) says nothing about a dataset whose 1 and 2 are the anterior and posterior hippocampus. The
rules (also in ``docs/evaluation.md``):

1. An explicit pairing wins: ``--label-map organ=anterior`` (bundle label on the left, by name or value; dataset
   label on the right, by name or value, or ``none`` to leave a bundle label unscored).
2. Otherwise, when the dataset names its labels (an MSD ``dataset.json``), each bundle label is matched to the
   dataset label of the same name. Names are compared ignoring case and the difference between spaces, ``_`` and
   ``-``; the values may differ.
3. When the dataset names no labels (a CSV manifest, whose label maps carry values only), labels are matched by
   value, and a truth value that the bundle does not have is refused when the case is read.
4. When names are left over on both sides (``organ`` in the bundle, ``anterior`` in the data), or the two share no
   name, the evaluation is refused with the error "expected ..., got ..." before any case runs: either the same
   structures are named differently or they are other structures, and only the user knows which.
5. Otherwise leftovers on one side are not scored, and the evaluation says so: bundle labels the data does not
   annotate (a liver and tumour bundle on liver-only data), or data labels the bundle does not segment.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass

from MedAnalysisLib.errors import InputError
from MedAnalysisLib.labels import MAX_LABEL_VALUE

#: The right-hand side of ``--label-map NAME=none``: the bundle label is not scored.
UNSCORED = "none"


@dataclass(frozen=True)
class LabelMatch:
    """One bundle label and the truth label it is scored against.

    Attributes:
        name: The bundle's label name (the suffix of the per-case columns, e.g. ``dice_<name>``).
        bundle_value: Its value in the prediction.
        truth_value: The value of the matched label in the truth, or None when it is not scored.
        truth_name: The dataset's name of that label (None when the dataset names none).
        matched_by: ``"name"``, ``"value"``, ``"label-map"``, or ``"absent from the data"`` (not scored).
    """

    name: str
    bundle_value: int
    truth_value: int | None
    truth_name: str | None
    matched_by: str

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    def describe(self) -> str:
        """``organ (1) -> anterior (1), by label-map`` and the like, for logs and the printed summary."""
        if self.truth_value is None:
            return f"{self.name} ({self.bundle_value}) not scored ({self.matched_by})"
        truth = f"{self.truth_name} ({self.truth_value})" if self.truth_name else f"value {self.truth_value}"
        return f"{self.name} ({self.bundle_value}) -> {truth}, by {self.matched_by}"


def normalize_name(name: str) -> str:
    """A label name for comparison: case-folded, with runs of spaces, ``_`` and ``-`` as one space."""
    return re.sub(r"[\s_\-]+", " ", str(name)).strip().casefold()


def dataset_names_labels(labels: Mapping[int, str]) -> bool:
    """Whether a dataset's label table names its foreground labels (a name that is only the value does not count:
    that is how manifests of class values are read)."""
    return any(value != 0 and str(name).strip() != str(value) for value, name in labels.items())


def parse_label_map(items: Iterable[str]) -> dict[str, str]:
    """Parse ``["organ=anterior", "lesion=none"]`` (commas also separate pairs) into ``{"organ": "anterior", ...}``.

    Raises:
        InputError: An item is not ``BUNDLE_LABEL=DATA_LABEL`` or a bundle label appears twice.
    """
    pairs: dict[str, str] = {}
    for item in items:
        for part in str(item).split(","):
            if not part.strip():
                continue
            left, sep, right = part.partition("=")
            if not sep or not left.strip() or not right.strip():
                raise InputError(f"expected --label-map BUNDLE_LABEL=DATA_LABEL (e.g. organ=anterior), got {part!r}")
            if left.strip() in pairs:
                raise InputError(f"expected each bundle label once in --label-map, got {left.strip()!r} twice")
            pairs[left.strip()] = right.strip()
    return pairs


def _find(key: str, labels: Mapping[int, str], *, by_name: bool) -> int | None:
    """The value of ``key`` among ``labels``: its name (when ``by_name``), else its value written as an integer."""
    if by_name:
        wanted = normalize_name(key)
        for value, name in labels.items():
            if value != 0 and normalize_name(name) == wanted:
                return int(value)
    text = key.strip()
    if re.fullmatch(r"-?\d+", text):
        return int(text)
    return None


def _listing(labels: Mapping[int, str]) -> str:
    return ", ".join(f"{name} ({value})" for value, name in sorted(labels.items()) if value != 0) or "none"


def match_labels(
    bundle_labels: Mapping[int, str],
    data_labels: Mapping[int, str],
    label_map: Mapping[str, str] | None = None,
    *,
    data_name: str = "the data",
) -> list[LabelMatch]:
    """Pair every foreground bundle label with a truth label (see the module docstring for the rules).

    Args:
        bundle_labels: Bundle label value -> name (background 0 included or not).
        data_labels: Dataset label value -> name (empty when the dataset names none).
        label_map: Explicit pairs, bundle label (name or value) -> dataset label (name or value) or ``"none"``.
        data_name: How the dataset is named in error messages.

    Returns:
        One :class:`LabelMatch` per foreground bundle label, in value order.

    Raises:
        InputError: Labels left unmatched on both sides or no label in common, a ``label_map`` entry naming a label
            that does not exist, or two bundle labels scored against the same truth label.
    """
    label_map = dict(label_map or {})
    named = dataset_names_labels(data_labels)
    foreground = {int(v): str(n) for v, n in bundle_labels.items() if int(v) != 0}
    explicit: dict[int, str] = {}
    for key, target in label_map.items():
        value = _find(key, foreground, by_name=True)
        if value is None or value not in foreground:
            raise InputError(f"expected a label of the bundle ({_listing(foreground)}) on the left of --label-map, "
                             f"got {key!r}")
        explicit[value] = target
    matches: list[LabelMatch] = []
    missing: list[str] = []
    for value, name in sorted(foreground.items()):
        if value in explicit:
            target = explicit[value]
            if target.casefold() == UNSCORED:
                matches.append(LabelMatch(name, value, None, None, "label-map"))
                continue
            truth = _find(target, data_labels, by_name=named)
            if truth is not None and not 0 <= truth <= MAX_LABEL_VALUE:  # no label map holds it: nothing to score
                raise InputError(f"expected a label value in [0, {MAX_LABEL_VALUE}] on the right of --label-map "
                                 f"{name}=..., got {truth}")
            if truth is None or (named and truth not in data_labels):
                wanted = _listing(data_labels) if named else "a label value: the data names no labels"
                raise InputError(f"expected a label of {data_name} ({wanted}) or {UNSCORED!r} on the right of "
                                 f"--label-map {name}=..., got {target!r}")
            matches.append(LabelMatch(name, value, truth, data_labels.get(truth) if named else None, "label-map"))
        elif named:
            truth = _find(name, data_labels, by_name=True)
            if truth is None or truth not in data_labels:
                missing.append(name)
                continue
            matches.append(LabelMatch(name, value, truth, data_labels[truth], "name"))
        else:
            matches.append(LabelMatch(name, value, value, None, "value"))
    if missing:
        unmatched = [n for v, n in sorted(data_labels.items())
                     if v != 0 and v not in {m.truth_value for m in matches}]
        if unmatched or not any(m.truth_value is not None for m in matches):
            # Names left over on both sides (or nothing in common): the same structures named differently, or
            # other structures; either way a guess, so the user pairs them.
            hint = f"--label-map {missing[0]}={unmatched[0] if unmatched else UNSCORED}"
            others = f" and the data's {', '.join(map(repr, unmatched))} match no bundle label" if unmatched else ""
            raise InputError(
                f"expected the labels of {data_name} to include the bundle's labels {list(foreground.values())}"
                f" by name, got {_listing(data_labels)}; no label named {', '.join(map(repr, missing))}{others}. "
                f"Pair them explicitly if they are the same structures (e.g. {hint}), or evaluate on data with "
                "these labels"
            )
        # Every label of the data is matched and the bundle has more: the data does not annotate them.
        matches += [LabelMatch(name, value, None, None, "absent from the data")
                    for value, name in sorted(foreground.items()) if name in missing]
        matches.sort(key=lambda m: m.bundle_value)
    used: dict[int, str] = {}
    for match in matches:
        if match.truth_value is None:
            continue
        if match.truth_value in used:
            raise InputError(f"expected each label of {data_name} to be scored against one bundle label, got "
                             f"{used[match.truth_value]!r} and {match.name!r} both matched to value "
                             f"{match.truth_value}")
        used[match.truth_value] = match.name
    if all(m.truth_value is None for m in matches):
        raise InputError(f"expected at least one bundle label to score, got every label mapped to {UNSCORED!r}")
    return matches


def unscored_truth_labels(matches: Iterable[LabelMatch], data_labels: Mapping[int, str]) -> dict[int, str]:
    """Foreground labels of the dataset that no bundle label is scored against."""
    used = {m.truth_value for m in matches}
    return {int(v): str(n) for v, n in sorted(data_labels.items()) if v != 0 and v not in used}
