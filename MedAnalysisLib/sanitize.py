"""Text from files, made safe for the place it is shown or stored.

Label names, DICOM descriptions, file names and error messages come from files someone else wrote. Each sink
reads text its own way, so each has its own function:

* a terminal obeys escape sequences (colours, cursor moves, window titles, hyperlinks) and starts a new line at
  ``\\n`` or ``\\r``: :func:`terminal_field` shows every control character of one value as a visible escape, and
  :func:`terminal_message` does the same for a message of several lines, keeping the line breaks the message was
  written with but indenting the continuation lines, so that no value can forge a line of its own;
* a spreadsheet runs a cell that starts with ``=``, ``+``, ``-``, ``@`` (or a tab or carriage return before one) as
  a formula: :func:`csv_cell` prefixes such text with an apostrophe, the convention spreadsheets show as text;
* Qt labels render rich text: :func:`html_text` escapes markup for labels that must show rich text; plain labels
  use ``Qt.PlainText`` instead.

Numbers are left as they are: ``-1.5`` in a CSV cell is a number, not a formula.
"""

from __future__ import annotations

import html
import re
import unicodedata
from typing import Any

#: Characters that change how the following text is shown without being visible themselves: bidirectional overrides
#: and isolates (which can make ``evil.exe`` read as ``exe.live``), and the line and paragraph separators.
_INVISIBLE_FORMAT = frozenset(
    "\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u2028\u2029"
)

#: Leading characters that make a spreadsheet treat a cell as a formula.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r", "\n", "\uff1d", "\uff0b", "\uff0d", "\uff20")

_NUMBER = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?")


def _escape_char(char: str) -> str:
    code = ord(char)
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def _unsafe(char: str) -> bool:
    return char in _INVISIBLE_FORMAT or unicodedata.category(char) in ("Cc", "Cs")


def terminal_field(value: Any) -> str:
    """``value`` as text with every control character (line breaks and ESC included) shown as an escape."""
    text = str(value)
    if not any(_unsafe(char) for char in text):
        return text
    return "".join(_escape_char(char) if _unsafe(char) else char for char in text)


def terminal_message(text: Any) -> str:
    """A message of one or more lines for a terminal: control characters escaped, except the message's own line
    breaks; lines after the first are indented, so that no part of it can pass for a line of another program."""
    lines = str(text).replace("\r\n", "\n").split("\n")
    safe = [terminal_field(line) for line in lines]
    return "\n".join([safe[0]] + [line if line.startswith((" ", "\t")) or not line else "  " + line
                                  for line in safe[1:]])


def csv_cell(value: Any) -> Any:
    """``value`` for a CSV cell: text a spreadsheet would run as a formula gets a leading apostrophe; numbers and
    text that reads as a number stay as they are."""
    if not isinstance(value, str) or not value or not value.startswith(_FORMULA_START):
        return value
    if _NUMBER.fullmatch(value.strip()):
        return value
    return "'" + value


def html_text(value: Any) -> str:
    """``value`` escaped for a Qt rich-text label (``<``, ``>``, ``&`` and quotes), control characters shown as
    escapes."""
    return html.escape(terminal_field(value), quote=True)
