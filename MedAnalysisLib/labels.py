"""What a model's output classes are: :class:`LabelInfo` (value, name, colour, coded meaning) and the default palette.

Labels are described here, below everything that uses them: the bundle stores them (:mod:`MedAnalysisLib.bundles`),
the terminology table codes them (:mod:`MedAnalysisLib.terminology`), training names them, and the writers and the
Slicer adapter colour the results with them. This module imports nothing heavier than the standard library.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from MedAnalysisLib.errors import BundleError

#: Colours for labels 1, 2, ... when none are given (distinct on dark and light backgrounds).
DEFAULT_COLORS = ((216, 101, 79), (128, 174, 128), (241, 214, 145), (177, 122, 101), (111, 184, 210),
                  (221, 130, 101), (144, 238, 144), (220, 245, 20), (78, 63, 0), (255, 250, 220))
_LABEL_KEYS = ({"value", "name"}, {"color", "terminology"})
#: Largest label value: label maps are written as uint8 or uint16, and a larger value would wrap into another label.
MAX_LABEL_VALUE = 65535
#: Longest label name (names become table columns, segment names and file-name parts).
MAX_NAME_LENGTH = 128


def _expect(condition: bool, message: str) -> None:
    if not condition:
        raise BundleError(message)


def _show(value: Any) -> str:
    """``repr`` of a value for a message, shortened (a value read from a file can be a megabyte long)."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


@dataclass(frozen=True)
class LabelInfo:
    """One output class.

    Attributes:
        value: The integer written into label maps (segmentation; 0 is the background) or the class index
            (classification).
        name: Human-readable name, e.g. ``"anterior hippocampus"``.
        color: Display colour, RGB integers 0-255.
        terminology: Optional coded meaning, e.g. ``{"category": {"scheme": "SCT", "code": "123037004", "meaning":
            "Anatomical Structure"}, "type": {...}}`` (DICOM SEG / Slicer terminology), or ``None``.

    Raises:
        BundleError: On construction, a negative or non-integer value, an empty name, a colour that is not three
            integers 0-255, or a terminology that is not a plain JSON object.
    """

    value: int
    name: str
    color: tuple[int, int, int] = (128, 128, 128)
    terminology: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        _expect(isinstance(self.value, int) and not isinstance(self.value, bool) and self.value >= 0,
                f"expected a label value that is an integer >= 0, got {_show(self.value)}")
        _expect(self.value <= MAX_LABEL_VALUE,
                f"expected a label value of at most {MAX_LABEL_VALUE} (the largest a uint16 label map holds), got "
                f"{_show(self.value)}")
        _expect(isinstance(self.name, str) and self.name.strip() != "",
                f"expected a label name, got {_show(self.name)}")
        _expect(len(self.name) <= MAX_NAME_LENGTH and self.name.isprintable(),
                f"expected a label name of at most {MAX_NAME_LENGTH} printable characters, got {_show(self.name)}")
        color = tuple(self.color) if isinstance(self.color, (list, tuple)) else ()
        _expect(
            len(color) == 3 and all(isinstance(c, int) and not isinstance(c, bool) and 0 <= c <= 255 for c in color),
            f"expected an RGB colour of three integers 0-255 for label {self.name!r}, got {_show(self.color)}",
        )
        object.__setattr__(self, "color", color)
        if self.terminology is not None:
            _expect(isinstance(self.terminology, dict),
                    f"expected a terminology dict or null, got {self.terminology!r}")
            try:
                json.dumps(self.terminology, allow_nan=False)
            except (TypeError, ValueError) as error:
                raise BundleError(f"expected plain JSON values in the terminology of label {self.name!r}, got "
                                  f"{error}") from error

    def to_dict(self) -> dict[str, Any]:
        return {"value": self.value, "name": self.name, "color": list(self.color), "terminology": self.terminology}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LabelInfo:
        """Build from ``to_dict()`` output; unknown or missing keys raise :class:`BundleError`."""
        required, optional = _LABEL_KEYS
        _expect(isinstance(data, Mapping), f"expected a label to be a JSON object, got {type(data).__name__}")
        unknown, missing = set(data) - required - optional, required - set(data)
        _expect(not unknown, f"expected only the keys {sorted(required | optional)} in a label, got unknown "
                             f"{sorted(unknown)}")
        _expect(not missing, f"expected a label to have the keys {sorted(missing)}, they are missing")
        color = data.get("color", (128, 128, 128))
        _expect(isinstance(color, (list, tuple)), f"expected an RGB list for label colour, got {color!r}")
        return cls(data["value"], data["name"], tuple(color), data.get("terminology"))  # type: ignore[arg-type]


#: The name of label value 0 in a label map: 0 is always the background, and no other value may carry this name.
BACKGROUND = "background"


def check_user_labels(labels: tuple[LabelInfo, ...] | list[LabelInfo], where: str = "the labels",
                      named_background: bool = True) -> None:
    """Refuse a set of labels a user wrote that would be ambiguous in a result.

    Value 0 is always the background of a label map: with ``named_background`` (labels files) an entry for it must
    be named ``background`` (any case), not ``liver``, or the bundle would call the background liver (Python
    callers naming classes by position, ``["bg", "liver"]``, pass False). No other value may be named
    ``background``, and two values may not share a name (compared without case or surrounding spaces): segment
    names, table columns and DICOM SEG segment labels must tell the classes apart.

    Raises:
        BundleError: Naming the values and names involved.
    """
    seen: dict[str, int] = {}
    for label in labels:
        key = " ".join(label.name.split()).casefold()
        _expect(label.value != 0 or key == BACKGROUND or not named_background,
                f"expected value 0 in {where} to be named {BACKGROUND!r} (0 is always the background of a label "
                f"map), got {_show(label.name)}")
        _expect(label.value == 0 or key != BACKGROUND,
                f"expected the name {BACKGROUND!r} only for value 0 in {where}, got it for value {label.value}")
        _expect(key not in seen, f"expected a different name for each label value in {where}, got "
                                 f"{_show(label.name)} for values {seen.get(key)} and {label.value}")
        seen[key] = label.value


def default_color(value: int) -> tuple[int, int, int]:
    """The palette colour of label ``value`` (black for the background, 0)."""
    return (0, 0, 0) if value == 0 else DEFAULT_COLORS[(value - 1) % len(DEFAULT_COLORS)]


def default_labels(names: Mapping[int, str] | list[str]) -> tuple[LabelInfo, ...]:
    """LabelInfo for each ``value -> name`` (a list means values 0, 1, ...), with default colours, no terminology."""
    items = dict(enumerate(names)) if isinstance(names, list) else dict(names)
    return tuple(LabelInfo(int(value), str(name), default_color(int(value))) for value, name in sorted(items.items()))


__all__ = ["BACKGROUND", "DEFAULT_COLORS", "MAX_LABEL_VALUE", "LabelInfo", "check_user_labels", "default_color",
           "default_labels"]
