"""Packaging checks for the Slicer Extensions Index, run offline.

What the index checks on a submitted entry (its scripts/check_description_files.py and pre-commit hooks) is
reproduced here on the files in this repository: the entry `Resources/ExtensionsIndex/MedAnalysis.json` against
the catalog-entry JSON schema, the top-level CMakeLists.txt (project name, extension metadata, icon and screenshot
URLs), the LICENSE file, and the Python package metadata in pyproject.toml. URLs are mapped to files in this
checkout instead of being downloaded.
"""

from __future__ import annotations

import hashlib
import json
import re
import urllib.parse
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[1]
CMAKELISTS = PROJECT_ROOT / "CMakeLists.txt"
ENTRY = PROJECT_ROOT / "Resources" / "ExtensionsIndex" / "MedAnalysis.json"
EXTENSION_NAME = ENTRY.stem

# The Slicer Extensions Index catalog-entry schema, version 1.0.2
# (Slicer/Slicer: Schemas/slicer-extension-catalog-entry-schema-v1.0.2.json), written out as data: a JSON object
# with no properties beyond these, the required ones, and each property's type and allowed values.
SCHEMA_V1_0_2_URL = (
    "https://raw.githubusercontent.com/Slicer/Slicer/main/Schemas/slicer-extension-catalog-entry-schema-v1.0.2.json#"
)
SCHEMA_V1_0_2 = {
    "required": ("$schema", "category", "scm_url"),
    "properties": {
        "$schema": str,
        "category": str,
        "scm_url": str,
        "scm_revision": str,
        "scm_type": str,
        "build_dependencies": list,  # items: strings
        "dicom_support_rule": str,
        "build_subdirectory": str,
        "enabled": bool,
        "tier": int,
    },
    "enum": {"scm_type": ("git", "local")},
    "range": {"tier": (1, 5)},
}
# Version 1.0.1 of the same schema, which the index's own pre-commit hook (check-jsonschema) validates every entry
# against: no dicom_support_rule, and tier is one of 1, 3, 5. The entry must pass both.
SCHEMA_V1_0_1 = {
    "required": SCHEMA_V1_0_2["required"],
    "properties": {k: v for k, v in SCHEMA_V1_0_2["properties"].items() if k != "dicom_support_rule"},
    "enum": {"scm_type": ("git", "local"), "tier": (1, 3, 5)},
    "range": {},
}

# The index's CMakeLists.txt checks (check_cmakelists_content) read the icon and screenshot URLs with these
# patterns; a value written another way is reported as missing.
ICONURL_PATTERN = re.compile(r'set\s*\(EXTENSION_ICONURL\s*"([^"]+)"[ ]*\)', re.IGNORECASE)
SCREENSHOTURLS_PATTERN = re.compile(r'set\s*\(EXTENSION_SCREENSHOTURLS\s*"([^"]+)"\)', re.IGNORECASE)
PROJECT_PATTERN = re.compile(r"project\s*\(\s*([^\s\)\n\r]+)", re.IGNORECASE)
# The metadata variables of an extension's top-level CMakeLists.txt.
REQUIRED_METADATA = (
    "EXTENSION_HOMEPAGE",
    "EXTENSION_CATEGORY",
    "EXTENSION_CONTRIBUTORS",
    "EXTENSION_DESCRIPTION",
    "EXTENSION_ICONURL",
    "EXTENSION_SCREENSHOTURLS",
    "EXTENSION_DEPENDS",
)
# The first command of Slicer 5.10's top-level CMakeLists.txt and of the extensions its Extension Wizard generates.
CMAKE_MINIMUM_REQUIRED = "cmake_minimum_required(VERSION 3.20.6...3.22.6 FATAL_ERROR)"
MINIMUM_SLICER = (5, 10)
# sha256 of the Apache License 2.0 text as published at https://www.apache.org/licenses/LICENSE-2.0.txt.
APACHE_2_0_SHA256 = "cfc7749b96f63bd31c3c42b5c471bf756814053e847c10f3eb003417bc523d30"
IMAGE_SIGNATURES = {
    ".png": (b"\x89PNG\r\n\x1a\n",),
    ".jpg": (b"\xff\xd8\xff",),
    ".jpeg": (b"\xff\xd8\xff",),
    ".gif": (b"GIF87a", b"GIF89a"),
}


def schema_errors(entry: object, schema: dict) -> list[str]:
    """What makes ``entry`` invalid under ``schema`` (one of the dictionaries above); empty when it is valid."""
    if not isinstance(entry, dict):
        return [f"expected a JSON object, found {type(entry).__name__}"]
    errors = [f"missing required key {key!r}" for key in schema["required"] if key not in entry]
    errors += [f"key {key!r} is not allowed by the schema" for key in entry if key not in schema["properties"]]
    for key, value in entry.items():
        expected = schema["properties"].get(key)
        if expected is None:
            continue
        # JSON true/false load as bool, which Python also counts as int: a boolean tier is still the wrong type.
        if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
            errors.append(f"{key!r} should be {expected.__name__}, found {type(value).__name__}")
            continue
        if key == "build_dependencies" and not all(isinstance(item, str) for item in value):
            errors.append(f"'build_dependencies' items should be strings, found {value!r}")
        if key in schema["enum"] and value not in schema["enum"][key]:
            errors.append(f"{key!r} is {value!r}, expected one of {schema['enum'][key]}")
        if key in schema["range"]:
            low, high = schema["range"][key]
            if not low <= value <= high:
                errors.append(f"{key!r} is {value!r}, expected {low} to {high}")
    return errors


def cmake_text() -> str:
    return CMAKELISTS.read_text(encoding="utf-8")


def cmake_code(text: str) -> str:
    """The CMake text without comments (a '#' outside a quoted string starts one)."""
    return "\n".join(re.sub(r'^((?:[^"#]|"(?:[^"\\]|\\.)*")*)#.*$', r"\1", line) for line in text.splitlines())


def cmake_metadata(text: str) -> dict[str, str]:
    """The quoted values of the top-level ``set(EXTENSION_... "...")`` calls."""
    found = re.findall(r'^\s*set\s*\(\s*(EXTENSION_\w+)\s+"((?:[^"\\]|\\.)*)"\s*\)', cmake_code(text), re.MULTILINE)
    return dict(found)


def load_entry() -> dict:
    return json.loads(ENTRY.read_text(encoding="utf-8"))


def local_path_of_raw_url(url: str, entry: dict) -> Path:
    """The file in this checkout that a raw.githubusercontent.com URL of the entry's repository and branch serves."""
    parts = urllib.parse.urlsplit(url)
    assert parts.scheme == "https", url
    assert parts.netloc == "raw.githubusercontent.com", f"{url} is not served from the repository itself"
    owner, repo, branch, *path = parts.path.lstrip("/").split("/")
    scm_path = urllib.parse.urlsplit(entry["scm_url"]).path.strip("/").removesuffix(".git")
    assert f"{owner}/{repo}" == scm_path, f"{url} is not in the entry's repository {entry['scm_url']}"
    assert branch == entry["scm_revision"], f"{url} is on branch {branch!r}, the entry builds {entry['scm_revision']!r}"
    return PROJECT_ROOT.joinpath(*path)


def load_pyproject() -> dict:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    return tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text(encoding="utf-8"))


# --- the index entry ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("schema", [SCHEMA_V1_0_2, SCHEMA_V1_0_1], ids=["schema-1.0.2", "schema-1.0.1"])
def test_entry_is_valid_under_the_catalog_entry_schema(schema):
    entry = load_entry()
    assert schema_errors(entry, schema) == []
    assert entry["$schema"] == SCHEMA_V1_0_2_URL


def test_entry_has_what_a_new_extension_entry_needs():
    entry = load_entry()
    assert entry["scm_type"] == "git"
    assert entry["scm_revision"]  # a branch, so that the entry follows the repository without resubmission
    assert entry["build_subdirectory"] == "."  # not a superbuild extension
    assert entry["enabled"] is True
    assert entry["tier"] == 1  # a new extension enters the catalog as tier 1 (experimental)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda e: e.pop("scm_url"), "missing required key 'scm_url'"),
        (lambda e: e.update(homepage="https://example.org"), "key 'homepage' is not allowed"),
        (lambda e: e.update(tier=True), "'tier' should be int"),
        (lambda e: e.update(tier=6), "'tier' is 6"),
        (lambda e: e.update(enabled="true"), "'enabled' should be bool"),
        (lambda e: e.update(scm_type="svn"), "'scm_type' is 'svn'"),
        (lambda e: e.update(build_dependencies=[1]), "items should be strings"),
    ],
)
def test_the_schema_check_catches_invalid_entries(change, message):
    entry = load_entry()
    change(entry)
    assert any(message in error for error in schema_errors(entry, SCHEMA_V1_0_2)), schema_errors(entry, SCHEMA_V1_0_2)


def test_entry_file_is_formatted_the_way_the_index_lints_it():
    raw = ENTRY.read_bytes()
    assert b"\r" not in raw, "the index accepts LF line endings only"
    assert b"\t" not in raw
    text = raw.decode("utf-8")
    assert text == json.dumps(json.loads(text), indent=2, ensure_ascii=False) + "\n"


def test_entry_passes_the_index_description_checks():
    entry = load_entry()
    assert not EXTENSION_NAME.lower().startswith("slicer"), "the index refuses new extension names starting with Slicer"
    scm = urllib.parse.urlsplit(entry["scm_url"])
    assert "://" in entry["scm_url"] and scm.scheme in ("git", "https")
    assert scm.netloc and scm.path.strip("/")


def test_entry_category_and_dependencies_match_the_cmakelists():
    entry = load_entry()
    metadata = cmake_metadata(cmake_text())
    assert entry["category"] == metadata["EXTENSION_CATEGORY"]
    depends = [] if metadata["EXTENSION_DEPENDS"] == "NA" else metadata["EXTENSION_DEPENDS"].split()
    assert sorted(entry["build_dependencies"]) == sorted(depends)


# --- CMakeLists.txt -----------------------------------------------------------------------------------------------


def test_extension_name_is_the_cmake_project_name():
    matches = PROJECT_PATTERN.findall(cmake_text())
    assert matches, "no project() in CMakeLists.txt"
    assert matches[0].strip("\"'") == EXTENSION_NAME


def test_cmake_minimum_required_is_the_slicer_5_10_form():
    code = [line.strip() for line in cmake_code(cmake_text()).splitlines() if line.strip()]
    assert code[0] == CMAKE_MINIMUM_REQUIRED, "cmake_minimum_required must come first, before project()"


def test_cmakelists_requires_slicer_5_10_or_newer():
    code = cmake_code(cmake_text())
    match = re.search(r"find_package\s*\(\s*Slicer\s+(\d+)\.(\d+)(?:\.\d+)?\s+REQUIRED\s*\)", code)
    assert match, "find_package(Slicer <version> REQUIRED) not found"
    assert (int(match[1]), int(match[2])) >= MINIMUM_SLICER
    description = cmake_metadata(cmake_text())["EXTENSION_DESCRIPTION"]
    assert "requires Slicer 5.10 or newer" in description


def test_every_extension_metadata_variable_is_set():
    metadata = cmake_metadata(cmake_text())
    missing = [name for name in REQUIRED_METADATA if not metadata.get(name, "").strip()]
    assert missing == []
    assert metadata["EXTENSION_HOMEPAGE"].startswith("https://")


def test_icon_and_screenshot_urls_point_at_images_in_this_repository():
    text = cmake_text()
    entry = load_entry()
    icon = ICONURL_PATTERN.findall(text)
    screenshots = SCREENSHOTURLS_PATTERN.findall(text)
    assert icon, "EXTENSION_ICONURL is not written in the form the index reads"
    assert screenshots, "EXTENSION_SCREENSHOTURLS is not written in the form the index reads"
    urls = [icon[0].strip(), *screenshots[0].split()]
    for url in urls:
        path = local_path_of_raw_url(url, entry)
        assert path.is_file(), f"{url} maps to {path.relative_to(PROJECT_ROOT)}, which does not exist"
        signatures = IMAGE_SIGNATURES.get(path.suffix.lower())
        assert signatures, f"{url} does not end in an image file extension"
        assert path.read_bytes().startswith(signatures), (
            f"{path.relative_to(PROJECT_ROOT)} is not a {path.suffix} image"
        )


# --- LICENSE and pyproject.toml -----------------------------------------------------------------------------------


def test_license_is_the_apache_2_0_text():
    license_file = PROJECT_ROOT / "LICENSE"
    assert license_file.is_file(), "the index requires a license file in the repository root"
    text = license_file.read_text(encoding="utf-8")
    assert text.lstrip().startswith("Apache License\n                           Version 2.0, January 2004")
    assert "END OF TERMS AND CONDITIONS" in text
    assert hashlib.sha256(license_file.read_bytes()).hexdigest() == APACHE_2_0_SHA256, "LICENSE differs from apache.org"


def test_pyproject_license_is_the_spdx_expression():
    pyproject = load_pyproject()
    project = pyproject["project"]
    assert project["license"] == "Apache-2.0"
    assert project["license-files"] == ["LICENSE"]
    # PEP 639: with a license expression, License :: classifiers are an error.
    assert not [c for c in project.get("classifiers", []) if c.startswith("License ::")]
    # setuptools reads the string form and license-files from version 77 on.
    setuptools = [r for r in pyproject["build-system"]["requires"] if re.match(r"setuptools\b", r)]
    assert len(setuptools) == 1
    floor = re.search(r">=\s*(\d+)", setuptools[0])
    assert floor and int(floor[1]) >= 77, setuptools[0]


def test_the_module_cmake_lists_every_file_of_the_module_library():
    """slicerMacroBuildScriptedModule installs only the scripts it is given: a file missing there is missing in the
    extension package (ImportError in Slicer) while a source checkout works."""
    cmake = (PROJECT_ROOT / "MedAnalysis" / "CMakeLists.txt").read_text()
    listed = set(re.findall(r"\$\{MODULE_NAME\}SlicerLib/(\w+\.py)", cmake))
    present = {path.name for path in (PROJECT_ROOT / "MedAnalysis" / "MedAnalysisSlicerLib").glob("*.py")}
    assert listed == present, f"MedAnalysis/CMakeLists.txt lists {sorted(listed)}, the folder has {sorted(present)}"


def test_every_data_file_of_the_library_is_installed_by_pip_and_by_the_extension():
    """The library reads files beside its code (the default model catalog, its reference models, JSON tables): pip's
    package data and the extension's resource globs must both carry every one, or an installed copy lacks them."""
    package = PROJECT_ROOT / "MedAnalysisLib"
    data_files = sorted(p.relative_to(package).as_posix() for p in package.rglob("*")
                        if p.is_file() and p.suffix not in (".py", ".pyc") and "__pycache__" not in p.parts)
    assert "catalog/default_catalog.json" in data_files
    patterns = load_pyproject()["tool"]["setuptools"]["package-data"]["MedAnalysisLib"]
    globs = re.findall(r"\$\{CMAKE_CURRENT_SOURCE_DIR\}/MedAnalysisLib/(\S+)",
                       CMAKELISTS.read_text(encoding="utf-8"))
    for name in data_files:
        assert any(Path(name).match(p) or Path(name).match(p.removeprefix("**/")) for p in patterns), \
            f"{name} is not in pyproject.toml's package-data {patterns}"
        # GLOB_RECURSE: a pattern's folder part is fixed, its file part matches at any depth below it
        assert any(name.startswith(g.rpartition("/")[0]) and Path(name).match(g.rpartition("/")[2]) for g in globs
                   if not g.endswith(".py")), f"{name} is not installed by the CMakeLists.txt resource globs {globs}"
