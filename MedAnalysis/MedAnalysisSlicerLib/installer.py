"""Python packages MedAnalysis needs inside Slicer's Python: what is missing, and installing it honestly.

Plain Python: no Qt, no dialogs. The panel asks the user once (its own consent dialog), then calls
:meth:`PackageInstaller.install`, which runs pip through Slicer's own installer function and reports what is
*actually* installed afterwards: a run that installed nothing (pip failed, or Slicer skipped it in testing mode) is a
failure with the requirements still missing, never a success. Whether a restart is needed is decided here too (a
package that was already imported changed), so the panel asks that question once.

Which Slicer function runs pip:

- Slicer 5.12 and newer: ``slicer.packaging.pip_install`` (not ``pip_ensure``: that one asks its own consent and
  restart questions, and skips installing in testing mode while returning normally). On failure Slicer shows pip's
  log in its own dialog and raises ``CalledProcessError`` without the text.
- Slicer 5.10: ``python -m pip install`` run here with Slicer's interpreter (``PythonSlicer``), as
  ``slicer.util.pip_install`` does, but keeping pip's output: Slicer 5.10's function raises with a consumed stream in
  place of the text, so pip's own error could not be shown.

Nothing probes the network first: pip knows the user's proxy and index settings, and its own error is the message.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import logging
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

MODULE_DIR = Path(__file__).resolve().parents[1]
#: Where the requirement files are: next to the installed module, or in a source checkout's Resources/.
REQUIREMENT_FILES = (MODULE_DIR / "Resources" / "Python" / "requirements.txt",
                     MODULE_DIR.parent / "Resources" / "requirements.txt")
CONSTRAINT_FILES = (MODULE_DIR / "Resources" / "Python" / "constraints.txt",
                    MODULE_DIR.parent / "Resources" / "constraints.txt")
#: Slicer's own packages: pinned to their installed versions during every install so pip never changes them.
PROTECTED_PACKAGES = ("numpy", "SimpleITK")

#: ``pip(requirements, constraintsPath)``: runs pip; raises with pip's message on failure.
PipRunner = Callable[[Sequence[str], Path], None]


@dataclass(frozen=True)
class InstallOutcome:
    """What an installation achieved, read back from the installed distributions.

    Attributes:
        requested: The requirement lines that were asked for.
        missing: Those still not satisfied afterwards (empty on success).
        restartNeeded: A package that this Python had already imported changed version: Slicer must restart
            before the new version can be used.
        changed: ``name: (before, after)`` for every requested distribution whose version changed.
    """

    requested: tuple[str, ...]
    missing: tuple[str, ...]
    restartNeeded: bool
    changed: dict[str, tuple[str | None, str | None]] = field(default_factory=dict)

    @property
    def succeeded(self) -> bool:
        return not self.missing


class PackageInstaller:
    """Reads MedAnalysis's requirement files and installs what is missing into this Python.

    Args:
        pip: The function that runs pip (default: Slicer's, see the module docstring). Tests pass their own.
        requirementFiles, constraintFiles: Candidate locations; the first that exists is used.
    """

    def __init__(self, pip: PipRunner | None = None, requirementFiles: Sequence[Path] = REQUIREMENT_FILES,
                 constraintFiles: Sequence[Path] = CONSTRAINT_FILES) -> None:
        self._pip = pip
        self.requirementFiles = tuple(Path(p) for p in requirementFiles)
        self.constraintFiles = tuple(Path(p) for p in constraintFiles)

    def requirements(self) -> list[str]:
        """Requirement lines (``name>=version``) MedAnalysis needs in Slicer's Python."""
        path = next((p for p in self.requirementFiles if p.is_file()), None)
        if path is None:
            raise FileNotFoundError(f"expected the requirements file at {self.requirementFiles[0]}, found none")
        return _meaningfulLines(path)

    def missing(self) -> list[str]:
        """The requirements that are not installed, or installed below their ``>=`` floor."""
        return [requirement for requirement in self.requirements() if not requirementSatisfied(requirement)]

    def constraintLines(self) -> list[str]:
        """The shipped constraints plus Slicer's own packages pinned to their installed versions."""
        shipped = next((p for p in self.constraintFiles if p.is_file()), None)
        lines = _meaningfulLines(shipped) if shipped is not None else []
        for package in PROTECTED_PACKAGES:
            version = installedVersion(package)
            if version is not None:
                lines.append(f"{package}=={version}")
        return lines

    def install(self, requirements: Sequence[str]) -> InstallOutcome:
        """Install ``requirements`` without changing numpy or SimpleITK; report what is installed afterwards.

        Raises:
            Exception: whatever the pip runner raises when pip fails (``subprocess.CalledProcessError`` in Slicer),
                carrying pip's own message.
        """
        requested = tuple(requirements)
        names = [requirementName(r) for r in requested]
        before = {name: installedVersion(name) for name in names}
        with tempfile.TemporaryDirectory(prefix="MedAnalysis-pip-") as folder:
            constraints = Path(folder) / "constraints.txt"
            constraints.write_text("\n".join(self.constraintLines()) + "\n", encoding="utf-8")
            (self._pip or slicerPipRunner())(requested, constraints)
        importlib.invalidate_caches()
        after = {name: installedVersion(name) for name in names}
        changed = {name: (before[name], after[name]) for name in names if before[name] != after[name]}
        restart = any(before[name] is not None and importName(name) in sys.modules for name in changed)
        return InstallOutcome(requested=requested, missing=tuple(r for r in requested if not requirementSatisfied(r)),
                              restartNeeded=restart, changed=changed)


def slicerPipRunner() -> PipRunner:
    """Slicer's pip function for this Slicer: ``slicer.packaging.pip_install`` (5.12+) or ``slicer.util.pip_install``."""
    try:
        packaging = importlib.import_module("slicer.packaging")
    except ImportError:
        packaging = None
    if packaging is not None and hasattr(packaging, "pip_install"):
        def run(requirements: Sequence[str], constraints: Path) -> None:
            packaging.pip_install(list(requirements), constraints=str(constraints), requester="MedAnalysis")
        return run

    return pipSubprocessRunner(shutil.which("PythonSlicer") or sys.executable)


def pipSubprocessRunner(python: str, extraArguments: Sequence[str] = ()) -> PipRunner:
    """Run ``python -m pip install [extraArguments] REQUIREMENTS -c CONSTRAINTS`` and keep its output.

    Raises:
        subprocess.CalledProcessError: pip failed; ``output`` and ``stderr`` hold what it printed.
    """

    def run(requirements: Sequence[str], constraints: Path) -> None:
        command = [python, "-m", "pip", "install", "--disable-pip-version-check", *extraArguments,
                   *requirements, "-c", str(constraints)]
        completed = subprocess.run(command, capture_output=True, text=True, check=False)  # noqa: S603 - our argv
        for line in (completed.stdout + completed.stderr).splitlines():
            logging.info("pip: %s", line)
        if completed.returncode != 0:
            raise subprocess.CalledProcessError(completed.returncode, command, completed.stdout, completed.stderr)

    return run


# ------------------------------------------------------------------ requirement strings (the ">=" floors we ship)
def _meaningfulLines(path: Path) -> list[str]:
    lines = (line.split("#")[0].strip() for line in path.read_text(encoding="utf-8").splitlines())
    return [line for line in lines if line]


def requirementName(requirement: str) -> str:
    """``"keras>=3.12"`` -> ``"keras"``."""
    return re.split(r"[<>=!~\[;\s]", requirement.strip(), maxsplit=1)[0]


def importName(distribution: str) -> str:
    """The top-level import name of a distribution (``"SimpleITK"`` stays, ``"pylibjpeg-libjpeg"`` -> ``libjpeg``)."""
    try:
        mapping = importlib.metadata.packages_distributions()
    except Exception:  # noqa: BLE001 - broken metadata of an unrelated package must not break the check
        mapping = {}
    for name, distributions in mapping.items():
        if distribution.lower() in (d.lower() for d in distributions):
            return name
    return distribution.replace("-", "_")


def installedVersion(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def versionTuple(text: str) -> tuple[int, ...]:
    """Leading numeric release parts: ``"2.21.0rc1"`` -> ``(2, 21, 0)``."""
    parts = []
    for piece in text.split("."):
        digits = re.match(r"\d+", piece)
        if digits is None:
            break
        parts.append(int(digits.group()))
        if digits.group() != piece:
            break
    return tuple(parts)


def requirementSatisfied(requirement: str) -> bool:
    """True when the distribution is installed at or above its ``>=`` floor and below its ``<`` ceiling (the only
    specifiers our files use; keras has a ceiling, see MedAnalysisLib/keras_compat.py)."""
    installed = installedVersion(requirementName(requirement))
    if installed is None:
        return False
    version = versionTuple(installed)
    floor = re.search(r">=\s*([^,;\s]+)", requirement)
    ceiling = re.search(r"<(?!=)\s*([^,;\s]+)", requirement)
    return ((floor is None or version >= versionTuple(floor.group(1)))
            and (ceiling is None or version < versionTuple(ceiling.group(1))))
