"""Text from files, made safe for the place it is shown or stored.

Label names, bundle names and descriptions, DICOM descriptions, file names and error messages that quote them come
from files someone else wrote. Each sink reads text its own way, so each has its own function:

* a terminal obeys escape sequences (colours, cursor moves, window titles, hyperlinks, clearing the screen) and
  starts a new line at ``\\n``, ``\\r`` and the Unicode line separators: :func:`terminal_field` shows every control
  character of one value as a visible escape (``\\x1b``), so the value stays on its line and changes nothing;
  :func:`terminal_message` does the same for a message of several lines, keeping the line breaks the message was
  written with but indenting the continuation lines, so that no value can forge a line of its own (an ``error:``
  or ``Done.`` line). Bidirectional overrides and invisible characters are escaped too: they make text read
  differently from what it is;
* a spreadsheet runs a cell that starts with ``=``, ``+``, ``-``, ``@`` (also their full-width forms, and after
  leading blanks, tabs or line breaks) as a formula: :func:`csv_cell` prefixes such text with an apostrophe, the
  convention spreadsheets show as text. Numbers, and text that reads as a number (``-1.5``), are left as they are;
* Qt labels render rich text: :func:`html_text` escapes markup (and control characters) for labels that must show
  rich text; plain labels use ``Qt.PlainText`` and :func:`terminal_field` for the control characters.

:func:`terminal_field`, :func:`terminal_message` and :func:`csv_cell` return text that a second pass leaves
unchanged (applying one twice does no harm); :func:`html_text` is applied once, just before the text is set. All
of them leave ordinary text (accents, CJK, emoji, numbers) exactly as it was.
"""

from __future__ import annotations

import html
import re
import unicodedata
from typing import Any

#: Characters that change how the text around them is shown without being visible themselves: bidirectional marks,
#: embeddings, overrides and isolates (which can make ``evil.exe`` read as ``exe.live``), zero-width and other
#: invisible characters, the byte-order mark and the interlinear annotation characters.
_INVISIBLE_FORMAT = frozenset(
    "\u061c\u180e\u200b\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2060\u2061\u2062\u2063\u2064\u2066\u2067\u2068"
    "\u2069\u206a\u206b\u206c\u206d\u206e\u206f\ufeff\ufff9\ufffa\ufffb"
)

#: Unicode categories always escaped: control characters (C0, DEL, C1), lone surrogates (file names that are not
#: UTF-8), and the line and paragraph separators.
_UNSAFE_CATEGORIES = frozenset({"Cc", "Cs", "Zl", "Zp"})

#: The invisible tag characters (U+E0000-U+E007F), which can carry hidden text.
_TAGS = range(0xE0000, 0xE0080)

#: Leading characters that make a spreadsheet treat a cell as a formula (full-width forms included).
_FORMULA_START = frozenset("=+-@\uff1d\uff0b\uff0d\uff20")

#: Blanks a spreadsheet may skip before it looks for a formula sign.
_LEADING_BLANKS = " \t\r\n\u00a0\u3000"

_NUMBER = re.compile(r"[+-]?((\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?|inf|infinity|nan)", re.IGNORECASE)


def _escape_char(char: str) -> str:
    code = ord(char)
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def _unsafe(char: str) -> bool:
    return char in _INVISIBLE_FORMAT or ord(char) in _TAGS or unicodedata.category(char) in _UNSAFE_CATEGORIES


def terminal_field(value: Any, limit: int | None = None) -> str:
    """``value`` as one line of text with every control or invisible character shown as an escape.

    Args:
        value: Anything; it is shown as ``str(value)``.
        limit: At most this many characters of the escaped text are kept, then ``...`` and how many were left out
            (a name of a megabyte would otherwise fill the screen); ``None`` keeps everything.
    """
    text = str(value)
    if any(_unsafe(char) for char in text):
        text = "".join(_escape_char(char) if _unsafe(char) else char for char in text)
    if limit is not None and len(text) > limit:
        text = f"{text[:limit]}... ({len(text) - limit} more characters)"
    return text


def terminal_message(text: Any) -> str:
    """A message of one or more lines for a terminal: control characters escaped, except the message's own line
    breaks (``\\n``, ``\\r\\n``); lines after the first are indented by two spaces, so that no part of it can pass
    for a line of another program or of this one."""
    lines = str(text).replace("\r\n", "\n").split("\n")
    safe = [terminal_field(line) for line in lines]
    return "\n".join([safe[0]] + [line if line.startswith(" ") or not line else "  " + line for line in safe[1:]])


def csv_cell(value: Any) -> Any:
    """``value`` for a CSV cell: text a spreadsheet would run as a formula gets a leading apostrophe; numbers, and
    text that reads as a number, stay as they are. Values that are not text are returned unchanged."""
    if not isinstance(value, str):
        return value
    first = value.lstrip(_LEADING_BLANKS)[:1]
    if not value.startswith(("\t", "\r", "\n")) and first not in _FORMULA_START:
        return value
    if not first or _NUMBER.fullmatch(value.strip(_LEADING_BLANKS)):
        return value
    return "'" + value


def html_text(value: Any, limit: int | None = None) -> str:
    """``value`` escaped for a Qt rich-text label (``<``, ``>``, ``&`` and quotes), with control and invisible
    characters shown as escapes (see :func:`terminal_field`, which ``limit`` is passed to)."""
    return html.escape(terminal_field(value, limit), quote=True)
