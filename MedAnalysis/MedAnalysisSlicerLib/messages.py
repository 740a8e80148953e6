"""Texts the panel shows, and the repair of stored panel settings: plain Python the module file uses.

Names in these texts come from bundles, files and the worker (label names, bundle names, node names, error messages
that quote them). The panel's labels, table cells and message boxes show plain text, and every such name first
passes :func:`displayText` (messages: :func:`errorText`), so a control character, a line break or a bidirectional
override shows as a visible escape instead of reshaping what the user reads. The one rich-text label, the model card,
escapes its values with :func:`MedAnalysisLib.sanitize.html_text`.

Kept out of ``MedAnalysis.py`` so that the module file stays the Qt-facing part only (and loadable by an older
Slicer's Python to say it is unsupported); tested with the panel in ``Testing/test_module_widget.py``.
"""

from __future__ import annotations

import math
import typing

from MedAnalysisLib.errors import MedAnalysisError
from MedAnalysisLib.sanitize import terminal_field, terminal_message

try:  # Slicer's translation function where it exists; the text as it is elsewhere
    from slicer.i18n import tr as _
except ImportError:
    def _(text: str) -> str:
        return text


#: The longest name the panel shows in a label or a table cell (a longer one ends with how many characters were
#: left out).
DISPLAY_LIMIT = 200


def displayText(value) -> str:
    """A name from a bundle, a file or the scene as the panel shows it: one line, control and invisible characters
    as visible escapes, at most :data:`DISPLAY_LIMIT` characters."""
    return terminal_field("" if value is None else value, DISPLAY_LIMIT)


def errorText(error) -> str:
    """What the panel shows for a failure: the library's own message, else the exception's class and text; control
    characters shown as escapes, the message's own line breaks kept (see the module docstring)."""
    return terminal_message(_rawErrorText(error))


def _rawErrorText(error) -> str:
    if isinstance(error, str):
        return error
    if isinstance(error, MedAnalysisError):
        return str(error)
    if isinstance(error, OSError) and error.strerror:
        return f"{error.strerror}: {error.filename}" if error.filename else error.strerror
    return f"{type(error).__name__}: {error}"


def pipErrorText(error) -> str:
    """pip's own message: the last lines it printed, or where Slicer showed them."""
    lines: list[str] = []
    for stream in (getattr(error, "stderr", None), getattr(error, "output", None)):
        if isinstance(stream, bytes):
            stream = stream.decode("utf-8", "replace")
        if isinstance(stream, str):
            lines += [line for line in stream.strip().splitlines() if line.strip()]
    if lines:
        return terminal_message("\n".join(lines[-6:]))
    return _("{error} (pip's log is in the window Slicer showed and in the Python console)").format(
        error=errorText(error))


def repairStoredParameters(mrmlNode, parameterClass) -> None:
    """Make a parameter node from a saved scene (an earlier release, or edited by hand) showable by the panel.

    A stored choice the widgets do not offer makes Slicer's GUI connection raise, and a number outside its range
    would run as it is: such values go back to their defaults (the first choice; the nearest bound) before the GUI
    is connected. The earlier test-time augmentation checkbox ("True"/"False") becomes "on"/"bundle default".

    Args:
        mrmlNode: The ``vtkMRMLScriptedModuleNode`` holding the stored values.
        parameterClass: The ``@parameterNodeWrapper`` class whose ``Choice``/``WithinRange`` annotations apply.
    """
    try:
        hints = typing.get_type_hints(parameterClass, include_extras=True)
    except Exception:  # noqa: BLE001 - without the annotations there is nothing to check against
        return
    legacy = {("testTimeAugmentation", "True"): "on", ("testTimeAugmentation", "False"): "bundle default"}
    for name, hint in hints.items():
        raw = mrmlNode.GetParameter(name)
        if not raw:
            continue
        for rule in getattr(hint, "__metadata__", ()):
            choices = getattr(rule, "choices", None)
            if choices is not None and raw not in [str(choice) for choice in choices]:
                mrmlNode.SetParameter(name, legacy.get((name, raw), str(choices[0])))
            low, high = getattr(rule, "minimum", None), getattr(rule, "maximum", None)
            if low is not None and high is not None:
                try:
                    value = float(raw)
                except ValueError:
                    value = math.nan
                repaired = min(max(value, low), high) if math.isfinite(value) else low
                if repaired != value:
                    mrmlNode.SetParameter(name, str(int(repaired) if typing.get_args(hint)[0] is int else repaired))
