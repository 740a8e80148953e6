"""Tiny Python packages for installer tests: wheels written by hand and the real pip installing them offline."""

from __future__ import annotations

import base64
import hashlib
import sys
import zipfile
from pathlib import Path


def write_wheel(folder: Path, version: str) -> Path:
    """A pure-Python wheel of the distribution ``medanalysis-probe`` (import name ``medanalysis_probe``)."""
    folder.mkdir(parents=True, exist_ok=True)
    info = f"medanalysis_probe-{version}.dist-info"
    files = {
        "medanalysis_probe/__init__.py": f"VERSION = {version!r}\n",
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: medanalysis-probe\nVersion: {version}\n",
        f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
        f"{info}/top_level.txt": "medanalysis_probe\n",
    }
    record = []
    for name, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
        record.append(f"{name},sha256={digest},{len(text.encode())}")
    record.append(f"{info}/RECORD,,")
    path = folder / f"medanalysis_probe-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as archive:
        for name, text in files.items():
            archive.writestr(name, text)
        archive.writestr(f"{info}/RECORD", "\n".join(record) + "\n")
    return path


def pip_into(wheelhouse: Path, target: Path, calls: list | None = None):
    """The module's own pip runner (the one it uses in Slicer 5.10), offline: this Python's pip installing from
    ``wheelhouse`` into ``target``; each call's requirements and constraint lines are appended to ``calls``."""
    from MedAnalysisSlicerLib.installer import pipSubprocessRunner

    run = pipSubprocessRunner(sys.executable, ["--quiet", "--no-index", "--find-links", str(wheelhouse),
                                               "--target", str(target), "--upgrade"])

    def pip(requirements, constraints: Path) -> None:
        if calls is not None:
            calls.append({"requirements": list(requirements), "constraints": constraints.read_text().splitlines()})
        run(requirements, constraints)

    return pip


def requirement_files(folder: Path, lines: list[str]) -> tuple[Path, Path]:
    """A requirements file with ``lines`` and a constraints file like the shipped one."""
    requirements, constraints = folder / "requirements.txt", folder / "constraints.txt"
    requirements.write_text("# what the module needs\n" + "\n".join(lines) + "\n")
    constraints.write_text("# shipped constraints\nkeras>=3.12\n")
    return requirements, constraints
