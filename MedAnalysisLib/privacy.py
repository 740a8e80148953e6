"""Keeping patient data out of every message: one PHI filter for our messages and for third-party libraries.

Three rules, applied in one place (see ``docs/outputs.md``, "Logging policy"):

1. **One filter.** :func:`redact` replaces every identifying value this process has seen (:func:`remember`) with
   ``[patient data]``. The :class:`~MedAnalysisLib.progress.Reporter` (progress, logs, errors, JSON lines) and the
   :class:`PhiFilter` on the command line's log handler both call it, so MedAnalysis's own messages and third-party
   log records and warnings pass the same filter. Identifying values are remembered only where MedAnalysis has to
   read them anyway: the DICOM SEG writer, which must copy the patient module into the SEG, and the DICOM loader,
   which reads each series' SeriesDescription (free text that sites fill with names and dates).
2. **Third-party chatter is contained.** :func:`contain_third_party` wraps calls into pydicom, highdicom and
   SimpleITK/GDCM that may print: Python warnings and log records raised inside are captured instead of printed,
   then re-logged on ``MedAnalysisLib.thirdparty`` at DEBUG (shown with ``-v`` only) after :func:`redact`. Where the
   identifying values cannot be known (pixel decoding reads no patient attributes), ``quote=False`` keeps only the
   warning's category and origin, never its text.
3. **Quiet defaults.** :func:`install_cli_logging` (run by ``medanalysis``) sets the ``highdicom`` and ``pydicom``
   loggers to WARNING (highdicom's INFO lines per SEG are not for the terminal), routes stray Python warnings into
   logging (``logging.captureWarnings``) and puts a :class:`PhiFilter` on every root handler. SimpleITK's global
   warning display (ITK and GDCM messages printed by C++ straight to stderr, which no Python filter can reach) is
   switched off by :func:`quiet_simpleitk` before MedAnalysis reads DICOM with it.
"""

from __future__ import annotations

import contextlib
import logging
import re
import threading
import warnings
from collections.abc import Iterable, Iterator
from typing import Any

from MedAnalysisLib.sanitize import terminal_field, terminal_message

#: What replaces a remembered identifying value in any message.
REDACTED = "[patient data]"
#: Values (and person-name components) shorter than this are not redacted: a one- or two-character value ("1",
#: "M") would blank out every digit or letter of a message and identifies nobody on its own.
MIN_COMPONENT_LENGTH = 3
#: Purely numeric values shorter than this (StudyID "1", AccessionNumber "42") are not redacted either.
MIN_NUMERIC_LENGTH = 5
#: Placeholder values that sites put in identifying fields; they identify nobody and are common words.
PLACEHOLDERS = frozenset({"none", "unknown", "anonymous", "anonymized", "anonymised", "n/a", "na", "null", "test",
                          "removed", "deidentified"})
#: Logger names whose records :func:`contain_third_party` captures.
THIRD_PARTY_LOGGERS = ("highdicom", "pydicom")
#: The logger that re-emits captured third-party messages (after :func:`redact`).
logger = logging.getLogger("MedAnalysisLib.thirdparty")

#: DICOM attributes whose values identify a patient or a study; :func:`remember_dataset` records them.
IDENTIFYING_KEYWORDS = (
    "PatientName", "PatientID", "PatientBirthDate", "OtherPatientIDs", "OtherPatientNames", "PatientAddress",
    "PatientTelephoneNumbers", "PatientComments", "PatientMotherBirthName", "ResponsiblePerson", "AccessionNumber",
    "StudyID", "StudyDescription", "SeriesDescription", "InstitutionName", "InstitutionAddress",
    "ReferringPhysicianName", "PerformingPhysicianName", "OperatorsName", "IssuerOfPatientID", "MedicalRecordLocator",
    # free text and the acquiring site and device: they identify a patient together with a date (PS3.15 Annex E)
    "ProtocolName", "PerformedProcedureStepDescription", "RequestedProcedureDescription", "ImageComments",
    "InstitutionalDepartmentName", "StationName", "DeviceSerialNumber", "NameOfPhysiciansReadingStudy",
    "PhysiciansOfRecord", "RequestingPhysician", "ScheduledPerformingPhysicianName",
    "AdmittingDiagnosesDescription", "AdditionalPatientHistory", "PatientState", "Occupation", "MilitaryRank",
    "BranchOfService", "CountryOfResidence", "RegionOfResidence", "PatientBirthName", "PatientBirthTime",
    "ContentCreatorName", "DetectorID", "GantryID",
)

_lock = threading.Lock()
_known: set[str] = set()
_pattern: re.Pattern[str] | None = None


def _variants(value: str) -> set[str]:
    """The value and the forms it takes in messages: a person name's components and its caret-free spellings."""
    value = value.strip()
    if len(value) < MIN_COMPONENT_LENGTH or value.lower() in PLACEHOLDERS:
        return set()
    if value.isdigit() and len(value) < MIN_NUMERIC_LENGTH:
        return set()
    found = {value}
    if "^" in value or "=" in value:
        parts = [p.strip() for p in re.split(r"[\^=]", value) if p.strip()]
        found.update(p for p in parts if len(p) >= MIN_COMPONENT_LENGTH)
        found.add(" ".join(parts))
        found.add(", ".join(parts[:2]))
    if "\\" in value:  # multi-valued elements (OtherPatientIDs)
        found.update(v.strip() for v in value.split("\\") if len(v.strip()) >= MIN_COMPONENT_LENGTH)
    return {v for v in found if len(v) >= MIN_COMPONENT_LENGTH and v.lower() not in PLACEHOLDERS}


def remember(values: Iterable[Any]) -> None:
    """Add identifying values (and their name components) to the set that :func:`redact` removes."""
    global _pattern
    new: set[str] = set()
    for value in values:
        if value is None:
            continue
        new |= _variants(str(value))
    with _lock:
        if new - _known:
            _known.update(new)
            ordered = sorted(_known, key=len, reverse=True)  # the longest form first: no half-redacted names
            _pattern = re.compile("|".join(re.escape(v) for v in ordered))


def remember_dataset(dataset: Any) -> None:
    """Remember the :data:`IDENTIFYING_KEYWORDS` values of a pydicom dataset (present ones only)."""
    values = []
    for keyword in IDENTIFYING_KEYWORDS:
        value = dataset.get(keyword) if hasattr(dataset, "get") else None
        if value is None or value == "":
            continue
        if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
            values.extend(str(v) for v in value)
        else:
            values.append(str(value))
    remember(values)


def forget_all() -> None:
    """Clear the remembered values (tests; a long-lived process that wants a clean slate)."""
    global _pattern
    with _lock:
        _known.clear()
        _pattern = None


def redact(text: Any) -> str:
    """``text`` with every remembered identifying value replaced by :data:`REDACTED`."""
    text = str(text)
    pattern = _pattern
    return pattern.sub(REDACTED, text) if pattern is not None else text


def redact_value(value: Any) -> Any:
    """:func:`redact` applied to every string inside a JSON-like value (dicts, lists, strings)."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {k: redact_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact_value(v) for v in value]
    return value


class PhiFilter(logging.Filter):
    """A logging filter that passes every record, with its message rewritten by :func:`redact`."""

    def filter(self, record: logging.LogRecord) -> bool:  # noqa: A003 - logging's API
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a malformed third-party record: keep only its origin
            message = f"(unformattable message from {record.name})"
        record.msg = terminal_message(redact(message))  # records reach terminals: no escape sequences, no forged lines
        record.args = None
        if record.exc_info and record.exc_info[1] is not None:
            # Tracebacks quote exception messages; keep the type and our redacted text only.
            record.msg = (f"{record.msg} ({type(record.exc_info[1]).__name__}: "
                          f"{terminal_field(redact(record.exc_info[1]))})")
            record.exc_info = None
            record.exc_text = None
        return True


class _Collector(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@contextlib.contextmanager
def contain_third_party(context: str, *, quote: bool = True) -> Iterator[None]:
    """Capture the warnings and log records (``highdicom``, ``pydicom``) raised inside the block.

    On exit (also on an exception) each is re-logged on ``MedAnalysisLib.thirdparty`` at DEBUG: ``"<context>:
    <origin> <category>: <redacted text>"``, or without the text when ``quote`` is False (for code that reads no
    patient attributes, so :func:`redact` cannot know what to remove).

    Args:
        context: What MedAnalysis was doing, e.g. ``"writing the DICOM SEG"``.
        quote: Keep the (redacted) message text.
    """
    collector = _Collector()
    loggers = [logging.getLogger(name) for name in THIRD_PARTY_LOGGERS]
    saved = [(lg, lg.propagate) for lg in loggers]
    for lg in loggers:  # levels are left alone: what the libraries would not log is not collected either
        lg.addHandler(collector)
        lg.propagate = False
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield
    finally:
        for lg, propagate in saved:
            lg.removeHandler(collector)
            lg.propagate = propagate
        for warning in caught:
            origin = getattr(warning, "filename", "") or ""
            origin = origin.replace("\\", "/").split("/site-packages/")[-1].split("/")[0] or "python"
            text = f": {redact(warning.message)}" if quote else " (text withheld: it may quote patient data)"
            logger.debug("%s: %s %s%s", context, origin, warning.category.__name__, text)
        for record in collector.records:
            if record.levelno < logging.WARNING and record.name.startswith("highdicom"):
                continue  # highdicom's INFO/DEBUG narration of the attributes it copies: nothing to report
            try:
                message = record.getMessage()
            except Exception:  # noqa: BLE001
                message = "(unformattable)"
            text = f": {redact(message)}" if quote else " (text withheld: it may quote patient data)"
            logger.debug("%s: %s %s%s", context, record.name, record.levelname, text)


_simpleitk_quiet = False


def quiet_simpleitk() -> None:
    """Switch off ITK/GDCM warnings printed by C++ to stderr (they may quote header values; no filter reaches them)."""
    global _simpleitk_quiet
    if _simpleitk_quiet:
        return
    import SimpleITK as sitk

    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    _simpleitk_quiet = True


def install_cli_logging(verbose: bool = False) -> None:
    """The command line's logging policy (module docstring, rule 3); idempotent."""
    for name in THIRD_PARTY_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    logging.captureWarnings(True)
    root = logging.getLogger()
    for handler in root.handlers:
        if not any(isinstance(f, PhiFilter) for f in handler.filters):
            handler.addFilter(PhiFilter())
    # Stray library warnings now reach the terminal as log records, through the same filter; -v adds DEBUG records
    # (the contained third-party messages, redacted).
    logging.getLogger("py.warnings").setLevel(logging.DEBUG if verbose else logging.WARNING)
