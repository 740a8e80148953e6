"""The module's package installer (``MedAnalysisSlicerLib.installer``) with the real pip on real wheels.

Tiny wheels are written inside each test and installed with this Python's pip into a folder on ``sys.path`` (no
network: ``--no-index``). What the installer reports must be what is installed afterwards: a pip run that installs
nothing is a failure, a package that was already imported and changed asks for a restart.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import json
import subprocess
import sys
import types

import pytest
from helpers_packages import pip_into, requirement_files, write_wheel

from MedAnalysisSlicerLib import installer as installer_module
from MedAnalysisSlicerLib.installer import PackageInstaller, requirementName, requirementSatisfied, versionTuple


@pytest.fixture
def site(tmp_path, monkeypatch):
    """A wheelhouse, a target folder on sys.path, and a pip runner that installs from the one into the other."""
    wheelhouse, target = tmp_path / "wheels", tmp_path / "site"
    target.mkdir()
    monkeypatch.syspath_prepend(str(target))
    calls: list = []
    yield types.SimpleNamespace(wheelhouse=wheelhouse, target=target, pip=pip_into(wheelhouse, target, calls),
                                calls=calls)
    sys.modules.pop("medanalysis_probe", None)
    importlib.invalidate_caches()


def test_installing_a_missing_package_reports_it_installed(site, tmp_path):
    write_wheel(site.wheelhouse, "1.0")
    requirements, constraints = requirement_files(tmp_path, ["medanalysis-probe>=1.0  # a comment"])
    installer = PackageInstaller(site.pip, [requirements], [constraints])
    assert installer.missing() == ["medanalysis-probe>=1.0"]

    outcome = installer.install(installer.missing())

    assert outcome.succeeded and outcome.missing == () and not outcome.restartNeeded
    assert outcome.changed == {"medanalysis-probe": (None, "1.0")}
    assert installer.missing() == []
    # Slicer's own packages are pinned to what is installed, and the shipped constraints are kept.
    pinned = site.calls[0]["constraints"]
    assert f"numpy=={importlib.metadata.version('numpy')}" in pinned
    assert f"SimpleITK=={importlib.metadata.version('SimpleITK')}" in pinned
    assert "keras>=3.12" in pinned


def test_a_pip_run_that_installs_nothing_is_not_a_success(tmp_path):
    """Slicer's pip_ensure returns normally in testing mode without installing: the outcome must say so."""
    requirements, constraints = requirement_files(tmp_path, ["medanalysis-probe>=1.0"])
    installer = PackageInstaller(lambda requirements, constraints: None, [requirements], [constraints])
    outcome = installer.install(installer.missing())
    assert not outcome.succeeded and outcome.missing == ("medanalysis-probe>=1.0",)


def test_a_version_below_the_floor_is_still_missing_after_install(site, tmp_path):
    write_wheel(site.wheelhouse, "1.0")
    requirements, constraints = requirement_files(tmp_path, ["medanalysis-probe>=1.0"])
    installer = PackageInstaller(site.pip, [requirements], [constraints])
    installer.install(["medanalysis-probe>=1.0"])
    assert not requirementSatisfied("medanalysis-probe>=2.0")
    with pytest.raises(subprocess.CalledProcessError) as failure:  # pip's own error travels to the caller
        installer.install(["medanalysis-probe>=2.0"])
    assert "medanalysis-probe" in failure.value.stderr


def test_updating_an_imported_package_asks_for_a_restart(site, tmp_path):
    write_wheel(site.wheelhouse, "1.0")
    requirements, constraints = requirement_files(tmp_path, ["medanalysis-probe>=2.0"])
    installer = PackageInstaller(site.pip, [requirements], [constraints])
    installer.install(["medanalysis-probe==1.0"])
    module = importlib.import_module("medanalysis_probe")
    assert module.VERSION == "1.0"

    write_wheel(site.wheelhouse, "2.0")
    outcome = installer.install(installer.missing())

    assert outcome.succeeded and outcome.restartNeeded
    assert outcome.changed == {"medanalysis-probe": ("1.0", "2.0")}


def test_a_new_package_that_was_never_imported_needs_no_restart(site, tmp_path):
    write_wheel(site.wheelhouse, "1.0")
    requirements, constraints = requirement_files(tmp_path, ["medanalysis-probe>=1.0"])
    outcome = PackageInstaller(site.pip, [requirements], [constraints]).install(["medanalysis-probe>=1.0"])
    assert outcome.succeeded and not outcome.restartNeeded


def test_the_shipped_requirements_are_installed_in_this_environment():
    installer = PackageInstaller()
    names = {requirementName(r) for r in installer.requirements()}
    assert {"tensorflow", "keras", "pydicom"} <= names
    assert installer.missing() == []


def test_missing_requirements_file_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="expected the requirements file"):
        PackageInstaller(None, [tmp_path / "nope.txt"], []).requirements()


@pytest.mark.parametrize(("text", "expected"), [("2.21.0", (2, 21, 0)), ("2.21.0rc1", (2, 21, 0)),
                                                ("3.12.post1", (3, 12)), ("1.26.4+mkl", (1, 26, 4))])
def test_version_parts(text, expected):
    assert versionTuple(text) == expected


def test_requirement_checks_use_installed_versions():
    assert requirementSatisfied("numpy>=1.20")
    assert not requirementSatisfied("numpy>=999")
    assert not requirementSatisfied("no-such-package-medanalysis>=1")
    assert requirementSatisfied("numpy>=1.20,<999") and not requirementSatisfied("numpy>=1.20,<1.21")  # ceilings
    assert requirementName("keras>=3.12") == "keras" and requirementName("pylibjpeg[all]>=2") == "pylibjpeg"


def test_slicer_pip_function_per_version(monkeypatch, tmp_path, slicer_api_manifest):
    """5.12+ has ``slicer.packaging.pip_install`` (used without pip_ensure's own prompts); on 5.10 pip runs here
    (slicer.util.pip_install would lose pip's message). The keyword arguments used exist in the manifest's
    signature for each version."""
    import slicer
    import slicer.util

    calls = []
    packaging = types.ModuleType("slicer.packaging")
    packaging.pip_install = lambda requirements, **kwargs: calls.append(("packaging", requirements, kwargs))
    monkeypatch.setitem(sys.modules, "slicer.packaging", packaging)
    monkeypatch.setattr(slicer, "packaging", packaging, raising=False)
    installer_module.slicerPipRunner()(["keras>=3.12"], tmp_path / "c.txt")
    monkeypatch.delitem(sys.modules, "slicer.packaging")
    monkeypatch.delattr(slicer, "packaging")
    runner = installer_module.slicerPipRunner()
    assert runner.__qualname__.startswith("pipSubprocessRunner")

    assert calls[0] == ("packaging", ["keras>=3.12"], {"constraints": str(tmp_path / "c.txt"),
                                                       "requester": "MedAnalysis"})
    assert len(calls) == 1  # 5.10: pip run here with the interpreter, keeping its output (see pipSubprocessRunner)
    versions = json.loads(slicer_api_manifest.read_text())["versions"]
    for version in ("5.12.0", "main"):
        signature = versions[version]["python_modules"]["slicer.packaging"]["pip_install"]
        assert all(f"{name}=" in signature for name in calls[0][2]), (version, signature)
    assert "slicer.packaging" not in versions["5.10.0"]["python_modules"]
    assert versions["5.10.0"]["python_modules"]["slicer.util"]["pip_install"].startswith("(requirements")
