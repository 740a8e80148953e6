"""Standard codes for segment meanings (SNOMED CT, as DICOM SEG and 3D Slicer use them) and the labels file.

A label name such as ``"liver"``, ``"Kidney_left"`` or ``"liver tumour"`` is looked up in :data:`ENTRIES`, a small
built-in table of common anatomy, tissues and lesion types, the way 3D Slicer's terminology lists and
TotalSegmentator code their segments: a category (Anatomical Structure, Tissue or Morphologically Altered
Structure), a type, and where it applies a laterality modifier (Left/Right) or an anatomic region (``"liver tumour"``
is a Neoplasm in the Liver). Every code is a SNOMED CT (``SCT``) code that pydicom's DICOM concept dictionary also
lists, except the two enhancing/non-enhancing lesion types of DICOM CID 7159, which are NCI Thesaurus (``NCIt``)
codes. Recommended colours: TotalSegmentator's (as its Slicer extension shows organs), 3D Slicer's terminology for
tissue and lesion types, FreeSurfer's for the hippocampus; ``None`` where those sources give none (the model's
default palette is kept).

A name the table does not know gets no terminology: the bundle records ``null``, its model card says "no standard
code", and a DICOM SEG codes the segment as the generic SCT Tissue / Tissue (DICOM requires a category and a type).

Terminology is stored in ``bundle.json`` per label as::

    {"category": {"scheme": "SCT", "code": "123037004", "meaning": "Anatomical Structure"},
     "type": {"scheme": "SCT", "code": "64033007", "meaning": "Kidney"},
     "type_modifier": {"scheme": "SCT", "code": "7771000", "meaning": "Left"},          # optional
     "anatomic_region": {...}, "anatomic_region_modifier": {...}}                       # optional

The labels file (``medanalysis train --labels labels.json``, see :func:`read_labels_file`) gives names, colours and
codes for the label values of a dataset.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from MedAnalysisLib.errors import BundleError, InputError
from MedAnalysisLib.labels import LabelInfo, check_user_labels
from MedAnalysisLib.labels import default_color as palette_color

Code = tuple[str, str, str]  # (scheme designator, code value, code meaning)

ANATOMICAL_STRUCTURE: Code = ("SCT", "123037004", "Anatomical Structure")
TISSUE: Code = ("SCT", "85756007", "Tissue")
ALTERED: Code = ("SCT", "49755003", "Morphologically Altered Structure")
LEFT: Code = ("SCT", "7771000", "Left")
RIGHT: Code = ("SCT", "24028007", "Right")
#: What a DICOM SEG says for a segment without a standard code (category and type are required there).
GENERIC: dict[str, dict[str, str]] = {"category": {"scheme": "SCT", "code": "85756007", "meaning": "Tissue"},
                                      "type": {"scheme": "SCT", "code": "85756007", "meaning": "Tissue"}}
#: Keys a terminology dict may hold; each holds one coded concept.
TERMINOLOGY_KEYS = ("category", "type", "type_modifier", "anatomic_region", "anatomic_region_modifier")
_ALIASES = {"modifier": "type_modifier", "typeModifier": "type_modifier", "region": "anatomic_region",
            "anatomicRegion": "anatomic_region", "region_modifier": "anatomic_region_modifier",
            "anatomicRegionModifier": "anatomic_region_modifier"}


@dataclass(frozen=True)
class Entry:
    """One row of the built-in table.

    Attributes:
        names: Normalised names that select it (see :func:`normalize_name`); the first is shown in listings.
        category: Segmentation property category.
        type: Segmentation property type.
        color: Recommended RGB 0-255, or None.
        paired: A left/right word in the name becomes a laterality modifier.
        lesion: A lesion type: ``"<organ> <lesion>"`` names code the organ as the anatomic region.
        side_colors: Recommended colours of the left and right structure, where the source gives them.
    """

    names: tuple[str, ...]
    category: Code
    type: Code
    color: tuple[int, int, int] | None = None
    paired: bool = False
    lesion: bool = False
    side_colors: tuple[tuple[int, int, int], tuple[int, int, int]] | None = None


def _anatomy(names: str, code: str, meaning: str, color: tuple[int, int, int] | None = None, *,
             paired: bool = False, sides: tuple[tuple[int, int, int], tuple[int, int, int]] | None = None) -> Entry:
    return Entry(tuple(names.split("|")), ANATOMICAL_STRUCTURE, ("SCT", code, meaning), color, paired, False, sides)


def _tissue(names: str, code: str, meaning: str, color: tuple[int, int, int] | None = None) -> Entry:
    return Entry(tuple(names.split("|")), TISSUE, ("SCT", code, meaning), color)


def _lesion(names: str, code: str, meaning: str, color: tuple[int, int, int] | None = None,
            scheme: str = "SCT") -> Entry:
    return Entry(tuple(names.split("|")), ALTERED, (scheme, code, meaning), color, lesion=True)


#: The built-in table (see the module docstring for sources).
ENTRIES: tuple[Entry, ...] = (
    # abdomen and pelvis (colours: TotalSegmentator)
    _anatomy("liver", "10200004", "Liver", (40, 140, 40)),
    _anatomy("spleen", "78961009", "Spleen", (50, 170, 60)),
    _anatomy("pancreas", "15776009", "Pancreas", (60, 150, 80)),
    _anatomy("kidney|kidneys", "64033007", "Kidney", (40, 120, 160), paired=True,
             sides=((46, 138, 184), (34, 102, 136))),
    _anatomy("adrenal gland|adrenal", "23451007", "Adrenal gland", (210, 150, 30), paired=True,
             sides=((241, 172, 34), (178, 128, 26))),
    _anatomy("gallbladder|gall bladder", "28231008", "Gallbladder", (54, 216, 119)),
    _anatomy("stomach", "69695003", "Stomach", (180, 70, 160)),
    _anatomy("esophagus|oesophagus", "32849002", "Esophagus", (190, 90, 170)),
    _anatomy("duodenum", "38848004", "Duodenum", (170, 80, 190)),
    _anatomy("small intestine|small bowel", "30315005", "Small Intestine", (160, 60, 180)),
    _anatomy("colon", "71854001", "Colon", (150, 40, 170)),
    _anatomy("urinary bladder|bladder", "89837001", "Urinary bladder", (54, 94, 216)),
    _anatomy("prostate", "41216001", "Prostate", (91, 253, 156)),
    _anatomy("peripheral zone|peripheral zone of the prostate|pz", "279706003", "Peripheral zone of the prostate"),
    _anatomy("transition zone|transition zone of the prostate|tz", "399384005", "Transition zone of the prostate"),
    _anatomy("portal vein", "32764006", "Portal vein"),
    _anatomy("hepatic vein|hepatic veins", "8993003", "Hepatic vein"),
    _anatomy("inferior vena cava|ivc", "64131007", "Inferior vena cava", (0, 70, 200)),
    _anatomy("aorta", "15825003", "Aorta", (216, 108, 54)),
    # thorax
    _anatomy("heart", "80891009", "Heart", (180, 0, 40)),
    _anatomy("left atrium|heart atrium left", "82471001", "Left atrium", (184, 0, 69)),
    _anatomy("right atrium|heart atrium right", "73829009", "Right atrium", (136, 0, 51)),
    _anatomy("left ventricle|heart ventricle left", "87878005", "Left ventricle of heart", (161, 0, 92)),
    _anatomy("right ventricle|heart ventricle right", "53085002", "Right ventricle of heart", (119, 0, 68)),
    _anatomy("lung|lungs", "39607008", "Lung", paired=True),
    _anatomy("trachea", "44567001", "Trachea", (0, 180, 200)),
    _anatomy("thyroid gland|thyroid", "69748006", "Thyroid gland", (250, 210, 60)),
    # head and spine
    _anatomy("brain", "12738006", "Brain", (216, 54, 149)),
    _anatomy("hippocampus", "5366008", "Hippocampus", (220, 216, 20), paired=True),  # FreeSurfer's colour
    _anatomy("spinal cord", "2748008", "Spinal cord", (255, 215, 0)),
    _anatomy("skull", "89546000", "Skull", (245, 225, 200)),
    _anatomy("femur", "71341001", "Femur", (216, 54, 56), paired=True, sides=((248, 212, 62), (46, 184, 60))),
    # tissue types (colours: 3D Slicer's terminology)
    _tissue("blood vessel|blood vessels|vessel|vessels", "59820001", "Blood vessel"),
    _tissue("artery|arteries", "51114001", "Artery", (216, 101, 79)),
    _tissue("vein|veins", "29092000", "Vein", (0, 151, 206)),
    _tissue("bone", "272673000", "Bone", (241, 214, 145)),
    _tissue("muscle", "71616004", "Muscle", (192, 104, 88)),
    _tissue("fat|body fat", "248300009", "Body fat", (230, 220, 70)),
    _tissue("skin", "39937001", "Skin", (177, 122, 101)),
    _tissue("nerve", "119410002", "Nerve", (244, 214, 49)),
    _tissue("lymph node|lymph nodes", "59441001", "Lymph node", (68, 172, 100)),
    _tissue("organ", "113343008", "Organ", (221, 130, 101)),
    _tissue("tissue", "85756007", "Tissue", (128, 174, 128)),
    # lesion types (colours: 3D Slicer's terminology)
    _lesion("neoplasm|tumor|tumour|tumors|tumours|cancer", "108369006", "Neoplasm"),
    _lesion("metastasis|metastases|secondary neoplasm", "14799000", "Neoplasm, Secondary"),
    _lesion("mass", "4147007", "Mass", (144, 238, 144)),
    _lesion("lesion|lesions", "52988006", "Lesion"),
    _lesion("nodule|nodules", "27925004", "Nodule"),
    _lesion("cyst|cysts", "367643001", "Cyst", (205, 205, 100)),
    _lesion("edema|oedema", "79654002", "Edema", (140, 224, 228)),
    _lesion("hemorrhage|haemorrhage|bleeding", "50960005", "Hemorrhage", (188, 65, 28)),
    _lesion("necrosis", "6574001", "Necrosis", (216, 191, 216)),
    _lesion("enhancing tumor|enhancing tumour|enhancing lesion", "C113842", "Enhancing Lesion", scheme="NCIt"),
    _lesion("non enhancing tumor|non enhancing tumour|non enhancing lesion", "C81175", "Non-Enhancing Lesion",
            scheme="NCIt"),
)

_BY_NAME: dict[str, Entry] = {name: entry for entry in ENTRIES for name in entry.names}
_SIDES = {"left": LEFT, "right": RIGHT, "l": LEFT, "r": RIGHT}


def normalize_name(name: str) -> str:
    """Lower case, ``_ - / , ( ) .`` as spaces, single spaces: ``"Kidney_Left"`` -> ``"kidney left"``."""
    return " ".join(re.sub(r"[_\-/,().]+", " ", str(name).lower()).split())


def _concept(code: Code) -> dict[str, str]:
    return {"scheme": code[0], "code": code[1], "meaning": code[2]}


def _with_side(words: list[str]) -> tuple[list[str], Code | None]:
    """The words without one left/right word, and that side (full words only; ``l``/``r`` only at either end)."""
    for index, word in enumerate(words):
        if word in ("left", "right") or (word in ("l", "r") and index in (0, len(words) - 1) and len(words) > 1):
            return words[:index] + words[index + 1 :], _SIDES[word]
    return words, None


def _anatomy_of(words: list[str]) -> tuple[Entry, Code | None] | None:
    """An anatomy entry for the words (with an optional side word), or None."""
    text = " ".join(words)
    if text in _BY_NAME and not _BY_NAME[text].lesion:
        return _BY_NAME[text], None
    rest, side = _with_side(words)
    entry = _BY_NAME.get(" ".join(rest))
    if entry is not None and not entry.lesion and (side is None or entry.paired):
        return entry, side
    return None


def lookup(name: str) -> tuple[dict[str, Any], tuple[int, int, int] | None] | None:
    """Standard terminology and recommended colour for a label name, or None when the table has no code for it.

    Recognised: an entry's name (``"spleen"``), a paired structure with a side (``"left kidney"``,
    ``"kidney_right"``), a lesion type (``"tumour"``), and a lesion type after an organ (``"liver tumor"``,
    ``"kidney left cyst"``: the organ becomes the anatomic region).
    """
    words = normalize_name(name).split()
    if not words:
        return None
    found = _anatomy_of(words)
    if found is not None:
        entry, side = found
        terminology: dict[str, Any] = {"category": _concept(entry.category), "type": _concept(entry.type)}
        color = entry.color
        if side is not None:
            terminology["type_modifier"] = _concept(side)
            if entry.side_colors is not None:
                color = entry.side_colors[0 if side == LEFT else 1]
        return terminology, color
    rest, side = _with_side(words)  # "kidney_cyst_left": the side belongs to the organ
    for cut in range(len(rest)):  # the longest lesion name that ends the label name
        entry = _BY_NAME.get(" ".join(rest[cut:]))
        if entry is None or not entry.lesion:
            continue
        terminology = {"category": _concept(entry.category), "type": _concept(entry.type)}
        if cut == 0:
            return (terminology, entry.color) if side is None else None
        organ = _BY_NAME.get(" ".join(rest[:cut]))
        if organ is None or organ.lesion or (side is not None and not organ.paired):
            return None  # "foo tumour": the lesion's place has no code, and dropping it would lose meaning
        terminology["anatomic_region"] = _concept(organ.type)
        if side is not None:
            terminology["anatomic_region_modifier"] = _concept(side)
        return terminology, entry.color
    return None


# ---------------------------------------------------------------------------------------------- validation
def code_triple(value: Any, where: str = "a code") -> Code:
    """``(scheme, code, meaning)`` of a coded concept given as ``{"scheme", "code", "meaning"}`` (or the DICOM
    keywords ``CodingSchemeDesignator``/``CodeValue``/``CodeMeaning``), a 3-item list, or ``"SCHEME^CODE^Meaning"``.

    Raises:
        InputError: Any other form, or an empty part.
    """
    triple: tuple[Any, ...] | None = None
    if isinstance(value, str) and value.count("^") == 2:
        triple = tuple(value.split("^"))
    elif isinstance(value, Mapping):
        def pick(*keys: str) -> Any:
            return next((value[k] for k in keys if value.get(k) not in (None, "")), None)

        triple = (pick("scheme", "CodingSchemeDesignator"), pick("code", "value", "CodeValue"),
                  pick("meaning", "CodeMeaning"))
    elif isinstance(value, Sequence) and not isinstance(value, str) and len(value) == 3:
        triple = tuple(value)
    if triple is None or not all(isinstance(part, str) and part.strip() for part in triple):
        raise InputError(f"expected {where} as {{'scheme', 'code', 'meaning'}} (e.g. SCT, 10200004, Liver), got "
                         f"{value!r}")
    scheme, code, meaning = (part.strip() for part in triple)  # type: ignore[union-attr]
    if len(code) > 16 or len(meaning) > 64 or len(scheme) > 16 or any(c in scheme + code + meaning for c in "^~|\n"):
        raise InputError(f"expected {where} with a scheme and a code of at most 16 characters, a meaning of at most "
                         f"64 and none of ^ ~ | or newlines, got {value!r}")
    return scheme, code, meaning


def normalize_terminology(terminology: Any, name: str = "") -> dict[str, Any] | None:
    """A label's terminology in the canonical form of the module docstring (or None), validated.

    Accepts the aliases ``modifier``/``typeModifier`` (type modifier) and ``region``/``anatomicRegion``.

    Raises:
        InputError: Not a dict, unknown keys, a missing category or type, or a malformed code.
    """
    if terminology is None:
        return None
    where = f"the terminology of label {name!r}" if name else "a terminology"
    if not isinstance(terminology, Mapping):
        raise InputError(f"expected {where} as a dict with 'category' and 'type', got {terminology!r}")
    canonical: dict[str, Any] = {}
    for key, value in terminology.items():
        key = _ALIASES.get(key, key)
        if key not in TERMINOLOGY_KEYS:
            raise InputError(f"expected only the keys {list(TERMINOLOGY_KEYS)} in {where}, got {key!r}")
        if value in (None, "", {}):
            continue
        canonical[key] = _concept(code_triple(value, f"{where}: {key}"))
    missing = [key for key in ("category", "type") if key not in canonical]
    if missing:
        raise InputError(f"expected {where} to hold a 'category' and a 'type', got none for {missing}")
    return canonical


def describe_terminology(terminology: Mapping[str, Any] | None) -> str:
    """One line for model cards: ``"SCT 64033007 Kidney (Left)"`` or ``"no standard code"``."""
    if not terminology or "type" not in terminology:
        return "no standard code"
    try:
        scheme, code, meaning = code_triple(terminology["type"])
    except InputError:
        return "no standard code (malformed terminology)"
    text = f"{scheme} {code} {meaning}"
    extras = []
    for key in ("type_modifier", "modifier", "anatomic_region", "anatomic_region_modifier"):
        if terminology.get(key):
            try:
                extras.append(code_triple(terminology[key])[2])
            except InputError:
                continue
    return text + (f" ({', '.join(extras)})" if extras else "")


# ---------------------------------------------------------------------------------------------- labels
def coded_label(value: int, name: str, default_color: tuple[int, int, int]) -> LabelInfo:
    """A :class:`~MedAnalysisLib.labels.LabelInfo` with the table's terminology and colour when the name is known
    (background value 0: no terminology, black)."""
    if value == 0:
        return LabelInfo(0, name, (0, 0, 0))
    found = lookup(name)
    if found is None:
        return LabelInfo(value, name, default_color)
    terminology, color = found
    return LabelInfo(value, name, color or default_color, terminology)


_LABEL_KEYS = {"value", "name", "color", "terminology"}


def _label_entry(raw: Any, where: str, fallback_color: tuple[int, int, int]) -> LabelInfo:
    if not isinstance(raw, Mapping):
        raise InputError(f"expected {where} as an object with 'value' and 'name', got {raw!r}")
    unknown = sorted(set(raw) - _LABEL_KEYS)
    if unknown:
        raise InputError(f"expected only the keys {sorted(_LABEL_KEYS)} in {where}, got {unknown}")
    value, name = raw.get("value"), raw.get("name")
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise InputError(f"expected an integer label value >= 0 in {where}, got {value!r}")
    if not isinstance(name, str) or not name.strip() or any(c in name for c in "|\n\r"):
        raise InputError(f"expected a label name without '|' or line breaks in {where}, got {name!r}")
    color = raw.get("color")
    if color is not None and (not isinstance(color, list) or len(color) != 3
                              or not all(isinstance(c, int) and not isinstance(c, bool) and 0 <= c <= 255
                                         for c in color)):
        raise InputError(f"expected 'color' as three integers 0-255 in {where}, got {color!r}")
    terminology: dict[str, Any] | None
    recommended: tuple[int, int, int] | None = None
    given = raw.get("terminology", "auto")
    if value == 0:
        terminology = None
    elif given == "auto" or isinstance(given, str):
        found = lookup(name if given == "auto" else given)
        if found is None and given != "auto":
            raise InputError(f"expected a terminology dict or a name the built-in table knows in {where}, got "
                             f"{given!r} (see MedAnalysisLib.terminology.ENTRIES)")
        terminology, recommended = found if found is not None else (None, None)
    else:
        terminology = normalize_terminology(given, name)
    chosen = tuple(color) if color is not None else (0, 0, 0) if value == 0 else recommended or fallback_color
    return LabelInfo(value, name.strip(), chosen, terminology)  # type: ignore[arg-type]


def parse_labels(data: Any, where: str = "the labels", *, classification: bool = False) -> tuple[LabelInfo, ...]:
    """Labels from the JSON forms :func:`read_labels_file` reads (already parsed), sorted by value.

    ``classification``: the values are classes, not label-map values, so class 0 may have its own name ("no
    contrast"); for a label map value 0 is always named ``background``."""
    if isinstance(data, Mapping) and set(data) == {"labels"}:
        data = data["labels"]
    if isinstance(data, Mapping):  # {"1": "liver"} or {"1": {"name": ..., "color": ...}}
        items = []
        for key, entry in data.items():
            if not str(key).isdigit():
                raise InputError(f"expected label values as keys of {where}, got {key!r}")
            items.append({"value": int(key), **(entry if isinstance(entry, Mapping) else {"name": entry})})
        data = items
    if not isinstance(data, list) or not data:
        raise InputError(f"expected {where} as a non-empty list of {{'value', 'name', ...}} objects, got {data!r}")
    labels = []
    for number, raw in enumerate(data):
        value = raw.get("value") if isinstance(raw, Mapping) else None
        palette = palette_color(value) if isinstance(value, int) and value > 0 else (0, 0, 0)
        try:
            labels.append(_label_entry(raw, f"entry {number} of {where}", palette))
        except BundleError as error:  # LabelInfo's own bounds (value up to 65535, name length)
            raise InputError(f"{error} in entry {number} of {where}") from None
    values = [label.value for label in labels]
    duplicates = sorted({v for v in values if values.count(v) > 1})
    if duplicates:
        raise InputError(f"expected each label value once in {where}, got {duplicates} more than once")
    ordered = tuple(sorted(labels, key=lambda label: label.value))
    try:
        check_user_labels(ordered, where, named_background=not classification)
    except BundleError as error:
        raise InputError(str(error)) from None
    return ordered


def read_labels_file(path: str | os.PathLike[str], *, classification: bool = False) -> tuple[LabelInfo, ...]:
    """Read a labels file: names, colours and codes per label value.

    The file is JSON: a list (or ``{"labels": [...]}``) of ``{"value": 1, "name": "liver", "color": [r, g, b],
    "terminology": ...}`` objects, or a mapping ``{"1": "liver", "2": {"name": "tumour", "color": [...]}}``.
    ``terminology`` is optional: left out (or ``"auto"``), the name is looked up in the built-in table; a string
    looks that name up instead (``"terminology": "neoplasm"`` for a label named ``"lesion A"``); ``null`` records
    no code; a dict gives the codes (see the module docstring). ``color`` left out: the table's recommended colour,
    else the default palette. Unknown keys are refused. With ``classification`` the values are classes and class 0
    may carry any name (see :func:`parse_labels`).

    Raises:
        InputError: Unreadable JSON, or any entry that breaks the rules above (the message names the entry).
    """
    from MedAnalysisLib.io.small_files import read_json_file

    path = Path(path)
    data = read_json_file(path, "a readable JSON labels file")
    return parse_labels(data, path.name, classification=classification)
