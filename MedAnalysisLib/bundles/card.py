"""The model card a bundle carries (``bundle.json`` key ``"card"``): who made the model, for what, on which data, how
well it did, and what it must not be used for.

The fields follow the questions a reader needs answered before trusting a model (the model-card literature and
MONAI's bundle metadata ask the same ones): authors, version and changelog, licence and citation, intended and
out-of-scope use, the training data (name, licence, reference, number of cases, description), the evaluation (data,
number of cases, metrics with confidence intervals), limitations, references, and whether the model may be used
clinically. ``clinical_use`` is "not for clinical use" unless the author states otherwise by giving it.

A card comes from files someone else wrote, so :func:`check_card` checks it like the rest of ``bundle.json``: unknown
keys refused, every text bounded and printable (no control, bidirectional or invisible characters; line breaks only
in the longer fields), numbers finite, counts non-negative integers. It returns the card in one complete form (every
field present; unknown values empty), so readers never test for missing keys. :func:`card_sections` turns a card
into the headings and rows that ``medanalysis info`` and the Slicer panel show (plain text; each caller escapes for
its own sink).

Nothing here imports TensorFlow, Keras or Qt.
"""

from __future__ import annotations

import copy
import datetime
import math
import re
import time
from collections.abc import Mapping, Sequence
from typing import Any

from MedAnalysisLib.errors import BundleError, MedAnalysisError
from MedAnalysisLib.sanitize import terminal_field

#: What ``clinical_use`` says unless the author states otherwise.
NOT_FOR_CLINICAL_USE = "not for clinical use"
#: How a field without a value is shown.
NOT_STATED = "not stated"
#: The version ``train`` gives a new model unless told otherwise.
DEFAULT_VERSION = "1.0.0"

#: Longest texts: a name or a version, a reference or a citation, a paragraph (intended use, a description).
SHORT, MEDIUM, LONG = 200, 1000, 4000
#: Longest lists (authors, changelog entries, limitations, references, metrics).
MAX_ITEMS = 100
#: Largest case count accepted (far beyond any dataset; a typo of several digits is refused).
MAX_CASES = 10_000_000

#: Text fields at the top of the card, with their longest length (MEDIUM and LONG allow line breaks).
_TEXT_FIELDS = {"version": SHORT, "license": SHORT, "citation": MEDIUM, "intended_use": LONG,
                "out_of_scope_use": LONG, "clinical_use": LONG}
#: List-of-text fields, with the longest length of one item.
_LIST_FIELDS = {"authors": SHORT, "limitations": LONG, "references": MEDIUM}
TRAINING_DATA_TEXT = {"name": SHORT, "license": SHORT, "reference": MEDIUM, "description": LONG}
METRIC_KEYS = ("name", "value", "ci_low", "ci_high", "level", "n")
CHANGELOG_KEYS = ("version", "date", "changes")
#: Every field of a card, in the order they are written.
CARD_FIELDS = ("clinical_use", "authors", "version", "changelog", "license", "citation", "intended_use",
               "out_of_scope_use", "training_data", "evaluation", "limitations", "references")
_DATE = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$")


def default_card() -> dict[str, Any]:
    """The card of a model nobody described: not for clinical use, everything else unknown."""
    return {
        "clinical_use": NOT_FOR_CLINICAL_USE, "authors": [], "version": "", "changelog": [], "license": "",
        "citation": "", "intended_use": "", "out_of_scope_use": "",
        "training_data": {"name": "", "license": "", "reference": "", "n_cases": None, "description": ""},
        "evaluation": {"data": "", "n_cases": None, "metrics": []},
        "limitations": [], "references": [],
    }


def today() -> str:
    """Today's date (UTC) as a changelog writes it, ``YYYY-MM-DD``."""
    return time.strftime("%Y-%m-%d", time.gmtime())


# ----------------------------------------------------------------------------------------------------- checking
class _Checker:
    """Checks one card and raises ``error`` (a :class:`BundleError` for bundles, an ``InputError`` for files a user
    names) with "expected ..., got ..." messages that never quote more than a few characters of a value."""

    def __init__(self, error: type[MedAnalysisError]) -> None:
        self.error = error

    def expect(self, condition: bool, message: str) -> None:
        if not condition:
            raise self.error(message)

    def keys(self, where: str, data: Any, allowed: Sequence[str], required: Sequence[str] = ()) -> None:
        self.expect(isinstance(data, Mapping), f"expected {where} to be a JSON object, got {_kind(data)}")
        unknown = sorted(str(key) for key in set(data) - set(allowed))
        self.expect(not unknown, f"expected only the keys {sorted(allowed)} in {where}, got unknown "
                                 f"{_shown(unknown)}")
        missing = sorted(set(required) - set(data))
        self.expect(not missing, f"expected {where} to have the keys {missing}, they are missing")

    def text(self, where: str, value: Any, limit: int) -> str:
        """Text of at most ``limit`` characters, with no control, bidirectional or invisible characters; line breaks
        (``\\n``) only when ``limit`` is above :data:`SHORT`."""
        self.expect(isinstance(value, str), f"expected {where} to be text, got {_kind(value)}")
        self.expect(len(value) <= limit, f"expected {where} of at most {limit} characters, got {len(value)}")
        lines = value.split("\n") if limit > SHORT else [value]
        bad = next((line for line in lines if terminal_field(line) != line), None)
        self.expect(bad is None, f"expected {where} to be printable text"
                                 f"{' (line breaks allowed)' if limit > SHORT else ' on one line'}, got control, "
                                 f"bidirectional or invisible characters: {_shown(terminal_field(bad or ''))}")
        return value

    def texts(self, where: str, value: Any, limit: int) -> list[str]:
        """A list of texts, none empty or only spaces (it would show as a blank author, limitation or reference)."""
        self.expect(isinstance(value, list), f"expected {where} to be a list of texts, got {_kind(value)}")
        self.expect(len(value) <= MAX_ITEMS, f"expected at most {MAX_ITEMS} items in {where}, got {len(value)}")
        items = [self.text(f"{where}[{n}]", item, limit) for n, item in enumerate(value)]
        for n, item in enumerate(items):
            self.expect(item.strip() != "", f"expected {where}[{n}] to be a non-empty text, got {_shown(item)}")
        return items

    def count(self, where: str, value: Any) -> int | None:
        """A number of cases: an integer from 0 to :data:`MAX_CASES`, or null (unknown)."""
        self.expect(value is None or (type(value) is int and 0 <= value <= MAX_CASES),
                    f"expected {where} to be an integer from 0 to {MAX_CASES} or null, got {_shown(value)}")
        return value

    def number(self, where: str, value: Any, optional: bool) -> float | None:
        if optional and value is None:
            return None
        finite = (isinstance(value, float) and math.isfinite(value)) or (
            isinstance(value, int) and not isinstance(value, bool) and abs(value) <= 2**53)  # no float overflow
        self.expect(finite, f"expected {where} to be a finite number{' or null' if optional else ''}, got "
                            f"{_shown(value)}")
        return float(value) if isinstance(value, float) else value

    def changelog(self, value: Any) -> list[dict[str, str]]:
        self.expect(isinstance(value, list), f"expected card.changelog to be a list, got {_kind(value)}")
        self.expect(len(value) <= MAX_ITEMS, f"expected at most {MAX_ITEMS} changelog entries, got {len(value)}")
        entries: list[dict[str, str]] = []
        for n, entry in enumerate(value):
            where = f"card.changelog[{n}]"
            self.keys(where, entry, CHANGELOG_KEYS, CHANGELOG_KEYS)
            date = self.date(f"{where}.date", entry["date"])
            self.expect(not entries or entries[-1]["date"] <= date,
                        f"expected the changelog oldest first ({where}.date on or after "
                        f"{entries[-1]['date'] if entries else ''}), got {date}")
            entries.append({"version": self.text(f"{where}.version", entry["version"], SHORT), "date": date,
                            "changes": self.text(f"{where}.changes", entry["changes"], LONG)})
        return entries

    def date(self, where: str, value: Any) -> str:
        """A real calendar date written ``YYYY-MM-DD`` (not 2026-02-30 or 2026-13-01)."""
        date = self.text(where, value, SHORT)
        self.expect(bool(_DATE.match(date)), f"expected {where} as YYYY-MM-DD, got {_shown(date)}")
        try:
            datetime.date.fromisoformat(date)
        except ValueError:
            self.expect(False, f"expected {where} to be a real calendar date (YYYY-MM-DD), got {_shown(date)}")
        return date

    def training_data(self, value: Any) -> dict[str, Any]:
        """The training-data fields ``value`` gives, checked (a part may give some: they are merged key by key)."""
        self.keys("card.training_data", value, (*TRAINING_DATA_TEXT, "n_cases"))
        found: dict[str, Any] = {key: self.text(f"card.training_data.{key}", value[key], limit)
                                 for key, limit in TRAINING_DATA_TEXT.items() if key in value}
        if "n_cases" in value:
            found["n_cases"] = self.count("card.training_data.n_cases", value["n_cases"])
        return found

    def metric(self, where: str, value: Any) -> dict[str, Any]:
        self.keys(where, value, METRIC_KEYS, ("name", "value"))
        name = self.text(f"{where}.name", value["name"], SHORT)
        self.expect(name.strip() != "", f"expected {where}.name to name the metric, got an empty text")
        low = self.number(f"{where}.ci_low", value.get("ci_low"), optional=True)
        high = self.number(f"{where}.ci_high", value.get("ci_high"), optional=True)
        level = self.number(f"{where}.level", value.get("level"), optional=True)
        self.expect((low is None) == (high is None),
                    f"expected both ends of {where}'s interval or neither, got ci_low {low} and ci_high {high}")
        self.expect(low is None or low <= high,  # type: ignore[operator]
                    f"expected {where}.ci_low <= ci_high, got {low} and {high}")
        self.expect(level is None or 0 < level < 1, f"expected {where}.level in (0, 1) or null, got {level}")
        self.expect(low is None or level is not None, f"expected {where}.level (e.g. 0.95) with its interval, "
                                                      "got none")
        number = self.number(f"{where}.value", value["value"], optional=False)
        slack = 0.0 if low is None else 1e-9 * max(1.0, abs(low), abs(high))  # type: ignore[arg-type]
        # a rounding step apart is the same number (a mean and a bootstrap bound summed in another order)
        self.expect(low is None or low - slack <= number <= high + slack,  # type: ignore[operator]
                    f"expected {where}.value within its interval [{low}, {high}], got {number}")
        if _is_fraction_metric(name):  # Dice 1.7 or an AUC interval reaching 1.2 is a mistake, whoever wrote it
            self.expect(all(v is None or 0 <= v <= 1 for v in (number, low, high)),
                        f"expected {where} ({_shown(name)}, a fraction) and its interval within [0, 1], got "
                        f"{number} [{low}, {high}]")
        return {"name": name, "value": number, "ci_low": low, "ci_high": high, "level": level,
                "n": self.count(f"{where}.n", value.get("n"))}

    def evaluation(self, value: Any) -> dict[str, Any]:
        self.keys("card.evaluation", value, ("data", "n_cases", "metrics"))
        metrics = value.get("metrics", [])
        self.expect(isinstance(metrics, list), f"expected card.evaluation.metrics to be a list, got {_kind(metrics)}")
        self.expect(len(metrics) <= MAX_ITEMS, f"expected at most {MAX_ITEMS} metrics, got {len(metrics)}")
        checked = [self.metric(f"card.evaluation.metrics[{n}]", m) for n, m in enumerate(metrics)]
        seen: dict[str, int] = {}
        for n, metric in enumerate(checked):  # "Dice" and "dice " read as one metric with two values
            key = " ".join(metric["name"].split()).casefold()
            self.expect(key not in seen, f"expected unique metric names in card.evaluation, got "
                                         f"{_shown(metric['name'])} at metrics[{seen.get(key)}] and metrics[{n}]")
            seen[key] = n
        cases = self.count("card.evaluation.n_cases", value.get("n_cases"))
        if cases is not None:  # a metric cannot rest on more cases than the evaluation had, nor metrics on none
            self.expect(cases > 0 or not checked, f"expected card.evaluation.n_cases above 0 with metrics, got "
                                                  f"{cases} and {len(checked)} metric(s)")
            over = next((m for m in checked if m["n"] is not None and m["n"] > cases), None)
            self.expect(over is None, f"expected each metric's n at most card.evaluation.n_cases ({cases}), got "
                                      f"n={over['n'] if over else ''} for {_shown(over['name'] if over else '')}")
        return {"data": self.text("card.evaluation.data", value.get("data", ""), LONG), "n_cases": cases,
                "metrics": checked}


#: Metrics that are fractions by definition (the first word of a metric's name, case-insensitive): Dice 0.9, not 90.
FRACTION_METRICS = frozenset({"dice", "auc", "accuracy", "sensitivity", "specificity", "precision", "recall", "f1",
                              "iou", "jaccard", "ppv", "npv", "balanced_accuracy"})


def _is_fraction_metric(name: str) -> bool:
    words = re.split(r"[^a-z0-9]+", name.casefold())
    first = next((word for word in words if word), "")
    return first in FRACTION_METRICS or name.casefold().startswith("balanced_accuracy")


def _kind(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _shown(value: Any) -> str:
    """A value for a message: escaped, and short (a hostile value can be megabytes)."""
    return terminal_field(repr(value), 60)


def _check_fields(data: Any, checker: _Checker) -> dict[str, Any]:
    """The fields ``data`` gives, each checked (no defaults added)."""
    checker.keys("card", data, CARD_FIELDS)
    found: dict[str, Any] = {}
    for key, value in data.items():
        if key in _TEXT_FIELDS:
            found[key] = checker.text(f"card.{key}", value, _TEXT_FIELDS[key])
        elif key in _LIST_FIELDS:
            found[key] = checker.texts(f"card.{key}", value, _LIST_FIELDS[key])
        elif key == "changelog":
            found[key] = checker.changelog(value)
        elif key == "training_data":
            found[key] = checker.training_data(value)
        else:
            found[key] = checker.evaluation(value)
    if "clinical_use" in found:
        checker.expect(found["clinical_use"].strip() != "",
                       f"expected card.clinical_use to state the clinical use (leave it out for "
                       f"{NOT_FOR_CLINICAL_USE!r}), got an empty text")
    return found


def check_card(data: Any, error: type[MedAnalysisError] = BundleError) -> dict[str, Any]:
    """The complete card of ``data`` (a JSON object with any of :data:`CARD_FIELDS`), every value checked; fields it
    leaves out are empty, and ``clinical_use`` is :data:`NOT_FOR_CLINICAL_USE`.

    Raises:
        BundleError: (or ``error``) An unknown key, a wrong type, a text too long or not printable, a number that is
            not finite, a count that is not a non-negative integer, an interval with one end or reversed ends, a
            metric value outside its own interval, two metrics of one name in the evaluation, an empty author,
            limitation or reference, a changelog date that is not a real calendar date or is older than the entry
            before it.
    """
    return merge_cards(default_card(), check_card_part(data, error))


def check_card_part(data: Any, error: type[MedAnalysisError] = BundleError) -> dict[str, Any]:
    """The fields ``data`` gives (a part of a card, as a ``--card`` file or options give it), each checked as
    :func:`check_card` checks it, without adding the others."""
    return _check_fields(data, _Checker(error))


def merge_cards(base: Mapping[str, Any], *parts: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with the fields of each part in turn replacing its own (later parts win).

    ``training_data`` is merged key by key (a part may add a description to the name and licence ``train`` found);
    every other field, ``evaluation`` included, is replaced as a whole (an evaluation's text, counts and metrics
    describe one evaluation and are never mixed with another's).
    """
    card = copy.deepcopy(dict(base))
    for part in parts:
        for key, value in part.items():
            if key == "training_data" and isinstance(card.get(key), Mapping):
                card[key] = {**card[key], **copy.deepcopy(dict(value))}
            else:
                card[key] = copy.deepcopy(value)
    return card


def with_change(card: Mapping[str, Any], changes: str, version: str | None = None) -> dict[str, Any]:
    """``card`` with one changelog entry appended: its version (or ``version``), today's date and ``changes``."""
    updated = copy.deepcopy(dict(card))
    entry = {"version": updated.get("version", "") if version is None else version, "date": today(),
             "changes": fit_text(changes, LONG, multiline=True)}
    updated["changelog"] = [*updated.get("changelog", []), entry][-MAX_ITEMS:]
    return updated


def fit_text(value: Any, limit: int, multiline: bool = False) -> str:
    """Untrusted text (a downloaded ``dataset.json``'s name, an evaluation's data name) made to fit a card: control,
    bidirectional and invisible characters become visible escapes (``\\x1b``), line breaks are kept only when
    ``multiline``, and text beyond ``limit`` is cut with a count of what was left out. The result passes
    :func:`check_card` for a field of that limit."""
    lines = str(value).replace("\r\n", "\n").replace("\r", "\n").split("\n")
    text = "\n".join(terminal_field(line) for line in lines) if multiline else terminal_field(str(value))
    return _cut(text, limit)


def _cut(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` characters, ending with how many were left out."""
    if len(text) <= limit:
        return text
    keep = limit - len(f"... ({len(text)} more characters)")
    return f"{text[:keep]}... ({len(text) - keep} more characters)"


# ------------------------------------------------------------------------------- evaluations and training runs
def evaluation_from_summary(summary: Any, weights_sha256: str | None, task: str | None,
                            error: type[MedAnalysisError] = BundleError) -> dict[str, Any]:
    """The card's ``evaluation`` from the ``summary.json`` that ``medanalysis evaluate`` writes: each headline
    metric (segmentation: Dice and HD95 per label; classification: accuracy and, for two classes, AUC) with its mean,
    its bootstrap interval and level, and its count; the data's name and how the intervals were drawn as the text.

    The summary is a file handed in, so it is checked: it must be of this bundle (``weights_sha256``, when given, as
    the summary records it; an ensemble's is its members' fingerprint) and task; texts are made to fit
    (:func:`fit_text`); a metric without a value (a label absent from every case) is left out and named in the text.

    Raises:
        BundleError: (or ``error``) Not a summary of ``medanalysis evaluate``, another bundle's or task's summary,
            values of the wrong type or not finite.
    """
    checker = _Checker(error)
    checker.expect(isinstance(summary, Mapping), f"expected a summary.json object, got {_kind(summary)}")
    missing = sorted({"bundle", "data", "cases", "bootstrap", "headline_ci"} - set(summary))
    checker.expect(not missing, f"expected the summary.json of medanalysis evaluate, got one without {missing}")
    bundle, boot, headline = summary["bundle"], summary["bootstrap"], summary["headline_ci"]
    for where, value in (("bundle", bundle), ("bootstrap", boot), ("headline_ci", headline)):
        checker.expect(isinstance(value, Mapping), f"expected summary.json {where} to be an object, got {_kind(value)}")
    if weights_sha256 is not None:
        checker.expect(bundle.get("weights_sha256") == weights_sha256,
                       f"expected the summary of this bundle (weights sha256 {weights_sha256}), got one of weights "
                       f"{_shown(bundle.get('weights_sha256'))}")
    if task is not None:
        checker.expect(bundle.get("task") == task, f"expected the summary of a {task} bundle, got one of "
                                                   f"{_shown(bundle.get('task'))}")
    cases = checker.count("summary.json cases", summary["cases"])
    level = checker.number("summary.json bootstrap.level", boot.get("level"), optional=True)
    metrics, left_out = [], []
    for name, stats in list(headline.items())[:MAX_ITEMS]:
        checker.expect(isinstance(stats, Mapping), f"expected summary.json headline_ci.{_shown(name)} to be an object, "
                                                   f"got {_kind(stats)}")
        value = stats.get("mean", stats.get("value"))
        if value is None:
            left_out.append(fit_text(name, SHORT))
            continue
        metric = {"name": fit_text(name, SHORT), "value": value, "ci_low": stats.get("ci_low"),
                  "ci_high": stats.get("ci_high"), "n": stats.get("n", cases)}
        metric["level"] = stats.get("ci_level", level) if metric["ci_low"] is not None else None
        metrics.append(checker.metric(f"summary.json headline_ci.{metric['name']}", metric))
    unit = "groups of cases" if boot.get("unit") == "group" else "cases"
    how = (f"95% intervals: percentile bootstrap over {fit_text(boot.get('n_units'), SHORT)} {unit}, "
           f"{fit_text(boot.get('resamples'), SHORT)} resamples" if boot.get("resamples")
           else "no intervals computed (bootstrap 0)")
    text = f"{fit_text(summary['data'], MEDIUM)} ({cases} cases; medanalysis evaluate; {how})"
    if left_out:
        text += f"; left out, no value: {', '.join(left_out)}"
    return checker.evaluation({"data": fit_text(text, LONG, multiline=True), "n_cases": cases, "metrics": metrics})


def evaluation_from_run(metrics: Mapping[str, Any], n_val: int, best_epoch: int | None) -> dict[str, Any]:
    """The card's ``evaluation`` from a training run's validation metrics (``val_...`` of the kept epoch; losses
    are left out). A run keeps aggregate values only, no per-case ones, so no interval is computed and the text
    says so; without validation cases the evaluation is empty."""
    if not n_val:
        return {"data": "none: trained without validation cases", "n_cases": 0, "metrics": []}
    found = [{"name": fit_text(name[len("val_"):], SHORT), "value": float(value), "ci_low": None, "ci_high": None,
              "level": None, "n": n_val}
             for name, value in metrics.items()
             if name.startswith("val_") and not name.endswith("loss") and isinstance(value, (int, float))
             and not isinstance(value, bool) and math.isfinite(value)]
    epoch = f" of the kept epoch {best_epoch}" if best_epoch is not None else ""
    text = (f"validation cases held out from the training data ({n_val}); metrics as training computed them over "
            f"the validation batches{epoch} (patches or slices for patch- and slice-based models, not whole-scan "
            "results); no confidence interval was computed: the run keeps no per-case values. For intervals, run "
            "medanalysis evaluate on held-out cases and add its summary.json with medanalysis configure "
            "--evaluation.")
    return {"data": text, "n_cases": n_val, "metrics": found[:MAX_ITEMS]}


# ---------------------------------------------------------------------------------------------- showing a card
def _or_not_stated(value: Any) -> str:
    if value is None or value == [] or (isinstance(value, str) and not value.strip()):  # "  " reads as nothing
        return NOT_STATED
    return str(value)


def _number(value: float) -> str:
    return f"{value:.4g}"


def metric_text(metric: Mapping[str, Any]) -> str:
    """``0.912 (95% CI 0.880 to 0.940, n=20)``, or ``0.912 (no interval computed, n=20)``."""
    n = f", n={metric['n']}" if metric.get("n") is not None else ""
    if metric.get("ci_low") is None:
        return f"{_number(metric['value'])} (no interval computed{n})"
    level = f"{metric['level'] * 100:g}% CI" if metric.get("level") is not None else "CI"
    return f"{_number(metric['value'])} ({level} {_number(metric['ci_low'])} to {_number(metric['ci_high'])}{n})"


def _card_of(config_or_card: Any) -> dict[str, Any]:
    card = getattr(config_or_card, "card", config_or_card)
    return check_card(card if card is not None else {})


def card_sections(config_or_card: Any) -> list[tuple[str, list[tuple[str, str]]]]:
    """The card as ``[(heading, [(label, value), ...]), ...]`` for display: plain text, NOT escaped (each caller
    escapes for its sink: :func:`~MedAnalysisLib.sanitize.terminal_field` on terminals,
    :func:`~MedAnalysisLib.sanitize.html_text` in Qt rich text). The clinical use is always the first row; a field
    without a value reads :data:`NOT_STATED`. Long values may hold line breaks.

    Args:
        config_or_card: A :class:`~MedAnalysisLib.bundles.BundleConfig` (its ``card``) or a card mapping (checked).
    """
    card = _card_of(config_or_card)
    data, evaluation = card["training_data"], card["evaluation"]
    changelog = [f"{_or_not_stated(e['version'])}, {e['date']}: {e['changes']}" for e in card["changelog"]]
    metrics = [(m["name"], metric_text(m)) for m in evaluation["metrics"]] or [("Metrics", NOT_STATED)]
    return [
        ("Use", [("Clinical use", card["clinical_use"]), ("Intended use", _or_not_stated(card["intended_use"])),
                 ("Out of scope", _or_not_stated(card["out_of_scope_use"]))]),
        ("Model", [("Version", _or_not_stated(card["version"])), ("Authors", _or_not_stated("; ".join(card["authors"]))),
                   ("License", _or_not_stated(card["license"])), ("Citation", _or_not_stated(card["citation"])),
                   *_rows("Changelog", changelog)]),
        ("Training data", [("Name", _or_not_stated(data["name"])), ("License", _or_not_stated(data["license"])),
                           ("Reference", _or_not_stated(data["reference"])),
                           ("Cases", _or_not_stated(data["n_cases"])),
                           ("Description", _or_not_stated(data["description"]))]),
        ("Evaluation", [("Data", _or_not_stated(evaluation["data"])), ("Cases", _or_not_stated(evaluation["n_cases"])),
                        *metrics]),
        ("Limitations", _rows("Limitation", card["limitations"])),
        ("References", _rows("Reference", card["references"])),
    ]


def _rows(label: str, values: Sequence[str]) -> list[tuple[str, str]]:
    """One row per value (the label on the first only), or one row saying nothing was stated."""
    if not values:
        return [(label, NOT_STATED)]
    return [(label if n == 0 else "", value) for n, value in enumerate(values)]


__all__ = ["CARD_FIELDS", "DEFAULT_VERSION", "NOT_FOR_CLINICAL_USE", "NOT_STATED", "card_sections", "check_card",
           "check_card_part", "default_card", "evaluation_from_run", "evaluation_from_summary", "fit_text",
           "merge_cards", "metric_text", "today", "with_change"]
